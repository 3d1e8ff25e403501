"""``inspect --kernels``: each ORT-CPU row of docs/quantization.md as a tiny hand-written QDQ graph.

Every case is built in ONNX text (opset 21), optimized by a real onnxruntime CPU session, and the
test asserts which kernel the node named ``target`` became and whether it runs on integers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, ModelFile, parse_ir_model

from onnxshrink.cli import main
from onnxshrink.inspect.int_kernels import KernelReport, NodeKernel, _totals, format_kernels, kernel_report
from onnxshrink.inspect.kernel_match import OptimizedGraph
from onnxshrink.inspect.tensorrt_lint import lint_tensorrt

RNG = np.random.default_rng(0)

# Shared quantization parameters: u8 activations at zp 128 (asymmetric), s8 weights at zp 0.
ACT = {"xs": np.float32(0.05), "xz": np.uint8(128), "ys": np.float32(0.1), "yz": np.uint8(128)}
W_CONV = {
    "w": RNG.integers(-127, 128, (8, 4, 3, 3), dtype=np.int8),
    "ws": np.full(8, 0.01, np.float32),
    "wz": np.zeros(8, np.int8),
}
W_MATMUL = {
    "w": RNG.integers(-127, 128, (16, 8), dtype=np.int8),
    "ws": np.float32(0.01),
    "wz": np.int8(0),
}
X_Q = "xq = QuantizeLinear(x, xs, xz)\n xd = DequantizeLinear(xq, xs, xz)\n"
CONV_IO = "(float[1,4,8,8] x) => (float[1,8,8,8] y)"
MATMUL_IO = "(float[2,16] x) => (float[2,8] y)"


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table: graph, weights, and the kernel the ``target`` node must become."""

    io: str
    body: str
    weights: dict[str, np.ndarray | np.generic]
    kernel: str
    integer: bool


def _model(case: Case) -> ir.Model:
    text = f'<ir_version: 10, opset_import: ["" : 21]> g {case.io} {{ {case.body} }}'
    return parse_ir_model(text, initializers=case.weights)


CASES = {
    "conv u8 act, s8 per-channel weight, int32 bias": Case(
        CONV_IO,
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n bd = DequantizeLinear <axis = 0> (b, bs)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd, bd)\n cq = QuantizeLinear(c, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)",
        {**ACT, **W_CONV, "b": np.arange(8, dtype=np.int32), "bs": np.full(8, 0.0005, np.float32)},
        "QLinearConv",
        True,
    ),
    "conv s8 symmetric activations": Case(
        CONV_IO,
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd)\n cq = QuantizeLinear(c, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)",
        {**ACT, **W_CONV, "xz": np.int8(0), "yz": np.int8(0)},
        "QLinearConv",
        True,
    ),
    "conv per-tensor weight, float bias": Case(
        CONV_IO,
        X_Q + "wd = DequantizeLinear(w, ws, wz)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd, b)\n cq = QuantizeLinear(c, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)",
        {**ACT, **W_CONV, "ws": np.float32(0.01), "wz": np.int8(0), "b": np.ones(8, np.float32)},
        "QLinearConv",
        True,
    ),
    "conv without output Q (TensorRT style)": Case(
        CONV_IO,
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n[target] y = Conv <pads = [1, 1, 1, 1]> (xd, wd)",
        {**ACT, **W_CONV},
        "Conv",
        False,
    ),
    "conv relu q with u8 zp 0": Case(
        CONV_IO,
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd)\n r = Relu(c)\n cq = QuantizeLinear(r, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)",
        {**ACT, **W_CONV, "yz": np.uint8(0)},
        "QLinearConv",
        True,
    ),
    "conv relu q with zp 128": Case(
        CONV_IO,
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd)\n r = Relu(c)\n cq = QuantizeLinear(r, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)",
        {**ACT, **W_CONV},
        "com.microsoft::FusedConv",
        False,
    ),
    "conv output also read by a float op": Case(
        "(float[1,4,8,8] x) => (float[1,8,8,8] y, float[1,8,8,8] z)",
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd)\n cq = QuantizeLinear(c, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)\n z = Sigmoid(c)",
        {**ACT, **W_CONV},
        "Conv",
        False,
    ),
    "conv float weight behind Q->DQ": Case(
        CONV_IO,
        X_Q + "wq = QuantizeLinear <axis = 0> (wf, ws, wz)\n wd = DequantizeLinear <axis = 0> (wq, ws, wz)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd)\n cq = QuantizeLinear(c, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)",
        {**ACT, "wf": RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), **{k: W_CONV[k] for k in ("ws", "wz")}},
        "QLinearConv",
        True,
    ),
    "matmul per-tensor weight with Q": Case(
        MATMUL_IO,
        X_Q + "wd = DequantizeLinear(w, ws, wz)\n[target] m = MatMul(xd, wd)\n mq = QuantizeLinear(m, ys, yz)\n"
        "y = DequantizeLinear(mq, ys, yz)",
        {**ACT, **W_MATMUL},
        "QLinearMatMul",
        True,
    ),
    "matmul per-channel weight axis 1 with Q": Case(
        MATMUL_IO,
        X_Q + "wd = DequantizeLinear <axis = 1> (w, ws, wz)\n[target] m = MatMul(xd, wd)\n"
        "mq = QuantizeLinear(m, ys, yz)\n y = DequantizeLinear(mq, ys, yz)",
        {**ACT, **W_MATMUL, "ws": np.full(8, 0.01, np.float32), "wz": np.zeros(8, np.int8)},
        "QLinearMatMul",
        True,
    ),
    "matmul without Q": Case(
        MATMUL_IO,
        X_Q + "wd = DequantizeLinear(w, ws, wz)\n[target] y = MatMul(xd, wd)",
        {**ACT, **W_MATMUL},
        "com.microsoft::MatMulIntegerToFloat",
        True,
    ),
    "gemm with int32 bias, float output": Case(
        MATMUL_IO,
        X_Q + "wd = DequantizeLinear(w, ws, wz)\n cd = DequantizeLinear(b, bs)\n[target] y = Gemm(xd, wd, cd)",
        {**ACT, **W_MATMUL, "b": np.arange(8, dtype=np.int32), "bs": np.float32(0.0005)},
        "com.microsoft::QGemm",
        True,
    ),
    "gemm with float bias and Q": Case(
        MATMUL_IO,
        X_Q + "wd = DequantizeLinear(w, ws, wz)\n[target] g = Gemm(xd, wd, b)\n gq = QuantizeLinear(g, ys, yz)\n"
        "y = DequantizeLinear(gq, ys, yz)",
        {**ACT, **W_MATMUL, "b": np.ones(8, np.float32)},
        "com.microsoft::QGemm",
        True,
    ),
    **{
        f"{op.lower()} u8 + s8 mix": Case(
            "(float[2,8] x, float[2,8] x2) => (float[2,8] y)",
            X_Q + "x2q = QuantizeLinear(x2, x2s, x2z)\n x2d = DequantizeLinear(x2q, x2s, x2z)\n"
            f"[target] a = {op}(xd, x2d)\n aq = QuantizeLinear(a, ys, yz)\n y = DequantizeLinear(aq, ys, yz)",
            {**ACT, "x2s": np.float32(0.02), "x2z": np.int8(0)},
            f"com.microsoft::QLinear{op}",
            True,
        )
        for op in ("Add", "Mul")
    },
    "maxpool same qparams": Case(
        "(float[1,4,8,8] x) => (float[1,4,4,4] y)",
        X_Q + "[target] p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (xd)\n"
        "pq = QuantizeLinear(p, xs, xz)\n y = DequantizeLinear(pq, xs, xz)",
        ACT,
        "MaxPool",
        True,
    ),
    "maxpool different qparams": Case(
        "(float[1,4,8,8] x) => (float[1,4,4,4] y)",
        X_Q + "[target] p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (xd)\n"
        "pq = QuantizeLinear(p, ys, yz)\n y = DequantizeLinear(pq, ys, yz)",
        {**ACT, "yz": np.uint8(100)},
        "MaxPool",
        False,
    ),
    "transpose different qparams": Case(
        "(float[2,8] x) => (float[8,2] y)",
        X_Q + "[target] t = Transpose <perm = [1, 0]> (xd)\n tq = QuantizeLinear(t, ys, yz)\n"
        "y = DequantizeLinear(tq, ys, yz)",
        {**ACT, "yz": np.uint8(100)},
        "Transpose",
        False,
    ),
    "reshape same qparams": Case(
        "(float[2,8] x) => (float[4,4] y)",
        X_Q + "[target] r = Reshape(xd, shape)\n rq = QuantizeLinear(r, xs, xz)\n y = DequantizeLinear(rq, xs, xz)",
        {**ACT, "shape": np.array([4, 4], np.int64)},
        "Reshape",
        True,
    ),
    **{
        f"{op.lower()}": Case(
            f"(float[1,4,8,8] x) => (float{out} y)",
            X_Q + f"[target] p = {op}{attrs}(xd)\n pq = QuantizeLinear(p, ys, yz)\n y = DequantizeLinear(pq, ys, yz)",
            ACT,
            f"com.microsoft::QLinear{op}",
            True,
        )
        for op, attrs, out in [
            ("GlobalAveragePool", "", "[1,4,1,1]"),
            ("AveragePool", " <kernel_shape = [2, 2], strides = [2, 2]> ", "[1,4,4,4]"),
            ("Sigmoid", "", "[1,4,8,8]"),
            ("Softmax", "", "[1,4,8,8]"),
            ("LeakyRelu", "", "[1,4,8,8]"),
        ]
    },
    "concat": Case(
        "(float[2,8] x, float[2,8] x2) => (float[2,16] y)",
        X_Q + "x2q = QuantizeLinear(x2, xs, xz)\n x2d = DequantizeLinear(x2q, xs, xz)\n"
        "[target] c = Concat <axis = 1> (xd, x2d)\n cq = QuantizeLinear(c, ys, yz)\n y = DequantizeLinear(cq, ys, yz)",
        ACT,
        "com.microsoft::QLinearConcat",
        True,
    ),
    **{
        f"matmul {dtype} block {block}": Case(
            "(float[2,64] x) => (float[2,16] y)",
            f"wd = DequantizeLinear <axis = 0, block_size = {block}> (w, ws)\n[target] y = MatMul(x, wd)",
            {
                "w": onnx.numpy_helper.from_array(np.zeros((64, 16), np.int32), "w"),
                "ws": np.full((64 // block, 16), 0.01, np.float32),
            },
            "com.microsoft::MatMulNBits" if block >= 16 else "MatMul",
            block >= 16,
        )
        for dtype, block in [("int4", 32), ("uint4", 64), ("int4", 8)]
    },
    "conv u16 activations": Case(
        CONV_IO,
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n"
        "[target] c = Conv <pads = [1, 1, 1, 1]> (xd, wd)\n cq = QuantizeLinear(c, ys, yz)\n"
        "y = DequantizeLinear(cq, ys, yz)",
        {**ACT, **W_CONV, "xz": np.uint16(32768), "yz": np.uint16(32768)},
        "Conv",
        False,
    ),
}


def _int4_weights(case: Case, name: str) -> Case:
    """Replaces the int32 placeholder ``w`` with a 4-bit tensor (numpy has no int4 dtype)."""
    dtype = ir.DataType.INT4 if "uint4" not in name else ir.DataType.UINT4
    rng = np.random.default_rng(1)
    low, high = (-8, 8) if dtype == ir.DataType.INT4 else (0, 16)
    values = rng.integers(low, high, (64, 16)).astype(np.int8 if dtype == ir.DataType.INT4 else np.uint8)
    weights = dict(case.weights)
    weights["w"] = ir.serde.serialize_tensor(ir.Tensor(values, dtype=dtype, name="w"))  # type: ignore[assignment]
    return dataclasses.replace(case, weights=weights)


def _build(name: str, case: Case) -> ir.Model:
    if "block" in name:
        case = _int4_weights(case, name)
    return _model(case)


def _target(report: KernelReport) -> tuple[str | None, bool, str]:
    (row,) = [r for r in report.nodes if r.node == "target"]
    return row.kernel, row.integer, row.matched_by


@pytest.mark.parametrize("name", list(CASES))
def test_ort_cpu_qdq_rule(name: str) -> None:
    case = CASES[name]
    report = kernel_report(_build(name, case), "cpu")
    kernel, integer, matched_by = _target(report)
    assert (kernel, integer) == (case.kernel, case.integer), format_kernels(report)
    assert matched_by == "name"
    assert report.provider == "CPUExecutionProvider"


def test_unnamed_nodes_are_matched_by_output() -> None:
    """Without node names the fused kernel is found through the output of the absorbed Q."""
    case = CASES["conv relu q with u8 zp 0"]
    model = _model(case)
    for node in model.graph:
        node.name = ""
    report = kernel_report(model, "cpu")
    (conv,) = [r for r in report.nodes if r.op == "Conv"]
    assert (conv.kernel, conv.integer, conv.matched_by) == ("QLinearConv", True, "output")
    assert conv.node == "Conv->c"


def test_totals_text_and_json_on_a_mixed_graph() -> None:
    """Two Convs, one fused and one left float (no output Q): the totals say 1/2."""
    case = Case(
        "(float[1,4,8,8] x) => (float[1,8,8,8] y)",
        X_Q + "wd = DequantizeLinear <axis = 0> (w, ws, wz)\n w2d = DequantizeLinear <axis = 0> (w2, ws, wz)\n"
        "[first] c = Conv <pads = [1, 1, 1, 1]> (xd, wd)\n cq = QuantizeLinear(c, ys, yz)\n"
        "cd = DequantizeLinear(cq, ys, yz)\n [second] y = Conv <pads = [1, 1, 1, 1]> (cd, w2d)",
        {**ACT, **W_CONV, "w2": RNG.integers(-127, 128, (8, 8, 3, 3), dtype=np.int8)},
        "",
        False,
    )
    report = kernel_report(_model(case), "cpu")
    (totals,) = report.totals
    assert (totals.op, totals.nodes, totals.integer, totals.float, totals.unmatched) == ("Conv", 2, 1, 1, 0)
    text = format_kernels(report)
    assert "Conv: 1/2 int8" in text and "second" in text.split("float nodes:")[1]
    data = report.to_json()
    assert data["totals"]["Conv"]["integer"] == 1 and data["optimized_ops"]["QLinearConv"] == 1
    assert [n["kernel"] for n in data["nodes"]] == ["QLinearConv", "Conv"]


def test_float_model_and_shape_arithmetic() -> None:
    """The bundled float CNN: every Conv/Gemm stays float; int64 shape ops are not listed."""
    report = kernel_report(ir.load(DIGITS), "cpu")
    assert report.nodes and not any(r.integer for r in report.nodes)
    assert {t.op for t in report.totals} >= {"Conv"}
    assert all(t.integer == 0 and t.unmatched == 0 for t in report.totals)


def test_matmul_with_bias_add_is_followed_into_the_fused_gemm() -> None:
    """DQ → MatMul → Add(float bias) without an output Q: onnxruntime fuses MatMul+Add into a
    float Gemm before its QDQ fusions run, so no integer kernel; the unnamed MatMul is found
    through the Add's output."""
    case = Case(
        MATMUL_IO,
        X_Q + "wd = DequantizeLinear(w, ws, wz)\n m = MatMul(xd, wd)\n y = Add(m, b)",
        {**ACT, **W_MATMUL, "b": np.ones(8, np.float32)},
        "",
        False,
    )
    report = kernel_report(_model(case), "cpu")
    assert [(r.node, r.kernel, r.precision, r.matched_by) for r in report.nodes] == [
        ("MatMul->m", "Gemm", "float", "output"),
        ("Add->y", "Gemm", "float", "output"),
    ]


def test_unmatched_nodes_are_counted_by_op_type() -> None:
    """An optimized graph (as onnxruntime saves it) with two QLinearConvs whose names and outputs
    match no original node: the totals count them against the unmatched Convs and say so."""
    optimized = onnx.parser.parse_graph(
        "g (uint8[1,4,8,8] x) => (uint8[1,8,8,8] y) {"
        " [renamed_1] a = com.microsoft.QLinearConv(x, s, z, w, s, z, s, z)"
        " [renamed_2] y = com.microsoft.QLinearConv(a, s, z, w, s, z, s, z) }"
    )
    rows = [
        NodeKernel("first", "Conv", None, "unknown", "none"),
        NodeKernel("second", "Conv", None, "unknown", "none"),
        NodeKernel("third", "Conv", None, "unknown", "none"),
    ]
    (totals,) = _totals(rows, set(), OptimizedGraph(optimized))
    assert (totals.nodes, totals.integer, totals.unmatched, totals.integer_by_op_count) == (3, 0, 3, 2)
    assert totals.describe() == "Conv: 2/3 int8; 3 not matched, of which 2 counted as integer by op type"


def _save(case: Case, path: Path) -> Path:
    ir.save(_model(case), path)
    return path


def test_cli_kernels_text_and_json(tmp_path: Path) -> None:
    path = _save(CASES["conv u8 act, s8 per-channel weight, int32 bias"], tmp_path / "qdq.onnx")
    result = CliRunner().invoke(main, ["inspect", str(path), "--kernels"])
    assert result.exit_code == 0, result.stderr
    assert "kernels on CPUExecutionProvider (requested)" in result.stdout
    assert "  Conv: 1/1 int8" in result.stdout
    result = CliRunner().invoke(main, ["inspect", str(path), "--kernels", "--json"])
    assert result.exit_code == 0, result.stderr
    kernels = json.loads(result.stdout)["kernels"]
    assert kernels["totals"]["Conv"]["integer"] == 1
    assert kernels["nodes"] == [
        {"node": "target", "op": "Conv", "kernel": "QLinearConv", "precision": "int8", "matched_by": "name"}
    ]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cli_kernels_cuda_unavailable_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["inspect", str(DIGITS), "--kernels", "--provider", "cuda"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--provider cuda" in line and "CUDAExecutionProvider" in line


def test_cli_kernels_on_a_model_onnxruntime_cannot_load(model_file: ModelFile) -> None:
    path = model_file(
        '<ir_version: 10, opset_import: ["" : 21, "my.domain" : 1]> g (float[2] x) => (float[2] y)'
        " { [odd] y = my.domain.Mystery(x) }",
        "custom.onnx",
    )
    result = CliRunner().invoke(main, ["inspect", str(path), "--kernels"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("onnxshrink: error: --kernels: onnxruntime cannot load this model:") and "Mystery" in line


def _quantize_digits(path: Path, *, symmetric_s8: bool) -> ir.Model:
    """The bundled CNN through onnxruntime's own static QDQ quantizer (independent of ours)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.load(DIGITS_CALIB)["input"][:32]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if symmetric_s8 else {}
    quantize_static(
        str(DIGITS),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if symmetric_s8 else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options=options,
    )
    return ir.load(path)


def test_onnxruntime_quantizer_output_on_digits(tmp_path: Path) -> None:
    """u8 activations: every Conv/Gemm fuses. Symmetric s8 activations (the TensorRT-friendly
    graph, which passes the lint): the Convs whose input DequantizeLinear fans out stay float,
    as the ORT-CPU rule 2 of docs/quantization.md observed on resnet18."""
    asymmetric = kernel_report(_quantize_digits(tmp_path / "u8.onnx", symmetric_s8=False), "cpu")
    totals = {t.op: t for t in asymmetric.totals}
    assert (totals["Conv"].nodes, totals["Conv"].integer) == (6, 6)
    assert (totals["Gemm"].nodes, totals["Gemm"].integer) == (2, 2)
    assert all(r.matched_by == "name" for r in asymmetric.nodes)

    model = _quantize_digits(tmp_path / "s8.onnx", symmetric_s8=True)
    assert lint_tensorrt(model) == []
    fan_out = {
        node.name
        for node in model.graph
        if node.op_type == "Conv" and len(list(node.inputs[0].uses())) > 1  # type: ignore[union-attr]
    }
    floats = {r.node for r in kernel_report(model, "cpu").nodes if r.op == "Conv" and not r.integer}
    assert fan_out and floats == fan_out


def test_bias_add_folded_into_its_conv_is_matched_by_producer() -> None:
    """onnxruntime folds a constant Add into the Conv before it, then the HardSigmoid after it
    (FusedConv): the Add and its output are gone, so the Add is attributed to its producer's
    kernel. (Rows are compute nodes only: HardSigmoid has no integer kernel and is not listed.)"""
    case = Case(
        "(float[1,4,8,8] x) => (float[1,8,8,8] y)",
        "[conv] c = Conv <pads = [1, 1, 1, 1]> (x, wf)\n [bias] a = Add(c, b)\n [act] y = HardSigmoid(a)",
        {"wf": RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), "b": np.ones((8, 1, 1), np.float32)},
        "",
        False,
    )
    report = kernel_report(_model(case), "cpu")
    assert report.optimized_ops == {"com.microsoft::FusedConv": 1}
    rows = {r.node: (r.kernel, r.precision, r.matched_by) for r in report.nodes}
    assert rows == {
        "conv": ("com.microsoft::FusedConv", "float", "name"),
        "bias": ("com.microsoft::FusedConv", "float", "producer"),
    }


def test_model_with_external_data(tmp_path: Path) -> None:
    model = _model(CASES["matmul per-tensor weight with Q"])
    path = tmp_path / "ext.onnx"
    ir.save(model, path, external_data="ext.onnx.data", size_threshold_bytes=0)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    report = kernel_report(ir.load(path), "cpu")
    assert [(r.node, r.kernel, r.integer) for r in report.nodes] == [("target", "QLinearMatMul", True)]


def test_cli_provider_without_kernels_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["inspect", str(DIGITS), "--provider", "cpu"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "onnxshrink: error: --provider applies to --kernels only; add --kernels"


def test_block_quantized_gather_written_by_quantize_is_an_integer_kernel(int4_gather_matmul: ir.Model) -> None:
    quantized = int4_gather_matmul
    assert "GatherBlockQuantized" in {n.op_type for n in quantized.graph}
    report = kernel_report(quantized, provider="cpu")
    gathers = [row for row in report.nodes if row.op == "GatherBlockQuantized"]
    assert (
        len(gathers) == 1
        and gathers[0].precision == "int4"
        and (gathers[0].kernel or "").endswith("GatherBlockQuantized")
    )
