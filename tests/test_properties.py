"""Property tests: random valid ONNX graphs keep their function through onnxshrink.

A hypothesis strategy builds small opset-17 float32 models from elementwise unary ops, Dropout
(inference), broadcasting Add/Sub/Mul, Conv, MatMul with a constant weight, Reshape (0/-1
entries) and Transpose. It deliberately mixes in what ``cleanup`` rewrites: duplicated
subexpressions, duplicate initializers under different names, Identity chains, dead branches and
graph outputs that are Identity of another output, of a graph input or of an initializer.

Checked for every generated model:

* a load -> save round trip through onnxshrink computes the same outputs;
* ``cleanup`` computes the same outputs, keeps graph input/output names, order and types, passes
  the ONNX checker (strict shape inference), never adds nodes, and a second ``cleanup`` on its
  result reports ``modified=False`` (exact flag at a fixed point).

Both sides always run on onnxruntime CPU with the same inputs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import IR_VERSION, OPSET, assert_close, assert_same_signature, parse_model, run_pass
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxshrink.loading import load_proto
from onnxshrink.saving import save_model

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Shape = tuple[int, ...]


# --------------------------------------------------------------------------- generator


@dataclasses.dataclass
class _Graph:
    """A graph under construction; every value's shape is tracked so the graph stays valid."""

    draw: st.DrawFn
    inputs: list[tuple[str, Shape]] = dataclasses.field(default_factory=list)
    nodes: list[onnx.NodeProto] = dataclasses.field(default_factory=list)
    initializers: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Float activations usable as operands: graph inputs and node outputs.
    values: list[tuple[str, Shape]] = dataclasses.field(default_factory=list)
    # Node outputs that may become graph outputs.
    produced: list[tuple[str, Shape]] = dataclasses.field(default_factory=list)
    # (node, shapes of its float outputs) for re-emitting as a duplicated subexpression.
    emitted: list[tuple[onnx.NodeProto, list[Shape]]] = dataclasses.field(default_factory=list)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def any_value(self) -> tuple[str, Shape]:
        return self.draw(st.sampled_from(self.values))

    def pick(self, accept: Callable[[Shape], bool] = lambda s: True) -> tuple[str, Shape] | None:
        candidates = [v for v in self.values if accept(v[1])]
        if not candidates:
            return None
        return self.draw(st.sampled_from(candidates))

    def emit(
        self,
        op: str,
        inputs: list[str],
        shapes: list[Shape],
        extra_outputs: int = 0,
        attrs: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Adds a node whose float outputs have ``shapes``; ``extra_outputs`` unused outputs follow."""
        outputs = [self.fresh("v") for _ in shapes] + [self.fresh("dead") for _ in range(extra_outputs)]
        node = helper.make_node(op, inputs, outputs, name=self.fresh("n"), **(attrs or {}))
        self.nodes.append(node)
        self.add_values(outputs[: len(shapes)], shapes)
        self.emitted.append((node, list(shapes)))
        return outputs[: len(shapes)]

    def add_values(self, names: Sequence[str], shapes: Sequence[Shape]) -> None:
        for name, shape in zip(names, shapes, strict=True):
            self.values.append((name, shape))
            self.produced.append((name, shape))

    def constant(self, array: np.ndarray, *, values_matter: bool = True) -> str:
        """An initializer holding ``array``: new, shared by name, or a duplicate under a new name.

        With ``values_matter=False`` (random weights) an existing initializer of the same dtype and
        shape may stand in for ``array``.
        """
        same = [
            n
            for n, a in self.initializers.items()
            if a.dtype == array.dtype and a.shape == array.shape and (not values_matter or np.array_equal(a, array))
        ]
        choice = self.draw(st.sampled_from(["new", "share", "duplicate"] if same else ["new"]))
        if choice == "share":
            return self.draw(st.sampled_from(same))
        if choice == "duplicate":
            array = self.initializers[self.draw(st.sampled_from(same))]
        name = self.fresh("w")
        self.initializers[name] = array.copy()
        return name

    def weights(self, shape: Shape) -> str:
        seed = self.draw(st.integers(0, 2**16))
        array = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        return self.constant(array, values_matter=False)


def _dims(draw: st.DrawFn, lo: int, hi: int) -> int:
    return draw(st.integers(lo, hi))


def _op_unary(g: _Graph) -> None:
    x, shape = g.any_value()
    op = g.draw(st.sampled_from(["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity"]))
    g.emit(op, [x], [shape])


def _op_identity_chain(g: _Graph) -> None:
    x, shape = g.any_value()
    for _ in range(_dims(g.draw, 2, 4)):
        (x,) = g.emit("Identity", [x], [shape])


def _op_dropout(g: _Graph) -> None:
    x, shape = g.any_value()
    form = g.draw(st.sampled_from(["x", "ratio", "ratio+mode", "mode"]))
    inputs = [x]
    if form in ("ratio", "ratio+mode"):
        inputs.append(g.constant(np.array(g.draw(st.sampled_from([0.0, 0.25, 0.5])), dtype=np.float32)))
    if form == "mode":
        inputs.append("")  # optional ratio left out
    if form in ("ratio+mode", "mode"):
        inputs.append(g.constant(np.array(False)))
    attrs = {"seed": g.draw(st.integers(0, 9))} if g.draw(st.booleans()) else {}
    g.emit("Dropout", inputs, [shape], extra_outputs=int(g.draw(st.booleans())), attrs=attrs)


def _broadcast_constant_shape(g: _Graph, shape: Shape) -> Shape:
    """A suffix of ``shape`` with some dims set to 1: broadcasts against ``shape`` to ``shape``."""
    rank = _dims(g.draw, 0, len(shape))
    return tuple(d if g.draw(st.booleans()) else 1 for d in shape[len(shape) - rank :])


def _op_binary(g: _Graph) -> None:
    a, a_shape = g.any_value()
    op = g.draw(st.sampled_from(["Add", "Sub", "Mul"]))

    def broadcasts(shape: Shape) -> bool:
        try:
            np.broadcast_shapes(a_shape, shape)
        except ValueError:
            return False
        return True

    other = g.pick(broadcasts) if g.draw(st.booleans()) else None
    if other is not None:
        b, b_shape = other
    else:
        b_shape = _broadcast_constant_shape(g, a_shape)
        b = g.weights(b_shape)
    operands = [a, b] if g.draw(st.booleans()) else [b, a]
    g.emit(op, operands, [tuple(np.broadcast_shapes(a_shape, b_shape))])


def _op_twin_constants(g: _Graph) -> None:
    """Two binary nodes reading equal initializers under different names (dedupe, then CSE)."""
    x, shape = g.any_value()
    first = g.weights(_broadcast_constant_shape(g, shape))
    second = g.fresh("w")
    g.initializers[second] = g.initializers[first].copy()
    for const in (first, second):
        op = g.draw(st.sampled_from(["Add", "Sub", "Mul"]))
        operands = [x, const] if g.draw(st.booleans()) else [const, x]
        g.emit(op, operands, [shape])


def _op_conv(g: _Graph) -> None:
    picked = g.pick(lambda s: len(s) == 4)
    if picked is None:
        return
    x, (n, c, h, w) = picked
    m = _dims(g.draw, 1, 3)
    kh, kw = _dims(g.draw, 1, min(3, h)), _dims(g.draw, 1, min(3, w))
    pad = _dims(g.draw, 0, 1) if max(h, w) <= 5 else 0
    stride = _dims(g.draw, 1, 2)
    inputs = [x, g.weights((m, c, kh, kw))]
    if g.draw(st.booleans()):
        inputs.append(g.weights((m,)))
    out_h = (h + 2 * pad - kh) // stride + 1
    out_w = (w + 2 * pad - kw) // stride + 1
    attrs: dict[str, object] = {"pads": [pad] * 4, "strides": [stride, stride]}
    if g.draw(st.booleans()):
        attrs["kernel_shape"] = [kh, kw]
    g.emit("Conv", inputs, [(n, m, out_h, out_w)], attrs=attrs)


def _op_matmul(g: _Graph) -> None:
    x, shape = g.any_value()
    m = _dims(g.draw, 1, 5)
    weight = g.weights((shape[-1], m))
    g.emit("MatMul", [x, weight], [(*shape[:-1], m)])


def _factor(draw: st.DrawFn, total: int, rank: int) -> Shape:
    """A random shape of ``rank`` dims whose product is ``total``."""
    dims = [1] * rank
    remaining, p = total, 2
    while remaining > 1:
        while remaining % p == 0:
            dims[_dims(draw, 0, rank - 1)] *= p
            remaining //= p
        p += 1
    return tuple(dims)


def _op_reshape(g: _Graph) -> None:
    x, shape = g.any_value()
    total = int(np.prod(shape))
    target = _factor(g.draw, total, _dims(g.draw, 1, 4))
    spec = list(target)
    # 0 copies the input's dim at the same index (allowzero=0); -1 is inferred.
    for i in range(min(len(shape), len(spec))):
        if spec[i] == shape[i] and g.draw(st.integers(0, 2)) == 0:
            spec[i] = 0
    free = [i for i, d in enumerate(spec) if d != 0]
    infer_one = g.draw(st.booleans())
    if free and infer_one:
        spec[g.draw(st.sampled_from(free))] = -1
    g.emit("Reshape", [x, g.constant(np.array(spec, dtype=np.int64))], [target])


def _op_transpose(g: _Graph) -> None:
    x, shape = g.any_value()
    if g.draw(st.booleans()):
        perm = list(g.draw(st.permutations(range(len(shape)))))
        g.emit("Transpose", [x], [tuple(shape[p] for p in perm)], attrs={"perm": perm})
    else:
        g.emit("Transpose", [x], [tuple(reversed(shape))])


def _op_duplicate(g: _Graph) -> None:
    """Re-emits an earlier node with the same inputs and attributes: a common subexpression."""
    if not g.emitted:
        return
    node, shapes = g.draw(st.sampled_from(g.emitted))
    extra = len(node.output) - len(shapes)
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    outputs = [g.fresh("v") for _ in shapes] + [g.fresh("dead") for _ in range(extra)]
    del copy.output[:]
    copy.output.extend(outputs)
    copy.name = g.fresh("n")
    g.nodes.append(copy)
    g.add_values(outputs[: len(shapes)], shapes)


_OPS = [
    _op_unary,
    _op_identity_chain,
    _op_dropout,
    _op_binary,
    _op_twin_constants,
    _op_conv,
    _op_conv,  # listed twice: it needs a 4-D operand, which MatMul/Reshape often take away
    _op_matmul,
    _op_reshape,
    _op_transpose,
    _op_duplicate,
    _op_duplicate,  # cleanup's CSE and dedupe rules want many duplicates
]


def _input_shape(draw: st.DrawFn) -> Shape:
    if draw(st.integers(0, 2)):
        return (_dims(draw, 1, 2), _dims(draw, 1, 3), _dims(draw, 2, 5), _dims(draw, 2, 5))
    return (_dims(draw, 1, 3), _dims(draw, 1, 6))


@dataclasses.dataclass
class Case:
    model: onnx.ModelProto
    feed: dict[str, np.ndarray]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    g = _Graph(draw)
    first = _input_shape(draw)
    g.inputs.append(("X", first))
    if draw(st.booleans()):
        g.inputs.append(("Y", first if draw(st.booleans()) else _input_shape(draw)))
    g.values.extend(g.inputs)

    for op in draw(st.lists(st.sampled_from(_OPS), min_size=3, max_size=14)):
        op(g)
    if not g.produced:
        _op_unary(g)

    outputs = list(draw(st.lists(st.sampled_from(g.produced), min_size=1, max_size=3, unique_by=lambda v: v[0])))
    # Graph outputs that merely copy another graph output, a graph input or an initializer.
    constants = [(n, a.shape) for n, a in g.initializers.items() if a.dtype == np.float32]
    for _ in range(_dims(draw, 0, 2)):
        source, shape = draw(st.sampled_from(outputs + g.inputs + constants))
        name = g.fresh("out")
        g.nodes.append(helper.make_node("Identity", [source], [name], name=g.fresh("n")))
        outputs.append((name, shape))
    order = draw(st.permutations(range(len(outputs))))

    graph = helper.make_graph(
        g.nodes,
        "generated",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in g.inputs],
        [helper.make_tensor_value_info(outputs[i][0], TensorProto.FLOAT, outputs[i][1]) for i in order],
        initializer=[onnx.numpy_helper.from_array(a, n) for n, a in g.initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    # The generator must produce valid models; strict shape inference also checks the tracked
    # output shapes against ONNX's.
    onnx.checker.check_model(model, full_check=True)

    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in g.inputs}
    return Case(model, feed)


def _io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(cases())
def test_load_save_round_trip_keeps_outputs(case: Case) -> None:
    note(onnx.printer.to_text(case.model))
    loaded = load_proto(case.model).model
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        save_model(loaded, path)
        saved = onnx.load(str(path))
        assert _io_names(saved) == _io_names(case.model)
        assert_close(case.model, path, case.feed, context="onnxruntime")


@SETTINGS
@given(cases())
def test_cleanup_keeps_outputs_signature_and_reaches_fixed_point(case: Case) -> None:
    note(onnx.printer.to_text(case.model))
    cleaned = run_pass(case.model, "cleanup").model
    note(onnx.printer.to_text(cleaned))

    assert_same_signature(case.model, cleaned)
    assert len(cleaned.graph.node) <= len(case.model.graph.node)
    onnx.checker.check_model(cleaned, full_check=True)
    assert_close(case.model, cleaned, case.feed, context="onnxruntime")

    again = run_pass(cleaned, "cleanup")
    assert again.record["modified"] is False, again.record
    assert len(again.model.graph.node) == len(cleaned.graph.node)


@SETTINGS
@given(cases())
def test_simplify_keeps_outputs_signature_and_reaches_fixed_point(case: Case) -> None:
    """fold -> fuse-bn -> cleanup to a fixed point: the same function, and stable when rerun."""
    note(onnx.printer.to_text(case.model))
    simplified = run_pass(case.model, "simplify").model
    note(onnx.printer.to_text(simplified))

    assert _io_names(simplified) == _io_names(case.model)
    assert [o.type for o in simplified.graph.output] == [o.type for o in case.model.graph.output]
    assert len(simplified.graph.node) <= len(case.model.graph.node)
    onnx.checker.check_model(simplified, full_check=True)
    assert_close(case.model, simplified, case.feed, context="onnxruntime")

    again = run_pass(simplified, "simplify")
    assert not any(r["modified"] for r in again.records), again.records


# Found by the property above (cleanup dropped the declared type and shape of a graph output whose
# name moved to another value, so the result failed the ONNX checker); kept as fixed repros because
# the derandomized property run meets them only for some generator versions.
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("{ a = Relu(X)  b = Identity(a) }", id="identity-before-output"),
        pytest.param("{ a = Relu(X)  b = Dropout(a) }", id="dropout-before-output"),
        pytest.param("{ a = Relu(X)  b = Relu(X) }", id="cse-into-output"),
    ],
)
def test_cleanup_keeps_output_type_when_output_name_moves(body: str) -> None:
    model = parse_model(f"g (float[1,1] X) => (float[1,1] b) {body}")
    cleaned = run_pass(model, "cleanup").model
    assert len(cleaned.graph.node) == 1
    assert [o.type for o in cleaned.graph.output] == [o.type for o in model.graph.output]
    onnx.checker.check_model(cleaned, full_check=True)
    assert_close(model, cleaned, {"X": np.array([[-0.5]], dtype=np.float32)}, context="onnxruntime")
