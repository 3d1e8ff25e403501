"""``onnxshrink inspect``: what a model holds and costs.

Nodes, op histogram, parameters, weight bytes raw and compressed (zstd, else gzip: the size a
user downloads), sparsity of float weights, the quantized share, and MACs of Conv,
ConvTranspose, Gemm and MatMul from inferred shapes.
"""

from __future__ import annotations

import gzip
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.ir.checks import weightless_proto
from onnxshrink.ir.graphs import all_nodes, all_tensors, count_bytes, count_params, is_onnx_op, tensor_nbytes
from onnxshrink.ir.shapes import inferred_proto
from onnxshrink.sparsity import layer_weights, patterns_of

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
        # A folded Slice end lets the next inference find more static dims, hence more to fold.
        # Each round starts from a fresh deserialization: the fold pass skips its own shape
        # inference on a model it has folded before.
        for _ in range(_FOLD_ROUNDS):
            model = ir.serde.deserialize_model(proto)
            if not folder.call(model).modified:
                break
            proto = ir.serde.serialize_model(model)
    except Exception as error:  # folding gives up on some custom graphs; shapes are then partial
        logger.debug("folding shape arithmetic failed, inferring from the last round: %s", error)
    return proto


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
    for init in graph.initializer:
        result[init.name] = tuple(init.dims)
    return result


# Op type → (index of the activation input A, index of the weight W) for MAC counting.
_MAC_OPS: dict[str, tuple[int, int]] = {
    "Conv": (0, 1),
    "ConvInteger": (0, 1),
    "QLinearConv": (0, 3),
    "ConvTranspose": (0, 1),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
}


def _macs(node: ir.Node, shape_of: Mapping[str, tuple[int, ...]]) -> int | None:
    """Multiply-accumulates of one layer; None when a shape it needs is unknown.

    Conv: every output element sums C/group × kernel products, i.e. ``|Y| × prod(W.shape[1:])``
    (W is [M, C/group, k...]); ConvTranspose scatters every input element over
    ``prod(W.shape[1:])`` outputs (W is [C, M/group, k...]); Gemm/MatMul: ``|Y| × K``.
    """

    def get(index: int) -> tuple[int, ...] | None:
        value = node.inputs[index] if index < len(node.inputs) else None
        return None if value is None or value.name is None else shape_of.get(value.name)

    data_index, weight_index = _MAC_OPS[node.op_type]
    out_value = node.outputs[0] if node.outputs else None
    out = shape_of.get(out_value.name) if out_value is not None and out_value.name else None
    data, weight = get(data_index), get(weight_index)
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        return None if out is None or weight is None else math.prod(out) * math.prod(weight[1:])
    if op == "ConvTranspose":
        return None if data is None or weight is None else math.prod(data) * math.prod(weight[1:])
    if out is None or not data:
        return None
    if op == "Gemm":
        k = data[0] if node.attributes.get_int("transA", 0) else data[-1]
        return math.prod(out) * k
    return math.prod(out) * data[-1]


def _float_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    for tensor in all_tensors(model):
        if tensor.dtype.is_floating_point():
            yield tensor


def inspect_model(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """A JSON-serializable summary of the model."""
    ops = Counter(n.op_type if is_onnx_op(n) else f"{n.domain}::{n.op_type}" for n in all_nodes(model))
    tensors = list(all_tensors(model))
    zeros = elements = 0
    for tensor in _float_tensors(model):
        if tensor.size < 2:
            continue
        data = tensor.numpy()
        zeros += int(np.count_nonzero(data == 0))
        elements += int(data.size)
    quant_bytes = sum(tensor_nbytes(t) for t in tensors if t.dtype in _QUANTIZED_TYPES)
    total_bytes = count_bytes(model)
    method, compressed = _compressed_size([t for t in tensors if t.dtype != ir.DataType.STRING])
    macs_by_op: Counter[str] = Counter()
    unknown = 0
    try:
        shape_of = value_shapes(model, shapes or {})
    except UsageError:
        raise
    except Exception:  # serialization of exotic models; MACs are then unknown
        shape_of = {}
    for node in model.graph:
        if is_onnx_op(node, *_MAC_OPS):
            macs = _macs(node, shape_of)
            if macs is None:
                unknown += 1
            else:
                macs_by_op[node.op_type] += macs
    layers = []
    for layer in layer_weights(model):
        assert layer.weight.const_value is not None
        weight = layer.weight.const_value.numpy()
        layers.append(
            {
                "node": layer.node.name or f"{layer.node.op_type}->{layer.node.outputs[0].name}",
                "op": layer.node.op_type,
                "weight": layer.weight.name,
                "shape": list(weight.shape),
                "sparsity": float(np.count_nonzero(weight == 0) / weight.size) if weight.size else 0.0,
                "nm_patterns": patterns_of(weight, layer.reduction_axis),
            }
        )
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
        "float_weight_sparsity": zeros / elements if elements else 0.0,
        "quantized_weight_share": quant_bytes / total_bytes if total_bytes else 0.0,
        "quantization_nodes": sum(c for op, c in ops.items() if op.split("::")[-1] in _QUANT_OPS),
        "macs": int(sum(macs_by_op.values())),
        "flops": 2 * int(sum(macs_by_op.values())),
        "macs_by_op": dict(sorted(macs_by_op.items())),
        "macs_unknown_nodes": unknown,
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
        "ops:",
        *(f"  {op:28} {count}" for op, count in info["ops"].items()),
    ]
    if info["layers"]:
        lines.append("layers (weight sparsity, N:M patterns along the reduction axis):")
        for layer in info["layers"]:
            patterns = ",".join(layer["nm_patterns"]) or "-"
            shape = "x".join(map(str, layer["shape"]))
            lines.append(f"  {layer['node'][:40]:40} {layer['op']:13} {shape:>16} {layer['sparsity']:7.2%}  {patterns}")
    return "\n".join(lines)
