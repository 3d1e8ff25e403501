"""Seconds per profile setting of ``onnxshrink auto``, for one or more onnxshrink source trees side by side.

Each tree runs in its own child process (``PYTHONPATH=TREE``), in turns (A, B, A, B, ...), so a
loaded machine weighs on every tree alike. A child simplifies the model (cached in the work
folder), builds the profile's ``VariantBuilder`` on the calibration samples, then builds and
measures one setting of each knob: a channel cut (ratio 0.25 of the first channel group), int8
and int4 of the middle MatMul/Gemm (the same layer for every tree). Prints each setting's
``variant`` (the pass) and ``setting`` (damage, bytes, MACs) seconds, its damage and bytes, and
the load average. Run::

    python benchmarks/auto_settings.py --model bert|digits --tree /path/to/old --tree . [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BERT = Path.home() / ".cache" / "onnxshrink-bench" / "exports" / "bert-base.onnx"


def _child(model_name: str, work: Path) -> None:
    """Measures one setting of each knob with the onnxshrink on ``sys.path``; prints one JSON line."""
    import onnx_ir as ir
    import samples

    import onnxshrink
    from onnxshrink.autotune import profile as prof
    from onnxshrink.data.readers import open_samples
    from onnxshrink.ir.graphs import is_onnx_op
    from onnxshrink.passes import channels

    simplified = work / f"{model_name}_simplified.onnx"
    if model_name == "bert":
        source, calib = BERT, samples.bert_tokens(8, 32, vocab=1000, seed=0)
    else:
        source, calib, _ = samples.digits()
    if not simplified.exists():
        onnxshrink.shrink(str(source), ["simplify"], verify=False).save(str(simplified))
    base = ir.load(simplified)
    started = time.perf_counter()
    builder = prof.VariantBuilder(ir.serde.serialize_model(base), open_samples(calib), "cpu")
    found: dict[str, object] = {
        "tree": str(Path(onnxshrink.__file__).parents[1]),
        "setup_s": time.perf_counter() - started,
    }
    group = next(iter(channels.iter_ok(channels.analyze(base, "remove"))))
    producer = next(s.node.name for s in group.of_kind("producer") if s.node is not None and s.node.name)
    layers = [n.name for n in base.graph if is_onnx_op(n, "MatMul", "Gemm") and n.inputs[1].const_value is not None]
    layer = layers[len(layers) // 2]
    specs = {
        "channels": (0.25, prof.channel_spec({producer: 0.25})),
        "int8": ("int8", prof.make_spec("quantize", {"include": (layer,)})),
        "int4": ("int4", prof.int4_spec((layer,))),
    }
    for knob, (value, spec) in specs.items():
        first = time.perf_counter()
        variant, _ = builder.variant(spec)
        second = time.perf_counter()
        setting = builder.setting(value, variant)
        third = time.perf_counter()
        found[knob] = {
            "variant_s": second - first,
            "setting_s": third - second,
            "damage": setting.damage,
            "bytes": setting.bytes,
            "load": os.getloadavg()[0],
        }
    print(json.dumps(found))


def main() -> int:
    """Runs the trees in turns and prints a line per setting."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", choices=("bert", "digits"), default="bert")
    parser.add_argument("--tree", action="append", type=Path, required=True, help="an onnxshrink source tree")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "onnxshrink-bench" / "auto-settings")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        _child(args.model, args.work)
        return 0
    for repeat in range(args.repeats):
        for tree in args.tree:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree.resolve()), str(HERE)])}
            command = [sys.executable, __file__, "--child", "--model", args.model, "--tree", str(tree)]
            command += ["--work", str(args.work)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            found = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"[{repeat + 1}] {found['tree']}: setup {found['setup_s']:.1f} s", flush=True)
            for knob in ("channels", "int8", "int4"):
                row = found[knob]
                print(
                    f"    {knob}: variant {row['variant_s']:.1f} s + setting {row['setting_s']:.1f} s = "
                    f"{row['variant_s'] + row['setting_s']:.1f} s; damage {row['damage']:.3g}, bytes {row['bytes']}; "
                    f"load {row['load']:.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
