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
from onnxshrink.inspect.kernel_match import (
    COMPUTE_OPS,
    DATA_MOVEMENT_OPS,
    FLOAT_TYPES,
    INTEGER_KERNELS,
    WRITTEN_KERNELS,
    OptimizedGraph,
    absorbing_producer,
    match_node,
    qualified_op,
)
from onnxshrink.inspect.names import shorten_all
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.ir.shapes import inferred_copy
from onnxshrink.runtime import RuntimeUnavailable, create_session, model_source

_LISTED = 40  # float nodes listed in the text output


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
        """Whether the node runs as an integer kernel (int8, uint8, int4...)."""
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
        """Returns one line such as ``Conv: 20/20 int8`` or ``MaxPool: 0/1 integer; 1 not matched``."""
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
        """Returns the report as plain JSON data, with totals keyed by op type."""
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
        listed = floats[:_LISTED]
        names = shorten_all((n.node for n in listed), 48)
        width = max(len(name) for name in names.values())
        lines.extend(f"  {names[n.node]:{width}} {n.op:18} -> {n.kernel}" for n in listed)
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
    """Whether ``node`` is worth a kernel check.

    It is when it computes or moves float (or dequantized) data, or is a block-quantized kernel
    written into the model as such (GatherBlockQuantized, MatMulNBits).
    """
    if node.domain == "com.microsoft" and node.op_type in WRITTEN_KERNELS:
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
    return any(dtypes.get(v.name or "") in FLOAT_TYPES for v in data)


def _totals(rows: list[NodeKernel], claimed: set[int], optimized: OptimizedGraph) -> list[OpTotals]:
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
    optimized = OptimizedGraph(proto.graph)
    dtypes = _original_dtypes(model)
    names = Counter(n.name for n in model.graph if n.name)
    unique = {name for name, count in names.items() if count == 1}
    rows: list[NodeKernel] = []
    claimed: set[int] = set()
    found_for: dict[ir.Node, onnx.NodeProto] = {}
    for node in model.graph:
        if not _is_candidate(node, dtypes):
            continue
        found, how = match_node(node, optimized, unique)
        if found is None:
            found = absorbing_producer(node, found_for)
            how = "producer"
        if found is None:
            rows.append(NodeKernel(_label(node), node.op_type, None, "unknown", "none"))
            continue
        found_for[node] = found
        claimed.add(id(found))
        rows.append(NodeKernel(_label(node), node.op_type, qualified_op(found), optimized.precision(found), how))
    return KernelReport(
        provider=used,
        provider_reason=reason,
        optimization_level="extended",
        nodes=rows,
        totals=_totals(rows, claimed, optimized),
        optimized_ops=dict(sorted(Counter(qualified_op(n) for n in optimized.nodes).items())),
    )
