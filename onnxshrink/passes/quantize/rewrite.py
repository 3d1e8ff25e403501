"""Applying a :class:`QuantPlan`, and the weight-only and dynamic rewrites, through the IR's own methods.

Weights become integer initializers behind a DequantizeLinear; activations get a
QuantizeLinear → DequantizeLinear pair right after their producer. Float weights that nothing
else reads are dropped by the pass manager's cleanup of unused initializers (they are removed here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array, is_constant
from onnxshrink.ir.graphs import add_initializer, fresh_name, take_over_output, taken_names
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.quantize.gptq import RoundedWeight, block_scales, nearest_levels
from onnxshrink.passes.quantize.plan import ADDED_NODE, GraphView, QuantPlan, constant_initializer, quantize_weight
from onnxshrink.passes.quantize.scopes import control_flow_scopes
from onnxshrink.passes.quantize.statistics import QRANGE, QDtype, QParams, qparams

_INT32_MAX = 2**31 - 1
_NUMPY_QTYPE = {"u8": np.uint8, "s8": np.int8}


class QdqWriter:
    """Creates initializers and Q/DQ nodes in one graph, with names no other part of the model uses.

    Args:
        model: The model written into.
        weight_bits: Bits of quantized int8 weights: 8, or 7 with reduce-range.
        graph: The graph written into: the main graph (default) or a control-flow body.
        taken: The names in use, shared by the writers of one model (default: read from ``model``).
        rounded: int8 levels per weight initializer name (``rounding=gptq``, int8_rounding.py), stored
            in place of nearest rounding's under the same scales.
    """

    def __init__(
        self,
        model: ir.Model,
        weight_bits: int = 8,
        *,
        graph: ir.Graph | None = None,
        taken: set[str] | None = None,
        rounded: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.graph = graph if graph is not None else model.graph
        self.weight_bits = weight_bits
        self.rounded = rounded or {}
        self.taken = taken if taken is not None else taken_names(model)
        self._weights: dict[tuple[str, int | None], tuple[ir.Value, np.ndarray]] = {}
        self.counts = {"q_nodes": 0, "dq_nodes": 0, "weights_quantized": 0}

    def constant(self, array: np.ndarray | ir.Tensor, base: str) -> ir.Value:
        """Adds ``array`` as an initializer named ``base`` (or the first free name after it)."""
        return add_initializer(self.graph, self.taken, base, array)

    def _dq(self, source: ir.Value, scale: ir.Value, zero: ir.Value | None, base: str, **attrs: int) -> ir.Node:
        inputs = [source, scale] if zero is None else [source, scale, zero]
        node = ir.node(
            "DequantizeLinear", inputs, attributes=attrs, name=fresh_name(self.taken, f"{base}_DequantizeLinear")
        )
        node.outputs[0].name = fresh_name(self.taken, f"{base}_dequantized")
        node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        node.outputs[0].shape = source.shape
        self.counts["dq_nodes"] += 1
        return node

    def weight(self, node: ir.Node, index: int, axis: int | None) -> np.ndarray:
        """Replaces the float weight at ``index`` with int8 + DequantizeLinear; returns the scales."""
        value = node.inputs[index]
        assert value is not None and value.const_value is not None and value.name
        cache = (value.name, axis)
        if cache not in self._weights:
            quantized, scales = quantize_weight(value.const_value.numpy().astype(np.float32), axis, self.weight_bits)
            quantized = self.rounded.get(value.name, quantized)
            q_value = self.constant(quantized, f"{value.name}_quantized")
            scale = self.constant(scales, f"{value.name}_scale")
            zero = self.constant(np.zeros(scales.shape, np.int8), f"{value.name}_zero_point")
            attrs = {"axis": axis} if axis is not None else {}
            dq = self._dq(q_value, scale, zero, value.name, **attrs)
            dq.outputs[0].shape = value.shape
            self.graph.insert_before(node, dq)
            self._weights[cache] = (dq.outputs[0], scales)
            self.counts["weights_quantized"] += 1
        dequantized, scales = self._weights[cache]
        node.replace_input_with(index, dequantized)
        return scales

    def bias(self, node: ir.Node, index: int, input_scale: float, weight_scales_: np.ndarray) -> bool:
        """Rule 3: int32 bias with scale x_scale * w_scale, zp 0; False (float kept) if it would overflow."""
        value = node.inputs[index]
        array = constant_array(value)
        assert value is not None and array is not None and value.name
        bias = array.astype(np.float64)
        if bias.ndim != 1:
            return False
        scales = (np.float32(input_scale) * weight_scales_.astype(np.float32)).astype(np.float32)
        scales = np.broadcast_to(scales, bias.shape).astype(np.float32) if scales.ndim else scales
        quantized = np.rint(bias / scales.astype(np.float64))
        if not np.all(np.isfinite(quantized)) or np.abs(quantized).max(initial=0) > _INT32_MAX or np.any(scales <= 0):
            return False
        q_value = self.constant(quantized.astype(np.int32), f"{value.name}_quantized")
        scale = self.constant(scales, f"{value.name}_scale")
        zero = self.constant(np.zeros(scales.shape, np.int32), f"{value.name}_zero_point")
        attrs = {"axis": 0} if scales.ndim else {}
        dq = self._dq(q_value, scale, zero, value.name, **attrs)
        self.graph.insert_before(node, dq)
        node.replace_input_with(index, dq.outputs[0])
        _drop_dead_constant(value)
        return True

    def constant_operand(self, node: ir.Node, index: int, dtype: QDtype) -> None:
        """Rule 7b: the constant operand at ``index`` becomes a ``dtype`` initializer + DequantizeLinear.

        The constant holds one value (:func:`~onnxshrink.passes.quantize.plan.constant_operand`);
        its scale and zero point represent ``[min(c, 0), max(c, 0)]``, so its level (0 or the
        type's end) dequantizes to ``c`` up to float rounding. A Div becomes a Mul by ``1 / c``.
        """
        value = node.inputs[index]
        array = constant_array(value)
        assert value is not None and array is not None
        array = array.astype(np.float32)
        if node.op_type == "Div":
            array = (np.float32(1.0) / array).astype(np.float32)
            node.op_type = "Mul"
        params = qparams(float(array.min()), float(array.max()), dtype, symmetric=False)
        low, high = QRANGE[params.dtype]
        levels = np.clip(np.rint(array / np.float32(params.scale)) + params.zero_point, low, high)
        base = value.name or f"{node.name}_constant"
        q_value = self.constant(levels.astype(_NUMPY_QTYPE[params.dtype]), f"{base}_quantized")
        scale = self.constant(np.array(params.scale, np.float32), f"{base}_scale")
        zero = self.constant(np.array(params.zero_point, _NUMPY_QTYPE[params.dtype]), f"{base}_zero_point")
        dq = self._dq(q_value, scale, zero, base)
        self.graph.insert_before(node, dq)
        node.replace_input_with(index, dq.outputs[0])
        _drop_dead_constant(value)
        self.counts["weights_quantized"] += 1

    def activation(self, value: ir.Value, params: QParams, readers: list[tuple[ir.Node, int]] | None) -> None:
        """A Q→DQ pair after ``value``; ``readers`` (None: all, graph outputs too) read the DQ."""
        assert value.name
        base = value.name
        scale = self.constant(np.array(params.scale, np.float32), f"{base}_scale")
        zero = self.constant(np.array(params.zero_point, _NUMPY_QTYPE[params.dtype]), f"{base}_zero_point")
        q = ir.node("QuantizeLinear", [value, scale, zero], name=fresh_name(self.taken, f"{base}_QuantizeLinear"))
        q.outputs[0].name = fresh_name(self.taken, f"{base}_quantized")
        q.outputs[0].type = ir.TensorType(ir.DataType.UINT8 if params.dtype == "u8" else ir.DataType.INT8)
        q.outputs[0].shape = value.shape
        dq = self._dq(q.outputs[0], scale, zero, base)
        dq.outputs[0].shape = value.shape
        dq.outputs[0].type = value.type
        self.counts["q_nodes"] += 1
        targets = readers if readers is not None else [(n, i) for n, i in value.uses() if n is not q]
        for reader, index in targets:
            reader.replace_input_with(index, dq.outputs[0])
        if readers is None and value.is_graph_output():
            outputs = self.graph.outputs
            for position, output in enumerate(outputs):
                if output is value:
                    outputs[position] = dq.outputs[0]
            name = value.name
            value.name = fresh_name(self.taken, f"{name}_float")
            dq.outputs[0].name = name
        producer = value.producer()
        if producer is not None:
            self.graph.insert_after(producer, [q, dq])
        else:
            self.graph.insert_before(next(iter(self.graph)), [q, dq])


def apply_plan(
    model: ir.Model, plan: QuantPlan, weight_bits: int = 8, rounded: Mapping[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Rewrites the main graph and the control-flow bodies by the plan; returns counts for the report.

    Each Q/DQ and quantized weight goes into the graph of the node or value it serves; ``rounded``
    holds GPTQ int8 levels by weight name (:class:`QdqWriter`).
    """
    scopes = control_flow_scopes(model)
    nodes: dict[str, ir.Node] = {}
    for scope in scopes:
        nodes.update(GraphView(scope.graph, scope.prefix).nodes)
    layer_nodes = {key: nodes[key] for key in plan.layers}
    reader_nodes = {
        name: None if q.readers is None else [(nodes[key], index) for key, index in q.readers]
        for name, q in plan.activations.items()
    }
    taken = taken_names(model)
    writers = {
        id(scope.graph): QdqWriter(model, weight_bits, graph=scope.graph, taken=taken, rounded=rounded)
        for scope in scopes
    }
    for key in plan.folds:
        fold = nodes[key]
        source, folded = fold.inputs[0], fold.outputs[0]
        assert source is not None and fold.graph is not None
        take_over_output(folded, source)
        fold.graph.remove(fold, safe=True)
    bias_kinds = {"int32": 0, "float": 0}
    for key, layer in plan.layers.items():
        node = layer_nodes[key]
        if layer.constant is not None:
            dtype = plan.activations[layer.inputs[0]].params.dtype
            writers[id(node.graph)].constant_operand(node, layer.constant, dtype)
        if layer.weight is None:
            continue
        writer = writers[id(node.graph)]
        scales = writer.weight(node, layer.weight.index, layer.weight.axis)
        if layer.bias == "none":
            continue
        input_name = node.inputs[0].name if node.inputs[0] is not None else None
        activation = plan.activations.get(input_name or "")
        int32 = layer.bias == "int32" and activation is not None
        if int32 and activation is not None:
            int32 = writer.bias(node, 2, activation.params.scale, scales)
        bias_kinds["int32" if int32 else "float"] += 1
    values: dict[str, ir.Value] = {}
    for scope in scopes:
        values.update(GraphView(scope.graph, scope.prefix).values)
    for name, q in plan.activations.items():
        value = values[name]
        writers[id(value.graph)].activation(value, q.params, reader_nodes[name])
    counts = {"q_nodes": 0, "dq_nodes": 0, "weights_quantized": 0}
    for scope in scopes:
        _drop_unquantized_local_reads(scope.graph, plan)
        drop_unused_initializers(scope.graph)
        for name, count in writers[id(scope.graph)].counts.items():
            counts[name] += count
    return {**counts, "bias_int32": bias_kinds["int32"], "bias_float": bias_kinds["float"]}


def _drop_unquantized_local_reads(graph: ir.Graph, plan: QuantPlan) -> None:
    """Undoes the Identity a body got for an enclosing graph's activation when no Q reads it."""
    for node in list(graph):
        local_read = node.op_type == "Identity" and node.meta.get(ADDED_NODE)
        if not local_read or node.outputs[0].name in plan.activations:
            continue  # smooth's Mul by 1/s is an added node too, and must stay
        source = node.inputs[0]
        assert source is not None
        ir.convenience.replace_all_uses_with(node.outputs[0], source)
        graph.remove(node, safe=True)


def _drop_dead_constant(value: ir.Value) -> None:
    """Removes the ``Constant`` node that produced ``value`` once nothing reads it (a replaced bias)."""
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or producer.graph is None:
        return
    if not list(value.uses()) and not value.is_graph_output():
        producer.graph.remove(producer, safe=True)


def drop_unused_initializers(graph: ir.Graph) -> None:
    """Removes the initializers of ``graph`` that nothing reads and that are not graph inputs or outputs."""
    for name in list(graph.initializers):
        value = graph.initializers[name]
        if not list(value.uses()) and not value.is_graph_output() and not value.is_graph_input():
            del graph.initializers[name]


def _block_values(weight: np.ndarray, block_size: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rounds ``weight`` ``[K, N]`` to the nearest level in blocks of ``block_size`` along axis 0.

    ``s4`` blocks span the whole int4 range with zero point 0: scale ``max(-min / 8, max / 7)``,
    so the block's largest magnitude lands on -8 or 7 unclipped; ``u4`` blocks map min..max to 0..15
    with a zero point (gptq.block_scales).

    Returns:
        4-bit values as int8/uint8 ``[K, N]``, scales ``[ceil(K/b), N]`` and zero points (u4
        only; s4 is symmetric with zero point 0, so None).
    """
    scales, zero = block_scales(weight, block_size, dtype)
    levels = nearest_levels(weight, scales, zero, block_size, dtype)
    if dtype == "s4":
        return levels.astype(np.int8), scales, None
    return levels.astype(np.uint8), scales, zero.astype(np.uint8)


def _int4_tensor(values: np.ndarray, dtype: str) -> ir.Tensor:
    return ir.Tensor(values.astype(ml_dtypes.int4 if dtype == "s4" else ml_dtypes.uint4))


def block_quantize(weight: np.ndarray, block_size: int, dtype: str) -> tuple[ir.Tensor, np.ndarray, ir.Tensor | None]:
    """Quantizes ``weight`` ``[K, N]`` to 4-bit tensors in blocks of ``block_size`` along axis 0.

    Returns:
        The 4-bit values, scales ``[ceil(K/b), N]`` and zero points (u4 only; s4 is symmetric
        with zero point 0, so None).
    """
    values, scales, zero = _block_values(weight, block_size, dtype)
    return _int4_tensor(values, dtype), scales, None if zero is None else _int4_tensor(zero, dtype)


def gather_table_problem(node: ir.Node) -> NoMatch | None:
    """Why a Gather's data cannot become a quantized table, or None when it can."""
    table = constant_initializer(node.inputs[0], "data (input 0)")
    indices = node.inputs[1] if len(node.inputs) > 1 else None
    if isinstance(table, NoMatch):
        return table
    if table.dtype != ir.DataType.FLOAT:
        return NoMatch(f"table has dtype {table.dtype.name}, not float32")
    if len(table.shape) != 2:
        return NoMatch(f"table of rank {len(table.shape)}, not 2")
    axis = node.attributes.get_int("axis", 0)
    if axis not in (0, -2):
        return NoMatch(f"Gather along axis {axis}, not 0")
    if indices is None or is_constant(indices):
        return NoMatch("indices are a constant (run fold first)")
    hidden = int(table.shape.numpy()[1])
    if hidden < 16:
        return NoMatch(f"rows of {hidden} values < 16")
    return None


def gather_table(node: ir.Node, writer: QdqWriter, bits: str, block_size: int) -> str:
    """Rewrites a Gather from a constant ``[rows, hidden]`` table as com.microsoft GatherBlockQuantized.

    The new node gathers along axis 0 from a table quantized in blocks along the hidden axis:
    4-bit (``s4``/``u4``) blocks of ``block_size``, or ``s8`` stored as u8 with zero point 128 in
    blocks of the largest power of 2 (>= 16) dividing the row, so one block is the whole row where
    the length allows. (DequantizeLinear → Gather dequantizes the whole table on every run:
    60-130 ms on BERT-base's 30522 x 768 table, against 1-2 ms for GatherBlockQuantized.)
    """
    table = node.inputs[0]
    assert table is not None and table.const_value is not None and table.name
    array = table.const_value.numpy().astype(np.float32)
    hidden = array.shape[1]
    if bits == "s8":
        block = 1 << ((hidden & -hidden).bit_length() - 1)  # largest power of 2 dividing hidden
        block = block if block >= 16 else block_size
        blocks = -(-hidden // block)
        padded = np.zeros((array.shape[0], blocks * block), np.float32)
        padded[:, :hidden] = array
        grouped = padded.reshape(array.shape[0], blocks, block)
        scales = np.abs(grouped).max(axis=2) / np.float32(127.0)
        scales = np.where(~np.isfinite(scales) | (scales < 1e-12), 1.0, scales).astype(np.float32)
        q = np.clip(np.rint(grouped / scales[:, :, None]), -127, 127).reshape(array.shape[0], -1)[:, :hidden]
        data = ir.Tensor((q + 128).astype(np.uint8))
        zero = None
        bit_count, described = 8, f"s8 (u8, zero point 128) blocks of {block} along the row"
    else:
        block = block_size
        values, block_scales, zero_array = _block_values(array.T, block, bits)
        data = _int4_tensor(np.ascontiguousarray(values.T), bits)
        scales = np.ascontiguousarray(block_scales.T)
        zero = None if zero_array is None else _int4_tensor(np.ascontiguousarray(zero_array.T), bits)
        bit_count, described = 4, f"{bits} blocks of {block} along the row"
    inputs = [
        writer.constant(data, f"{table.name}_quantized"),
        node.inputs[1],
        writer.constant(scales, f"{table.name}_scale"),
    ]
    if zero is not None:
        inputs.append(writer.constant(zero, f"{table.name}_zero_point"))
    gather = ir.node(
        "GatherBlockQuantized",
        inputs,
        attributes={"gather_axis": 0, "quantize_axis": 1, "block_size": block, "bits": bit_count},
        domain="com.microsoft",
        name=fresh_name(writer.taken, f"{node.name or table.name}_GatherBlockQuantized"),
    )
    gather.outputs[0].name = fresh_name(writer.taken, f"{gather.name}_output")
    writer.graph.insert_before(node, gather)
    take_over_output(node.outputs[0], gather.outputs[0])
    writer.graph.remove(node, safe=True)
    writer.counts["weights_quantized"] += 1
    return described


def weight_only(
    node: ir.Node,
    writer: QdqWriter,
    bits: str,
    per_channel: bool,
    block_size: int,
    rounded: RoundedWeight | None = None,
) -> str:
    """DQ on a MatMul/Gemm's constant weight: int8 per output channel, or 4-bit blocks (rule 9).

    ``rounded``: the 4-bit levels, scales and zero points computed already (``rounding=gptq``,
    gptq.py) in place of nearest rounding.
    """
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None and weight.name
    array = weight.const_value.numpy().astype(np.float32)
    if node.op_type == "Gemm" and "transB" in node.attributes and node.attributes["transB"].as_int():
        if bits == "s8":
            writer.weight(node, 1, 0 if per_channel else None)
            return "s8 per-channel axis 0" if per_channel else "s8 per-tensor"
        array = array.T  # 4-bit blocks run along K, the rows of B [K, N]
        node.attributes["transB"] = ir.AttrInt64("transB", 0)
    if bits == "s8":
        writer.weight(node, 1, 1 if per_channel else None)
        return "s8 per-channel axis 1" if per_channel else "s8 per-tensor"
    if rounded is None:
        values, scales, zero = block_quantize(array, block_size, bits)
    else:
        values, scales = _int4_tensor(rounded.levels, bits), rounded.scales
        zero = None if rounded.zero is None else _int4_tensor(rounded.zero, bits)
    q_value = writer.constant(values, f"{weight.name}_quantized")
    scale = writer.constant(scales, f"{weight.name}_scale")
    zp = writer.constant(zero, f"{weight.name}_zero_point") if zero is not None else None
    dq = writer._dq(q_value, scale, zp, weight.name, axis=0, block_size=block_size)
    dq.outputs[0].shape = ir.Shape(array.shape)
    writer.graph.insert_before(node, dq)
    node.replace_input_with(1, dq.outputs[0])
    writer.counts["weights_quantized"] += 1
    return f"{bits} blocks of {block_size} along K" + (", GPTQ rounding" if rounded is not None else "")


def dynamic_matmul(node: ir.Node, writer: QdqWriter, per_channel: bool, bits: int = 8) -> str:
    """Rewrites a MatMul/Gemm as DynamicQuantizeLinear + MatMulInteger + Cast + Mul.

    onnxruntime fuses these into DynamicQuantizeMatMul; a Gemm's bias becomes an Add.
    """
    weight, activation = node.inputs[1], node.inputs[0]
    assert weight is not None and weight.const_value is not None and activation is not None and weight.name
    array = weight.const_value.numpy().astype(np.float32)
    if node.op_type == "Gemm" and "transB" in node.attributes and node.attributes["transB"].as_int():
        array = array.T
    quantized, scales = quantize_weight(array, 1 if per_channel else None, bits)
    base = node.name or weight.name
    q_weight = writer.constant(quantized, f"{weight.name}_quantized")
    w_zero = writer.constant(np.zeros(scales.shape, np.int8), f"{weight.name}_zero_point")
    w_scale = writer.constant(scales, f"{weight.name}_scale")
    dql = ir.node(
        "DynamicQuantizeLinear",
        [activation],
        num_outputs=3,
        name=fresh_name(writer.taken, f"{base}_DynamicQuantizeLinear"),
    )
    for output, suffix, dtype in zip(
        dql.outputs,
        ("quantized", "scale", "zero_point"),
        (ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8),
        strict=True,
    ):
        output.name = fresh_name(writer.taken, f"{base}_{suffix}")
        output.type = ir.TensorType(dtype)
    matmul = ir.node(
        "MatMulInteger",
        [dql.outputs[0], q_weight, dql.outputs[2], w_zero],
        name=fresh_name(writer.taken, f"{base}_MatMulInteger"),
    )
    cast = ir.node(
        "Cast", [matmul.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name=fresh_name(writer.taken, f"{base}_Cast")
    )
    scale = ir.node("Mul", [dql.outputs[1], w_scale], name=fresh_name(writer.taken, f"{base}_scale_Mul"))
    result = ir.node("Mul", [cast.outputs[0], scale.outputs[0]], name=fresh_name(writer.taken, f"{base}_Mul"))
    new_nodes = [dql, matmul, cast, scale, result]
    for new in new_nodes[1:]:
        new.outputs[0].name = fresh_name(writer.taken, f"{new.name}_output")
    bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    last = result
    if bias is not None:
        last = ir.node("Add", [result.outputs[0], bias], name=fresh_name(writer.taken, f"{base}_bias_Add"))
        last.outputs[0].name = fresh_name(writer.taken, f"{base}_biased")
        new_nodes.append(last)
    writer.graph.insert_before(node, new_nodes)
    take_over_output(node.outputs[0], last.outputs[0])
    writer.graph.remove(node, safe=True)
    writer.counts["weights_quantized"] += 1
    return f"u8 dynamic activations x {bits}-bit " + ("per-channel" if per_channel else "per-tensor") + " weights"
