"""Property tests: random valid ONNX graphs keep their function through onnxshrink.

A hypothesis strategy builds small opset-17 float32 models from elementwise unary ops, Dropout
(inference), broadcasting Add/Sub/Mul, Conv, MatMul with a constant weight, Reshape (0/-1
entries) and Transpose. It deliberately mixes in what ``cleanup`` rewrites: duplicated
subexpressions, duplicate initializers under different names, Identity chains, dead branches and
graph outputs that are Identity of another output or of a graph input.

Checked for every generated model:

* a load -> save round trip through onnxshrink computes the same outputs;
* ``cleanup`` computes the same outputs, keeps graph input/output names and order, never adds
  nodes, and a second ``cleanup`` on its result reports ``modified=False`` (exact flag at a
  fixed point).

Both sides always run on onnxruntime CPU with the same inputs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import onnxshrink
from onnxshrink.loading import load_proto
from onnxshrink.saving import save_model

OPSET = 17
IR_VERSION = 8
# fp32 exact transformations: the shared tolerance of STYLE.md.
RTOL = 1e-5
ATOL = 1e-6

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Shape = tuple[int, ...]


# --------------------------------------------------------------------------- numeric check


def _session(model: onnx.ModelProto | str | os.PathLike[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    # ORT's own rewrites (Identity/Dropout elimination, CSE, MatMul+Add and Conv+Add fusions)
    # would fire on one side and not the other and change rounding; with them off, each side
    # runs exactly the graph it holds, so a difference is the transformation's.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def assert_outputs_close(
    reference: onnx.ModelProto | str | os.PathLike[str],
    candidate: onnx.ModelProto | str | os.PathLike[str],
    feed: Mapping[str, np.ndarray],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> None:
    """Runs both models on onnxruntime CPU with ``feed``; outputs must match by name and order."""
    ref_session, cand_session = _session(reference), _session(candidate)
    ref_names = [o.name for o in ref_session.get_outputs()]
    cand_names = [o.name for o in cand_session.get_outputs()]
    assert cand_names == ref_names
    ref_outputs = ref_session.run(None, dict(feed))
    cand_outputs = cand_session.run(None, dict(feed))
    for name, ref, cand in zip(ref_names, ref_outputs, cand_outputs):
        assert cand.dtype == ref.dtype, name
        assert cand.shape == ref.shape, name
        np.testing.assert_allclose(cand, ref, rtol=rtol, atol=atol, err_msg=f"output '{name}'")


# --------------------------------------------------------------------------- generator


@dataclasses.dataclass
class _Graph:
    """A graph under construction; every value's shape is tracked so the graph stays valid."""

    draw: Callable[..., object]
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

    def pick(self, accept: Callable[[Shape], bool] = lambda s: True) -> tuple[str, Shape] | None:
        candidates = [v for v in self.values if accept(v[1])]
        if not candidates:
            return None
        return self.draw(st.sampled_from(candidates))  # type: ignore[return-value]

    def emit(
        self,
        op: str,
        inputs: list[str],
        shapes: list[Shape],
        extra_outputs: int = 0,
        record: bool = True,
        **attrs: object,
    ) -> list[str]:
        """Adds a node whose float outputs have ``shapes``; ``extra_outputs`` unused outputs follow."""
        outputs = [self.fresh("v") for _ in shapes] + [self.fresh("dead") for _ in range(extra_outputs)]
        node = helper.make_node(op, inputs, outputs, name=self.fresh("n"), **attrs)
        self.nodes.append(node)
        for name, shape in zip(outputs, shapes):
            self.values.append((name, shape))
            self.produced.append((name, shape))
        if record:
            self.emitted.append((node, list(shapes)))
        return outputs[: len(shapes)]

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
            return self.draw(st.sampled_from(same))  # type: ignore[return-value]
        if choice == "duplicate":
            array = self.initializers[self.draw(st.sampled_from(same))]  # type: ignore[index]
        name = self.fresh("w")
        self.initializers[name] = array.copy()
        return name

    def weights(self, shape: Shape) -> str:
        seed = self.draw(st.integers(0, 2**16))
        array = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        return self.constant(array, values_matter=False)


def _dims(draw: Callable[..., object], lo: int, hi: int) -> int:
    return draw(st.integers(lo, hi))  # type: ignore[return-value]


def _op_unary(g: _Graph) -> None:
    x, shape = g.pick()  # type: ignore[misc]
    op = g.draw(st.sampled_from(["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity"]))
    g.emit(op, [x], [shape])


def _op_identity_chain(g: _Graph) -> None:
    x, shape = g.pick()  # type: ignore[misc]
    for _ in range(_dims(g.draw, 2, 4)):
        (x,) = g.emit("Identity", [x], [shape])


def _op_dropout(g: _Graph) -> None:
    x, shape = g.pick()  # type: ignore[misc]
    form = g.draw(st.sampled_from(["x", "ratio", "ratio+mode", "mode"]))
    inputs = [x]
    if form in ("ratio", "ratio+mode"):
        inputs.append(g.constant(np.array(g.draw(st.sampled_from([0.0, 0.25, 0.5])), dtype=np.float32)))
    if form == "mode":
        inputs.append("")  # optional ratio left out
    if form in ("ratio+mode", "mode"):
        inputs.append(g.constant(np.array(False)))
    attrs = {"seed": g.draw(st.integers(0, 9))} if g.draw(st.booleans()) else {}
    g.emit("Dropout", inputs, [shape], extra_outputs=int(g.draw(st.booleans())), **attrs)  # type: ignore[arg-type]


def _broadcast_constant_shape(g: _Graph, shape: Shape) -> Shape:
    """A suffix of ``shape`` with some dims set to 1: broadcasts against ``shape`` to ``shape``."""
    rank = _dims(g.draw, 0, len(shape))
    return tuple(d if g.draw(st.booleans()) else 1 for d in shape[len(shape) - rank :])


def _op_binary(g: _Graph) -> None:
    a, a_shape = g.pick()  # type: ignore[misc]
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
    x, shape = g.pick()  # type: ignore[misc]
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
    g.emit("Conv", inputs, [(n, m, out_h, out_w)], **attrs)


def _op_matmul(g: _Graph) -> None:
    x, shape = g.pick()  # type: ignore[misc]
    m = _dims(g.draw, 1, 5)
    weight = g.weights((shape[-1], m))
    g.emit("MatMul", [x, weight], [(*shape[:-1], m)])


def _factor(draw: Callable[..., object], total: int, rank: int) -> Shape:
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
    x, shape = g.pick()  # type: ignore[misc]
    total = int(np.prod(shape))
    target = _factor(g.draw, total, _dims(g.draw, 1, 4))
    spec = list(target)
    # 0 copies the input's dim at the same index (allowzero=0); -1 is inferred.
    for i in range(min(len(shape), len(spec))):
        if spec[i] == shape[i] and g.draw(st.integers(0, 2)) == 0:
            spec[i] = 0
    free = [i for i, d in enumerate(spec) if d != 0]
    if free and g.draw(st.booleans()):
        spec[g.draw(st.sampled_from(free))] = -1  # type: ignore[index]
    g.emit("Reshape", [x, g.constant(np.array(spec, dtype=np.int64))], [target])


def _op_transpose(g: _Graph) -> None:
    x, shape = g.pick()  # type: ignore[misc]
    if g.draw(st.booleans()):
        perm = list(g.draw(st.permutations(range(len(shape)))))  # type: ignore[call-overload]
        g.emit("Transpose", [x], [tuple(shape[p] for p in perm)], perm=perm)
    else:
        g.emit("Transpose", [x], [tuple(reversed(shape))])


def _op_duplicate(g: _Graph) -> None:
    """Re-emits an earlier node with the same inputs and attributes: a common subexpression."""
    if not g.emitted:
        return
    node, shapes = g.draw(st.sampled_from(g.emitted))  # type: ignore[misc]
    extra = len(node.output) - len(shapes)
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    outputs = [g.fresh("v") for _ in shapes] + [g.fresh("dead") for _ in range(extra)]
    del copy.output[:]
    copy.output.extend(outputs)
    copy.name = g.fresh("n")
    g.nodes.append(copy)
    for name, shape in zip(outputs, shapes):
        g.values.append((name, shape))
        g.produced.append((name, shape))


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


def _input_shape(draw: Callable[..., object]) -> Shape:
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
        assert_outputs_close(case.model, path, case.feed)


def _with_output_types(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose typeless graph outputs take the type of ``original``'s same-named output."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    types = {o.name: o.type for o in original.graph.output}
    for output in fixed.graph.output:
        if not output.HasField("type"):
            output.type.CopyFrom(types[output.name])
    return fixed


def _cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnxshrink.shrink(model, ["cleanup"], verify=False).to_proto()


@SETTINGS
@given(cases())
def test_cleanup_keeps_outputs_signature_and_reaches_fixed_point(case: Case) -> None:
    note(onnx.printer.to_text(case.model))
    cleaned = _cleanup(case.model)
    note(onnx.printer.to_text(cleaned))

    assert _io_names(cleaned) == _io_names(case.model)
    assert len(cleaned.graph.node) <= len(case.model.graph.node)
    assert_outputs_close(case.model, cleaned, case.feed)

    # Work around the output-type bug (see the xfail test below) so the second run can load the
    # model; a no-op once cleanup keeps the types itself.
    again = onnxshrink.shrink(_with_output_types(cleaned, case.model), ["cleanup"], verify=False)
    record = again.report["passes"][0]
    assert record["modified"] is False, record
    assert len(again.to_proto().graph.node) == len(cleaned.graph.node)


# Found by the properties above; kept as fixed repros because the derandomized property run only
# meets them for some generator versions.
_OUTPUT_RENAMED = [
    pytest.param("{ a = Relu(X)  b = Identity(a) }", id="identity-before-output"),
    pytest.param("{ a = Relu(X)  b = Dropout(a) }", id="dropout-before-output"),
    pytest.param("{ a = Relu(X)  b = Relu(X) }", id="cse-into-output"),
]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "onnxshrink bug: when cleanup's Identity/Dropout removal or CSE hands a graph output's name "
        "to the surviving value, the output's type and shape are dropped, so the model fails the "
        "ONNX checker, ShrinkResult.save raises PassFailure and shrink() cannot load the result"
    ),
)
@pytest.mark.parametrize("body", _OUTPUT_RENAMED)
def test_cleanup_keeps_output_type_when_output_name_moves(body: str) -> None:
    model = onnx.parser.parse_model(
        f'<ir_version: 8, opset_import: ["" : 17]> g (float[1,1] X) => (float[1,1] b) {body}'
    )
    onnx.checker.check_model(model, full_check=True)
    cleaned = _cleanup(model)
    assert len(cleaned.graph.node) == 1
    assert_outputs_close(model, cleaned, {"X": np.array([[-0.5]], dtype=np.float32)})
    assert [o.type for o in cleaned.graph.output] == [o.type for o in model.graph.output]
    onnx.checker.check_model(cleaned, full_check=True)
