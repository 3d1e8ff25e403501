"""``fold`` on tiny graphs: constants, shape arithmetic, Reshape targets, subgraphs, guards."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import DIGITS, DIGITS_TEST, assert_close, op_counts, parse_model, random_feed, run_pass

import onnxshrink


def _same_numerics(model: onnx.ModelProto, out: onnx.ModelProto, sizes: dict[str, int] | None = None) -> None:
    """Outputs agree with dynamic dims at ``sizes`` (default 3), then at each size + 2."""
    for scale in (None, {k: v + 2 for k, v in (sizes or {"N": 3, "S": 3}).items()}):
        assert_close(model, out, random_feed(model, sizes=scale or sizes, dynamic_size=3))


FOLDS = {
    "constant_chain": (
        """g (float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}>
        { c = Mul(a, b)  d = Sqrt(c)  y = Add(x, d) }""",
        {"Add": 1},
    ),
    "constant_value_floats_lifted": (
        """g (float[2] x) => (float[2] y) { c = Constant <value_floats = [1.0, 2.0]> ()  y = Add(x, c) }""",
        {"Add": 1},
    ),
    "constant_node_lifted": (
        """g (float[2] x) => (float[2] y) { c = Constant <value = float[2] {1.0, 2.0}> ()  y = Add(x, c) }""",
        {"Add": 1},
    ),
    "static_shape_arithmetic": (
        """g (float[4, 6] x) => (float[24] y) {
            s = Shape(x)  p = ReduceProd <keepdims = 1> (s)  y = Reshape(x, p) }""",
        {"Reshape": 1},
    ),
    "weight_transpose": (
        """g (float[3, 2] x) => (float[3, 4] y) <float[4, 2] w = {1.,2.,3.,4.,5.,6.,7.,8.}>
        { t = Transpose <perm = [1, 0]> (w)  y = MatMul(x, t) }""",
        {"MatMul": 1},
    ),
    "partial_reshape_target": (
        """g (float[N, 8] x) => (float[N, 2, 4] y) <int64[1] zero = {0}, int64[2] tail = {2, 4}> {
            s = Shape(x)  n = Gather(s, zero)  t = Concat <axis = 0> (n, tail)  y = Reshape(x, t) }""",
        {"Reshape": 1},
    ),
    "partial_through_relu_and_transpose": (
        """g (float[N, S, 8] x) => (float[S, N, 2, 4] y) <int64 i0 = {0}, int64 i1 = {1}, int64[2] tail = {2, 4}> {
            r = Relu(x)  t = Transpose <perm = [1, 0, 2]> (r)  s = Shape(x)
            a = Gather(s, i1)  b = Gather(s, i0)  au = Unsqueeze(a, zero)  bu = Unsqueeze(b, zero)
            c = Concat <axis = 0> (au, bu, tail)  y = Reshape(t, c) }""".replace(
            "<int64 i0", "<int64[1] zero = {0}, int64 i0"
        ),
        {"Relu": 1, "Transpose": 1, "Reshape": 1},
    ),
    "if_branch_folds_outer_constant": (
        """g (bool c, float[2] x) => (float[2] y) <float[2] k = {1.0, 2.0}> {
            y = If(c) <then_branch = t () => (float[2] o) { m = Mul(k, k)  o = Add(x, m) },
                      else_branch = e () => (float[2] q) { q = Neg(x) }> }""",
        {"If": 1},
    ),
}


@pytest.mark.parametrize("name", sorted(FOLDS))
def test_fold_changes(name: str) -> None:
    text, ops_after = FOLDS[name]
    model = parse_model(text)
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert dict(op_counts(out)) == ops_after
    assert record["modified"] is True
    assert [v.name for v in out.graph.output] == [v.name for v in model.graph.output]
    if "c" in {i.name for i in model.graph.input}:
        feed = random_feed(model, dynamic_size=3)
        for cond in (True, False):
            feed["c"] = np.array(cond)
            assert_close(model, out, feed)
    else:
        _same_numerics(model, out)
    again = run_pass(out, "fold").record
    assert again["modified"] is False, again["stats"]


def test_reshape_target_becomes_zero_and_minus_one() -> None:
    model = parse_model(FOLDS["partial_reshape_target"][0])
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    (target,) = [i for i in out.graph.initializer if i.name.endswith("_shape")]
    assert onnx.numpy_helper.to_array(target).tolist() == [0, 2, 4]
    assert record["stats"]["reshape_targets_folded"] == 1


def test_symbolic_product_becomes_the_one_minus_one() -> None:
    # [N, 6, 4] -> [N * 6, 4]: the product has no name, so it is the target's single -1.
    model = parse_model(
        """g (float[N, 6, 4] x) => (float[M, 4] y) <int64 i0 = {0}, int64 six = {6}, int64[1] four = {4},
            int64[1] zero = {0}> {
            s = Shape(x)  n = Gather(s, i0)  m = Mul(n, six)  mu = Unsqueeze(m, zero)
            t = Concat <axis = 0> (mu, four)  y = Reshape(x, t) }"""
    )
    out = run_pass(model, "fold").model
    assert op_counts(out) == {"Reshape": 1}
    (target,) = [i for i in out.graph.initializer if i.name.endswith("_shape")]
    assert onnx.numpy_helper.to_array(target).tolist() == [-1, 4]
    _same_numerics(model, out)


def test_two_unprovable_dims_are_left_alone() -> None:
    # The target takes dims of another input: nothing proves they equal x's dims.
    model = parse_model(
        """g (float[N, M] x, float[A, B] z) => (float[A, B] y) {
            s = Shape(z)  y = Reshape(x, s) }"""
    )
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert op_counts(out) == {"Shape": 1, "Reshape": 1}
    assert "reshape_targets_folded" not in record["stats"]


def test_broadcast_of_two_symbols_ties_nothing() -> None:
    # Add(a[N, P], b[M, Q]) may broadcast either way on both axes: nothing ties c's dims to a's,
    # so Reshape(c, Shape(a)) has two unknowns and must stay as it is.
    model = parse_model(
        """g (float[N, P] a, float[M, Q] b) => (float[K, L] y) {
            c = Add(a, b)  s = Shape(a)  y = Reshape(c, s) }"""
    )
    out = run_pass(model, "fold").model
    assert op_counts(out) == {"Add": 1, "Shape": 1, "Reshape": 1}


@pytest.mark.parametrize(
    ("text", "op"),
    [
        (
            """g (float[2] x) => (float[1000, 1000] y) <int64[2] s = {1000, 1000}> { y = ConstantOfShape(s) }""",
            "ConstantOfShape",
        ),
        (
            """g (float[2] x) => (float[1000, 1000] y) <float[1] v = {1.0}, int64[2] s = {1000, 1000}>
            { y = Expand(v, s) }""",
            "Expand",
        ),
        (
            """g (float[2] x) => (float[100000] y) <float a = {0.0}, float b = {100000.0}, float d = {1.0}>
            { y = Range(a, b, d) }""",
            "Range",
        ),
    ],
)
def test_size_guard_keeps_large_outputs_unfolded(text: str, op: str) -> None:
    model = parse_model(text)
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert op_counts(out)[op] == 1
    assert record["stats"].get("skipped_size_guard", 0) >= 1
    assert out.ByteSize() < 10_000
    big = run_pass(model, "fold:max-growth=100000000").model
    assert op_counts(big)[op] == 0


def test_a_shared_weight_is_not_duplicated_by_folding() -> None:
    # Folding Transpose(w) while w stays in use would store the weight twice.
    model = parse_model(
        """g (float[2, 32] x) => (float[2, 32] y, float[2, 32] z) {
            wt = Transpose <perm = [1, 0]> (w)  y = MatMul(x, wt)  z = MatMul(x, w) }""",
        initializers={"w": np.arange(1024, dtype=np.float32).reshape(32, 32)},
    )
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert op_counts(out)["Transpose"] == 1
    assert record["stats"]["skipped_size_guard"] == 1


def test_quantize_dequantize_and_random_are_never_folded() -> None:
    model = parse_model(
        """g (float[2] x) => (float[2] y, float[2] r) <int8[2] q = {1, 2}, float s = {0.5}, int8 z = {0}> {
            w = DequantizeLinear(q, s, z)  y = Add(x, w)  r = RandomNormalLike(x) }"""
    )
    out = run_pass(model, "fold").model
    assert op_counts(out) == {"DequantizeLinear": 1, "Add": 1, "RandomNormalLike": 1}


def test_custom_domain_ops_are_folded_around() -> None:
    model = parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "my.ops" : 1]>
        g (float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}> {
            c = Neg(a)  k = my.ops.Custom(c)  d = Abs(a)  y = my.ops.Other(x, k, d) }"""
    )
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert op_counts(out) == {"Custom": 1, "Other": 1}
    assert record["stats"]["nodes_folded"] == 2


FUNCTION_MODEL = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2] x) => (float[2] y) <float[2] k = {1.0, 2.0}> { y = local.scale(x, k) }
<domain: "local", opset_import: ["" : 17]>
scale (a, b) => (c) { two = Constant <value = float {2.0}> ()  bb = Mul(b, two)  c = Mul(a, bb) }
"""


def test_function_fed_constants_is_inlined_and_folded() -> None:
    model = parse_model(FUNCTION_MODEL)
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert not out.functions
    assert op_counts(out) == {"Mul": 1}
    assert record["stats"]["functions_inlined"] == 1
    _same_numerics(model, out)


def test_function_kept_with_never_folds_inside() -> None:
    model = parse_model(FUNCTION_MODEL)
    out = run_pass(model, "fold:inline-functions=never").model
    (function,) = out.functions
    assert op_counts(function) == {"Constant": 1, "Mul": 2}
    _same_numerics(model, out)


def test_loop_body_folds_outer_and_body_constants() -> None:
    model = parse_model(
        """g (float[2] x) => (float[2] y) <float[2] k = {1.0, 2.0}, int64 n = {2}, bool go = {1}> {
            y = Loop(n, go, x) <body = b (int64 i, bool cin, float[2] v) => (bool cout, float[2] vo) {
                cout = Identity(cin)  two = Constant <value = float {2.0}> ()  m = Mul(k, two)  vo = Add(v, m) }> }"""
    )
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert record["modified"] is True
    assert record["stats"]["constants_lifted"] == 1 and record["stats"]["nodes_folded"] == 1
    body = next(a.g for a in out.graph.node[0].attribute if a.name == "body")
    assert op_counts(body) == {"Identity": 1, "Add": 1}
    assert [o.name for o in body.output] == ["cout", "vo"]
    assert [o.name for o in out.graph.output] == ["y"]
    _same_numerics(model, out)
    again = run_pass(out, "fold").record
    assert again["modified"] is False, again["stats"]


def test_constant_nodes_fold_inside_a_kept_function() -> None:
    # Function bodies hold no initializers: a Constant node's output is their constant.
    model = parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.scale(x) }
        <domain: "local", opset_import: ["" : 17]>
        scale (a) => (c) {
            two = Constant <value = float {2.0}> ()  three = Constant <value = float {3.0}> ()
            six = Mul(two, three)  c = Mul(a, six) }"""
    )
    folded = run_pass(model, "fold:inline-functions=never")
    out, record = folded.model, folded.record
    (function,) = out.functions
    assert op_counts(function) == {"Constant": 1, "Mul": 1}
    assert record["stats"]["nodes_folded"] == 1
    _same_numerics(model, out)


def test_function_fed_a_constant_node_is_inlined() -> None:
    # Called twice, so only "fed constants" inlines it: a Constant node's output counts.
    model = parse_model(
        FUNCTION_MODEL.replace(
            "<float[2] k = {1.0, 2.0}> { y = local.scale(x, k) }",
            "{ k = Constant <value = float[2] {1.0, 2.0}> ()  a = local.scale(x, k)  y = local.scale(a, k) }",
        )
    )
    folded = run_pass(model, "fold")
    out, record = folded.model, folded.record
    assert not out.functions
    assert op_counts(out) == {"Mul": 2}
    assert record["stats"]["functions_inlined"] == 1
    _same_numerics(model, out)


def test_digits_model_is_unchanged_numerically() -> None:
    result = onnxshrink.shrink(DIGITS, ["fold"], inputs=DIGITS_TEST)
    assert result.report["verification"]["passed"] is True
    assert result.report["verification"]["accuracy_candidate"] == result.report["verification"]["accuracy_reference"]


@pytest.mark.parametrize("shape", [(300, 520), (256, 256), (1, 70000)])
def test_large_weight_transpose_folds_tile_by_tile(shape: tuple[int, int]) -> None:
    # Past 256x256 elements the 2-D transpose is copied in tiles; edges that are not a multiple
    # of the tile must land where one strided copy would put them.
    rows, cols = shape
    weight = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    model = parse_model(
        f"""g (float[2, {cols}] x) => (float[2, {rows}] y) {{ t = Transpose <perm = [1, 0]> (w)  y = MatMul(x, t) }}""",
        initializers={"w": weight},
    )
    out = run_pass(model, "fold").model
    assert op_counts(out) == {"MatMul": 1}
    (folded,) = out.graph.initializer
    assert np.array_equal(onnx.numpy_helper.to_array(folded), weight.T)
