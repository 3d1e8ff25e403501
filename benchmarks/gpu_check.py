"""The GPU check: onnxshrink's models on onnxruntime's CUDA provider and as TensorRT engines.

One prepared script for a machine with an NVIDIA GPU. Per model:

1. ``simplify`` gives the fp32 model; onnxruntime CPU runs it on the evaluation batch: the reference.
2. ``quantize:target=ort-cuda`` (static QDQ, calibration data) and ``quantize:target=tensorrt``
   (symmetric QDQ by TensorRT's rules) give the int8 models; ``inspect --lint tensorrt``'s checks
   run on the TensorRT one.
3. onnxruntime with ``CUDAExecutionProvider`` runs the fp32 and the ort-cuda int8 model: the
   provider that ran (a session that fell back to CPU is a failure), the output error against the
   CPU reference, and the latency at batch 1 and at the evaluation batch.
4. The ``tensorrt`` package builds an engine from the fp32 model (FP16 enabled where the builder
   still has ``BuilderFlag.FP16``, TensorRT 10 and older; TensorRT 11 builds strongly typed
   networks, so the baseline there is the fp32 engine) and one from the TensorRT int8 QDQ model
   (explicit quantization); it prints whether each built, the build time, the engine size, the
   output error and the latency against the baseline engine. Device memory comes from PyTorch.

Every missing part (no CUDA provider, no ``tensorrt``, no GPU, no PyTorch) is a row that says
what is missing; the CPU steps still run. ``--require-gpu`` turns a missing part into exit 1.

Models: ``digits`` (the bundled CNN and its calibration digits) and ``resnet18`` (torchvision,
random weights, BatchNorm re-drawn: ``export.py``), or any ``--onnx MODEL.onnx:CALIB.npz``
(evaluated on the calibration file's first samples).

Usage (on the GPU machine, with onnxruntime-gpu and tensorrt installed)::

    python benchmarks/gpu_check.py --models digits,resnet18 --json gpu.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import export
import harness
import numpy as np
import samples

CUDA = "CUDAExecutionProvider"
ROUNDS = 50  # timed runs per model and batch, after 5 warm-up runs


def _prepare(name: str, args: argparse.Namespace, work: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """(source model, calibration npz, evaluation feed) of a named model or an ``--onnx`` pair."""
    if name == "digits":
        source, _, test = samples.digits()
        return source, harness.ROOT / "models" / "digits_calib.npz", {"input": test["input"][: args.batch]}
    if name == "resnet18":
        source = export.exported(name, args)
        calib = work / "resnet18_calib.npz"
        rng = np.random.default_rng(0)
        np.savez(calib, input=rng.standard_normal((32, 3, 224, 224)).astype(np.float32))
        return source, calib, {"input": rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)}
    model, _, calib = name.partition(":")
    arrays = dict(np.load(calib))
    return Path(model), Path(calib), {key: value[: args.batch] for key, value in arrays.items()}


def _shrink(source: Path, specs: list[str], calib: Path | None, out: Path) -> Path:
    import onnxshrink

    onnxshrink.shrink(str(source), specs, calibration=str(calib) if calib else None, verify=False).save(str(out))
    return out


def _error(reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
    """Max absolute difference and cosine of the first output, and top-1 agreement where it is 2-D."""
    ref, out = reference[0].astype(np.float64).ravel(), np.asarray(outputs[0], np.float64).ravel()
    cosine = float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out) + 1e-30))
    found = {"max_abs": float(np.max(np.abs(ref - out))), "cosine": cosine}
    if reference[0].ndim == 2:
        found["agreement"] = float(np.mean(reference[0].argmax(1) == np.asarray(outputs[0]).argmax(1)))
    return found


def _timed(call: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> float:
    """Median milliseconds of ``call`` over :data:`ROUNDS` runs."""
    for _ in range(5):
        call()
    sync()
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def _batches(feed: Mapping[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    full = len(next(iter(feed.values())))
    return {size: {k: v[:size] for k, v in feed.items()} for size in sorted({1, full})}


def check_cuda(paths: Mapping[str, Path], feed: dict[str, np.ndarray], reference: list[np.ndarray]) -> dict[str, Any]:
    """The CUDA onnxruntime sessions of each model: provider, error against ``reference``, latency."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no {CUDA} (install onnxruntime-gpu)"}
    rows: dict[str, Any] = {}
    for label, path in paths.items():
        try:
            session = ort.InferenceSession(str(path), providers=[CUDA, "CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            rows[label] = {"error": f"session: {error}".splitlines()[0]}
            continue
        row: dict[str, Any] = {"providers": session.get_providers()}
        if session.get_providers()[0] != CUDA:
            row["error"] = "the session fell back to CPU"
        row.update(_error(reference, session.run(None, feed)))
        for size, part in _batches(feed).items():
            row[f"b{size}_ms"] = _timed(lambda s=session, p=part: s.run(None, p))
        rows[label] = row
    return rows


def _engine(
    trt: Any, path: Path, feed: Mapping[str, np.ndarray], wanted: tuple[str, ...]
) -> tuple[Any, dict[str, Any]]:
    """Builds an engine from ``path`` with the ``wanted`` builder flags this TensorRT still has.

    An optimization profile spans batch 1 to the feed's batch.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        return None, {"built": False, "error": "parser: " + "; ".join(errors)[:300]}
    config = builder.create_builder_config()
    flags = [name for name in wanted if hasattr(trt.BuilderFlag, name)]
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        full = feed[tensor.name].shape
        low = (1, *full[1:]) if tensor.shape[0] == -1 else full
        profile.set_shape(tensor.name, low, full, full)
    config.add_optimization_profile(profile)
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if plan is None:
        return None, {"built": False, "error": "build_serialized_network returned None", "build_s": seconds}
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    return engine, {"built": True, "build_s": seconds, "engine_bytes": plan.nbytes, "flags": flags}


def _engine_runner(
    trt: Any, torch: Any, engine: Any, feed: Mapping[str, np.ndarray]
) -> tuple[Callable[[], None], list[Any]]:
    """A call that runs ``engine`` once on ``feed`` (device tensors from PyTorch), and its output tensors."""
    context = engine.create_execution_context()
    held, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            tensor = torch.from_numpy(np.ascontiguousarray(feed[name])).cuda()
            context.set_input_shape(name, tuple(tensor.shape))
            held.append(tensor)
            context.set_tensor_address(name, tensor.data_ptr())
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            outputs.append(tensor)
            context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()

    def call() -> None:
        context.execute_async_v3(stream.cuda_stream)

    call.held = held  # type: ignore[attr-defined]  # keeps the inputs alive as long as the call
    return call, outputs


def check_tensorrt(
    paths: Mapping[str, Path], feed: dict[str, np.ndarray], reference: list[np.ndarray]
) -> dict[str, Any]:
    """TensorRT engines of the fp32 (FP16 allowed) and the QDQ model: built?, error, latency."""
    try:
        import tensorrt as trt
        import torch
    except ImportError as error:
        return {"skipped": f"{error.name} is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "PyTorch sees no CUDA device"}
    rows: dict[str, Any] = {"tensorrt": trt.__version__}
    for label, path in paths.items():
        engine, row = _engine(trt, path, feed, ("FP16", "INT8") if "QDQ" in label else ("FP16",))
        rows[label] = row
        if engine is None:
            continue
        for size, part in _batches(feed).items():
            call, outputs = _engine_runner(trt, torch, engine, part)
            row[f"b{size}_ms"] = _timed(call, torch.cuda.synchronize)
            if size == len(next(iter(feed.values()))):
                row.update(_error(reference, [outputs[0].float().cpu().numpy()]))
    return rows


def check_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every step of the module docstring for one model."""
    import onnx_ir as ir
    import onnxruntime as ort

    from onnxshrink.inspect.summary import value_shapes
    from onnxshrink.inspect.tensorrt_lint import lint_tensorrt

    source, calib, feed = _prepare(name, args, work)
    stem = Path(name.partition(":")[0]).stem
    fp32 = _shrink(source, ["simplify"], None, work / f"{stem}_fp32.onnx")
    cuda_int8 = _shrink(fp32, ["quantize:target=ort-cuda"], calib, work / f"{stem}_int8_ort_cuda.onnx")
    trt_int8 = _shrink(fp32, ["quantize:target=tensorrt"], calib, work / f"{stem}_int8_tensorrt.onnx")
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feed)
    loaded = ir.load(trt_int8)
    findings = lint_tensorrt(loaded, value_shapes(loaded, {}))
    return {
        "tensorrt_lint": [str(f) for f in findings],
        "cuda": check_cuda({"fp32": fp32, "int8 (ort-cuda)": cuda_int8}, feed, reference),
        "engines": check_tensorrt({"fp32 (fp16 allowed)": fp32, "int8 QDQ (tensorrt)": trt_int8}, feed, reference),
    }


def _built(row: Mapping[str, Any]) -> str:
    """``yes (FP16, INT8)``: built, with the builder flags set; ``no``."""
    return f"yes ({', '.join(row['flags']) or 'strongly typed'})" if row.get("built") else "no"


def _print(name: str, found: Mapping[str, Any]) -> list[str]:
    """Prints one model's rows; returns the parts that were skipped or failed."""
    missing = []
    lint = found["tensorrt_lint"]
    print(
        f"\n## {name}\nTensorRT lint of the tensorrt QDQ model: {len(lint)} findings"
        + (f" ({lint[0]})" if lint else "")
    )
    missing += [f"{name}: TensorRT lint: {lint[0]}"] if lint else []
    for part in ("cuda", "engines"):
        rows = found[part]
        if "skipped" in rows:
            print(f"{part}: skipped: {rows['skipped']}")
            missing.append(f"{name}: {part}: {rows['skipped']}")
            continue
        base = next(v for k, v in rows.items() if k.startswith("fp32"))
        table = []
        for label, row in rows.items():
            if not isinstance(row, dict):
                continue
            if "error" in row or row.get("built") is False:
                missing.append(f"{name}: {part} {label}: {row.get('error')}")
            speed = {
                key: (base[key] / row[key]) if key in row and key in base else None
                for key in row
                if key.endswith("_ms")
            }
            table.append(
                [
                    label,
                    row.get("providers", ["-"])[0] if part == "cuda" else _built(row),
                    harness.fmt(row.get("build_s"), ".1f"),
                    harness.fmt(row.get("engine_bytes"), ",d"),
                    harness.fmt(row.get("cosine"), ".5f"),
                    harness.fmt(row.get("max_abs"), ".2e"),
                    harness.fmt(row.get("agreement"), ".3f"),
                    " / ".join(f"{row[k]:.3f} ms ({harness.fmt_ratio(speed[k])})" for k in speed),
                    row.get("error", ""),
                ]
            )
        headers = ["model", "provider" if part == "cuda" else "built", "build s", "engine bytes", "cosine vs CPU fp32"]
        headers += ["max |diff|", "top-1 agreement", "latency b1 / bN (x fp32)", "error"]
        print(
            harness.markdown_table(
                headers,
                table,
                title=f"TensorRT {rows['tensorrt']} engines" if part == "engines" else "onnxruntime CUDA",
            )
        )
    return missing


def main(argv: list[str] | None = None) -> int:
    """Checks each model; 1 with ``--require-gpu`` when a GPU part is missing or failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    export.add_arguments(parser)
    parser.add_argument("--models", default="digits", help="digits, resnet18 (comma-separated)")
    parser.add_argument("--onnx", action="append", default=[], metavar="MODEL.onnx:CALIB.npz")
    parser.add_argument("--batch", type=int, default=32, help="evaluation batch (latency at 1 and this)")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 when a GPU part is missing or fails")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    environment = harness.print_environment(("onnxruntime-gpu", "tensorrt", "torch"), f"batch {args.batch}")
    names = [m for m in args.models.split(",") if m] + args.onnx
    results, missing = {}, []
    with tempfile.TemporaryDirectory(prefix="onnxshrink-gpu-check-") as folder:
        for name in names:
            results[name] = check_model(name, args, Path(folder))
            missing += _print(name, results[name])
    if args.json:
        harness.write_json(args.json, {"environment": environment, "models": results, "missing": missing})
    if missing:
        print("\nmissing or failed:\n" + "\n".join(f"- {line}" for line in missing))
    return 1 if missing and args.require_gpu else 0


if __name__ == "__main__":
    sys.exit(main())
