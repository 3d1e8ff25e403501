"""How ``inspect --kernels`` finds, in onnxruntime's optimized graph, the node that took an original one's place.

The kernel tables (integer kernels and the float ops they implement, data-movement ops), the
optimized graph indexed by node and output name, and the matching rules 1-3 of
:mod:`onnxshrink.inspect.int_kernels`.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from onnxshrink.ir.graphs import ONNX_DOMAINS

# Integer kernel → the float op it implements.
INTEGER_KERNELS: dict[str, str] = {
    "QLinearConv": "Conv",
    "ConvInteger": "Conv",
    "QLinearConvTranspose": "ConvTranspose",
    "QLinearMatMul": "MatMul",
    "MatMulInteger": "MatMul",
    "MatMulIntegerToFloat": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "MatMulNBits": "MatMul",
    "QGemm": "Gemm",
    "QLinearAdd": "Add",
    "QLinearMul": "Mul",
    "QLinearConcat": "Concat",
    "QLinearWhere": "Where",
    "QLinearAveragePool": "AveragePool",
    "QLinearGlobalAveragePool": "GlobalAveragePool",
    "QLinearSigmoid": "Sigmoid",
    "QLinearSoftmax": "Softmax",
    "QLinearLeakyRelu": "LeakyRelu",
    "QLinearReduceMean": "ReduceMean",
}
# Ops that only move or select data: int8 when onnxruntime dropped the Q/DQ pair around them.
DATA_MOVEMENT_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Slice",
        "Gather",
        "Expand",
        "Tile",
        "MaxPool",
        "GlobalMaxPool",
        "Resize",
        "Split",
        "DepthToSpace",
        "SpaceToDepth",
    }
)
COMPUTE_OPS = frozenset(INTEGER_KERNELS.values())
FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
)
# Nodes a fusion absorbs after the compute node (activation, bias Add of MatMul+Add → Gemm,
# the output Q): followed to find the fused node's output.
_ABSORBED = frozenset({"Relu", "Clip", "Add", "QuantizeLinear"})
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Integer kernels a quantizer may write directly (not produced by onnxruntime's fusions).
WRITTEN_KERNELS = frozenset({"GatherBlockQuantized", "MatMulNBits"})
# Optimized ops whose output is a quantized tensor (a data-movement op reading it runs on int8).
_INT_PRODUCERS = frozenset({"QuantizeLinear", *INTEGER_KERNELS}) - {"MatMulIntegerToFloat", "MatMulNBits", "QGemm"}


def _output_chain(node: ir.Node) -> list[str]:
    """The node's output, then outputs of the sole-consumer chain a fusion absorbs (Relu, Q)."""
    names: list[str] = []
    current = node
    for _ in range(3):
        out = current.outputs[0]
        if out.name:
            names.append(out.name)
        uses = list(out.uses())
        if len(uses) != 1 or out.is_graph_output():
            break
        consumer = uses[0].node
        if consumer.op_type not in _ABSORBED:
            break
        current = consumer
        if consumer.op_type == "QuantizeLinear":
            if consumer.outputs[0].name:
                names.append(consumer.outputs[0].name)
            break
    return names


class OptimizedGraph:
    """The optimized main graph, indexed by node name and by output name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.by_name: dict[str, onnx.NodeProto] = {}
        self.by_output: dict[str, onnx.NodeProto] = {}
        for node in self.nodes:
            if node.name:
                self.by_name[node.name] = node
                base, sep, _ = node.name.rpartition("_token_")
                if sep:
                    self.by_name.setdefault(base, node)
            for output in node.output:
                if output:
                    self.by_output[output] = node

    def precision(self, node: onnx.NodeProto) -> str:
        """Returns what ``node`` of the optimized graph computes in: ``int8``, ``int4``... or ``float``."""
        if node.op_type in WRITTEN_KERNELS:
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            return f"int{bits}"
        if node.op_type in INTEGER_KERNELS:
            return "int8"
        if node.op_type in DATA_MOVEMENT_OPS and node.input:
            producer = self._source_producer(node.input[0])
            if producer is not None and (
                producer.op_type in _INT_PRODUCERS
                # QGemm quantizes its output only when given y_scale (input 7)
                or (producer.op_type == "QGemm" and len(producer.input) > 7 and producer.input[7])
            ):
                return "int8"
        return "float"

    def _source_producer(self, name: str) -> onnx.NodeProto | None:
        """The producer of a tensor, looking through chains of data-movement ops."""
        seen = 0
        producer = self.by_output.get(name)
        while producer is not None and producer.op_type in DATA_MOVEMENT_OPS and producer.input and seen < 64:
            producer = self.by_output.get(producer.input[0])
            seen += 1
        return producer


def match_node(node: ir.Node, optimized: OptimizedGraph, unique_names: set[str]) -> tuple[onnx.NodeProto | None, str]:
    """Rules 1-2: the optimized node found by name (when unique) or by output, and how; ``"none"`` else."""
    if node.name in unique_names:
        found = optimized.by_name.get(node.name)
        if found is not None and found.op_type not in _QDQ:
            return found, "name"
    for name in _output_chain(node):
        found = optimized.by_output.get(name)
        if found is not None:
            return (None, "none") if found.op_type in _QDQ else (found, "output")
    return None, "none"


def absorbing_producer(node: ir.Node, found_for: dict[ir.Node, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The kernel of a matched producer this node was folded into (Conv + bias Add → Conv).

    Only a producer whose output this node alone reads can have absorbed it.
    """
    for value in node.inputs:
        if value is None or len(list(value.uses())) != 1:
            continue
        producer = value.producer()
        if producer is not None and producer in found_for:
            return found_for[producer]
    return None


def qualified_op(node: onnx.NodeProto) -> str:
    """``op_type`` in the ONNX domain, ``domain::op_type`` elsewhere."""
    return node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}::{node.op_type}"
