"""onnxruntime's int8 kernels for the ops ``quantize``'s ort-cpu placement decides on, against float.

Each op runs alone in onnxruntime (CPU, one thread, default optimizations) three ways: float on a
float input; on uint8 (a DQ -> op -> Q model that onnxruntime fuses into its integer kernel); and
the DequantizeLinear and QuantizeLinear that running it float between int8 neighbours costs,
timed alone. The int8 kernel pays when it is faster than float plus that DQ and Q. Rules 6b
(MaxPool), 7 (elementwise, GlobalAveragePool) and 7c (AveragePool) of docs/quantization.md rest
on this table; a second table runs a MaxPool between two int8 Convs, where onnxruntime's layout
pass runs it channels-last (NhwcMaxPool) when its DQ and Q share qparams, and float when they
differ (an AveragePool there runs int8 either way: onnxruntime fuses any DQ -> AveragePool -> Q).
Medians of interleaved rounds; the CPU's SIMD flags head the output, so that the same table taken
on an AVX2 and on a VNNI machine can be compared.
Run::

    python benchmarks/int8_kernels.py [--rounds 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np

OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Mul", "Concat", "Sigmoid", "LeakyRelu")
SHAPES = ((1, 200, 6, 24), (1, 64, 24, 96), (32, 64, 24, 96))
_POOL = {"kernel_shape": [2, 2], "strides": [2, 2]}


def _op_nodes(op: str, x: str, y: str) -> list[Any]:
    from onnx import helper

    if op in ("Add", "Mul", "Concat"):  # two activations (Concat along channels)
        return [helper.make_node(op, [x, x], [y], **({"axis": 1} if op == "Concat" else {}))]
    attributes = _POOL if op in ("MaxPool", "AveragePool") else {"alpha": 0.1} if op == "LeakyRelu" else {}
    return [helper.make_node(op, [x], [y], **attributes)]


def _model(nodes: list[Any], shape: tuple[int, ...], input_type: int, output_type: int) -> bytes:
    from onnx import helper, numpy_helper

    initializers = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0.07, np.float32), "s_out"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", input_type, list(shape))],
        [helper.make_tensor_value_info("y", output_type, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def variants(op: str, shape: tuple[int, ...]) -> dict[str, tuple[bytes, str]]:
    """Models (and their input kind) for: float op, int8 op, DQ alone, Q alone."""
    from onnx import TensorProto, helper

    out_scale = "s" if op == "MaxPool" else "s_out"  # a MaxPool keeps its input's qparams
    int8 = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
        *_op_nodes(op, "xf", "yf"),
        helper.make_node("QuantizeLinear", ["yf", out_scale, "z"], ["y"]),
    ]
    u8, f32 = TensorProto.UINT8, TensorProto.FLOAT
    return {
        "float": (_model(_op_nodes(op, "x", "y"), shape, f32, f32), "float"),
        "int8": (_model(int8, shape, u8, u8), "uint8"),
        "dq": (_model([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])], shape, u8, f32), "uint8"),
        "q": (_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], shape, f32, u8), "float"),
    }


def between_convs(shape: tuple[int, ...], int8_pool: bool) -> bytes:
    """QLinearConv -> MaxPool -> QLinearConv (1x1, as QDQ); the MaxPool int8 or float between its own DQ/Q."""
    from onnx import TensorProto, helper, numpy_helper

    channels = shape[1]
    rng = np.random.default_rng(0)
    nodes, initializers = [], []

    def qdq(value: str, name: str, scale: float) -> str:
        initializers.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                numpy_helper.from_array(np.array(128, np.uint8), f"{name}_z"),
            ]
        )
        nodes.append(helper.make_node("QuantizeLinear", [value, f"{name}_s", f"{name}_z"], [f"{name}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"]))
        return f"{name}_dq"

    def conv(value: str, name: str) -> str:
        weight = rng.integers(-60, 60, (channels, channels, 1, 1)).astype(np.int8)
        initializers.extend(
            [
                numpy_helper.from_array(weight, f"{name}_w"),
                numpy_helper.from_array(np.array(0.01, np.float32), f"{name}_ws"),
                numpy_helper.from_array(np.array(0, np.int8), f"{name}_wz"),
            ]
        )
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wf"]))
        nodes.append(helper.make_node("Conv", [value, f"{name}_wf"], [f"{name}_out"]))
        return f"{name}_out"

    value = conv(qdq("x", "in", 0.05), "c0")
    value = qdq(value, "a", 0.05)
    nodes.append(helper.make_node("MaxPool", [value], ["p"], **_POOL))
    # The same qparams after a MaxPool let onnxruntime drop the pair (int8); others make it keep them.
    value = qdq("p", "b", 0.05 if int8_pool else 0.0625)
    value = qdq(conv(value, "c1"), "out", 0.05)
    nodes.append(helper.make_node("Identity", [value], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _time(models: dict[str, tuple[bytes, str]], shape: tuple[int, ...], rounds: int) -> dict[str, float]:
    """Median µs per model over ``rounds`` interleaved rounds, one thread each."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    rng = np.random.default_rng(1)
    inputs = {
        "float": rng.standard_normal(shape).astype(np.float32),
        "uint8": rng.integers(0, 256, shape).astype(np.uint8),
    }
    sessions = {
        name: (ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]), inputs[kind])
        for name, (model, kind) in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session, x in sessions.values():
        for _ in range(5):
            session.run(None, {"x": x})
    for _ in range(rounds):
        for name, (session, x) in sessions.items():
            start = time.perf_counter()
            session.run(None, {"x": x})
            times[name].append(time.perf_counter() - start)
    return {name: 1e6 * float(np.median(values)) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Prints both tables (and writes the raw numbers with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds per shape (b32: a tenth)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = parser.parse_args(argv)
    harness.print_environment(["onnx", "onnxruntime", "numpy"])
    rows: list[dict[str, Any]] = []
    print("\n### int8 kernel against float with its DQ and Q (one thread, µs, medians)\n")
    print("| op | shape | float | DQ + Q | float + DQ + Q | int8 | int8 / (float + DQ + Q) |")
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        rounds = max(5, args.rounds // 10) if shape[0] > 1 else args.rounds
        for op in OPS:
            t = _time(variants(op, shape), shape, rounds)
            conversions = t["dq"] + t["q"]
            ratio = t["int8"] / (t["float"] + conversions)
            rows.append({"table": "alone", "op": op, "shape": list(shape), **t, "ratio": ratio})
            print(
                f"| {op} | {'x'.join(map(str, shape))} | {t['float']:.1f} | {conversions:.1f} | "
                f"{t['float'] + conversions:.1f} | {t['int8']:.1f} | {ratio:.2f} |"
            )
    print("\n### MaxPool between two int8 1x1 Convs: whole model, MaxPool float against int8 (µs)\n")
    print("| shape | MaxPool float | MaxPool int8 (channels-last) | int8 / float |")
    print("|---|---|---|---|")
    for shape in SHAPES[:2]:
        models = {
            "float": (between_convs(shape, int8_pool=False), "float"),
            "int8": (between_convs(shape, int8_pool=True), "float"),
        }
        t = _time(models, shape, args.rounds)
        rows.append({"table": "between convs", "op": "MaxPool", "shape": list(shape), **t})
        print(f"| {'x'.join(map(str, shape))} | {t['float']:.1f} | {t['int8']:.1f} | {t['int8'] / t['float']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"cpu": harness.cpu(), "rows": rows}, indent=1))
        print(f"raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
