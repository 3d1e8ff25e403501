"""``fold``'s reasoning about dynamic dims: equal-dim classes, broadcasts, caps, Reshape targets.

Each rule is checked where it fires and where it must not, with onnxruntime on several sizes of
the dynamic dims, 0 included: a rewrite may never make a run fail that the original survives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from helpers import assert_outputs_close, op_counts, parse_model, run, run_pass

SIZES = ({"N": 2, "S": 3}, {"N": 1, "S": 1}, {"N": 3, "S": 5}, {"N": 0, "S": 4}, {"N": 2, "S": 0})


def _feed(model: onnx.ModelProto, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for value in model.graph.input:
        shape = [d.dim_value if d.dim_value > 0 else sizes[d.dim_param] for d in value.type.tensor_type.shape.dim]
        feed[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _outcome(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[Any] | str:
    try:
        return run(model, feed)
    except Exception as error:  # onnxruntime refuses the run (a Reshape without an answer)
        return f"fails: {str(error).splitlines()[0][:60]}"


def _same_everywhere(model: onnx.ModelProto, out: onnx.ModelProto, sizes: tuple[dict[str, int], ...] = SIZES) -> None:
    """Same outputs on every size where the original runs; the rewrite fails nowhere it did not."""
    for size in sizes:
        feed = _feed(model, size)
        expected, actual = _outcome(model, feed), _outcome(out, feed)
        if isinstance(expected, str):
            continue  # the original fails: nothing to keep
        assert not isinstance(actual, str), f"{size}: the original runs, the rewrite {actual}"
        assert_outputs_close(expected, actual, context=str(size))


def _fold(text: str, spec: str = "fold") -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any]]:
    model = parse_model(text)
    folded = run_pass(model, spec)
    return model, folded.model, folded.record


def test_broadcast_of_one_class_ties_the_result() -> None:
    # r = Relu(x) has x's dims, so Add(x, r) is [N, S] exactly: the Reshape to Shape(x) is a no-op.
    model, out, record = _fold(
        """g (float[N, S] x) => (float[N, S] y) {
            r = Relu(x)  a = Add(x, r)  s = Shape(x)  r2 = Reshape(a, s)  y = Relu(r2) }"""
    )
    assert op_counts(out) == {"Relu": 2, "Add": 1}
    assert record["stats"]["reshapes_removed"] == 1
    _same_everywhere(model, out)


def test_matmul_batch_dims_of_one_class_tie_the_result() -> None:
    model, out, _ = _fold(
        """g (float[N, S, 4] x) => (float[N, S, S] y) {
            t = Transpose <perm = [0, 2, 1]> (x)  m = MatMul(x, t)  s = Shape(m)  r = Reshape(m, s)  y = Neg(r) }"""
    )
    assert "Shape" not in op_counts(out) and "Reshape" not in op_counts(out)
    _same_everywhere(model, out)


def test_minus_one_is_not_introduced_beside_a_copied_dim() -> None:
    # [N, S, 4] -> [N, S * 4]: [0, -1] would fail for N = 0, where the original reshapes the
    # empty tensor; the target must stay computed.
    model, out, record = _fold(
        """g (float[N, S, 4] x) => (float[N, M] y) <int64 i0 = {0}, int64 i1 = {1}, int64 four = {4},
            int64[1] zero = {0}> {
            s = Shape(x)  n = Gather(s, i0)  m = Gather(s, i1)  m4 = Mul(m, four)
            nu = Unsqueeze(n, zero)  mu = Unsqueeze(m4, zero)  t = Concat <axis = 0> (nu, mu)  y = Reshape(x, t) }"""
    )
    assert op_counts(out)["Shape"] == 1
    assert "reshape_targets_folded" not in record["stats"]
    _same_everywhere(model, out)


def test_a_literal_minus_one_stays_beside_copied_dims() -> None:
    # The original already asks for -1: copying N beside it changes nothing.
    model, out, _ = _fold(
        """g (float[N, S, 4] x) => (float[N, M] y) <int64 i0 = {0}, int64[1] minus = {-1}, int64[1] zero = {0}> {
            s = Shape(x)  n = Gather(s, i0)  nu = Unsqueeze(n, zero)  t = Concat <axis = 0> (nu, minus)
            y = Reshape(x, t) }"""
    )
    assert op_counts(out) == {"Reshape": 1}
    target = [i for i in out.graph.initializer if i.name.endswith("_shape")]
    assert onnx.numpy_helper.to_array(target[0]).tolist() == [0, -1]
    _same_everywhere(model, out)


POSITIONS = """g (float[N, S] x) => (float[N, S] y) <float[1, 8] table = {1., 2., 3., 4., 5., 6., 7., 8.},
    int64 i1 = {1}, int64[1] zero = {0}, int64[1] start = {START}, int64[1] axis = {1}> {
    s = Shape(x)  n = Gather(s, i1)  e = Unsqueeze(n, zero)  p = Slice(table, start, e, axis)
    a = Add(x, p)  t = Shape(x)  r = Reshape(a, t)  y = Neg(r) }"""


def test_slice_up_to_a_dim_broadcasts_back_to_that_dim() -> None:
    # p = table[:, :S] is [1, min(S, 8)]; Add(x, p) is [N, S] wherever it runs (S > 8 fails).
    model, out, record = _fold(POSITIONS.replace("START", "0"))
    assert op_counts(out) == {"Shape": 1, "Gather": 1, "Unsqueeze": 1, "Slice": 1, "Add": 1, "Neg": 1}
    assert record["stats"]["reshapes_removed"] == 1
    _same_everywhere(model, out, (*SIZES, {"N": 2, "S": 8}, {"N": 2, "S": 9}))


def test_slice_from_one_ties_nothing() -> None:
    # table[:, 1:S] is [1, min(S, 8) - 1]: the Add's dim may be 1 for S = 2, nothing ties it.
    model, out, _ = _fold(POSITIONS.replace("START", "1"))
    assert op_counts(out)["Reshape"] == 1
    _same_everywhere(model, out, (*SIZES, {"N": 2, "S": 2}))


def test_equal_shape_values_are_computed_once() -> None:
    # Shape(x)[0] and Shape(Relu(x))[0] are both N: the second chain goes.
    model, out, record = _fold(
        """g (float[N, S] x) => (int64[2] y) <int64 i0 = {0}> {
            r = Relu(x)  a = Shape(x)  b = Shape(r)  n = Gather(a, i0)  m = Gather(b, i0)
            u = Unsqueeze(n, i0s)  v = Unsqueeze(m, i0s)  y = Concat <axis = 0> (u, v) }""".replace(
            "<int64 i0 = {0}>", "<int64 i0 = {0}, int64[1] i0s = {0}>"
        )
    )
    assert op_counts(out)["Shape"] == 1
    assert record["stats"]["shape_values_merged"] >= 1
    _same_everywhere(model, out)


def test_equal_shape_values_of_unrelated_dims_stay_apart() -> None:
    model, out, _ = _fold(
        """g (float[N, S] x, float[M, S] z) => (int64[2] y) <int64 i0 = {0}, int64[1] i0s = {0}> {
            a = Shape(x)  b = Shape(z)  n = Gather(a, i0)  m = Gather(b, i0)
            u = Unsqueeze(n, i0s)  v = Unsqueeze(m, i0s)  y = Concat <axis = 0> (u, v) }"""
    )
    assert op_counts(out)["Shape"] == 2
    _same_everywhere(model, out, ({"N": 2, "S": 3, "M": 4}, {"N": 1, "S": 1, "M": 0}))


def test_expand_to_a_shape_with_minus_one_replaced() -> None:
    # The exporter's expand(-1, ...) pattern: Where(Equal(shape, -1), 1, shape) is the shape
    # itself for dims (never negative); the Expand's result is then [N, 1, S] by classes.
    model, out, _ = _fold(
        """g (float[N, S] x) => (float[N, 1, S] y) <int64 i0 = {0}, int64 i1 = {1}, int64[1] zero = {0},
            int64[1] one = {1}, int64[3] minus = {-1, -1, -1}, int64[3] ones = {1, 1, 1}> {
            s = Shape(x)  n = Gather(s, i0)  m = Gather(s, i1)  nu = Unsqueeze(n, zero)  mu = Unsqueeze(m, zero)
            c = Concat <axis = 0> (nu, one, mu)  q = Equal(c, minus)  w = Where(q, ones, c)
            u = Unsqueeze(x, one)  e = Expand(u, w)  t = Shape(e)  r = Reshape(e, t)  y = Neg(r) }"""
    )
    assert "Equal" not in op_counts(out) and "Where" not in op_counts(out)
    assert "Reshape" not in op_counts(out)
    _same_everywhere(model, out)


def test_reshape_of_a_view_reads_the_view_input() -> None:
    # Reshape(Reshape(x, [-1]), Shape(x)) is x: the merged target [0, 0] copies x's own dims.
    model, out, record = _fold(
        """g (float[N, S] x) => (float[N, S] y) <int64[1] flat = {-1}> {
            f = Reshape(x, flat)  s = Shape(x)  r = Reshape(f, s)  y = Relu(r) }"""
    )
    assert op_counts(out) == {"Relu": 1}
    assert record["stats"]["reshapes_merged"] == 1
    _same_everywhere(model, out)


def test_range_to_a_dim_has_that_length() -> None:
    model, out, _ = _fold(
        """g (float[N, S] x) => (float[N, S] y) <int64 i1 = {1}, int64 z = {0}, int64 d = {1}> {
            s = Shape(x)  n = Gather(s, i1)  r = Range(z, n, d)  f = Cast <to = 1> (r)  a = Add(x, f)
            t = Shape(x)  r2 = Reshape(a, t)  y = Neg(r2) }"""
    )
    assert "Reshape" not in op_counts(out)
    _same_everywhere(model, out)


@pytest.mark.parametrize("delta", [2, -1])
def test_range_with_another_step_ties_nothing(delta: int) -> None:
    text = """g (float[N, S] x) => (float[N, M] y) <int64 i1 = {1}, int64 z = {0}, int64 d = {DELTA}> {
        s = Shape(x)  n = Gather(s, i1)  r = Range(z, n, d)  f = Cast <to = 1> (r)  a = Add(x, f)
        t = Shape(x)  y = Reshape(a, t) }""".replace("DELTA", str(delta))
    model, out, _ = _fold(text)
    assert op_counts(out)["Reshape"] == 1
    _same_everywhere(model, out, ({"N": 2, "S": 1}, {"N": 2, "S": 3}, {"N": 2, "S": 0}))
