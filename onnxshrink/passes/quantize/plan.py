"""The static quantization plan as data, and the graph facts placement reads.

The plan names nodes by key (node name, or op type and position) and tensors by name, so it can
be printed, tested and re-made with other exclusions (the accuracy fallback) on a fresh copy of
the model. The placement that fills it is in ``place``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array, constant_scalar, is_constant
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.quantize.statistics import QParams

__all__ = ["constant_scalar", "is_constant"]  # re-exported for placement

Target = Literal["ort-cpu", "ort-cuda", "tensorrt"]

# Nodes with an integer kernel of their own: their weight (input 1) is a constant.
ORT_LAYERS = ("Conv", "MatMul", "Gemm")
TRT_LAYERS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Rule 7: QLinear kernels worth using only when every neighbour is int8 already.
NEIGHBOURS = ("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu")
# Rule 7c (ort-cpu speed rules): onnxruntime's QLinearAveragePool is slower than the float pool with
# the DQ and Q around it, channels-first or last.
SLOW_INT8_NEIGHBOURS = ("AveragePool",)
# Rule 7b: elementwise ops that take one one-element constant operand, stored as one quantized level
# (QLinearAdd, QLinearMul; a Div by a constant becomes a Mul by its reciprocal).
CONSTANT_OPERAND_OPS = ("Add", "Mul", "Div")
# Rule 6: data movement; the Q after them takes the DQ's qparams so ORT runs them on int8.
MOVES = (
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
    "Expand", "Tile", "MaxPool", "Resize", "Split",
)  # fmt: skip
# Rule 5: activations a following Q can absorb when its zero point clips at 0.
FOLDABLE = ("Relu", "Clip")
# Marks (in ``node.meta``) the nodes quantize adds before placement, so that keys such as
# ``Conv#3`` keep naming the model's own nodes.
ADDED_NODE = "onnxshrink.quantize.added"
# TensorRT rule 11: tiny layers run faster in float.
TRT_MIN_CHANNELS = 16


@dataclasses.dataclass(frozen=True)
class WeightQ:
    """How one layer's constant weight is quantized: input index and per-channel axis (None: per tensor)."""

    index: int
    axis: int | None


@dataclasses.dataclass(frozen=True)
class LayerQ:
    """One node that runs quantized: its weight, its bias kind and whether its output gets a Q."""

    key: str
    op_type: str
    weight: WeightQ | None
    bias: Literal["int32", "float", "none"]
    output_q: bool
    inputs: tuple[str, ...] = ()  # activation tensors read through a DQ
    output: str | None = None  # the tensor its output Q quantizes
    constant: int | None = None  # rule 7b: the input index of a constant operand stored quantized


@dataclasses.dataclass(frozen=True)
class ActivationQ:
    """A Q→DQ pair after one tensor.

    Attributes:
        params: The Q's scale, zero point and dtype.
        readers: The (node key, input index) pairs that read the DQ; None for every reader, so
            the Q is the producer's only consumer.
        root: The tensor whose range set ``params`` (another one through data-movement ops).
    """

    params: QParams
    readers: tuple[tuple[str, int], ...] | None
    root: str


@dataclasses.dataclass
class QuantPlan:
    """Everything the rewrite needs, and why each layer was left float."""

    target: str
    layers: dict[str, LayerQ] = dataclasses.field(default_factory=dict)
    activations: dict[str, ActivationQ] = dataclasses.field(default_factory=dict)
    folds: list[str] = dataclasses.field(default_factory=list)
    left_float: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": {key: dataclasses.asdict(layer) for key, layer in self.layers.items()},
            "activations": {
                name: {**q.params.to_json(), "root": q.root, "readers": "all" if q.readers is None else len(q.readers)}
                for name, q in self.activations.items()
            },
            "folded": list(self.folds),
            "left_float": dict(self.left_float),
        }


class GraphView:
    """Stable keys for one graph's nodes and the small queries placement asks.

    Args:
        graph: The main graph or a control-flow body.
        prefix: Starts every key: ``""`` for the main graph, ``If_0/then_branch/`` for a body.
    """

    def __init__(self, graph: ir.Graph, prefix: str = "") -> None:
        self.graph = graph
        self.nodes: dict[str, ir.Node] = {}
        self.keys: dict[int, str] = {}
        index = -1
        for node in graph:
            if node.meta.get(ADDED_NODE):  # named, and left out of the positions of the model's own nodes
                self.nodes[prefix + str(node.name)] = node
                self.keys[id(node)] = prefix + str(node.name)
                continue
            index += 1
            key = prefix + (node.name or f"{node.op_type}#{index}")
            if key in self.nodes:
                key = f"{key}#{index}"
            self.nodes[key] = node
            self.keys[id(node)] = key
        self.values: dict[str, ir.Value] = {v.name: v for v in graph.inputs if v.name}
        for node in graph:
            for output in node.outputs:
                if output.name:
                    self.values[output.name] = output

    def key(self, node: ir.Node) -> str:
        return self.keys[id(node)]


def moves_int8(node: ir.Node, int8_conv: Callable[[ir.Node], bool] | None = None) -> bool:
    """Rule 6: whether ``node`` carries int8 through (a data-movement op of ``MOVES``).

    Args:
        node: Any node.
        int8_conv: Given when the ort-cpu speed rules are on; tells whether a node is a quantized
            Conv. Then a MaxPool carries int8 only where it reads channels-last data (rule 6b,
            :func:`_channels_last`): onnxruntime runs it as NhwcMaxPool there; anywhere else its
            uint8 MaxPool runs channels-first, 1.7-5.3x slower than the float MaxPool with a DQ and
            a Q around it.
    """
    if not is_onnx_op(node, *MOVES):
        return False
    if int8_conv is None or node.op_type != "MaxPool":
        return True
    return node.inputs[0] is not None and _channels_last(node.inputs[0], int8_conv)


def _channels_last(value: ir.Value, int8_conv: Callable[[ir.Node], bool], depth: int = 0) -> bool:
    """Whether onnxruntime's layout pass hands ``value`` on channels-last (rule 6b).

    It does from an int8 Conv (a QLinearConv, which it turns NHWC), through a Relu/Clip folded
    into the Conv's Q, and through a Concat of such values (QLinearConcat takes the layout on).
    Anything else is taken as channels-first: measured through QLinearAdd/QLinearMul chains (a
    hard-swish), the layout pass stopped and the MaxPool ran channels-first.
    """
    producer = value.producer()
    if producer is None or depth > 8:
        return False
    if is_onnx_op(producer, "Conv"):
        return int8_conv(producer)
    if is_onnx_op(producer, *FOLDABLE) and producer.inputs[0] is not None:
        return _channels_last(producer.inputs[0], int8_conv, depth + 1)
    if is_onnx_op(producer, "Concat"):
        inputs = [v for v in producer.inputs if v is not None]
        return bool(inputs) and all(_channels_last(v, int8_conv, depth + 1) for v in inputs)
    return False


def is_float(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype.is_floating_point()


def activation_inputs(node: ir.Node) -> list[tuple[int, ir.Value]]:
    """Non-constant float inputs that carry activations (data input only for data-movement ops)."""
    inputs = list(enumerate(node.inputs))
    if node.op_type in MOVES or node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        inputs = inputs[:1]
    return [(i, v) for i, v in inputs if v is not None and not is_constant(v) and is_float(v)]


def constant_operand(node: ir.Node) -> int | None:
    """Rule 7b: the index of the constant operand of an Add/Mul/Div with one activation input, or None.

    The constant must hold one float32 value (broadcast over the activation), finite, and a Div's
    divisor non-zero: one u8/s8 level then represents it exactly up to float rounding, where a
    tensor of values would lose the small ones to a per-tensor scale.
    """
    if not is_onnx_op(node, *CONSTANT_OPERAND_OPS) or len(node.inputs) != 2:
        return None
    indices = [i for i, v in enumerate(node.inputs) if v is not None and is_constant(v)]
    if len(indices) != 1 or len(activation_inputs(node)) != 1 or (node.op_type == "Div" and indices != [1]):
        return None
    array = constant_array(node.inputs[indices[0]], max_elements=1)
    if array is None or array.dtype != np.float32 or array.size != 1 or not np.all(np.isfinite(array)):
        return None
    if node.op_type == "Div" and np.any(array == 0):
        return None
    return indices[0]


def fold_candidate(node: ir.Node) -> tuple[ir.Value, ir.Node | None]:
    """The node's effective output: after a lone Relu/Clip(0, max) it reads, else its own."""
    output = node.outputs[0]
    uses = list(output.uses())
    if len(uses) != 1 or output.is_graph_output():
        return output, None
    user = uses[0][0]
    if not is_onnx_op(user, *FOLDABLE):
        return output, None
    if user.op_type == "Clip":
        low = constant_scalar(user.inputs[1]) if len(user.inputs) > 1 else None
        if low != 0.0 or (len(user.inputs) > 2 and user.inputs[2] is not None and not is_constant(user.inputs[2])):
            return output, None
    return user.outputs[0], user


def weight_axis(node: ir.Node, rank: int) -> int | None:
    """The output-channel axis of a layer's weight (rules 4 and TensorRT 8)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return 0 if trans_b is not None and trans_b.as_int() else 1
    return 1 if rank == 2 else None


def is_activation_matmul(node: ir.Node) -> bool:
    """A MatMul whose two inputs are float activations (attention's QKᵀ, probabilities·V)."""
    if node.op_type != "MatMul" or len(node.inputs) != 2:
        return False
    return all(v is not None and not is_constant(v) and is_float(v) for v in node.inputs)


def constant_initializer(value: ir.Value | None, what: str) -> ir.TensorProtocol | NoMatch:
    """The tensor a constant initializer holds, or why ``value`` is none.

    An initializer that is also a graph input is not a constant (callers may override it), and a
    ``Constant`` node's output is left to fold, which makes it an initializer.
    """
    if value is None or value.const_value is None or not value.is_initializer():
        return NoMatch(f"{what} is not a constant initializer")
    if not is_constant(value):
        return NoMatch(f"{what} '{value.name}' is also a graph input, so callers may override it")
    return value.const_value


def layer_problem(node: ir.Node) -> NoMatch | None:
    """Why a Conv/ConvTranspose/Gemm/MatMul cannot be quantized, or None when it can."""
    weight = constant_initializer(node.inputs[1] if len(node.inputs) > 1 else None, "weight (input 1)")
    if isinstance(weight, NoMatch):
        return weight
    if weight.dtype != ir.DataType.FLOAT:
        return NoMatch(f"weight has dtype {weight.dtype.name}, not float32")
    rank = len(weight.shape)
    if node.op_type in ("MatMul", "Gemm") and rank != 2:
        return NoMatch(f"weight of rank {rank}, not 2")
    if node.inputs[0] is None or is_constant(node.inputs[0]):
        return NoMatch("activation input is a constant (run fold first)")
    if node.op_type == "Gemm" and node.attributes.get_int("transA"):
        return NoMatch("Gemm with transA=1")
    return None


def quantize_weight(array: np.ndarray, axis: int | None, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Quantizes ``array`` to symmetric narrow-range int8 values and returns them with their scales.

    With ``bits`` < 8 the values stay within ``±(2**(bits-1) - 1)``; there is one scale per slice
    along ``axis``, or one scale when ``axis`` is None.
    """
    from onnxshrink.passes.quantize.statistics import weight_scales

    scales = weight_scales(array, axis, bits=bits)
    shape = [1] * array.ndim
    if axis is not None:
        shape[axis] = -1
    limit = 2 ** (bits - 1) - 1
    quantized = np.clip(np.rint(array / scales.reshape(shape)), -limit, limit).astype(np.int8)
    return quantized, scales
