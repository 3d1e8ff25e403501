"""Issue 6's benchmark: onnxshrink ``quantize`` against ``onnxruntime.quantization.quantize_static``.

Models:

- ``digits``: the bundled CNN (models/), calibration ``models/digits_calib.npz`` (128 samples),
  accuracy on ``models/digits_test.npz`` (540 labelled samples);
- ``resnet18``, ``resnet50``: torchvision with random weights and BatchNorm statistics re-drawn, exported by
  ``benchmarks/simplify.py``'s exporter in the torch environment (``--torch-python``, default
  ``/tmp/benchvenv/bin/python``) and cached in ``~/.cache/onnxshrink-bench/quantize/``;
  calibration: 100 seeded N(0, 1) images; evaluation: 64 other seeded images (top-1 agreement
  and cosine against fp32);
- ``bert-base``: transformers ``BertModel(BertConfig())``, random weights, dynamic batch and
  sequence; calibration and evaluation 32 sequences each of 128 tokens (ids in [0, 1000), full
  mask); cosine of both outputs; calibrators minmax and percentile, ORT best-rr (its default
  gives cosine 0.738, issue 6).
  Also dynamic (onnxshrink ``mode=dynamic``, ORT ``quantize_dynamic``), onnxshrink 4-bit
  weight-only (``weights=s4``, embedding tables included) and static with the attention
  MatMuls quantized too (``activation-matmuls=true``).
- ``ocr-cls`` (rapidocr's PP-OCR text-direction classifier) and ``magika`` (Google's file-type
  model), from tests/helpers/real_models.py (``$ONNXSHRINK_TEST_CACHE``) with the inputs of
  ``benchmarks/prune.py``: 64 calibration samples; evaluation on 400 rendered text lines
  (accuracy on the rotation label) and 384 real files (top-1 agreement with fp32).

Every model is first run through ``simplify`` (BatchNorm folded); that fp32 model is the
reference and the input of every quantizer. Quantizers, each in a fresh process (wall time, and
peak RSS from the child's own VmHWM):

- ``onnxshrink``: ``quantize`` with its defaults (ort-cpu, u8 activations, s8 per-channel
  weights, reduce-range auto) and each calibrator;
- ``ort-default``: ``quantize_static`` defaults (QDQ, s8 activations, s8 per-tensor weights, MinMax);
- ``ort-best``: u8 activations / s8 per-channel weights; ``ort-best-rr``: the same plus
  ``reduce_range=True`` (its advice for x86 without VNNI);
- ``ort-dynamic`` (bert-base): ``quantize_dynamic`` defaults.

ORT's calibrators read the same samples through a ``CalibrationDataReader`` in batches of 10.
Latency: ORT CPU, default threads, batch 1 and 32, the fp32 model and every quantized model run
interleaved (round-robin), median. Kernels: ORT's optimized model (extended level), op counts.

Run: ``.venv/bin/python benchmarks/quantize.py [--models digits,resnet18,resnet50,bert-base,ocr-cls,magika]
[--json OUT]``. resnet50 and the real models run a subset of the quantizers (``TOOLS``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ONNXSHRINK_BENCH_CACHE", Path.home() / ".cache" / "onnxshrink-bench")) / "quantize"
CALIBRATORS = ("minmax", "percentile", "entropy", "mse")
ORT_CONFIGS = ("ort-default", "ort-best", "ort-best-rr")
BERT_SEQ, BERT_CALIB = 128, 32  # 2-core machine: ~1 s per fp32 sequence
# Third-party models (tests/helpers/real_models.py) with the inputs of benchmarks/prune.py.
REAL_MODELS = {"ocr-cls": "_ocr_cls", "magika": "_magika"}
REAL_CALIB = 64
# Quantizers per model where running all of them costs too much on 2 cores (default: all).
TOOLS = {
    "resnet50": ("onnxshrink-minmax", "onnxshrink-percentile", "ort-best", "ort-best-rr"),
    "ocr-cls": ("onnxshrink-minmax", "onnxshrink-percentile", "ort-default", "ort-best", "ort-best-rr"),
    "magika": ("onnxshrink-minmax", "onnxshrink-percentile", "ort-default", "ort-best", "ort-best-rr"),
}
# Latency rounds relative to --rounds-b1/--rounds-b32, for a stable median in bounded time.
ROUNDS = {"digits": 10.0, "ocr-cls": 5.0, "magika": 2.0, "resnet50": 0.5, "bert-base": 0.5}
INT_KERNELS = (
    "QLinearConv", "QLinearAdd", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearConcat",
    "DynamicQuantizeMatMul", "MatMulNBits", "QLinearGlobalAveragePool", "GatherBlockQuantized",
)  # fmt: skip
FLOAT_KERNELS = ("Conv", "FusedConv", "Add", "MatMul", "Gemm", "FusedGemm", "Concat")


# ------------------------------------------------------------------------------------------------
# children


def _child_quantize(tool: str, fp32: str, out: str, calib: str, option: str) -> None:
    started = time.perf_counter()
    if tool == "onnxshrink":
        import onnxshrink

        result = onnxshrink.shrink(fp32, [f"quantize:{option}"], calibration=calib, verify=False)
        result.save(out)
        stats = result.report["passes"][0]["stats"]
        keys = ("calibration_seconds", "quantized_nodes", "left_float", "nonfinite", "samples")
        info = {k: stats[k] for k in keys if k in stats}
    elif tool == "ort-dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(fp32, out)
        info = {}
    else:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        data = np.load(calib)
        arrays = {key: data[key] for key in data.files}
        count = len(next(iter(arrays.values())))

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.start = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.start >= count:
                    return None
                batch = {key: value[self.start : self.start + 10] for key, value in arrays.items()}
                self.start += 10
                return batch

        kwargs: dict[str, Any] = {"quant_format": QuantFormat.QDQ}
        if tool in ("ort-best", "ort-best-rr"):
            kwargs.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        if tool == "ort-best-rr":
            kwargs["reduce_range"] = True
        quantize_static(fp32, out, Reader(), **kwargs)
        info = {}
    info["in_process_s"] = time.perf_counter() - started
    info["rss_mb"] = _peak_rss_mb()
    print("@@RESULT " + json.dumps(info))


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM): ``wait4``'s ru_maxrss also counts the parent's RSS at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(args: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, status, _usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if status != 0:
        return {"ok": False, "error": stderr.strip().splitlines()[-1] if stderr.strip() else f"status {status}"}
    line = next(line for line in stdout.splitlines() if line.startswith("@@RESULT "))
    return {"ok": True, "wall_s": wall, **json.loads(line[len("@@RESULT ") :])}


# ------------------------------------------------------------------------------------------------
# models and data


def _prepare(model: str, torch_python: str, work: Path) -> tuple[Path, Path, dict[str, np.ndarray], Any]:
    """(fp32 simplified model, calibration npz, evaluation feed, labels or None)."""
    if model == "digits":
        source = ROOT / "models" / "digits_cnn.onnx"
        calib = ROOT / "models" / "digits_calib.npz"
        test = np.load(ROOT / "models" / "digits_test.npz")
        feed, labels = {"input": test["input"]}, test["labels"]
        return _simplified(source, model, work), calib, feed, labels
    if model in REAL_MODELS:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import prune as prune_benchmark  # the same inputs as the pruning benchmark

        source, calib_feed, test, _ = getattr(prune_benchmark, REAL_MODELS[model])(REAL_CALIB)
        calib = work / f"{model}_calib.npz"
        np.savez(calib, **calib_feed)
        labels = test.pop("labels", None)
        return _simplified(source, model, work), calib, test, labels
    CACHE.mkdir(parents=True, exist_ok=True)
    source = CACHE / f"{model}.onnx"
    if not source.exists():
        subprocess.run(
            [torch_python, str(ROOT / "benchmarks" / "simplify.py"), "--child", "export", model, str(source)],
            check=True,
        )
    calib = CACHE / f"{model}_calib.npz"
    if model == "bert-base":
        if not calib.exists():
            np.savez(calib, **_bert_feed(np.random.default_rng(0), BERT_CALIB))  # type: ignore[arg-type]
        feed = _bert_feed(np.random.default_rng(1), 32)
    else:
        if not calib.exists():
            np.savez(calib, input=np.random.default_rng(0).standard_normal((100, 3, 224, 224)).astype(np.float32))
        feed = {"input": np.random.default_rng(1).standard_normal((64, 3, 224, 224)).astype(np.float32)}
    return _simplified(source, model, work), calib, feed, None


def _bert_feed(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Token ids in [0, 1000), full attention mask, token types 0, sequence length ``BERT_SEQ``."""
    return {
        "input_ids": rng.integers(0, 1000, (count, BERT_SEQ)).astype(np.int64),
        "attention_mask": np.ones((count, BERT_SEQ), np.int64),
        "token_type_ids": np.zeros((count, BERT_SEQ), np.int64),
    }


def _simplified(source: Path, model: str, work: Path) -> Path:
    import onnxshrink

    fp32 = work / f"{model}_fp32.onnx"
    onnxshrink.shrink(str(source), ["simplify"], verify=False).save(str(fp32))
    return fp32


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _kernels(path: Path, work: Path) -> dict[str, int]:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(work / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = collections.Counter(n.op_type for n in onnx.load(str(work / "optimized.onnx")).graph.node)
    return {op: counts[op] for op in (*INT_KERNELS, *FLOAT_KERNELS) if counts[op]}


def _quality(reference: list[np.ndarray], candidate: list[np.ndarray], labels: Any) -> dict[str, float]:
    """Cosine (worst output, each flattened), and top-1 agreement / accuracy on a classifier output."""
    cosines = []
    for ref, cand in zip(reference, candidate, strict=True):
        r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
        cosines.append(float(r @ c / (np.linalg.norm(r) * np.linalg.norm(c))))
    out: dict[str, float] = {"cosine": min(cosines)}
    first, cand = reference[0], candidate[0]
    if first.ndim == 2:
        out["top1_agreement"] = float(np.mean(first.argmax(-1) == cand.argmax(-1)))
    if labels is not None:
        out["accuracy"] = float(np.mean(cand.argmax(-1) == labels))
    return out


def _latency(paths: dict[str, Path], feed: dict[str, np.ndarray], batch: int, rounds: int) -> dict[str, float]:
    """Median ms per run, models interleaved round-robin so machine noise hits all alike."""
    sessions = {name: _session(path) for name, path in paths.items()}
    sample = {
        k: v[:batch] if len(v) >= batch else np.concatenate([v] * (batch // len(v) + 1))[:batch]
        for k, v in feed.items()
    }
    for session in sessions.values():
        session.run(None, sample)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, sample)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_model(model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    fp32, calib, feed, labels = _prepare(model, args.torch_python, work)
    reference = _session(fp32).run(None, feed)
    rows: dict[str, dict[str, Any]] = {"fp32": {"size_mb": fp32.stat().st_size / 1e6, "kernels": _kernels(fp32, work)}}
    rows["fp32"].update(_quality(reference, reference, labels))
    tools = [(f"onnxshrink-{c}", "onnxshrink", f"calibrate={c}") for c in args.calibrators]
    tools += [(name, name, "") for name in ORT_CONFIGS]
    if model in TOOLS:
        tools = [t for t in tools if t[0] in TOOLS[model]]
    if model == "bert-base":
        tools = [t for t in tools if t[0] in ("onnxshrink-minmax", "onnxshrink-percentile", "ort-best-rr")]
        tools += [
            ("onnxshrink-dynamic", "onnxshrink", "mode=dynamic"),
            ("onnxshrink-s4", "onnxshrink", "mode=weight-only,weights=s4"),
            ("onnxshrink-minmax-attention", "onnxshrink", "calibrate=minmax,activation-matmuls=true"),
            ("ort-dynamic", "ort-dynamic", ""),
        ]
    if args.tools:
        tools = [t for t in tools if t[0] in args.tools.split(",")]
    paths = {"fp32": fp32}
    for label, tool, option in tools:
        out = work / f"{model}_{label}.onnx"
        run = _run_child(["quantize", tool, str(fp32), str(out), str(calib), option])
        rows[label] = run
        if not run["ok"]:
            print(f"  {label}: FAILED {run['error']}", flush=True)
            continue
        try:
            run["kernels"] = _kernels(out, work)
        except Exception as error:  # onnxruntime's quantizer can write a model ORT refuses
            rows[label] = {"ok": False, "error": "ORT refuses the output: " + str(error).splitlines()[0][-160:]}
            print(f"  {label}: FAILED {rows[label]['error']}", flush=True)
            continue
        paths[label] = out
        run["size_mb"] = out.stat().st_size / 1e6
        run.update(_quality(reference, _session(out).run(None, feed), labels))
        print(f"  {label}: {json.dumps({k: v for k, v in run.items() if k != 'left_float'})}", flush=True)
    scale = ROUNDS.get(model, 1.0)
    for batch, rounds in ((1, int(args.rounds_b1 * scale)), (32, max(3, int(args.rounds_b32 * scale)))):
        for label, ms in _latency(paths, feed, batch, rounds).items():
            rows[label][f"ms_b{batch}"] = ms
    for label in paths:
        for batch in (1, 32):
            rows[label][f"speedup_b{batch}"] = rows["fp32"][f"ms_b{batch}"] / rows[label][f"ms_b{batch}"]
    return rows


def _table(model: str, rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| quantizer | cosine | top-1 agr. | accuracy | ms b1 (x fp32) | ms b32 (x fp32) | quant s "
        "| peak RSS MB | MB | int kernels / float |"
    )
    lines = [f"### {model}", "", head, "|" + "---|" * 10]
    for label, row in rows.items():
        if not row.get("ok", True):
            lines.append(f"| {label} | failed: {row['error']} |")
            continue
        ints = sum(v for k, v in row["kernels"].items() if k in INT_KERNELS)
        floats = sum(v for k, v in row["kernels"].items() if k in FLOAT_KERNELS)
        accuracy = f"{row['accuracy']:.4f}" if "accuracy" in row else "-"
        agreement = f"{row['top1_agreement']:.3f}" if "top1_agreement" in row else "-"
        lines.append(
            f"| {label} | {row['cosine']:.5f} | {agreement} | {accuracy} "
            f"| {row['ms_b1']:.1f} ({row['speedup_b1']:.2f}x) | {row['ms_b32']:.0f} ({row['speedup_b32']:.2f}x) "
            f"| {row.get('wall_s', 0):.1f} | {row.get('rss_mb', 0):.0f} | {row['size_mb']:.2f} | {ints} / {floats} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child_quantize(*argv[2:7]) if argv[1] == "quantize" else None
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,resnet18")
    parser.add_argument("--calibrators", default=",".join(CALIBRATORS))
    parser.add_argument(
        "--torch-python", default=os.environ.get("ONNXSHRINK_BENCH_TORCH_PYTHON", "/tmp/benchvenv/bin/python")
    )
    parser.add_argument("--rounds-b1", type=int, default=20)
    parser.add_argument("--rounds-b32", type=int, default=5)
    parser.add_argument("--tools", help="comma-separated quantizer labels to run (default: all for the model)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    args.calibrators = [c for c in args.calibrators.split(",") if c]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxshrink-bench-quantize-") as tmp:
        for model in args.models.split(","):
            print(f"{model}:", flush=True)
            results[model] = bench_model(model, args, Path(tmp))
            print(_table(model, results[model]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
