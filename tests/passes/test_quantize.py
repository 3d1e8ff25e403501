"""``quantize`` on tiny ONNX-text graphs, each ORT-CPU rule of docs/quantization.md checked in ORT's
optimized model, the TensorRT placement through the TensorRT lint, and the digits CNN."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import DIGITS, DIGITS_CALIB, DIGITS_TEST, OnceReader, op_counts, parse_model, run, run_pass

import onnxshrink
import onnxshrink.passes.quantize  # registers the pass
from onnxshrink.errors import UsageError


def _model(
    body: str,
    weights: Mapping[str, tuple[int, ...]],
    seed: int = 0,
    constants: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """The graph in ONNX text with random float32 initializers of the given shapes (biases small)."""
    arrays = dict(constants or {})
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        array = rng.standard_normal(shape) / np.sqrt(fan_in) if len(shape) > 1 else rng.standard_normal(shape) * 0.1
        arrays[name] = array.astype(np.float32)
    return parse_model(body, initializers=arrays, opset=opset)


def _calib(shapes: Mapping[str, tuple[int, ...]], samples: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((samples, *shape[1:])).astype(np.float32) for name, shape in shapes.items()}


def _ort_optimized(
    model: onnx.ModelProto,
    tmp_path: Path,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
) -> onnx.ModelProto:
    """ORT's optimized model (CPU; the extended level is where the QDQ fusions run)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(tmp_path / "optimized.onnx")


def _optimized(model: onnx.ModelProto, tmp_path: Path) -> Counter[str]:
    """Op types of ORT's optimized model at the extended level."""
    return op_counts(_ort_optimized(model, tmp_path))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _close_to_float(model: onnx.ModelProto, quantized: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    return min(_cosine(r, q) for r, q in zip(run(model, feed), run(quantized, feed), strict=True))


CONV_RELU_CONV = (
    """g (float[N, 8, 10, 10] x) => (float[N, 16, 10, 10] y) {
        c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
        r1 = Relu(c1)
        y = Conv <pads = [1, 1, 1, 1]> (r1, W2, B2)
    }""",
    {"W1": (16, 8, 3, 3), "B1": (16,), "W2": (16, 16, 3, 3), "B2": (16,)},
    {"x": (1, 8, 10, 10)},
)
MATMUL_CHAIN = (
    """g (float[N, 32] x) => (float[N, 24] y) {
        h = MatMul(x, W1)
        r = Relu(h)
        y = MatMul(r, W2)
    }""",
    {"W1": (32, 48), "W2": (48, 24)},
    {"x": (1, 32)},
)
GEMM_CHAIN = (
    """g (float[N, 32] x) => (float[N, 24] y) {
        h = Gemm <transB = 1> (x, W1, C1)
        r = Relu(h)
        y = Gemm (r, W2, C2)
    }""",
    {"W1": (48, 32), "C1": (48,), "W2": (48, 24), "C2": (24,)},
    {"x": (1, 32)},
)
RESIDUAL = (
    """g (float[N, 16, 8, 8] x) => (float[N, 16, 8, 8] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, W0, B0)
        ar = Relu(a)
        b = Conv <pads = [1, 1, 1, 1]> (ar, W1, B1)
        s = Add(ar, b)
        sr = Relu(s)
        y = Conv <pads = [1, 1, 1, 1]> (sr, W2, B2)
    }""",
    {"W0": (16, 16, 3, 3), "B0": (16,), "W1": (16, 16, 3, 3), "B1": (16,), "W2": (16, 16, 3, 3), "B2": (16,)},
    {"x": (1, 16, 8, 8)},
)
POOL_CONCAT_HEAD = (
    """g (float[N, 8, 8, 8] x) => (float[N, 10] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, Wa, Ba)
        ar = Relu(a)
        b = Conv (x, Wb, Bb)
        br = Relu(b)
        cat = Concat <axis = 1> (ar, br)
        p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (cat)
        c = Conv <pads = [1, 1, 1, 1]> (p, Wc, Bc)
        cr = Relu(c)
        g = GlobalAveragePool(cr)
        f = Flatten(g)
        y = Gemm <transB = 1> (f, Wf, Bf)
    }""",
    {
        "Wa": (16, 8, 3, 3),
        "Ba": (16,),
        "Wb": (16, 8, 1, 1),
        "Bb": (16,),
        "Wc": (64, 32, 3, 3),
        "Bc": (64,),
        "Wf": (10, 64),  # K = 64: at least rule 2c's multiply-adds per converted (output) value
        "Bf": (10,),
    },
    {"x": (1, 8, 8, 8)},
)


@pytest.mark.parametrize(
    ("case", "fused", "gone"),
    [
        (CONV_RELU_CONV, {"QLinearConv": 2}, ("Conv", "Relu")),
        (MATMUL_CHAIN, {"QLinearMatMul": 1, "MatMulIntegerToFloat": 1}, ("MatMul", "Relu")),
        (GEMM_CHAIN, {"QGemm": 2}, ("Gemm", "Relu")),
        (RESIDUAL, {"QLinearConv": 3, "QLinearAdd": 1}, ("Conv", "Add", "Relu")),
        (
            POOL_CONCAT_HEAD,
            {"QLinearConv": 3, "QLinearConcat": 1, "QLinearGlobalAveragePool": 1, "QGemm": 1},
            ("Conv", "Gemm", "Concat", "GlobalAveragePool", "Relu"),
        ),
    ],
    ids=["conv-relu-conv", "matmul-chain", "gemm-chain", "residual-add", "pool-concat-head"],
)
def test_ort_cpu_patterns_become_integer_kernels(
    case: tuple[str, dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]],
    fused: dict[str, int],
    gone: tuple[str, ...],
    tmp_path: Path,
) -> None:
    body, weights, inputs = case
    model = _model(body, weights)
    calib = _calib(inputs)
    result = run_pass(model, "quantize", calibration=calib)
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True
    ops = _optimized(out, tmp_path)
    for op, count in fused.items():
        assert ops[op] == count, (op, ops)
    for op in gone:
        assert ops[op] == 0, (op, ops)
    assert "skipped" not in stats  # nothing left float
    feed = {name: value[:4] for name, value in calib.items()}
    assert _close_to_float(model, out, feed) > 0.999
    # Rule 1: a quantized node's only consumer is its output Q (when it has one).
    for node in out.graph.node:
        if node.op_type in ("Conv", "Add", "Concat"):
            readers = [n for n in out.graph.node if node.output[0] in n.input]
            assert [n.op_type for n in readers] == ["QuantizeLinear"], node.name


def test_maxpool_and_flatten_pass_int8_through_with_the_same_qparams(tmp_path: Path) -> None:
    """Rule 6: the Q after MaxPool/Flatten has the qparams of the DQ before it, so ORT drops the pair."""
    body, weights, inputs = POOL_CONCAT_HEAD
    out = run_pass(_model(body, weights), "quantize", calibration=_calib(inputs)).model
    activations = {n.input[0]: (n.input[1], n.input[2]) for n in out.graph.node if n.op_type == "QuantizeLinear"}
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    assert consts[activations["p"][0]] == consts[activations["cat"][0]]
    assert consts[activations["f"][0]] == consts[activations["g"][0]]
    ops = _optimized(out, tmp_path)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 0, ops  # input Q only; QGemm outputs float
    assert ops["MaxPool"] == 1 and ops["Flatten"] == 1  # on uint8 now


def _layout_optimized(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    """ORT's optimized model at the layout level, where channels-last kernels appear."""
    return _ort_optimized(model, tmp_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def _pool_reads(model: onnx.ModelProto, pool: str) -> str:
    """The op type making the input of the one node of type ``pool``."""
    producers = {output: node for node in model.graph.node for output in node.output}
    (node,) = [n for n in model.graph.node if n.op_type == pool]
    return producers[node.input[0]].op_type


CONV_RELU_POOL_CONV = (
    """g (float[N, 8, 8, 8] x) => (float[N, 16, 4, 4] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
        r = Relu(c)
        p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
        y = Conv <pads = [1, 1, 1, 1]> (p, W2, B2)
    }""",
    {"W1": (16, 8, 3, 3), "B1": (16,), "W2": (16, 16, 3, 3), "B2": (16,)},
    {"x": (1, 8, 8, 8)},
)


def test_maxpool_after_an_int8_conv_runs_channels_last(tmp_path: Path) -> None:
    """Rule 6b: after a QLinearConv (its Relu folded) onnxruntime runs the uint8 MaxPool as NhwcMaxPool."""
    body, weights, inputs = CONV_RELU_POOL_CONV
    out = run_pass(_model(body, weights), "quantize", calibration=_calib(inputs)).model
    ops = op_counts(_layout_optimized(out, tmp_path))
    assert ops["NhwcMaxPool"] == 1 and ops["MaxPool"] == 0 and ops["QLinearConv"] == 2, ops


HARD_SWISH_POOL_HEAD = (  # PP-OCR cls's head
    """g (float[N, 8, 8, 8] x) => (float[N, 10] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, Wa, Ba)
        s = HardSwish(a)
        p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (s)
        g = GlobalAveragePool(p)
        f = Flatten(g)
        y = Gemm <transB = 1> (f, Wf, Bf)
    }""",
    {"Wa": (64, 8, 3, 3), "Ba": (64,), "Wf": (10, 64), "Bf": (10,)},
    {"x": (1, 8, 8, 8)},
)


def test_maxpool_after_an_int8_hard_swish_runs_float_on_cpu(tmp_path: Path) -> None:
    """Rule 6b: after the QLinearAdd/QLinearMul of a hard-swish onnxruntime runs a uint8 MaxPool
    channels-first (slower than float with its DQ and Q), so with the speed rules it runs float."""
    body, weights, inputs = HARD_SWISH_POOL_HEAD
    model, calib = _model(body, weights), _calib(inputs)
    result = run_pass(model, "quantize", calibration=calib)
    layout = _layout_optimized(result.model, tmp_path)
    ops = op_counts(layout)
    assert ops["QLinearConv"] == 1 and ops["NhwcMaxPool"] == 0 and ops["QLinearMul"] == 0, ops
    assert _pool_reads(layout, "MaxPool") not in ("QLinearMul", "QuantizeLinear")  # float in
    assert result.stats["hard_swish"] == {"written_out": 1, "fused_again": 1}
    feed = {name: value[:4] for name, value in calib.items()}
    assert _close_to_float(model, result.model, feed) > 0.999
    # Without the speed rules the head is int8, the MaxPool channels-first on uint8.
    int8 = _layout_optimized(run_pass(model, "quantize:keep-slow-float=false", calibration=calib).model, tmp_path)
    assert op_counts(int8)["NhwcMaxPool"] == 0 and _pool_reads(int8, "MaxPool") == "QLinearMul"


RESIDUAL_AVERAGE_POOL = (  # PP-OCR rec's last block
    """g (float[N, 8, 8, 8] x) => (float[N, 16, 4, 4] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, Wa, Ba)
        b = Conv <pads = [1, 1, 1, 1]> (x, Wb, Bb)
        s = Add(a, b)
        p = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (s)
        y = Conv <pads = [1, 1, 1, 1]> (p, Wc, Bc)
    }""",
    {"Wa": (16, 8, 3, 3), "Ba": (16,), "Wb": (16, 8, 3, 3), "Bb": (16,), "Wc": (16, 16, 3, 3), "Bc": (16,)},
    {"x": (1, 8, 8, 8)},
)


def test_average_pool_and_the_add_before_it_stay_float_on_cpu(tmp_path: Path) -> None:
    """Rule 7c: QLinearAveragePool is slower than the float pool with its DQ and Q, so the pool is
    left out, and the Add before it, whose only reader it is, stays float too (rule 7)."""
    body, weights, inputs = RESIDUAL_AVERAGE_POOL
    model, calib = _model(body, weights), _calib(inputs)
    result = run_pass(model, "quantize", calibration=calib)
    assert "rule 7c" in result.stats["skipped"]["AveragePool#3"]
    assert "rule 7)" in result.stats["skipped"]["Add#2"]
    layout = _layout_optimized(result.model, tmp_path)
    ops = op_counts(layout)
    assert ops["QLinearAveragePool"] == 0 and ops["QLinearAdd"] == 0 and ops["QLinearConv"] == 3, ops
    assert ops["AveragePool"] == 1  # float (NCHWc)
    int8 = run_pass(model, "quantize:keep-slow-float=false", calibration=calib).model
    int8_ops = op_counts(_layout_optimized(int8, tmp_path))
    assert int8_ops["QLinearAveragePool"] == 1 and int8_ops["QLinearAdd"] == 1, int8_ops


def test_int32_bias_has_scale_x_times_w_and_zero_point_zero() -> None:
    body, weights, inputs = CONV_RELU_CONV
    result = run_pass(_model(body, weights), "quantize", calibration=_calib(inputs))
    out, stats = result.model, result.stats
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    producers = {o: n for n in out.graph.node for o in n.output}
    conv = next(
        n for n in out.graph.node if n.op_type == "Conv" and producers[n.input[0]].op_type == "DequantizeLinear"
    )
    x_dq, w_dq, b_dq = (producers[name] for name in conv.input)
    assert consts[b_dq.input[0]].dtype == np.int32
    assert not consts[b_dq.input[2]].any()
    np.testing.assert_allclose(consts[b_dq.input[1]], consts[x_dq.input[1]] * consts[w_dq.input[1]], rtol=1e-6)
    assert consts[w_dq.input[0]].dtype == np.int8 and consts[w_dq.input[1]].shape == (16,)  # per-channel, axis 0
    assert stats["bias_int32"] == 2 and stats["bias_float"] == 0


def test_relu_is_kept_when_the_zero_point_does_not_clip() -> None:
    """Rule 5: symmetric activations (zp 0) do not imply the Relu, so it stays; u8 (zp 0 = qmin) folds it."""
    body, weights, inputs = CONV_RELU_CONV
    model = _model(body, weights)
    result = run_pass(model, "quantize:target=ort-cuda", calibration=_calib(inputs))
    out, stats = result.model, result.stats
    assert "Relu" in [n.op_type for n in out.graph.node] and stats["folded_activations"] == 0
    result = run_pass(model, "quantize", calibration=_calib(inputs))
    out, stats = result.model, result.stats
    assert "Relu" not in [n.op_type for n in out.graph.node] and stats["folded_activations"] == 1


def test_elementwise_ops_next_to_float_stay_float_and_a_graph_without_layers_is_untouched() -> None:
    """Rule 7: an Add reading a plain graph input (no int8 neighbour) is not quantized; rule 8: no islands."""
    body = """g (float[N, 16] x, float[N, 16] z) => (float[N, 16] y) {
        h = MatMul(x, W)
        n = LayerNormalization(h, G, Bt)
        y = Add(n, z)
    }"""
    model = _model(body, {"W": (16, 16), "G": (16,), "Bt": (16,)})
    result = run_pass(model, "quantize:keep-slow-float=false", calibration=_calib({"x": (1, 16), "z": (1, 16)}))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True
    assert "rule 7" in stats["skipped"]["Add#2"]
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {"x"}  # MatMul's input only: its output feeds float LayerNorm → MatMulIntegerToFloat
    only_float = _model("g (float[N, 4] x) => (float[N, 4] y) { a = Sigmoid(x)  y = Relu(a) }", {})
    result = run_pass(only_float, "quantize", calibration=_calib({"x": (1, 4)}))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is False and stats["q_nodes"] == 0
    assert [n.op_type for n in out.graph.node] == ["Sigmoid", "Relu"]


# A hardswish written out (x * Clip(x + 3, 0, 6) / 6) and a per-tensor affine (a * h + b) between two
# Convs, as PP-LCNet exports them: every elementwise op has int8 neighbours, four take a constant.
HARDSWISH_AFFINE = (
    """g (float[N, 8, 8, 8] x) => (float[N, 8, 8, 8] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
        p = Add(a, three)
        c = Clip(p, zero, six)
        m = Mul(a, c)
        h = Div(m, six_div)
        s = Mul(scale, h)
        t = Add(s, shift)
        y = Conv <pads = [1, 1, 1, 1]> (t, W2, B2)
    }""",
    {"W1": (8, 8, 3, 3), "B1": (8,), "W2": (8, 8, 3, 3), "B2": (8,)},
    {
        "three": np.array([3.0], np.float32),
        "zero": np.array(0.0, np.float32),
        "six": np.array(6.0, np.float32),
        "six_div": np.array([6.0], np.float32),
        "scale": np.array([1.25], np.float32),
        "shift": np.array([-0.3], np.float32),
    },
)


def test_elementwise_ops_with_a_constant_operand_run_in_int8_between_int8_neighbours(tmp_path: Path) -> None:
    """Rule 7b: Add/Mul by a constant become QLinearAdd/QLinearMul with the constant stored u8; Div by a
    constant becomes a QLinearMul by its reciprocal; the hardswish and the affine run without float ops."""
    body, weights, constants = HARDSWISH_AFFINE
    model = _model(body, weights, constants=constants)
    calib = _calib({"x": (1, 8, 8, 8)}, samples=32)
    result = run_pass(model, "quantize:keep-slow-float=false", calibration=calib)
    out, stats = result.model, result.stats
    assert "skipped" not in stats
    assert {stats["nodes"][key]["op"] for key in ("Add#1", "Mul#3", "Div#4", "Mul#5", "Add#6")} == {"Add", "Mul", "Div"}
    ops = _optimized(out, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 2 and ops["QLinearMul"] == 3, ops
    for op in ("Add", "Mul", "Div", "Clip", "Conv"):
        assert ops[op] == 0, (op, ops)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops  # the model's input and output only
    # Each one-element constant is stored as one u8 level whose dequantized value is the constant.
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    producers = {o: n for n in out.graph.node for o in n.output}
    stored = []
    for node in out.graph.node:
        dqs = [producers[name] for name in node.input if node.op_type in ("Add", "Mul") and name in producers]
        for level, scale, zero in [[consts.get(i) for i in dq.input] for dq in dqs]:
            if level is not None:  # a constant operand, not an activation
                assert level.dtype == zero.dtype == np.uint8 and level.size == 1
                stored.append((level.astype(np.float32).item() - float(zero)) * float(scale))
    assert "Div" not in [n.op_type for n in out.graph.node]
    np.testing.assert_allclose(sorted(stored), sorted([3.0, 1 / 6, 1.25, -0.3]), rtol=1e-6)
    feed = {"x": calib["x"][:8]}
    assert _close_to_float(model, out, feed) > 0.995


def test_a_constant_operand_next_to_float_or_a_division_by_an_activation_stays_float() -> None:
    """Rule 7b applies between int8 neighbours only, and a Div needs a constant divisor: the Add by 3
    reads the float Div, so both stay float even though MatMuls run int8 on either side."""
    body = """g (float[N, 8] x, float[N, 8] z) => (float[N, 8] y) {
        h = MatMul(x, W)
        d = Div(h, z)
        e = Add(d, three)
        y = MatMul(e, W2)
    }"""
    model = _model(body, {"W": (8, 8), "W2": (8, 8)}, constants={"three": np.array([3.0], np.float32)})
    result = run_pass(model, "quantize:keep-slow-float=false", calibration=_calib({"x": (1, 8), "z": (1, 8)}))
    skipped = result.stats["skipped"]
    assert "Div#1" not in skipped and "rule 7" in skipped["Add#2"]  # no integer kernel divides by an activation
    assert [n.op_type for n in result.model.graph.node].count("Div") == 1


def test_include_and_exclude_select_layers(tmp_path: Path) -> None:
    body, weights, inputs = CONV_RELU_CONV
    model = _model(body, weights)
    result = run_pass(model, "quantize:exclude=Conv#2", calibration=_calib(inputs))
    out, stats = result.model, result.stats
    assert stats["skipped"] == {"Conv#2": "excluded by 'Conv#2'"}
    ops = _optimized(out, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["Conv"] + ops["FusedConv"] == 1


def test_nonfinite_activations_are_counted_and_every_scale_is_finite() -> None:
    """A −inf mask before a MaxPool that always sees one finite value: the masked tensor shares
    the pool's int8 qparams (rule 6), so it is calibrated; its −inf are counted and ignored."""
    body = """g (float[N, 4, 4, 8] x) => (float[N, 8, 4, 4] y) {
        s = Conv(x, W1, B1)
        m = Add(s, Mask)
        p = MaxPool <kernel_shape = [1, 2], strides = [1, 2]> (m)
        y = Conv(p, W2, B2)
    }"""
    mask = np.zeros((1, 1, 4, 8), np.float32)
    mask[..., 1::2] = -np.inf
    weights = {"W1": (8, 4, 1, 1), "B1": (8,), "W2": (8, 8, 1, 1), "B2": (8,)}
    model = _model(body, weights, constants={"Mask": mask})
    calib = _calib({"x": (1, 4, 4, 8)}, samples=10)
    for calibrator in ("minmax", "percentile", "entropy", "mse"):
        result = run_pass(model, f"quantize:calibrate={calibrator},keep-slow-float=false", calibration=calib)
        out, stats = result.model, result.stats
        assert stats["nonfinite"] == {"m": 10 * 8 * 4 * 4}
        assert "m" in {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
        scales = [onnx.numpy_helper.to_array(t) for t in out.graph.initializer if t.name.endswith("_scale")]
        assert scales and all(np.all(np.isfinite(s)) and np.all(s > 0) for s in scales)
        assert _close_to_float(model, out, {"x": calib["x"][:4]}) > 0.999


def test_tensorrt_placement_passes_the_lint(tmp_path: Path) -> None:
    """TensorRT: zero points 0, float bias, no output Q, Q/DQ on the residual input of the Add."""
    from onnxshrink.inspect.tensorrt_lint import lint_tensorrt

    body, weights, inputs = RESIDUAL
    model = _model(body, weights)
    result = run_pass(model, "quantize:target=tensorrt", calibration=_calib(inputs))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True
    assert lint_tensorrt(ir.serde.deserialize_model(out)) == []
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not consts[node.input[2]].any()
            assert consts[node.input[0]].dtype != np.int32 if node.input[0] in consts else True
    quantized = sorted(n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear")
    assert quantized == ["ar", "sr", "x"]  # layer inputs; "ar" is also the Add's residual input; no "b"
    add = next(n for n in out.graph.node if n.op_type == "Add")
    producers = {o: n.op_type for n in out.graph.node for o in n.output}
    assert sorted(producers[i] for i in add.input) == ["Conv", "DequantizeLinear"]
    biases = [n.input[2] for n in out.graph.node if n.op_type == "Conv"]
    assert len(biases) == 3 and all(consts[b].dtype == np.float32 for b in biases)
    assert all(entry["bias"] == "float" for entry in stats["nodes"].values())


def test_tensorrt_leaves_low_channel_layers_float() -> None:
    body = """g (float[N, 16, 6, 6] x) => (float[N, 4, 6, 6] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, W0)
        y = Conv <pads = [1, 1, 1, 1], group = 2> (a, W1)
    }"""
    model = _model(body, {"W0": (6, 16, 3, 3), "W1": (4, 3, 3, 3)})
    stats = run_pass(model, "quantize:target=tensorrt", calibration=_calib({"x": (1, 16, 6, 6)})).stats
    assert set(stats["nodes"]) == {"Conv#0"}  # the first layer is kept by the rule's exception
    assert "TensorRT rule 11" in stats["skipped"]["Conv#1"]


def test_dynamic_mode_quantizes_matmul_only(tmp_path: Path) -> None:
    body = """g (float[N, 4, 6, 6] x) => (float[N, 24] y) {
        c = Conv (x, Wc)
        f = Flatten(c)
        h = MatMul(f, W1)
        y = Gemm <transB = 1> (h, W2, C2)
    }"""
    model = _model(body, {"Wc": (8, 4, 3, 3), "W1": (128, 32), "W2": (24, 32), "C2": (24,)})
    result = run_pass(model, "quantize:mode=dynamic")  # no calibration needed
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and stats["quantized_nodes"] == 2
    assert "ConvInteger" in stats["skipped"]["Conv#0"]
    ops = _optimized(out, tmp_path)
    assert ops["DynamicQuantizeMatMul"] == 2 and ops["MatMul"] == ops["Gemm"] == 0, ops
    feed = {"x": np.random.default_rng(3).standard_normal((4, 4, 6, 6)).astype(np.float32)}
    assert _close_to_float(model, out, feed) > 0.999


@pytest.mark.parametrize("bits", ["s4", "u4"])
def test_weight_only_4bit_becomes_matmulnbits(bits: str, tmp_path: Path) -> None:
    body = """g (float[N, 64] x) => (float[N, 32] y) {
        h = MatMul(x, W1)
        y = Gemm <transB = 1> (h, W2)
    }"""
    model = _model(body, {"W1": (64, 64), "W2": (32, 64)})
    result = run_pass(model, f"quantize:mode=weight-only,weights={bits},block-size=16")
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and stats["opset_raised"] == "17->21"
    assert {o.domain: o.version for o in out.opset_import}[""] == 21
    ops = _optimized(out, tmp_path)
    assert ops["MatMulNBits"] == 2 and ops["MatMul"] == ops["Gemm"] == 0, ops
    feed = {"x": np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)}
    assert _close_to_float(model, out, feed) > 0.99
    weights = [t for t in out.graph.initializer if t.name.startswith("W")]
    assert {t.data_type for t in weights if t.dims and len(t.dims) == 2 and t.dims[0] == 64} == {
        onnx.TensorProto.INT4 if bits == "s4" else onnx.TensorProto.UINT4
    }


def test_weight_only_int8_keeps_activations_float() -> None:
    body, weights, inputs = MATMUL_CHAIN
    model = _model(body, weights)
    result = run_pass(model, "quantize:mode=weight-only")
    out, stats = result.model, result.stats
    assert [n.op_type for n in out.graph.node].count("QuantizeLinear") == 0
    assert stats["nodes"] == {"MatMul#0": "s8 per-channel axis 1", "MatMul#2": "s8 per-channel axis 1"}
    stored = {t.name: t.data_type for t in out.graph.initializer}
    assert onnx.TensorProto.FLOAT not in [stored[n] for n in stored if n.startswith("W") and "scale" not in n]
    assert _close_to_float(model, out, {"x": _calib(inputs)["x"]}) > 0.999


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("quantize:weights=s4", "needs mode=weight-only"),
        ("quantize:mode=weight-only,weights=u4,block-size=8", "power of 2 >= 16"),
        ("quantize:mode=weight-only,weights=u4,block-size=48", "power of 2 >= 16"),
        ("quantize:mode=dynamic,min-cosine=0.9", "static only"),
        ("quantize:calibrate=kl", "valid"),
        ("quantize", "needs calibration data"),
    ],
)
def test_bad_options_are_one_line_usage_errors(spec: str, message: str) -> None:
    body, weights, _ = MATMUL_CHAIN
    with pytest.raises(UsageError, match=message):
        run_pass(_model(body, weights), spec)


def test_4bit_on_an_older_opset_moves_reduce_axes_into_an_input() -> None:
    """ReduceMean's axes became an input at 18: raising to 21 rewrites the node so it means the same."""
    body = """g (float[N, 64] x) => (float[N, 1] y) {
        h = MatMul(x, W1)
        y = ReduceMean <axes = [1]> (h)
    }"""
    model = _model(body, {"W1": (64, 64)})
    result = run_pass(model, "quantize:mode=weight-only,weights=s4")
    out, stats = result.model, result.stats
    assert result.modified is True and _opset(out) == 21
    assert stats["opset_raised"] == "17->21 (1 nodes rewritten to keep their meaning)"
    reduce = next(n for n in out.graph.node if n.op_type == "ReduceMean")
    assert len(reduce.input) == 2 and [a.name for a in reduce.attribute] == []
    assert _close_to_float(model, out, _calib({"x": (1, 64)}, samples=4)) > 0.99


def _digits(spec: str) -> dict[str, Any]:
    result = onnxshrink.shrink(str(DIGITS), ["simplify", spec], calibration=str(DIGITS_CALIB), inputs=str(DIGITS_TEST))
    return result.report


@pytest.mark.parametrize("calibrator", ["minmax", "percentile", "entropy", "mse"])
def test_digits_accuracy_within_0_2_points_with_every_calibrator(calibrator: str) -> None:
    report = _digits(f"quantize:calibrate={calibrator}")
    verification = report["verification"]
    assert verification["accuracy_reference"] - verification["accuracy_candidate"] <= 0.002
    stats = report["passes"][-1]["stats"]
    assert stats["calibrator"] == calibrator and stats["samples"] == 128
    assert stats["quantized_nodes"] == 10 and "skipped" not in stats  # 6 Conv, 2 Gemm, Add, Concat
    assert stats["statistics_bytes"] == stats["calibration_tensors"] * 4096 * 8
    assert {entry["op"] for entry in stats["nodes"].values()} == {"Conv", "Gemm", "Add", "Concat"}


def test_only_the_root_of_a_data_movement_chain_is_calibrated() -> None:
    result = onnxshrink.shrink(str(DIGITS), ["simplify", "quantize"], calibration=str(DIGITS_CALIB), verify=False)
    stats = result.report["passes"][-1]["stats"]
    # 12 tensors get a Q; the MaxPool and Flatten outputs take their input's range, uncaptured.
    assert stats["calibration_tensors"] == 10
    model = result.to_proto()
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    scale_after = {
        node.input[0]: float(inits[node.input[1]]) for node in model.graph.node if node.op_type == "QuantizeLinear"
    }
    moves = [n for n in model.graph.node if n.op_type in ("MaxPool", "Flatten") and n.output[0] in scale_after]
    assert len(moves) == 2
    for node in moves:  # the Q after the move has the Q before it's range: the same scale
        dequantize = producers[node.input[0]]
        assert dequantize.op_type == "DequantizeLinear"
        source = producers[dequantize.input[0]].input[0]  # DQ <- Q <- the float tensor
        assert scale_after[node.output[0]] == scale_after[source]


@pytest.mark.parametrize(
    ("spec", "budget"),
    [
        ("quantize:min-cosine=0.99998", 0.99998),
        # 8-bit weights: on x86 without VNNI the stem's u8 x s8 pair sums saturate (cosine ~0.993).
        ("quantize:reduce-range=off,min-cosine=0.999", 0.999),
    ],
)
def test_digits_budget_keeps_the_layers_most_damaging_alone_float(spec: str, budget: float) -> None:
    report = _digits(spec)
    record = report["passes"][-1]["stats"]["budget"]
    assert record["met"] is True and record["result"]["cosine"] >= budget
    layers = record["layers"]
    assert len(layers) == 8 and all({"predicted", "alone", "decision"} <= set(e) for e in layers.values())
    assert all(entry["predicted"] > 0 and entry["alone"]["cosine"] < 1.0 for entry in layers.values())
    assert record["probe_samples"] == 8  # 128 judged samples / (2 * 8 layers), at most 8 per probe run
    # Every layer is in the main graph, so each was probed alone: the ranking is by its damage alone.
    by_damage = sorted(layers, key=lambda k: 1.0 - layers[k]["alone"]["cosine"], reverse=True)
    kept = [key for key, entry in layers.items() if entry["decision"] == "float"]
    assert set(kept) == set(by_damage[: len(kept)]) and len(kept) == record["float_layers"]  # a prefix
    assert bool(kept) == (record["all_quantized"]["cosine"] < budget) and len(kept) < len(layers)
    # Every judged candidate is recorded; the result is the judged one with the fewest float layers that holds.
    candidates = {entry["float_layers"]: entry for entry in record["candidates"]}
    assert candidates[0]["cosine"] == record["all_quantized"]["cosine"]
    assert candidates[len(kept)]["holds"] and candidates[len(kept)]["cosine"] == record["result"]["cosine"]
    assert len(kept) == 0 or not candidates[len(kept) - 1]["holds"]  # the prefix one shorter was judged: misses
    stats = report["passes"][-1]["stats"]
    assert all(stats["skipped"][key] == "kept float by the accuracy budget" for key in kept)


def test_static_raises_opset_11_to_13_rewriting_ops_that_change_meaning() -> None:
    body, weights, inputs = MATMUL_CHAIN
    model = _model(body, weights)
    model.opset_import[0].version = 10
    with pytest.raises(UsageError, match="opset 10"):
        run_pass(model, "quantize:keep-slow-float=false", calibration=_calib(inputs))
    softmax_last = """g (float[N, 32] x) => (float[N, 24] y) {
        h = MatMul(x, W1)
        y = Softmax <axis = 1> (h)
    }"""
    model = _model(softmax_last, {"W1": (32, 24)}, opset=11)
    result = run_pass(model, "quantize:keep-slow-float=false", calibration=_calib(inputs))
    out, modified = result.model, result.modified
    assert modified and {o.domain: o.version for o in out.opset_import}[""] == 13
    assert _close_to_float(model, out, _calib(inputs, samples=4, seed=2)) > 0.999
    changed = {
        "Unsqueeze": """g (float[N, 32] x) => (float[N, 24] y) {
            h = MatMul(x, W1)
            u = Unsqueeze <axes = [1]> (h)
            y = Squeeze <axes = [1]> (u)
        }""",
        "Softmax": """g (float[N, 4, 8] x) => (float[N, 4, 24] y) {
            h = MatMul(x, W1)
            y = Softmax <axis = 1> (h)
        }""",
    }
    for op, text in changed.items():
        model = _model(text, {"W1": (32 if op == "Unsqueeze" else 8, 24)}, opset=11)
        feed = _calib({"x": (1, 32) if op == "Unsqueeze" else (1, 4, 8)})
        result = run_pass(model, "quantize:keep-slow-float=false", calibration=feed)
        out, stats = result.model, result.stats
        assert result.modified is True and _opset(out) == 13, op
        assert stats["opset_raised"].startswith("11->13 ("), op  # rewritten to keep the meaning
        assert _close_to_float(model, out, {name: array[:4] for name, array in feed.items()}) > 0.999, op


def test_calibration_from_a_reader_streams_every_batch_and_stops_at_samples() -> None:
    body, weights, inputs = MATMUL_CHAIN
    model = _model(body, weights)
    calib = _calib(inputs, samples=40)
    batches = [{"x": calib["x"][i : i + 8]} for i in range(0, 40, 8)]
    stats = run_pass(model, "quantize:samples=20", calibration=OnceReader(batches)).stats
    assert stats["samples"] == 20
    stats = run_pass(model, "quantize", calibration=OnceReader(batches)).stats
    assert stats["samples"] == 40
    assert set(stats) >= {
        "mode", "target", "calibrator", "samples", "nonfinite", "nodes", "budget", "q_nodes", "dq_nodes",
        "weights_quantized", "opset_raised",
    }  # fmt: skip
    assert not any("seconds" in key for key in stats)  # timings go to the pass record's "timings"
    assert stats["nodes"]["MatMul#0"]["inputs"][0]["dtype"] == "u8"
    assert stats["nodes"]["MatMul#0"]["weight"] == "s8 symmetric, per-channel axis 1"


EMBEDDING = """g (int64[N, S] ids) => (float[N, S, 8] y, float[N, S, {hidden}] e) {{
        e = Gather(T, ids)
        y = MatMul(e, W)
    }}"""


@pytest.mark.parametrize(("bits", "hidden", "block"), [("s8", 64, 64), ("s8", 40, 16), ("s4", 64, 16), ("u4", 48, 16)])
def test_weight_only_embedding_table_becomes_gather_block_quantized(
    bits: str, hidden: int, block: int, tmp_path: Path
) -> None:
    rows = 100
    model = _model(EMBEDDING.format(hidden=hidden), {"T": (rows, hidden), "W": (hidden, 8)})
    result = run_pass(model, f"quantize:mode=weight-only,weights={bits},block-size=16")
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and stats["nodes"]["Gather#0"].startswith(f"{bits} ")
    assert {o.domain: o.version for o in out.opset_import}["com.microsoft"] == 1
    ops = _optimized(out, tmp_path)
    assert ops["GatherBlockQuantized"] == 1 and ops["Gather"] == 0 and ops["DequantizeLinear"] == 0, ops
    gather = next(n for n in out.graph.node if n.op_type == "GatherBlockQuantized")
    assert {a.name: a.i for a in gather.attribute}["block_size"] == block
    stored = {t.name: t for t in out.graph.initializer}
    assert "T" not in stored  # the float table is gone
    table = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "T"))
    scales = onnx.numpy_helper.to_array(stored[gather.input[2]])
    assert scales.shape == (rows, -(-hidden // block)) and np.all(np.isfinite(scales)) and np.all(scales > 0)
    # Every gathered value is within half a quantization step of the float table (the layout is right).
    ids = np.random.default_rng(5).integers(0, rows, (3, 7)).astype(np.int64)
    _, gathered = run(out, {"ids": ids})
    step = np.repeat(scales, block, axis=1)[:, :hidden][ids]
    assert np.all(np.abs(gathered - table[ids]) <= step * 0.5001 + 1e-7)
    assert _close_to_float(model, out, {"ids": ids}) > (0.999 if bits == "s8" else 0.98)


def test_gathers_that_are_no_embedding_table_stay_float() -> None:
    body = """g (float[N, 16] x, int64[K] ids) => (float[N, K] y, float[N, 16] z) {
        y = Gather <axis = 1> (x, ids)
        z = Gather <axis = 1> (T, ids2)
    }"""
    ids2 = np.arange(16, dtype=np.int64)
    model = _model(body, {"T": (4, 16)}, constants={"ids2": ids2})
    result = run_pass(model, "quantize:mode=weight-only,weights=s4")
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is False
    assert "GatherBlockQuantized" not in [n.op_type for n in out.graph.node]
    assert stats["skipped"] == {"Gather#1": "Gather along axis 1, not 0"}
    excluded = _model(EMBEDDING.format(hidden=32), {"T": (50, 32), "W": (32, 8)})
    result = run_pass(excluded, "quantize:mode=weight-only,exclude=Gather")
    out, stats = result.model, result.stats
    assert stats["skipped"] == {"Gather#0": "excluded by 'Gather'"}
    assert [n.op_type for n in out.graph.node].count("Gather") == 1


ATTENTION = (
    """g (float[N, 16, 64] x) => (float[N, 16, 64] y) {
        q = MatMul(x, Wq)
        k = MatMul(x, Wk)
        v = MatMul(x, Wv)
        kt = Transpose <perm = [0, 2, 1]> (k)
        scores = MatMul(q, kt)
        probs = Softmax <axis = -1> (scores)
        attended = MatMul(probs, v)
        y = MatMul(attended, Wo)
    }""",
    {"Wq": (64, 64), "Wk": (64, 64), "Wv": (64, 64), "Wo": (64, 64)},  # Wo: K = 64, at least rule 2c's 48
    {"x": (1, 16, 64)},
)


@pytest.mark.parametrize(
    ("spec", "enabled"), [("quantize:activation-matmuls=true", True), ("quantize:keep-slow-float=false", False)]
)
def test_matmuls_of_two_activations_become_integer_kernels(spec: str, enabled: bool, tmp_path: Path) -> None:
    body, weights, inputs = ATTENTION
    model = _model(body, weights)
    calib = _calib(inputs, samples=16)
    result = run_pass(model, spec, calibration=calib)
    out, stats = result.model, result.stats
    ops = _optimized(out, tmp_path)
    if enabled:
        # probs x V feeds Wo's int8 input: QLinearMatMul; QK^T feeds the float Softmax: MatMulIntegerToFloat.
        assert {"MatMul#4", "MatMul#6"} <= set(stats["nodes"]) and ops["MatMul"] + ops["FusedMatMul"] == 0, ops
        assert ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] + ops["DynamicQuantizeMatMul"] == 6, ops
        assert ops["QLinearMatMul"] >= 1, ops
    else:
        assert stats["skipped"]["MatMul#4"] == "weight (input 1) is not a constant initializer"
        assert ops["MatMul"] + ops["FusedMatMul"] == 2, ops  # kt folds into FusedMatMul
    scales = [
        onnx.numpy_helper.to_array(t) for t in out.graph.initializer if t.name.endswith("_scale") and t.data_type == 1
    ]
    assert scales and all(np.all(np.isfinite(s)) and np.all(s > 0) for s in scales)
    feed = {"x": _calib(inputs, samples=4, seed=9)["x"]}
    assert _close_to_float(model, out, feed) > 0.998


@pytest.mark.parametrize(
    "spec", ["quantize:keep-slow-float=false", "quantize:mode=dynamic", "quantize:target=tensorrt"]
)
def test_static_and_dynamic_store_embedding_tables_as_s8_on_ort_cpu(spec: str, tmp_path: Path) -> None:
    model = _model(EMBEDDING.format(hidden=64), {"T": (100, 64), "W": (64, 8)})
    rng = np.random.default_rng(6)
    calib = {"ids": rng.integers(0, 100, (16, 7)).astype(np.int64)}
    result = run_pass(model, spec, calibration=calib)
    out, stats = result.model, result.stats
    ops = _optimized(out, tmp_path)
    tables = stats.get("tables", {k: v for k, v in stats["nodes"].items() if k.startswith("Gather")})
    if "tensorrt" in spec:
        assert ops["GatherBlockQuantized"] == 0 and not tables
        return
    assert tables == {"Gather#0": "s8 (u8, zero point 128) blocks of 64 along the row"}
    assert ops["GatherBlockQuantized"] == 1 and ops["Gather"] == 0, ops
    assert ops["MatMulIntegerToFloat"] + ops["DynamicQuantizeMatMul"] == 1, ops
    assert "T" not in {t.name for t in out.graph.initializer}
    assert _close_to_float(model, out, {"ids": rng.integers(0, 100, (3, 7)).astype(np.int64)}) > 0.999


@pytest.mark.parametrize(("threshold", "kept"), [(1000.0, False), (1e-6, True)])
def test_min_speedup_times_both_models_and_keeps_float_below_it(threshold: float, kept: bool) -> None:
    body, weights, inputs = CONV_RELU_CONV
    model = _model(body, weights)
    result = run_pass(model, f"quantize:min-speedup={threshold}", calibration=_calib(inputs))
    out, record = result.model, result.record
    stats, modified, timings = record["stats"], record["modified"], record["timings"]
    speed = stats["speed"]
    assert speed["batch"] == 16 and timings["float_run"] > 0 and timings["quantized_run"] > 0
    assert speed["speedup"] == pytest.approx(timings["float_run"] / timings["quantized_run"])
    assert speed["min_speedup"] == threshold and timings["calibration"] > 0 and timings["speed_check"] > 0
    ops = [n.op_type for n in out.graph.node]
    assert modified is kept and ("QuantizeLinear" in ops) is kept
    assert speed["decision"] == ("quantized" if kept else "kept float: below min-speedup")


def _opset(model: onnx.ModelProto) -> int:
    return {o.domain: o.version for o in model.opset_import}[""]


def test_min_speedup_below_the_ratio_leaves_an_opset_11_model_as_it_was() -> None:
    """The candidate is quantized (and raised to opset 13) on a copy: the model keeps opset 11 and its graph."""
    body, weights, inputs = CONV_RELU_CONV
    model = _model(body, weights, opset=11)
    result = run_pass(model, "quantize:min-speedup=1000", calibration=_calib(inputs))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is False and stats["speed"]["decision"] == "kept float: below min-speedup"
    assert _opset(out) == 11 and stats["opset_raised"] is None
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "Conv"]
    assert {t.name for t in out.graph.initializer} == {"W1", "B1", "W2", "B2"}
    result = run_pass(model, "quantize:min-speedup=1e-6", calibration=_calib(inputs))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and _opset(out) == 13 and stats["opset_raised"] == "11->13"
    assert _close_to_float(model, out, _calib(inputs, samples=4, seed=2)) > 0.999


@pytest.mark.parametrize("spec", ["quantize", "quantize:mode=weight-only,weights=s4", "quantize:mode=dynamic"])
def test_nothing_to_quantize_keeps_the_opset_and_reports_modified_false(spec: str) -> None:
    model = _model("g (float[N, 4] x) => (float[N, 4] y) { a = Sigmoid(x)  y = Relu(a) }", {}, opset=11)
    result = run_pass(model, spec, calibration=_calib({"x": (1, 4)}))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is False and _opset(out) == 11 and stats["opset_raised"] is None
    assert stats["q_nodes"] == stats["weights_quantized"] == 0
    assert out.ir_version == model.ir_version and [n.op_type for n in out.graph.node] == ["Sigmoid", "Relu"]


def test_a_weight_that_is_also_a_graph_input_stays_float() -> None:
    """Policy of onnxshrink.ir.constants: callers may override such an initializer, so it is no constant
    weight (before, quantize baked the stored default into int8 and ignored what callers fed)."""
    body = """g (float[N, 32] x, float[32, 48] W1) => (float[N, 24] y) {
        h = MatMul(x, W1)
        r = Relu(h)
        y = MatMul(r, W2)
    }"""
    model = _model(body, {"W1": (32, 48), "W2": (48, 24)})
    result = run_pass(model, "quantize:keep-slow-float=false", calibration=_calib({"x": (1, 32)}))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and set(stats["nodes"]) == {"MatMul#2"}
    assert stats["skipped"] == {"MatMul#0": "weight (input 1) 'W1' is also a graph input, so callers may override it"}
    assert "W1" in {t.name for t in out.graph.initializer}
    result = run_pass(model, "quantize:mode=weight-only")
    stats, modified = result.stats, result.modified
    assert set(stats["nodes"]) == {"MatMul#2"} and "graph input" in stats["skipped"]["MatMul#0"]


LOOP_AND_FUNCTION = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[N, 16] x) => (float[N, 16] y, float[N, 16] z) {
    h = MatMul(x, W0)
    trip = Constant <value = int64 {2}> ()
    cond = Constant <value = bool {1}> ()
    y = Loop(trip, cond, h) <body = body (int64 i, bool c_in, float[N, 16] acc) => (bool c_out, float[N, 16] next) {
        c_out = Identity(c_in)
        next = MatMul(acc, W1)
    }>
    z = local.Dense(h, W2)
}
<domain: "local", opset_import: ["" : 17]>
Dense (a, w) => (b) {
    b = MatMul(a, w)
}
"""


@pytest.mark.parametrize(
    "spec", ["quantize:keep-slow-float=false", "quantize:mode=weight-only", "quantize:mode=dynamic"]
)
def test_layers_in_functions_and_in_loop_bodies_outside_static_mode_stay_float_and_are_reported(spec: str) -> None:
    """Static mode places Q/DQ in Loop bodies too (tests/passes/test_quantize_subgraphs.py); never in functions."""
    rng = np.random.default_rng(0)
    weights = {name: (rng.standard_normal((16, 16)) / 4).astype(np.float32) for name in ("W0", "W1", "W2")}
    model = parse_model(LOOP_AND_FUNCTION, initializers=weights)
    calib = _calib({"x": (1, 16)})
    result = run_pass(model, spec, calibration=calib)
    out, stats, modified = result.model, result.stats, result.modified
    static = spec.startswith("quantize:keep")
    assert modified is True
    assert set(stats["nodes"]) == ({"MatMul#0", "Loop#3/body/MatMul#1"} if static else {"MatMul#0"})
    expected = {"Dense/MatMul#0": "in function 'Dense': quantize does not rewrite functions"}
    if not static:
        expected["body/MatMul#1"] = "in subgraph 'body': this mode works on the main graph only"
    assert stats["skipped"] == expected
    loop = next(n for n in out.graph.node if n.op_type == "Loop")
    body_matmul = next(n for n in loop.attribute[0].g.node if n.op_type == "MatMul")
    assert (body_matmul.input[1] == "W1") is not static
    assert [n.op_type for n in out.functions[0].node] == ["MatMul"]
    assert _close_to_float(model, out, {"x": calib["x"][:4]}) > 0.999


@pytest.mark.parametrize(
    ("opset", "node", "target", "refused"),
    [
        (11, "y = Dropout(h)", 13, False),  # ratio became an input at 12 (absent here: nothing to move)
        (12, "y = Dropout(h)", 13, False),
        (12, "y = ReduceMean <axes = [1], keepdims = 1> (h)", 13, False),  # changes at 18, after 13
        (12, "y = ReduceMean <axes = [1], keepdims = 1> (h)", 21, False),  # rewritten: axes as an input
        (11, "y = Softmax <axis = -1> (h)", 13, False),
        (17, "y = GroupNormalization <num_groups = 1> (h, S, S)", 21, True),
        (13, "y = Unsqueeze(h, Axes)", 21, False),  # already the opset-13 form
    ],
)
def test_opset_is_raised_only_where_no_op_changes_meaning(opset: int, node: str, target: int, refused: bool) -> None:
    from onnxshrink.passes.quantize.opset import opset_needed, raise_opset

    text = f"g (float[N, 8, 4] x) => (float[N, 8, 4] y) {{ h = Relu(x)  {node} }}"
    # One declared output shape for every op (ReduceMean's differs): only the opset matters here.
    arrays = {"S": np.ones(8, np.float32), "Axes": np.array([1])}
    model = parse_model(text, initializers=arrays, opset=opset, check=False)
    graph = ir.serde.deserialize_model(model)
    if refused:
        with pytest.raises(UsageError, match=r"changed meaning after opset"):
            opset_needed(graph, target, "test")
        return
    assert opset_needed(graph, target, "test") == target and graph.opset_imports[""] == opset  # nothing changed yet
    raised = raise_opset(graph, target)
    assert raised is not None and raised.startswith(f"{opset}->{target}") and graph.opset_imports[""] == target
    assert raise_opset(graph, target) is None and graph.ir_version == (10 if target >= 21 else 8)


# A fused hard-swish between two Convs, as `cleanup` leaves it: x * HardSigmoid(x, 1/6, 0.5)
# below opset 14, HardSwish from 14.
FUSED_HARDSWISH = {
    13: """g (float[N, 8, 8, 8] x) => (float[N, 8, 8, 8] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
        h = HardSigmoid <alpha = 0.16666667, beta = 0.5> (a)
        s = Mul(a, h)
        y = Conv <pads = [1, 1, 1, 1]> (s, W2, B2)
    }""",
    14: """g (float[N, 8, 8, 8] x) => (float[N, 8, 8, 8] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
        s = HardSwish(a)
        y = Conv <pads = [1, 1, 1, 1]> (s, W2, B2)
    }""",
}


@pytest.mark.parametrize("opset", sorted(FUSED_HARDSWISH))
def test_a_fused_hardswish_between_int8_layers_runs_int8_and_one_left_float_stays_fused(
    opset: int, tmp_path: Path
) -> None:
    """Written out for the plan (QLinearAdd/QLinearMul between int8 Convs); fused again where it stays float."""
    weights = {"W1": (8, 8, 3, 3), "B1": (8,), "W2": (8, 8, 3, 3), "B2": (8,)}
    model = _model(FUSED_HARDSWISH[opset], weights, opset=opset)
    calib = _calib({"x": (1, 8, 8, 8)}, samples=32)
    result = run_pass(model, "quantize:keep-slow-float=false", calibration=calib)
    out, stats = result.model, result.stats
    assert stats["hard_swish"] == {"written_out": 1, "fused_again": 0}
    ops = _optimized(out, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1 and ops["QLinearMul"] == 2, ops
    assert ops["HardSigmoid"] == ops["HardSwish"] == ops["Mul"] == ops["Div"] == 0, ops
    feed = {"x": np.random.default_rng(5).standard_normal((4, 8, 8, 8)).astype(np.float32)}
    assert _close_to_float(model, out, feed) > 0.995

    # The second Conv kept float: the chain has no int8 neighbour after it and runs fused as it came.
    second_conv = "Conv#3" if opset < 14 else "Conv#2"  # the model's own positions, not the written-out chain's
    result = run_pass(model, f"quantize:keep-slow-float=false,exclude={second_conv}", calibration=calib)
    out, stats = result.model, result.stats
    assert stats["hard_swish"] == {"written_out": 1, "fused_again": 1}
    fused = [
        n.op_type for n in out.graph.node if n.op_type in ("HardSigmoid", "HardSwish", "Mul", "Add", "Clip", "Div")
    ]
    assert fused == (["HardSwish"] if opset >= 14 else ["HardSigmoid", "Mul"])
    assert not [i.name for i in out.graph.initializer if i.name.endswith(("/three", "/six", "/zero", "/six_div"))]
    assert _close_to_float(model, out, feed) > 0.995
