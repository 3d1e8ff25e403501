"""``inspect --lint tensorrt``: a TensorRT-ready QDQ graph passes; each broken parser rule is
caught, with the node that breaks it named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from helpers import parse_model

from onnxshrink.cli import main
from onnxshrink.inspect.summary import value_shapes
from onnxshrink.inspect.tensorrt_lint import LintFinding, lint_tensorrt

RNG = np.random.default_rng(0)
IO = "(float[1,4,8,8] x) => (float[1,8,8,8] y)"
# TensorRT style: symmetric int8 activations (zp 0), per-channel int8 weights, float bias, no output Q.
GOOD = (
    "[xq_node] xq = QuantizeLinear(x, xs, xz)\n [xd_node] xd = DequantizeLinear(xq, xs, xz)\n"
    "[wd_node] wd = DequantizeLinear <axis = 0> (w, ws, wz)\n"
    "[conv] y = Conv <pads = [1, 1, 1, 1]> (xd, wd, b)"
)
WEIGHTS: dict[str, object] = {
    "xs": np.float32(0.05),
    "xz": np.int8(0),
    "w": RNG.integers(-127, 128, (8, 4, 3, 3), dtype=np.int8),
    "ws": np.full(8, 0.01, np.float32),
    "wz": np.zeros(8, np.int8),
    "b": np.ones(8, np.float32),
}


def _model(body: str = GOOD, io: str = IO, **changes: object) -> ir.Model:
    """The good graph with initializers replaced (a value) or turned into graph inputs (None)."""
    used = {name: value for name, value in {**WEIGHTS, **changes}.items() if re.search(rf"\b{name}\b", body)}
    text = f'<ir_version: 10, opset_import: ["" : 21]> g {io} {{ {body} }}'
    weights = {name: value for name, value in used.items() if value is not None}
    # Unchecked: weights turned into graph inputs come after parsing, and some cases break ONNX rules.
    proto = parse_model(text, initializers=weights, check=False)
    for name in (name for name, value in used.items() if value is None):
        dtype = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(WEIGHTS[name]).dtype)
        proto.graph.input.append(onnx.helper.make_tensor_value_info(name, dtype, []))
    return ir.serde.deserialize_model(proto)


def _int4(shape: tuple[int, ...]) -> ir.Tensor:
    values = RNG.integers(-8, 8, shape).astype(np.int8)
    return ir.Tensor(values, dtype=ir.DataType.INT4)


def _rules(findings: list[LintFinding]) -> set[tuple[str, str]]:
    return {(f.node, f.rule) for f in findings}


def test_tensorrt_style_graph_passes() -> None:
    model = _model()
    assert lint_tensorrt(model, value_shapes(model, {})) == []


BAD = {
    "uint8 activations": ({"xz": np.uint8(0)}, {("xq_node", "uint8"), ("xd_node", "uint8")}),
    "non-zero zero point": ({"wz": np.array([0, 0, 0, 1, 0, 0, 0, 2], np.int8)}, {("wd_node", "zero-point")}),
    "zero point not constant": ({"xz": None}, {("xq_node", "zero-point-constant"), ("xd_node", "zero-point-constant")}),
    "zero-point volume": ({"wz": np.zeros(4, np.int8)}, {("wd_node", "zero-point-volume")}),
    "scale not constant": ({"ws": None}, {("wd_node", "scale-constant")}),
    "negative scale": (
        {"ws": np.array([0.01, -0.01, 0.01, 0.01, 0, 0.01, 0.01, 0.01], np.float32)},
        {("wd_node", "scale-positive")},
    ),
    "infinite scale": ({"xs": np.float32(np.inf)}, {("xq_node", "scale-finite"), ("xd_node", "scale-finite")}),
    "per-channel length": (
        {"ws": np.full(4, 0.01, np.float32), "wz": np.zeros(4, np.int8)},
        {("wd_node", "per-channel-scale")},
    ),
    "per-channel 2-D": (
        {"ws": np.full((8, 1), 0.01, np.float32), "wz": np.zeros((8, 1), np.int8)},
        {("wd_node", "per-channel-scale")},
    ),
    "fp8 e5m2": (
        {"xz": ir.Tensor(np.zeros((), np.uint8), dtype=ir.DataType.FLOAT8E5M2)},
        {("xq_node", "dtype"), ("xd_node", "dtype")},
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_each_broken_rule_is_named_with_its_node(name: str) -> None:
    changes, expected = BAD[name]
    model = _model(**changes)
    findings = lint_tensorrt(model, value_shapes(model, {}))
    assert _rules(findings) == expected, [str(f) for f in findings]
    assert all(f.node in str(f) and f.rule in str(f) for f in findings)


def test_int32_bias_dequantize_is_rejected() -> None:
    body = GOOD.replace("(xd, wd, b)", "(xd, wd, bd)") + "\n [bias_dq] bd = DequantizeLinear <axis = 0> (bq, bs)"
    model = _model(body, bq=np.arange(8, dtype=np.int32), bs=np.full(8, 0.0005, np.float32))
    assert _rules(lint_tensorrt(model)) == {("bias_dq", "int32-dequantize")}


def test_quantize_without_zero_point_defaults_to_uint8() -> None:
    body = "[q] xq = QuantizeLinear(x, xs)\n [dq] y = DequantizeLinear(xq, xs)"
    model = _model(body, io="(float[1,4,8,8] x) => (float[1,4,8,8] y)")
    assert _rules(lint_tensorrt(model)) == {("q", "uint8"), ("dq", "uint8")}


def test_activation_per_channel_axis_checked_against_inferred_shape() -> None:
    """The activation's shape is only known after inference: [1,4,8,8], axis 1 needs 4 scales."""
    body = (
        "t = Relu(x)\n [q] xq = QuantizeLinear <axis = 1> (t, cs, cz)\n"
        "[dq] y = DequantizeLinear <axis = 1> (xq, cs, cz)"
    )
    io = "(float[1,4,8,8] x) => (float[1,4,8,8] y)"
    good = _model(body, io=io, cs=np.full(4, 0.1, np.float32), cz=np.zeros(4, np.int8))
    assert lint_tensorrt(good, value_shapes(good, {})) == []
    bad = _model(body, io=io, cs=np.full(3, 0.1, np.float32), cz=np.zeros(3, np.int8))
    assert _rules(lint_tensorrt(bad, value_shapes(bad, {}))) == {
        ("q", "per-channel-scale"),
        ("dq", "per-channel-scale"),
    }
    assert lint_tensorrt(bad) == [], "without shapes the rule has nothing to compare with"


@pytest.mark.parametrize(
    ("dtype", "shape", "scale_shape", "expected"),
    [
        ("int4", (64, 16), (2, 16), set()),
        ("int4", (64, 16), (4, 16), {("wd_block", "block-shape")}),
        ("int4", (64, 16), (2,), {("wd_block", "block-shape")}),
        ("int8", (64, 16), (2, 16), {("wd_block", "block-dtype")}),
        ("int4", (63, 1), (2, 1), {("wd_block", "int4-even")}),
    ],
)
def test_block_quantization_rules(
    dtype: str, shape: tuple[int, int], scale_shape: tuple[int, ...], expected: set[tuple[str, str]]
) -> None:
    weight = _int4(shape) if dtype == "int4" else RNG.integers(-127, 128, shape).astype(np.int8)
    body = "[wd_block] wd = DequantizeLinear <axis = 0, block_size = 32> (wq, bs)\n [mm] y = MatMul(x, wd)"
    io = f"(float[2,{shape[0]}] x) => (float[2,{shape[1]}] y)"
    model = _model(body, io=io, wq=weight, bs=np.full(scale_shape, 0.1, np.float32))
    assert _rules(lint_tensorrt(model)) == expected


def test_nodes_in_subgraphs_are_checked() -> None:
    body = (
        "[if_node] y = If(cond) <then_branch = g1 () => (float[2] a) "
        "{ [inner_q] q = QuantizeLinear(v, s, z)  [inner_dq] a = DequantizeLinear(q, s, z) }, "
        "else_branch = g2 () => (float[2] e) { e = Identity(v) }>"
    )
    model = _model(
        body,
        io="(bool cond, float[2] v) => (float[2] y)",
        s=np.float32(0.1),
        z=np.uint8(3),
    )
    # The branch reads s and z from the outer graph's initializers.
    assert {(f.node, f.rule) for f in lint_tensorrt(model)} == {
        ("inner_q", "uint8"),
        ("inner_q", "zero-point"),
        ("inner_dq", "uint8"),
        ("inner_dq", "zero-point"),
    }


def _save(model: ir.Model, path: Path) -> Path:
    ir.save(model, path)
    return path


def test_cli_lint_passes_and_fails(tmp_path: Path) -> None:
    good = _save(_model(), tmp_path / "good.onnx")
    result = CliRunner().invoke(main, ["inspect", str(good), "--lint", "tensorrt"])
    assert result.exit_code == 0, result.stderr
    assert "TensorRT lint: 0 findings in 3 Q/DQ nodes" in result.stdout

    bad = _save(_model(wz=np.array([0, 0, 0, 1, 0, 0, 0, 2], np.int8)), tmp_path / "bad.onnx")
    result = CliRunner().invoke(main, ["inspect", str(bad), "--lint", "tensorrt"])
    assert result.exit_code == 1
    assert "wd_node (DequantizeLinear): [zero-point]" in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("onnxshrink: error: TensorRT lint: 1 findings") and "wd_node" in line

    result = CliRunner().invoke(main, ["inspect", str(bad), "--lint", "tensorrt", "--json"])
    assert result.exit_code == 1
    lint = json.loads(result.stdout)["lint"]
    assert lint["passed"] is False and lint["target"] == "tensorrt"
    assert [(f["node"], f["rule"]) for f in lint["findings"]] == [("wd_node", "zero-point")]


def test_cli_lint_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    good = _save(_model(), tmp_path / "good.onnx")
    result = CliRunner().invoke(main, ["inspect", str(good), "--lint", "openvino"])
    assert result.exit_code == 2 and "openvino" in result.stderr


def test_scale_overridable_by_a_graph_input_is_not_a_constant() -> None:
    """The one constant policy (``onnxshrink.ir.constants``): an initializer that is also a graph
    input can be replaced at run time, so the parser cannot rely on it; a Constant node can."""
    model = _model()
    model.graph.inputs.append(model.graph.initializers["ws"])
    assert _rules(lint_tensorrt(model, value_shapes(model, {}))) == {("wd_node", "scale-constant")}

    scales = ", ".join(["0.01"] * 8)
    body = f"[ws_node] wsc = Constant <value = float[8] {{{scales}}}> ()\n" + GOOD.replace(
        "(w, ws, wz)", "(w, wsc, wz)"
    )
    model = _model(body)
    assert lint_tensorrt(model, value_shapes(model, {})) == []
