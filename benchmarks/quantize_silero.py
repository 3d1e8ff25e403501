"""silero-vad: onnxshrink ``quantize`` against ``onnxruntime.quantization.quantize_static``.

silero-vad v6 (the ``silero-vad`` wheel, tests/helpers/real_models.py) holds every Conv inside
one If on the sample rate, so a quantizer that works on the main graph only quantizes nothing.

Data (the same for every quantizer): speech-like 16 kHz audio (``speech_like_audio``: a gliding
pitch with harmonics, syllable envelopes, pauses, noise), run through the float model in
512-sample calls with the state carried along (``silero_stream``); each call's feed
(``input`` [1, 512], ``state`` [2, 1, 128], scalar ``sr`` = 16000) is one calibration sample.
Calibration: ``--calib-seconds`` of audio (seed 0). Evaluation: ``--eval-clips`` other clips of
``--eval-seconds`` (seeds 100...), each model streaming with its own state as in use; errors are
the absolute differences of the speech probability per call, and agreement is the share of
calls where both models decide the same at the 0.5 threshold ("speech calls kept": the share of
the calls the float model hears as speech that the quantized model hears as speech too).

Quantizers (in this process, on the same feeds):

- ``onnxshrink-<calibrator>``: ``quantize:calibrate=<calibrator>`` (ort-cpu defaults: u8
  activations, s8 per-channel weights); ``-no-stft`` adds ``exclude=*stft*`` (the STFT Conv,
  which reads the raw waveform, stays float);
- ``ort-default``: ``quantize_static`` defaults (QDQ, s8 activations, s8 per-tensor weights,
  MinMax); ``ort-best``: u8 activations, s8 per-channel weights (MinMax); ``ort-entropy``:
  ``ort-best`` with its entropy calibrator.

Layers quantized: Conv/MatMul/Gemm nodes (bodies included) that onnxruntime's optimized model
(extended level) runs as integer kernels. Latency: ORT CPU, 1 thread and default threads, one
call (batch 1), every model timed interleaved, median of rounds.

Run: ``python benchmarks/quantize_silero.py [--calib-seconds 8] [--eval-clips 4] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
import onnx

TOOLS = (
    "onnxshrink-minmax", "onnxshrink-percentile", "onnxshrink-entropy", "onnxshrink-minmax-no-stft",
    "onnxshrink-percentile-no-stft", "onnxshrink-entropy-no-stft", "ort-default", "ort-best", "ort-entropy",
)  # fmt: skip
INT_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "ConvInteger", "MatMulInteger")


def _all_ops(graph: onnx.GraphProto) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for node in graph.node:
        counts[node.op_type] += 1
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                counts += _all_ops(attribute.g)
    return counts


def _int_layers(path: Path, workdir: Path) -> int:
    """Integer Conv/MatMul/Gemm kernels in onnxruntime's optimized model, bodies included."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(workdir / f"{path.stem}.optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = _all_ops(onnx.load(options.optimized_model_filepath).graph)
    return sum(ops[op] for op in INT_KERNELS)


class _Reader:
    """An onnxruntime ``CalibrationDataReader`` over a list of feeds (one call each)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.all = feeds
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)

    def rewind(self) -> None:
        self.feeds = iter(self.all)


def _onnxshrink(source: Path, out: Path, feeds: list[dict[str, np.ndarray]], setting: str) -> dict[str, Any]:
    import onnxshrink

    calibrator, _, variant = setting.partition("-")
    spec = f"quantize:calibrate={calibrator},samples={len(feeds)}" + (",exclude=*stft*" if variant == "no-stft" else "")
    started = time.perf_counter()
    result = onnxshrink.shrink(str(source), [spec], calibration=_Reader(feeds))
    seconds = time.perf_counter() - started
    result.save(out)
    stats = harness.pass_record(result.report, "quantize")["stats"]
    return {"seconds": seconds, "reported_layers": stats.get("quantized_nodes", 0)}


def _ort(source: Path, out: Path, feeds: list[dict[str, np.ndarray]], tool: str) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kwargs: dict[str, Any] = {"quant_format": QuantFormat.QDQ}
    if tool in ("ort-best", "ort-entropy"):
        kwargs.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    if tool == "ort-entropy":
        kwargs["calibrate_method"] = CalibrationMethod.Entropy
    started = time.perf_counter()
    quantize_static(str(source), str(out), _Reader(feeds), **kwargs)  # type: ignore[arg-type]
    return {"seconds": time.perf_counter() - started}


def main() -> int:
    """Prints the table (and writes the JSON) for the quantizers asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-seconds", type=float, default=8.0)
    parser.add_argument("--eval-clips", type=int, default=4)
    parser.add_argument("--eval-seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--json")
    args = parser.parse_args()
    helpers = harness.real_models()
    environment = harness.print_environment(["onnxruntime", "onnx-ir"], settings=str(vars(args)))
    source = Path(helpers.fetch(helpers.get_real_model("silero-vad")))
    feeds, _ = helpers.silero_stream(source, helpers.speech_like_audio(args.calib_seconds, seed=0))
    clips = [helpers.speech_like_audio(args.eval_seconds, seed=100 + i) for i in range(args.eval_clips)]
    reference = np.concatenate([helpers.silero_stream(source, clip)[1] for clip in clips])
    speech = float(np.mean(reference > 0.5))
    print(f"calibration: {len(feeds)} calls; evaluation: {reference.size} calls, speech share {speech:.2f}")
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        paths = {"fp32": source}
        for tool in args.tools.split(","):
            out = workdir / f"{tool}.onnx"
            if tool.startswith("onnxshrink-"):
                info = _onnxshrink(source, out, feeds, tool.removeprefix("onnxshrink-"))
            else:
                try:
                    info = _ort(source, out, feeds, tool)
                except Exception as error:  # a quantizer that fails is a result of the table
                    print(f"{tool}: failed: {type(error).__name__}: {error}")
                    results[tool] = {"failed": f"{type(error).__name__}: {error}"}
                    continue
            probabilities = np.concatenate([helpers.silero_stream(out, clip)[1] for clip in clips])
            errors = np.abs(probabilities - reference)
            info.update(
                bytes=out.stat().st_size,
                int_layers=_int_layers(out, workdir),
                max_abs=float(errors.max()),
                mean_abs=float(errors.mean()),
                agreement=float(np.mean((probabilities > 0.5) == (reference > 0.5))),
                speech_kept=float(np.mean(probabilities[reference > 0.5] > 0.5)),
            )
            results[tool] = info
            paths[tool] = out
        feed = feeds[len(feeds) // 2]
        latency = {
            threads: harness.session_latency(paths, feed, rounds=args.rounds, threads=threads) for threads in (1, None)
        }
    for label in paths:
        info = results.get(label, {"bytes": source.stat().st_size, "int_layers": 0})
        if "failed" in info:
            continue
        rows.append(
            [
                label,
                f"{info['bytes']:,}",
                info["int_layers"],
                harness.fmt(info.get("max_abs")),
                harness.fmt(info.get("mean_abs")),
                harness.fmt(info.get("agreement") and 100 * info["agreement"], ".1f"),
                harness.fmt(info.get("speech_kept") and 100 * info["speech_kept"], ".1f"),
                harness.fmt(harness.median_ms(latency[1], label), ".3f"),
                harness.fmt(harness.median_ms(latency[None], label), ".3f"),
                harness.fmt_ratio(harness.speedup(latency[1], "fp32", label)),
                harness.fmt_seconds(info.get("seconds")),
            ]
        )
    headers = [
        "model",
        "bytes",
        "int8 layers",
        "max abs err",
        "mean abs err",
        "decisions agree %",
        "speech calls kept %",
        "ms 1 thread",
        "ms default threads",
        "speed vs fp32 (1 thread)",
        "quantize time",
    ]
    print(harness.markdown_table(headers, rows, title="silero-vad 16 kHz, one 512-sample call"))
    if args.json:
        harness.write_json(args.json, {"environment": environment, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
