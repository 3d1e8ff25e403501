"""Models for tests: ONNX text parsed and checked, random weights, and looking at results.

:func:`parse_model` (a ``ModelProto`` passing the ONNX full checker), :func:`parse_ir_model` (the
same as an ``onnx_ir.Model``), :func:`random_arrays` for weights, :func:`as_proto` for any model
form; :func:`op_counts`, :func:`initializer_arrays` and :func:`assert_same_signature` to look at
a result. Paths of the small real models in ``models/``: :data:`DIGITS`, :data:`DIGITS_CALIB`,
:data:`DIGITS_TEST`.
"""

from __future__ import annotations

import os
import pathlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir

from onnxshrink.saving import to_proto

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DIGITS = MODELS / "digits_cnn.onnx"
DIGITS_CALIB = MODELS / "digits_calib.npz"
DIGITS_TEST = MODELS / "digits_test.npz"

# Graphs in ONNX text that several test modules build with weights of their own.
LAYERNORM_MLP = """g (float[N, 8, 64] x) => (float[N, 8, 64] y) {
    n = LayerNormalization <axis = -1> (x, gamma, beta)
    h = MatMul (n, W1)
    r = Relu (h)
    y = MatMul (r, W2)
}"""
"""LayerNorm -> MatMul -> Relu -> MatMul; initializers ``gamma``, ``beta`` [64], ``W1`` [64, K], ``W2`` [K, 64]."""

IF_READS_MAIN_RELU = """g (float[N, 16] x) => (float[N, 16] y) {
    h = MatMul(x, W1)
    r = Relu(h)
    total = ReduceSum <keepdims = 0> (x)
    c = Greater(total, Zero)
    y = If(c) <
        then_branch = t () => (float[N, 16] a) { a = MatMul(r, W2) },
        else_branch = e () => (float[N, 16] b) { b = Identity(r) }
    >
}"""
"""An If whose then branch's MatMul reads the main graph's Relu output; ``W1``, ``W2`` [16, 16], scalar ``Zero``."""

OPSET = 17
IR_VERSION = 8

# What onnxruntime, the pipeline and the feeds accept as "a model".
ModelLike = onnx.ModelProto | ir.Model | bytes | str | os.PathLike
Initializer = np.ndarray | np.generic | onnx.TensorProto | ir.TensorProtocol
# The ``model_file`` fixture: ``model_file(model, name="model.onnx", external_data=None) -> Path``.
ModelFile = Callable[..., pathlib.Path]


def parse_model(
    text: str,
    *,
    initializers: Mapping[str, Initializer] | None = None,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    check: bool = True,
) -> onnx.ModelProto:
    """A model from ONNX text, checked by the ONNX full checker (strict shape inference).

    Args:
        text: A model (starting with ``<ir_version: ...>``) or just a graph (``g (...) => (...) {...}``),
            which gets the header ``<ir_version: {ir_version}, opset_import: ["" : {opset}]>``.
        initializers: Main-graph initializers appended in order: arrays, numpy scalars,
            ``TensorProto`` or ``onnx_ir`` tensors (e.g. INT4, which numpy cannot hold).
        opset: Default-domain opset of the added header.
        ir_version: IR version of the added header.
        check: False only for a model that is invalid on purpose (a cycle, a dangling input).
    """
    if not text.lstrip().startswith("<"):
        text = f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{text}'
    model = onnx.parser.parse_model(text)
    for name, value in (initializers or {}).items():
        model.graph.initializer.append(_tensor_proto(name, value))
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def parse_ir_model(
    text: str,
    *,
    initializers: Mapping[str, Initializer] | None = None,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    check: bool = True,
) -> ir.Model:
    """:func:`parse_model`, as an ``onnx_ir.Model``."""
    proto = parse_model(text, initializers=initializers, opset=opset, ir_version=ir_version, check=check)
    return ir.serde.deserialize_model(proto)


def _tensor_proto(name: str, value: Initializer) -> onnx.TensorProto:
    if isinstance(value, onnx.TensorProto):
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
    elif isinstance(value, (np.ndarray, np.generic)):
        tensor = onnx.numpy_helper.from_array(np.asarray(value))
    else:
        tensor = ir.serde.serialize_tensor(value)
    tensor.name = name
    return tensor


def random_arrays(
    shapes: Mapping[str, Sequence[int]], *, seed: int = 0, dtype: type = np.float32
) -> dict[str, np.ndarray]:
    """Standard-normal arrays by name, drawn in order from one generator (for random weights)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(tuple(shape)).astype(dtype) for name, shape in shapes.items()}


def as_proto(model: ModelLike) -> onnx.ModelProto:
    """Any model form as a ``ModelProto`` (a file's external weights are not read)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return to_proto(model)
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(os.fspath(model), load_external_data=False)


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The main graph's initializers as arrays, by name."""
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_same_signature(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    """Graph inputs and outputs keep their names, order, types and shapes."""
    assert [(v.name, v.type) for v in result.graph.input] == [(v.name, v.type) for v in original.graph.input]
    assert [(v.name, v.type) for v in result.graph.output] == [(v.name, v.type) for v in original.graph.output]


def op_counts(graph: onnx.ModelProto | onnx.GraphProto | onnx.FunctionProto | ir.Model | ir.Graph) -> Counter[str]:
    """How many nodes of each op type a graph holds (its own nodes, not those of its subgraphs)."""
    if isinstance(graph, onnx.ModelProto):
        return Counter(node.op_type for node in graph.graph.node)
    if isinstance(graph, (onnx.GraphProto, onnx.FunctionProto)):
        return Counter(node.op_type for node in graph.node)
    nodes = graph.graph if isinstance(graph, ir.Model) else graph
    return Counter(node.op_type for node in nodes)
