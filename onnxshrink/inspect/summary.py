"""``onnxshrink inspect``: what a model holds and costs.

Nodes, op histogram, parameters, weight bytes raw and compressed (zstd, else gzip: the size a
user downloads), sparsity of float weights, the quantized share, and MACs of Conv,
ConvTranspose, Gemm and MatMul from inferred shapes.
"""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.inspect.layers import layer_rows
from onnxshrink.inspect.macs import graph_macs
from onnxshrink.inspect.names import shorten_all
from onnxshrink.ir.checks import weightless_proto
from onnxshrink.ir.graphs import all_nodes, all_tensors, count_bytes, count_params, is_onnx_op, tensor_nbytes
from onnxshrink.ir.shapes import inferred_proto

_QUANTIZED_TYPES = {
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT4,
    ir.DataType.UINT4,
    ir.DataType.FLOAT8E4M3FN,
    ir.DataType.FLOAT8E5M2,
}
_QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "MatMulNBits",
    "QGemm",
    "DynamicQuantizeLSTM",
}
_CHUNK = 16 * 1024 * 1024
_FOLD_ROUNDS = 8

logger = logging.getLogger(__name__)


def _compressor() -> tuple[str, Any]:
    try:
        import zstandard

        return "zstd", zstandard.ZstdCompressor(level=3).compressobj()
    except ImportError:
        return "gzip", gzip.compress


def _compressed_size(tensors: list[ir.TensorProtocol]) -> tuple[str, int]:
    name, compressor = _compressor()
    total = 0
    if name == "zstd":
        for tensor in tensors:
            data = tensor.tobytes()
            for start in range(0, len(data), _CHUNK):
                total += len(compressor.compress(data[start : start + _CHUNK]))
        total += len(compressor.flush())
        return name, total
    for tensor in tensors:
        total += len(compressor(tensor.tobytes(), compresslevel=6))
    return name, total


def compression_method() -> str:
    """The compressor :func:`compressed_weight_bytes` uses: ``zstd`` when installed, else ``gzip``."""
    return _compressor()[0]


def compressed_weight_bytes(model: ir.Model) -> tuple[str, int]:
    """The compressor used (``zstd``, else ``gzip``) and the compressed size of every weight (as ``inspect``)."""
    return _compressed_size([t for t in all_tensors(model) if t.dtype != ir.DataType.STRING])


def _static_shapes(infos: Iterable[onnx.ValueInfoProto]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes whose every dim is a number ``>= 0``; a ``-1`` or symbolic dim means unknown."""
    result: dict[str, tuple[int, ...]] = {}
    for info in infos:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            result[info.name] = tuple(d.dim_value for d in dims)
    return result


def _fold_shape_arithmetic(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The proto with ``Shape`` arithmetic over its now fixed input sizes folded to constants.

    onnx shape inference propagates ``Shape → Gather → Unsqueeze`` values but ``Slice``, ``Range``
    and friends do not read them: BERT's ``position_ids[:, :S]`` loses every dim downstream.
    Folding (the ``fold`` pass, on this weightless copy only) turns such chains into constants.
    """
    from onnxshrink.registry import get_pass

    fold = get_pass("fold")
    folder = fold()
    try:
        model = ir.serde.deserialize_model(proto)
        # A folded Slice end lets the next inference find more static dims, hence more to fold.
        # A round that folded nothing ends the rounds: another inference of the same graph
        # would find the same shapes, and the caller's final inference finds them anyway.
        for _ in range(_FOLD_ROUNDS):
            # The fold pass marks (in the model's meta) a graph it has folded, and skips its shape
            # inference on it; every round here must infer again, on this same copy.
            model.meta.clear()
            wiring = _wiring(model)
            if not folder.call(model).modified:
                break
            proto = ir.serde.serialize_model(model)
            if _same(wiring, _wiring(model)):
                break
    except Exception as error:  # folding gives up on some custom graphs; shapes are then partial
        logger.debug("folding shape arithmetic failed, inferring from the last round: %s", error)
    return proto


def _wiring(model: ir.Model) -> list[tuple[Any, ...]]:
    """Each node with the values it reads (held, so no id is reused while compared)."""
    return [(node, *node.inputs) for node in all_nodes(model)]


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    """True when no node was added, removed or rewired between two :func:`_wiring` lists."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(u is v for u, v in zip(x, y, strict=True)) for x, y in zip(a, b, strict=True)
    )


def value_shapes(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Static shapes of the main graph's values, inferred from the input sizes (no weight is read).

    Dynamic input dims (symbolic, absent or ``-1``) take their size from ``shapes`` (input name →
    dims), else 1. Shapes stored in the model (value_info, output shapes) are set aside and
    re-inferred from those sizes: exporters store stale ones such as ``[-1, 8, unk__0, unk__1]``,
    which onnx shape inference would keep. A stored shape is used only where inference finds
    none, and only when all its dims are numbers ``>= 0``.

    Raises:
        UsageError: ``shapes`` names an input the model does not have, or gives it the wrong rank.
    """
    proto = weightless_proto(model)
    runtime_inputs = {value.name for value in model.graph.inputs if not value.is_initializer()}
    declared = {value.name: value for value in proto.graph.input if value.name in runtime_inputs}
    for name, given in shapes.items():
        if name not in declared:
            raise UsageError(f"--shape names '{name}', which is not an input; inputs: {', '.join(declared)}")
        tensor_type = declared[name].type.tensor_type
        if not tensor_type.HasField("shape"):
            tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in given)
        rank = len(tensor_type.shape.dim)
        if len(given) != rank:
            raise UsageError(f"--shape {name} has {len(given)} dims, the input has {rank}")
    graph = proto.graph
    stored = _static_shapes([*graph.value_info, *graph.output])
    for value in graph.input:
        sizes = shapes.get(value.name)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if sizes is not None:
                dim.dim_value = sizes[axis]
            elif not dim.HasField("dim_value") or dim.dim_value < 0:
                dim.dim_value = 1
    del graph.value_info[:]
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    proto = _fold_shape_arithmetic(proto)
    # Inference fails on some custom ops; MACs are then partial.
    inferred = inferred_proto(proto, purpose="inspect: value shapes for MACs") or proto
    graph = inferred.graph
    result = stored | _static_shapes([*graph.input, *graph.value_info, *graph.output])
    for sub in _subgraph_protos(graph):
        # If/Loop/Scan bodies: what inference found there (names seen in the main graph win)
        for name, shape in _static_shapes([*sub.input, *sub.value_info, *sub.output]).items():
            result.setdefault(name, shape)
        for init in sub.initializer:
            result.setdefault(init.name, tuple(init.dims))
    for init in graph.initializer:
        result[init.name] = tuple(init.dims)
    return result


def _subgraph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield sub
                yield from _subgraph_protos(sub)


def assumed_dims(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[dict[str, Any]]]:
    """The size each runtime input dim was given for shapes and MACs, and where it came from.

    Per input, one entry per dim: ``declared`` (a number, a symbolic name or None), ``used`` and
    ``source``: ``model`` (declared number), ``--shape``, or ``assumed`` (dynamic, taken as 1).
    """
    result: dict[str, list[dict[str, Any]]] = {}
    for value in model.graph.inputs:
        if value.is_initializer() or value.shape is None:
            continue
        given = shapes.get(value.name or "")
        dims = []
        for axis, dim in enumerate(value.shape):
            declared: int | str | None = dim if isinstance(dim, int) else (dim.value if dim is not None else None)
            if given is not None and given[axis] != declared:
                dims.append({"declared": declared, "used": given[axis], "source": "--shape"})
            elif isinstance(declared, int) and declared >= 0:
                dims.append({"declared": declared, "used": declared, "source": "model"})
            else:
                dims.append({"declared": declared, "used": 1, "source": "assumed"})
        result[value.name or ""] = dims
    return result


def describe_assumed_dims(assumed: Mapping[str, list[dict[str, Any]]]) -> str:
    """One line: the input sizes MACs were counted for, marking dims taken as 1 or from --shape."""
    described = [_describe_dims(name, dims) for name, dims in assumed.items() if dims]
    if not described:
        return ""
    note = ""
    if any(d["source"] == "assumed" for dims in assumed.values() for d in dims):
        note = "; dynamic dims taken as 1, set them with --shape NAME=DIMS"
    return f"MACs counted for inputs {', '.join(described)}{note}"


def _describe_dims(name: str, dims: list[dict[str, Any]]) -> str:
    parts = []
    for dim in dims:
        if dim["source"] == "model":
            parts.append(str(dim["used"]))
        else:
            label = dim["declared"] if isinstance(dim["declared"], str) else "?"
            parts.append(f"{label}={dim['used']}" + (" (assumed)" if dim["source"] == "assumed" else " (--shape)"))
    return f"{name} [{', '.join(parts)}]"


def _float_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    for tensor in all_tensors(model):
        if tensor.dtype.is_floating_point():
            yield tensor


def op_counts(model: ir.Model) -> Counter[str]:
    """How many nodes of each op type (``domain::op`` outside the ONNX domain), subgraphs and functions included."""
    return Counter(n.op_type if is_onnx_op(n) else f"{n.domain}::{n.op_type}" for n in all_nodes(model))


def float_weight_sparsity(model: ir.Model) -> float:
    """The share of zeros among the float weights of two or more elements (reads every float weight)."""
    zeros = elements = 0
    for tensor in _float_tensors(model):
        if tensor.size < 2:
            continue
        data = tensor.numpy()
        zeros += int(np.count_nonzero(data == 0))
        elements += int(data.size)
    return zeros / elements if elements else 0.0


def quantized_weight_share(model: ir.Model) -> float:
    """The share of weight bytes held in int8/uint8/int4/uint4/float8 tensors (no weight is read)."""
    total_bytes = count_bytes(model)
    quant_bytes = sum(tensor_nbytes(t) for t in all_tensors(model) if t.dtype in _QUANTIZED_TYPES)
    return quant_bytes / total_bytes if total_bytes else 0.0


def inspect_model(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """A JSON-serializable summary of the model."""
    ops = op_counts(model)
    total_bytes = count_bytes(model)
    method, compressed = compressed_weight_bytes(model)
    try:
        shape_of = value_shapes(model, shapes or {})
    except UsageError:
        raise
    except Exception:  # serialization of exotic models; MACs are then unknown
        shape_of = {}
    counted = graph_macs(model.graph, shape_of)
    macs_by_op = counted.by_op
    layers = layer_rows(model, shape_of)
    return {
        "ir_version": model.ir_version,
        "opsets": dict(sorted(model.opset_imports.items())),
        "inputs": [f"{v.name}: {v.type} {v.shape}" for v in model.graph.inputs],
        "outputs": [f"{v.name}: {v.type} {v.shape}" for v in model.graph.outputs],
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "functions": len(model.functions),
        "params": count_params(model),
        "bytes": total_bytes,
        "bytes_compressed": compressed,
        "compression": method,
        "float_weight_sparsity": float_weight_sparsity(model),
        "quantized_weight_share": quantized_weight_share(model),
        "quantization_nodes": sum(c for op, c in ops.items() if op.split("::")[-1] in _QUANT_OPS),
        "macs": int(sum(macs_by_op.values())),
        "flops": 2 * int(sum(macs_by_op.values())),
        "macs_by_op": dict(sorted(macs_by_op.items())),
        "macs_unknown_nodes": counted.unknown,
        "macs_subgraphs": counted.subgraphs,
        "macs_notes": counted.notes,
        "assumed_dims": assumed_dims(model, shapes or {}),
        "layers": layers,
    }


def format_inspection(info: Mapping[str, Any]) -> str:
    """Human-readable text of :func:`inspect_model`'s result."""
    lines = [
        f"IR {info['ir_version']}, opsets {info['opsets']}",
        *(f"input  {text}" for text in info["inputs"]),
        *(f"output {text}" for text in info["outputs"]),
        f"nodes {info['nodes']} ({info['functions']} local functions)",
        f"params {info['params']:,}  bytes {info['bytes']:,}  {info['compression']} {info['bytes_compressed']:,}",
        f"float weight sparsity {info['float_weight_sparsity']:.2%}  quantized weight share "
        f"{info['quantized_weight_share']:.2%}  quantization nodes {info['quantization_nodes']}",
        f"MACs {info['macs']:,} (FLOPs {info['flops']:,})"
        + "".join(f"  {op} {count:,}" for op, count in sorted(info["macs_by_op"].items()))
        + (f"  ({info['macs_unknown_nodes']} nodes of unknown shape)" if info["macs_unknown_nodes"] else ""),
        *_dims_and_subgraph_lines(info),
        "ops:",
        *(f"  {op:28} {count}" for op, count in info["ops"].items()),
    ]
    if info["layers"]:
        lines.extend(format_layers(info["layers"]))
    return "\n".join(lines)


def _dims_and_subgraph_lines(info: Mapping[str, Any]) -> list[str]:
    """Which input sizes the shapes and MACs rest on, and how If/Loop/Scan bodies were counted."""
    lines = []
    dims_line = describe_assumed_dims(info["assumed_dims"])
    if dims_line:
        lines.append(dims_line)
    empty = sum(1 for sub in info["macs_subgraphs"] if not sub["macs"])
    for sub in info["macs_subgraphs"]:
        if not sub["macs"]:
            continue
        how = {0: "not in total (the other branch is larger)", 1: "counted once"}.get(sub["times"], f"x{sub['times']}")
        lines.append(f"  {sub['graph']}: MACs {sub['macs']:,} ({sub['why']}, {how})")
    if empty:
        lines.append(f"  {empty} more subgraphs without MACs (--json lists them)")
    lines.extend(f"  note: {note}" for note in info["macs_notes"])
    return lines


_NAME_WIDTH = 40


def format_layers(layers: list[Mapping[str, Any]]) -> list[str]:
    """The per-layer table: shape, precision, sparsity, MACs, bytes, N:M patterns (and kernel)."""
    names = shorten_all((_where(layer) for layer in layers), _NAME_WIDTH)
    width = max(len(name) for name in names.values())
    with_kernel = any("kernel" in layer for layer in layers)
    lines = [
        "layers (weight shape, precision, sparsity, MACs, bytes, N:M patterns along the reduction axis"
        + (", kernel):" if with_kernel else "):")
    ]
    for layer in layers:
        patterns = ",".join(layer["nm_patterns"]) or "-"
        shape = "x".join(map(str, layer["shape"]))
        sparsity = "-" if layer["sparsity"] is None else f"{layer['sparsity']:.2%}"
        macs = "-" if layer["macs"] is None else f"{layer['macs']:,}"
        kernel = f"  {layer.get('kernel') or '-'}" if with_kernel else ""
        lines.append(
            f"  {names[_where(layer)]:{width}} {layer['op']:13} {shape:>16} {layer['precision']:>8} "
            f"{sparsity:>7} {macs:>12} {layer['bytes']:>10,}  {patterns}{kernel}"
        )
    return lines


def _where(layer: Mapping[str, Any]) -> str:
    return f"{layer['graph']}/{layer['node']}" if layer["graph"] else layer["node"]
