"""``onnxshrink inspect --kernels``: which compute nodes onnxruntime runs as integer kernels.

onnxruntime fuses QDQ groups (DequantizeLinear → op → QuantizeLinear) into integer kernels while
it optimizes a session. We let it optimize the model for the chosen provider at level
``EXTENDED`` (where the QDQ fusions run; ``ALL`` only adds hardware-specific layouts on top),
save the optimized graph with ``optimized_model_filepath`` and read it back.

Each original compute node is then mapped to the optimized node that took its place:

1. **name**: onnxruntime keeps the name of the node a fusion replaces (at level ``ALL`` with a
   ``_token_N`` suffix); used when the original name is unique.
2. **output**: else the optimized node that produces the original node's output, or the output of
   the chain of sole consumers that a fusion absorbed (bias Add, Relu/Clip, the QuantizeLinear).
3. **producer**: else, when the node alone reads a matched node's output, the kernel of that
   node, which folded it in (Conv + bias Add → Conv).
4. **op count**: nodes matched none of these ways are left unmatched; the totals then count the
   integer kernels of their op type that no node claimed, and say so.

A matched node runs as an integer kernel when the optimized op is one (QLinearConv,
MatMulIntegerToFloat, MatMulNBits...), or when it is a data-movement op (MaxPool, Reshape...)
whose input is an int8 tensor because onnxruntime dropped the Q/DQ pair around it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.ir.graphs import ONNX_DOMAINS, is_onnx_op
from onnxshrink.ir.shapes import inferred_copy
from onnxshrink.runtime import RuntimeUnavailable, create_session, model_source

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
_FLOAT_TYPES = frozenset(
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
_WRITTEN_KERNELS = frozenset({"GatherBlockQuantized", "MatMulNBits"})
_LISTED = 40  # float nodes listed in the text output
# Optimized ops whose output is a quantized tensor (a data-movement op reading it runs on int8).
_INT_PRODUCERS = frozenset({"QuantizeLinear", *INTEGER_KERNELS}) - {"MatMulIntegerToFloat", "MatMulNBits", "QGemm"}


@dataclasses.dataclass(frozen=True)
class NodeKernel:
    """How one original compute node runs after onnxruntime's optimizations."""

    node: str
    op: str
    kernel: str | None  # the optimized op type; None when unmatched
    precision: str  # "int8", "int4", ..., "float", or "unknown" when unmatched
    matched_by: str  # "name", "output", "producer" or "none"

    @property
    def integer(self) -> bool:
        return self.precision.startswith(("int", "uint"))


@dataclasses.dataclass(frozen=True)
class OpTotals:
    """Per op type: how many nodes run as integer kernels, stayed float, or were not matched."""

    op: str
    nodes: int
    integer: int
    float: int
    unmatched: int
    integer_by_op_count: int  # unmatched nodes accounted for by unclaimed integer kernels of this op
    precisions: dict[str, int]

    def describe(self) -> str:
        counted = self.integer + self.integer_by_op_count
        kinds = sorted(self.precisions)
        label = kinds[0] if len(kinds) == 1 else "integer"  # "Conv: 20/20 int8", "MaxPool: 0/1 integer"
        text = f"{self.op}: {counted}/{self.nodes} {label}"
        if len(kinds) > 1:
            text += " (" + ", ".join(f"{k} {self.precisions[k]}" for k in kinds) + ")"
        if self.unmatched:
            text += f"; {self.unmatched} not matched"
            if self.integer_by_op_count:
                text += f", of which {self.integer_by_op_count} counted as integer by op type"
        return text


@dataclasses.dataclass(frozen=True)
class KernelReport:
    """The kernel view of a model: per node and per op type, with how nodes were matched."""

    provider: str
    provider_reason: str
    optimization_level: str
    nodes: list[NodeKernel]
    totals: list[OpTotals]
    optimized_ops: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "provider_reason": self.provider_reason,
            "optimization_level": self.optimization_level,
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
            "totals": {t.op: {k: v for k, v in dataclasses.asdict(t).items() if k != "op"} for t in self.totals},
            "optimized_ops": self.optimized_ops,
        }


def format_kernels(report: KernelReport) -> str:
    """Human-readable text of a :class:`KernelReport`."""
    matched = Counter(n.matched_by for n in report.nodes)
    lines = [
        f"kernels on {report.provider} ({report.provider_reason}), graph optimization {report.optimization_level}; "
        f"nodes matched by name {matched['name']}, by output {matched['output']}, "
        f"by producer {matched['producer']}, not matched {matched['none']}",
        *(f"  {t.describe()}" for t in report.totals),
    ]
    floats = [n for n in report.nodes if n.precision == "float"]
    if floats:
        lines.append("float nodes:")
        lines.extend(f"  {n.node[:48]:48} {n.op:18} -> {n.kernel}" for n in floats[:_LISTED])
        if len(floats) > _LISTED:
            lines.append(f"  ... {len(floats) - _LISTED} more (--json lists every node)")
    return "\n".join(lines)


def _label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}->{node.outputs[0].name}"


def _from_dequantize(value: ir.Value) -> bool:
    producer = value.producer()
    return producer is not None and producer.op_type == "DequantizeLinear"


def _original_dtypes(model: ir.Model) -> dict[str, int]:
    """Element type of every main-graph value, from the model and onnx type inference."""
    dtypes: dict[str, int] = {}
    # Inference gives up on some custom graphs; declared types remain. Types need no data propagation.
    proto = inferred_copy(model, purpose="inspect --kernels: element types", data_prop=False)
    if proto is not None:
        graph = proto.graph
        for info in [*graph.input, *graph.value_info, *graph.output]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                dtypes[info.name] = info.type.tensor_type.elem_type
        for init in graph.initializer:
            dtypes[init.name] = init.data_type
    for node in model.graph:
        for value in node.outputs:
            if value.name and value.dtype is not None:
                dtypes.setdefault(value.name, int(value.dtype))
    return dtypes


def _is_candidate(node: ir.Node, dtypes: dict[str, int]) -> bool:
    """A compute or data-movement node working on float (or dequantized) data, or a
    block-quantized kernel written into the model as such (GatherBlockQuantized, MatMulNBits)."""
    if node.domain == "com.microsoft" and node.op_type in _WRITTEN_KERNELS:
        return True
    if not is_onnx_op(node) or not node.inputs or not node.outputs:
        return False
    if node.op_type not in COMPUTE_OPS and node.op_type not in DATA_MOVEMENT_OPS:
        return False
    data = [v for v in node.inputs if v is not None]
    if any(_from_dequantize(v) for v in data):
        return True
    if node.op_type in DATA_MOVEMENT_OPS:
        # Only data-movement nodes inside a QDQ island matter; shape arithmetic does not.
        return False
    if node.op_type == "Where":
        data = data[1:]
    return any(dtypes.get(v.name or "") in _FLOAT_TYPES for v in data)


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


class _OptimizedGraph:
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
        if node.op_type in _WRITTEN_KERNELS:
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


def _match(node: ir.Node, optimized: _OptimizedGraph, unique_names: set[str]) -> tuple[onnx.NodeProto | None, str]:
    if node.name in unique_names:
        found = optimized.by_name.get(node.name)
        if found is not None and found.op_type not in _QDQ:
            return found, "name"
    for name in _output_chain(node):
        found = optimized.by_output.get(name)
        if found is not None:
            return (None, "none") if found.op_type in _QDQ else (found, "output")
    return None, "none"


def _absorbing_producer(node: ir.Node, found_for: dict[ir.Node, onnx.NodeProto]) -> onnx.NodeProto | None:
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


def _totals(rows: list[NodeKernel], claimed: set[int], optimized: _OptimizedGraph) -> list[OpTotals]:
    free: Counter[str] = Counter(
        INTEGER_KERNELS[n.op_type] for n in optimized.nodes if n.op_type in INTEGER_KERNELS and id(n) not in claimed
    )
    totals = []
    for op in sorted({r.op for r in rows}):
        mine = [r for r in rows if r.op == op]
        unmatched = sum(1 for r in mine if r.matched_by == "none")
        by_count = min(unmatched, free[op])
        precisions = Counter(r.precision for r in mine if r.integer)
        if by_count:
            precisions["int8"] += by_count
        totals.append(
            OpTotals(
                op=op,
                nodes=len(mine),
                integer=sum(1 for r in mine if r.integer),
                float=sum(1 for r in mine if r.precision == "float"),
                unmatched=unmatched,
                integer_by_op_count=by_count,
                precisions=dict(sorted(precisions.items())),
            )
        )
    return totals


def _optimize(model: ir.Model, provider: str, folder: Path) -> tuple[onnx.ModelProto, str, str]:
    target = folder / "optimized.onnx"

    def configure(options: Any) -> None:
        import onnxruntime

        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(target)
        # Weights go to a side file: no 2 GiB limit and nothing to read back but the graph.
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.onnx.data"
        )
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "64")

    try:
        with model_source(model) as source:
            _, choice = create_session(source, provider, configure=configure)
    except RuntimeUnavailable as error:
        raise UsageError(f"--kernels: onnxruntime cannot load this model: {error}") from None
    return onnx.load(str(target), load_external_data=False), choice.used, choice.reason


def kernel_report(model: ir.Model, provider: str = "cpu") -> KernelReport:
    """Lets onnxruntime optimize ``model`` for ``provider`` and maps its kernels to the original nodes.

    Only the main graph is mapped (onnxruntime optimizes subgraphs too, but saves them inside
    their If/Loop nodes).

    Raises:
        UsageError: onnxruntime cannot load the model, or ``cuda`` was asked for but is unusable.
    """
    with tempfile.TemporaryDirectory(prefix="onnxshrink-kernels-") as tmp:
        proto, used, reason = _optimize(model, provider, Path(tmp))
    optimized = _OptimizedGraph(proto.graph)
    dtypes = _original_dtypes(model)
    names = Counter(n.name for n in model.graph if n.name)
    unique = {name for name, count in names.items() if count == 1}
    rows: list[NodeKernel] = []
    claimed: set[int] = set()
    found_for: dict[ir.Node, onnx.NodeProto] = {}
    for node in model.graph:
        if not _is_candidate(node, dtypes):
            continue
        found, how = _match(node, optimized, unique)
        if found is None:
            found = _absorbing_producer(node, found_for)
            how = "producer"
        if found is None:
            rows.append(NodeKernel(_label(node), node.op_type, None, "unknown", "none"))
            continue
        found_for[node] = found
        claimed.add(id(found))
        rows.append(NodeKernel(_label(node), node.op_type, _qualified(found), optimized.precision(found), how))
    return KernelReport(
        provider=used,
        provider_reason=reason,
        optimization_level="extended",
        nodes=rows,
        totals=_totals(rows, claimed, optimized),
        optimized_ops=dict(sorted(Counter(_qualified(n) for n in optimized.nodes).items())),
    )


def _qualified(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}::{node.op_type}"
