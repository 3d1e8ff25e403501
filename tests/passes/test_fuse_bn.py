"""``fuse-bn`` on tiny graphs: graph structure in ONNX text, weights and BN statistics drawn at random."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from helpers import (
    DIGITS,
    DIGITS_TEST,
    assert_close,
    assert_same_signature,
    op_counts,
    parse_model,
    random_feed,
    run,
    run_pass,
)

import onnxshrink
import onnxshrink.passes.fuse_bn  # registers the pass
from onnxshrink.errors import UsageError

PADS = "pads = [1, 1, 1, 1]"
BN = "BatchNormalization <epsilon = 0.001> (c, gamma, beta, mean, var)"

Arrays = dict[str, np.ndarray]


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _weights(rng: np.random.Generator, dtype: type = np.float32, **shapes: tuple[int, ...]) -> Arrays:
    return {name: rng.uniform(-1, 1, shape).astype(dtype) for name, shape in shapes.items()}


def _bn(rng: np.random.Generator, channels: int, dtype: type = np.float32) -> Arrays:
    """Non-trivial running statistics, so a dropped or misplaced BN shows in the numbers."""
    return {
        "gamma": rng.uniform(0.5, 1.5, channels).astype(dtype),
        "beta": rng.uniform(-1, 1, channels).astype(dtype),
        "mean": rng.uniform(-1, 1, channels).astype(dtype),
        "var": rng.uniform(0.5, 2.0, channels).astype(dtype),
    }


Case = Callable[[np.random.Generator], tuple[str, Arrays, dict[str, int], dict[str, int]]]


def _conv_bn(bias: bool, group: int) -> Case:
    def build(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
        c_in, c_out = (3, 4) if group == 1 else (4, 8)  # depthwise with channel multiplier 2
        arrays = {**_weights(rng, w=(c_out, c_in // group, 3, 3), b=(c_out,)), **_bn(rng, c_out)}
        inputs = "x, w, b" if bias else "x, w"
        if not bias:
            del arrays["b"]
        text = f"""g (float[2,{c_in},5,5] x) => (float[2,{c_out},5,5] y) {{
            c = Conv <group = {group}, {PADS}> ({inputs})  y = {BN} }}"""
        return text, arrays, {"Conv": 1}, {"batchnorm_fused": 1}

    return build


def _conv_transpose_bn(group: int) -> Case:
    def build(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
        c_out = 3 * group
        arrays = {**_weights(rng, w=(4, 3, 3, 3), b=(c_out,)), **_bn(rng, c_out)}
        text = f"""g (float[2,4,3,3] x) => (float[2,{c_out},7,7] y) {{
            c = ConvTranspose <group = {group}, strides = [2, 2]> (x, w, b)  y = {BN} }}"""
        return text, arrays, {"ConvTranspose": 1}, {"batchnorm_fused": 1}

    return build


def _gemm_bn(trans_b: int) -> Case:
    def build(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
        arrays = {**_weights(rng, w=(3, 5) if trans_b else (5, 3), b=(3,)), **_bn(rng, 3)}
        text = f"""g (float[2,5] x) => (float[2,3] y) {{
            c = Gemm <alpha = 0.7, beta = 0.5, transB = {trans_b}> (x, w, b)  y = {BN} }}"""
        return text, arrays, {"Gemm": 1}, {"batchnorm_fused": 1}

    return build


def _matmul_bn(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = {**_weights(rng, w=(5, 3)), **_bn(rng, 3)}
    text = f"""g (float[N,5] x) => (float[N,3] y) {{ c = MatMul(x, w)  y = {BN} }}"""
    return text, arrays, {"Gemm": 1}, {"batchnorm_fused": 1}


def _conv_mul_add(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = _weights(rng, w=(4, 3, 3, 3), b=(4,), s=(4, 1, 1), t=(1, 4, 1, 1))
    text = f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{
        c = Conv <{PADS}> (x, w, b)  m = Mul(s, c)  y = Add(m, t) }}"""
    return text, arrays, {"Conv": 1}, {"affine_fused": 2}


def _conv_bn_mul_sub(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = {**_weights(rng, w=(4, 3, 3, 3), k=(), t=(4, 1, 1)), **_bn(rng, 4)}
    text = f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{
        c = Conv <{PADS}> (x, w)  n = {BN}  m = Mul(n, k)  y = Sub(t, m) }}"""
    return text, arrays, {"Conv": 1}, {"batchnorm_fused": 1, "affine_fused": 2}


def _gemm_add_scalar(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = _weights(rng, w=(5, 3), t=(1,))
    text = """g (float[2,5] x) => (float[2,3] y) { c = Gemm(x, w)  y = Add(c, t) }"""
    return text, arrays, {"Gemm": 1}, {"affine_fused": 1}


def _matmul_3d_mul(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = _weights(rng, w=(5, 3), s=(3,))
    text = """g (float[2,4,5] x) => (float[2,4,3] y) { c = MatMul(x, w)  y = Mul(c, s) }"""
    return text, arrays, {"MatMul": 1}, {"affine_fused": 1}


def _affine_before_conv(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = _weights(rng, w=(4, 3, 3, 3), b=(4,), s=(1, 3, 1, 1), t=(3, 1, 1))
    text = """g (float[2,3,5,5] x) => (float[2,4,3,3] y) {
        m = Mul(x, s)  a = Add(t, m)  y = Conv(a, w, b) }"""
    return text, arrays, {"Conv": 1}, {"affine_fused": 2}


def _bn_before_depthwise_conv(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = {**_weights(rng, w=(6, 1, 3, 3)), **_bn(rng, 3)}
    text = """g (float[2,3,5,5] x) => (float[2,6,3,3] y) {
        n = BatchNormalization (x, gamma, beta, mean, var)  y = Conv <group = 3> (n, w) }"""
    return text, arrays, {"Conv": 1}, {"batchnorm_fused": 1}


def _mul_before_padded_conv(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = _weights(rng, w=(4, 3, 3, 3), s=(3, 1, 1))
    text = f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{ m = Mul(x, s)  y = Conv <{PADS}> (m, w) }}"""
    return text, arrays, {"Conv": 1}, {"affine_fused": 1}


def _shared_weight(rng: np.random.Generator) -> tuple[str, Arrays, dict[str, int], dict[str, int]]:
    arrays = {**_weights(rng, w=(4, 3, 3, 3)), **_bn(rng, 4)}
    text = f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y, float[2,4,5,5] z) {{
        c = Conv <{PADS}> (x, w)  y = {BN}  z = Conv <{PADS}> (x, w) }}"""
    return text, arrays, {"Conv": 2}, {"batchnorm_fused": 1}


CHANGES: dict[str, Case] = {
    "conv_bn_bias": _conv_bn(bias=True, group=1),
    "conv_bn_no_bias": _conv_bn(bias=False, group=1),
    "depthwise_conv_bn_bias": _conv_bn(bias=True, group=4),
    "depthwise_conv_bn_no_bias": _conv_bn(bias=False, group=4),
    "conv_transpose_bn_group1": _conv_transpose_bn(group=1),
    "conv_transpose_bn_group2": _conv_transpose_bn(group=2),
    "gemm_bn_transb0": _gemm_bn(trans_b=0),
    "gemm_bn_transb1": _gemm_bn(trans_b=1),
    "matmul_bn_becomes_gemm": _matmul_bn,
    "conv_mul_add": _conv_mul_add,
    "conv_bn_mul_sub_reversed": _conv_bn_mul_sub,
    "gemm_add_scalar": _gemm_add_scalar,
    "matmul_3d_mul": _matmul_3d_mul,
    "mul_add_before_unpadded_conv": _affine_before_conv,
    "bn_before_depthwise_conv": _bn_before_depthwise_conv,
    "mul_before_padded_conv": _mul_before_padded_conv,
    "shared_weight_copied": _shared_weight,
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_fuse_changes(name: str) -> None:
    text, arrays, ops_after, stats = CHANGES[name](_rng())
    model = parse_model(text, initializers=arrays)
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert op_counts(out.graph) == ops_after
    assert record["modified"] is True
    assert record["stats"] == stats
    assert_same_signature(model, out)
    assert len(out.graph.initializer) <= len(model.graph.initializer), "replaced constants must not linger"
    assert_close(model, out, random_feed(model, seed=1), context=name)
    again = run_pass(out, "fuse-bn").record
    assert again["modified"] is False and again["stats"] == {}


def test_fused_weights_keep_names_and_shared_weight_is_not_touched() -> None:
    text, arrays, _, _ = _shared_weight(_rng())
    model = parse_model(text, initializers=arrays)
    out = run_pass(model, "fuse-bn").model
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    conv_y, conv_z = (n for n in out.graph.node if n.op_type == "Conv")
    # The Conv that kept its plain output still reads the original tensor, unchanged.
    assert conv_z.input[1] == "w" and np.array_equal(weights["w"], arrays["w"])
    assert conv_y.input[1] != "w" and conv_y.input[2] == "w_bias"
    assert conv_y.output[0] == "y"

    text, arrays, _, _ = _conv_bn(bias=True, group=1)(_rng())
    out = run_pass(parse_model(text, initializers=arrays), "fuse-bn").model
    # A weight nothing else reads is replaced under its own name.
    assert sorted(i.name for i in out.graph.initializer) == ["b", "w"]


def test_float16_weights() -> None:
    rng = _rng()
    arrays = {**_weights(rng, np.float16, w=(4, 3, 3, 3)), **_bn(rng, 4, np.float16)}
    text = f"""g (float16[2,3,5,5] x) => (float16[2,4,5,5] y) {{ c = Conv <{PADS}> (x, w)  y = {BN} }}"""
    model = parse_model(text, initializers=arrays)
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["stats"] == {"batchnorm_fused": 1}
    assert {i.data_type for i in out.graph.initializer} == {onnx.TensorProto.FLOAT16}
    # float16 keeps 11 significant bits: the folded weights are rounded to float16 once, where
    # the original rounds the Conv output and again each BN step; a few ulps of ~1 differ.
    assert_close(model, out, random_feed(model, seed=1), rtol=1e-2, atol=1e-2)


LEAVES_ALONE: dict[str, tuple[str, Callable[[np.random.Generator], Arrays]]] = {
    "conv_output_used_twice": (
        f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y, float[2,4,5,5] z) {{
            c = Conv <{PADS}> (x, w)  y = {BN}  z = Relu(c) }}""",
        lambda rng: {**_weights(rng, w=(4, 3, 3, 3)), **_bn(rng, 4)},
    ),
    "conv_output_is_graph_output": (
        f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y, float[2,4,5,5] c) {{ c = Conv <{PADS}> (x, w)  y = {BN} }}""",
        lambda rng: {**_weights(rng, w=(4, 3, 3, 3)), **_bn(rng, 4)},
    ),
    "bn_training_mode": (
        f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{
            c = Conv <{PADS}> (x, w)
            y, running_mean, running_var = BatchNormalization <training_mode = 1> (c, gamma, beta, mean, var) }}""",
        lambda rng: {**_weights(rng, w=(4, 3, 3, 3)), **_bn(rng, 4)},
    ),
    "bn_scale_not_constant": (
        f"""g (float[2,3,5,5] x, float[4] gamma) => (float[2,4,5,5] y) {{ c = Conv <{PADS}> (x, w)  y = {BN} }}""",
        lambda rng: {k: v for k, v in {**_weights(rng, w=(4, 3, 3, 3)), **_bn(rng, 4)}.items() if k != "gamma"},
    ),
    "weight_overridable_by_input": (
        f"""g (float[2,3,5,5] x, float[4,3,3,3] w) => (float[2,4,5,5] y) {{ c = Conv <{PADS}> (x, w)  y = {BN} }}""",
        lambda rng: {**_weights(rng, w=(4, 3, 3, 3)), **_bn(rng, 4)},
    ),
    "mul_not_per_channel": (
        f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{ c = Conv <{PADS}> (x, w)  y = Mul(c, s) }}""",
        lambda rng: _weights(rng, w=(4, 3, 3, 3), s=(1, 1, 1, 5)),
    ),
    "add_would_grow_shape": (
        """g (float[2,5] x) => (float[1,2,3] y) { c = Gemm(x, w)  y = Add(c, t) }""",
        lambda rng: _weights(rng, w=(5, 3), t=(1, 1, 3)),
    ),
    "bn_after_relu": (
        f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{ c0 = Conv <{PADS}> (x, w)  c = Relu(c0)  y = {BN} }}""",
        lambda rng: {**_weights(rng, w=(4, 3, 3, 3)), **_bn(rng, 4)},
    ),
    "add_before_padded_conv": (
        f"""g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{ a = Add(x, t)  y = Conv <{PADS}> (a, w) }}""",
        lambda rng: _weights(rng, w=(4, 3, 3, 3), t=(3, 1, 1)),
    ),
    "matmul_3d_bn_on_other_axis": (
        # BN's channel axis 1 has the same size (3) as the MatMul's output channels: still not them.
        f"""g (float[2,3,5] x) => (float[2,3,3] y) {{ c = MatMul(x, w)  y = {BN} }}""",
        lambda rng: {**_weights(rng, w=(5, 3)), **_bn(rng, 3)},
    ),
    "matmul_3d_add_has_no_gemm": (
        """g (float[2,4,5] x) => (float[2,4,3] y) { c = MatMul(x, w)  y = Add(c, t) }""",
        lambda rng: _weights(rng, w=(5, 3), t=(3,)),
    ),
}


# Why each BatchNormalization that stays was left alone (``skipped``, the rest: no BN to report).
KEPT_BECAUSE = {
    "conv_output_used_twice": "after 'Conv->c': 'c' has 2 uses",
    "conv_output_is_graph_output": "after 'Conv->c': 'c' is a graph output",
    "bn_training_mode": "training_mode or spatial is not at its inference default",
    "bn_scale_not_constant": "scale, bias, mean and var are not all constant float [4] vectors",
    "weight_overridable_by_input": "the Conv weight is not a non-empty float constant",
    "bn_after_relu": "its input comes from 'Relu->c', not a layer it may fold into",
    "matmul_3d_bn_on_other_axis": "after 'MatMul->c': it does not normalize the layer's channel axis",
}


@pytest.mark.parametrize("name", sorted(LEAVES_ALONE))
def test_fuse_leaves_alone(name: str) -> None:
    text, make = LEAVES_ALONE[name]
    model = parse_model(text, initializers=make(_rng()))
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["modified"] is False, record["stats"]
    skipped = record["stats"].pop("skipped", {})
    assert record["stats"] == {}
    if name in KEPT_BECAUSE:
        assert list(skipped) == ["BatchNormalization->y"]
        assert KEPT_BECAUSE[name] in skipped["BatchNormalization->y"]
    else:
        assert skipped == {}
    assert op_counts(out.graph) == op_counts(model.graph)
    assert_same_signature(model, out)
    if name != "bn_training_mode":  # training mode computes batch statistics; not an inference graph
        assert_close(model, out, random_feed(model, seed=1), context=name)


def test_options_restrict_rules() -> None:
    text, arrays, _, _ = _conv_bn_mul_sub(_rng())
    model = parse_model(text, initializers=arrays)
    fused = run_pass(model, "fuse-bn:fold-affine=false")
    out, record = fused.model, fused.record
    assert record["stats"] == {"batchnorm_fused": 1}
    assert op_counts(out.graph) == {"Conv": 1, "Mul": 1, "Sub": 1}
    assert record["options"] == {"into": ["Conv", "ConvTranspose", "Gemm", "MatMul"], "fold_affine": False}

    text, arrays, _, _ = _gemm_bn(trans_b=1)(_rng())
    record = run_pass(parse_model(text, initializers=arrays), "fuse-bn:into=Conv,ConvTranspose").record
    assert record["modified"] is False
    with pytest.raises(UsageError, match="fuse-bn: option into: 'Relu' is not one of Conv"):
        run_pass(parse_model(text, initializers=arrays), "fuse-bn:into=Conv,Relu")


def test_inside_if_branch_with_outer_weights() -> None:
    rng = _rng()
    arrays = {**_weights(rng, w=(4, 3, 3, 3), k=(4, 1, 1)), **_bn(rng, 4)}
    model = parse_model(
        f"""g (bool cond, float[2,3,5,5] x) => (float[2,4,5,5] y) {{
            y = If(cond) <
                then_branch = t () => (float[2,4,5,5] ty) {{ c = Conv <{PADS}> (x, w)  n = {BN}  ty = Mul(n, k) }},
                else_branch = e () => (float[2,4,5,5] ey) {{ ey = Conv <{PADS}> (x, w) }}> }}""",
        initializers=arrays,
    )
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["stats"] == {"batchnorm_fused": 1, "affine_fused": 1}
    then_branch = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert op_counts(then_branch) == {"Conv": 1}
    assert [o.name for o in then_branch.output] == ["ty"]
    # The else branch still reads the outer weight, so the then branch got its own.
    assert {i.name for i in then_branch.initializer} == {"w__1", "w_bias"}
    assert {i.name for i in out.graph.initializer} == {"w"}
    assert_same_signature(model, out)
    for cond in (True, False):
        feed = {**random_feed(model, seed=1), "cond": np.array(cond)}
        assert_close(model, out, feed, context=f"cond={cond}")
    again = run_pass(out, "fuse-bn").record
    assert again["modified"] is False


def test_inside_loop_body_with_outer_weights() -> None:
    rng = _rng()
    arrays = {**_weights(rng, w=(4, 4, 3, 3)), **_bn(rng, 4)}
    model = parse_model(
        f"""g (int64 n, bool go, float[2,4,5,5] x) => (float[2,4,5,5] y) {{
            y = Loop(n, go, x) <body = b (int64 i, bool cin, float[2,4,5,5] v) => (bool cout, float[2,4,5,5] vo) {{
                cout = Identity(cin)  c = Conv <{PADS}> (v, w)  vo = {BN} }}> }}""",
        initializers=arrays,
    )
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["modified"] is True
    assert record["stats"] == {"batchnorm_fused": 1}
    body = next(a.g for a in out.graph.node[0].attribute if a.name == "body")
    assert op_counts(body) == {"Identity": 1, "Conv": 1}
    assert [o.name for o in body.output] == ["cout", "vo"]
    # The fused weight is the body's own: the outer 'w' is no longer read and goes.
    assert {i.name for i in body.initializer} == {"w", "w_bias"} and not out.graph.initializer
    assert_same_signature(model, out)
    # One trip: the fused weights round differently, and each further trip amplifies that.
    feed = {**random_feed(model, seed=1), "n": np.array(1, dtype=np.int64), "go": np.array(True)}
    assert_close(model, out, feed)
    again = run_pass(out, "fuse-bn").record
    assert again["modified"] is False


FUNCTION_MODEL = f"""
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2,3,5,5] x) => (float[2,4,5,5] y) {{ y = local.block(x) }}
<domain: "local", opset_import: ["" : 17]>
block (x) => (y) {{ c = Conv <{PADS}> (x, w)  n = {BN}  y = Add(n, t) }}
"""


def _prepend_constants(model: onnx.ModelProto, arrays: Arrays) -> None:
    """Function bodies have no initializers: their weights are Constant nodes."""
    (function,) = model.functions
    body = list(function.node)
    del function.node[:]
    function.node.extend(
        onnx.helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(a, name))
        for name, a in arrays.items()
    )
    function.node.extend(body)
    onnx.checker.check_model(model, full_check=True)


def test_inside_function_with_constant_nodes() -> None:
    rng = _rng()
    arrays = {**_weights(rng, w=(4, 3, 3, 3), t=(4, 1, 1)), **_bn(rng, 4)}
    model = parse_model(FUNCTION_MODEL, check=False)  # weights come as Constant nodes next
    _prepend_constants(model, arrays)
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["stats"] == {"batchnorm_fused": 1, "affine_fused": 1}
    (body,) = out.functions
    assert op_counts(body) == {"Constant": 2, "Conv": 1}
    assert list(body.output) == ["y"]
    assert_same_signature(model, out)
    assert_close(model, out, random_feed(model, seed=1))
    again = run_pass(out, "fuse-bn").record
    assert again["modified"] is False


def test_if_branch_inside_function_gets_constant_nodes() -> None:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (bool cond, float[2,3,5,5] x) => (float[2,4,5,5] y) {{ y = local.block(cond, x) }}
    <domain: "local", opset_import: ["" : 17]>
    block (cond, x) => (y) {{
        y = If(cond) <
            then_branch = t () => (float[2,4,5,5] ty) {{ c = Conv <{PADS}> (x, w)  ty = {BN} }},
            else_branch = e () => (float[2,4,5,5] ey) {{ ey = Conv <{PADS}> (x, w) }}> }}
    """
    model = parse_model(text, check=False)  # weights come as Constant nodes next
    _prepend_constants(model, {**_weights(_rng(), w=(4, 3, 3, 3)), **_bn(_rng(), 4)})
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["stats"] == {"batchnorm_fused": 1}
    then_branch = next(a.g for a in out.functions[0].node[-1].attribute if a.name == "then_branch")
    # A graph inside a function body holds no initializers: the new weights are Constant nodes.
    assert op_counts(then_branch) == {"Constant": 2, "Conv": 1} and not then_branch.initializer
    for cond in (True, False):
        feed = {**random_feed(model, seed=1), "cond": np.array(cond)}
        assert_close(model, out, feed, context=f"cond={cond}")


def test_function_rewrite_that_would_add_nodes_is_skipped() -> None:
    # The Conv weight and the Mul constant are read elsewhere too: folding the Mul would remove
    # one node and add a Constant node for the scaled weight, so the body would not shrink.
    text = f"""
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[2,3,5,5] x) => (float[2,4,5,5] y, float[2,4,5,5] z) {{ y, z = local.block(x) }}
    <domain: "local", opset_import: ["" : 17]>
    block (x) => (y, z) {{
        c = Conv <{PADS}> (x, w)  y = Mul(c, s)  d = Conv <{PADS}> (x, w)  r = Relu(d)  z = Mul(r, s) }}
    """
    model = parse_model(text, check=False)  # weights come as Constant nodes next
    _prepend_constants(model, _weights(_rng(), w=(4, 3, 3, 3), s=(4, 1, 1)))
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["modified"] is False
    assert op_counts(out.functions[0]) == op_counts(model.functions[0])


def test_function_batchnorm_that_would_add_nodes_is_reported() -> None:
    # Both BatchNormalizations share their statistics and both Convs their weight: fusing either
    # removes one node and adds two Constant nodes (the new weight and bias).
    text = f"""
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[2,3,5,5] x) => (float[2,4,5,5] y, float[2,4,5,5] z) {{ y, z = local.block(x) }}
    <domain: "local", opset_import: ["" : 17]>
    block (x) => (y, z) {{
        c = Conv <{PADS}> (x, w)  y = {BN}  d = Conv <{PADS}> (x, w)  z = {BN.replace("(c,", "(d,")} }}
    """
    model = parse_model(text, check=False)  # weights come as Constant nodes next
    _prepend_constants(model, {**_weights(_rng(), w=(4, 3, 3, 3)), **_bn(_rng(), 4)})
    fused = run_pass(model, "fuse-bn")
    out, record = fused.model, fused.record
    assert record["modified"] is False
    assert op_counts(out.functions[0]) == op_counts(model.functions[0])
    no_gain = "folding would add constant nodes to the function body"
    assert record["stats"] == {
        "skipped": {
            "BatchNormalization->y": f"after 'Conv->c': {no_gain}",
            "BatchNormalization->z": f"after 'Conv->d': {no_gain}",
        }
    }


def test_digits_cnn_all_batchnorms_fused_accuracy_unchanged() -> None:
    path = DIGITS
    test = np.load(DIGITS_TEST)
    result = onnxshrink.shrink(path, ["fuse-bn"], inputs=DIGITS_TEST)
    verification = result.report["verification"]
    assert verification["passed"] is True
    assert verification["accuracy_candidate"] == verification["accuracy_reference"]
    assert result.report["passes"][0]["stats"] == {"batchnorm_fused": 6}
    out = result.to_proto()
    assert "BatchNormalization" not in op_counts(out.graph) and op_counts(out.graph)["Conv"] == 6
    (before,) = run(path, {"input": test["input"]})
    (after,) = run(out, {"input": test["input"]})
    assert np.array_equal(before.argmax(axis=1), after.argmax(axis=1))
    assert (after.argmax(axis=1) == test["labels"]).mean() == pytest.approx(538 / 540)
