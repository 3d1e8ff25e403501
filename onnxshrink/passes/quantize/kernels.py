"""Which int8 choices pay off on the CPU at hand (``target=ort-cpu``): weight bits and slow layers.

The decisions are a function of the model and a :class:`~onnxshrink.cpu.CpuProfile` only, so
they are deterministic and testable with a forced profile (``cpu=avx2|vnni``):

1. Weight bits (``reduce-range=auto``): 7 on x86 without VNNI, where onnxruntime's u8 x s8
   kernels add products in saturating int16 pairs; 8 where products accumulate in int32
   (AVX-512 VNNI, AVX-VNNI, AMX, ARM dot product).
2. Layers left float because their int8 kernel is slower than float (``keep-slow-float``), each
   with its reason; measured with onnxruntime on an AVX-512 VNNI/AMX Xeon (PP-OCR direction
   classifier, batch 1: all int8 1.49x the float time; without depthwise Conv 1.04x) and on an
   AVX2 EPYC without VNNI (2026-12-07: all int8 0.70x fp32 speed at batch 1, the default 1.18x;
   per node at batch 32, each int8 depthwise Conv 1.0-7.5x its float time). The rules are the
   same on both paths (docs/quantization.md, CPU-dependent choices):

   a. depthwise Conv (``group`` = input channels > 1): onnxruntime's int8 depthwise kernel is
      slower than its float one on every x86 CPU measured;
   b. Conv reading a 1x1 spatial input (squeeze-excitation after GlobalAveragePool): a
      matrix-vector product that int8 cannot speed up past the Q/DQ around it;
   c. a layer with fewer than ``MIN_MACS_PER_CONVERSION`` multiply-adds per value converted
      for it alone (``K * N / (C_in [its input Q is its own: no other int8 layer makes or
      reads the input] + N [a float op reads its output])``; each output needs K products):
      the conversions cost more than the int8 products save. Found on the calibrated plan, then
      the plan is made again without them, until none is left (at most 4 rounds).
3. Pooling, under the same switch, decided by the placement (``plan.moves_int8``, rule 6b;
   ``plan.SLOW_INT8_NEIGHBOURS``, rule 7c): onnxruntime's uint8 MaxPool is fast only
   channels-last, and its QLinearAveragePool is slower than float either way.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxshrink.cpu import CpuProfile
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passes.quantize.plan import FOLDABLE, ORT_LAYERS, GraphView, QuantPlan, layer_problem, moves_int8
from onnxshrink.passes.quantize.scopes import control_flow_scopes

# Rule 2c, measured against the simplified fp32 (its hard-swish fused into one kernel), AVX2 EPYC,
# 2026-12-07, one thread, interleaved: PP-OCR cls's pointwise Convs at 32.0 left float took the
# whole model from 0.94x to 1.02x fp32 at batch 1; PP-OCR rec's at 32.0 and 42.7, from 0.99x to
# 1.06x at batch 32 (batch 1 within noise); magika's first Dense (51.2) ran as fast in int8 as in
# float (1.50x fp32 either way). It was 32, set against the unfused cls.
MIN_MACS_PER_CONVERSION = 48.0
# Ops that keep the 1x1 spatial shape of a squeeze-excitation branch (rule 2b).
_SHAPE_KEEPING = ("Relu", "Clip", "HardSigmoid", "Sigmoid", "HardSwish", "LeakyRelu", "Conv")


def weight_bits(profile: CpuProfile, u8_activations: bool) -> int:
    """Rule 1: 7-bit weights where u8 x s8 int16 pair sums can saturate, else 8."""
    return 7 if u8_activations and not profile.vnni else 8


def _shape(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(d) for d in value.const_value.shape.numpy()]


def _one_by_one(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether ``value`` is spatially 1x1: its shape says so, or it comes from GlobalAveragePool."""
    if value is None or depth > 8:
        return False
    shape = value.shape
    if shape is not None and len(shape) > 2 and all(isinstance(d, int) and d == 1 for d in list(shape)[2:]):
        return True
    producer = value.producer()
    if producer is None:
        return False
    if is_onnx_op(producer, "GlobalAveragePool", "GlobalMaxPool"):
        return True
    if is_onnx_op(producer, *_SHAPE_KEEPING) and producer.op_type != "Conv":
        return _one_by_one(producer.inputs[0], depth + 1)
    if producer.op_type == "Conv":
        weight = _shape(producer.inputs[1] if len(producer.inputs) > 1 else None)
        pointwise = weight is not None and all(k == 1 for k in weight[2:])
        return pointwise and _one_by_one(producer.inputs[0], depth + 1)
    return False


def macs_per_conversion(node: ir.Node) -> float | None:
    """Rule 2c's measure: multiply-adds per converted value, from the weight's shape alone."""
    weight = _shape(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None or len(weight) < 2:
        return None
    if node.op_type == "Conv":
        group = node.attributes.get_int("group", 1)
        out_channels, in_channels = weight[0], weight[1] * group
        k = weight[1]
        for size in weight[2:]:
            k *= size
        return k * out_channels / (in_channels + out_channels)
    trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB"))
    k, n = (weight[1], weight[0]) if trans_b else (weight[0], weight[1])
    return k * n / (k + n)


def slow_reason(node: ir.Node, profile: CpuProfile) -> str | None:
    """Rules 2a and 2b: why this layer's int8 kernel is slower than float on ``profile``'s CPU, or None."""
    where = f"on {profile.kind.upper()} CPUs"
    if node.op_type == "Conv":
        weight = _shape(node.inputs[1])
        group = node.attributes.get_int("group", 1)
        if weight is not None and group > 1 and weight[1] == 1:
            return f"depthwise Conv: onnxruntime's int8 kernel is slower than float {where} (rule 2a)"
        if _one_by_one(node.inputs[0]):
            return f"Conv on a 1x1 spatial input: int8 gains less than its Q/DQ cost {where} (rule 2b)"
    return None


def slow_layers(model: ir.Model, profile: CpuProfile) -> dict[str, str]:
    """Rules 2a and 2b for every quantizable layer of the main graph: node key -> reason."""
    slow: dict[str, str] = {}
    for key, node in GraphView(model.graph).nodes.items():
        if not is_onnx_op(node, *ORT_LAYERS) or layer_problem(node) is not None:
            continue
        reason = slow_reason(node, profile)
        if reason is not None:
            slow[key] = reason
    return slow


def _passes_int8(node: ir.Node, planned: set[int]) -> bool:
    """Whether ``node`` carries int8 through: data movement (rule 6b for a MaxPool) or a folded Relu/Clip."""
    moves = moves_int8(node, lambda conv: id(conv) in planned) or is_onnx_op(node, *FOLDABLE)
    return moves and bool(node.outputs)


def _reads_int8(value: ir.Value, layers: set[int], planned: set[int], depth: int = 0) -> bool:
    """Whether a layer of ``layers`` reads ``value``, directly or through data movement / a folded Relu."""
    for user, _ in value.uses():
        if id(user) in layers:
            return True
        if depth < 8 and _passes_int8(user, planned) and _reads_int8(user.outputs[0], layers, planned, depth + 1):
            return True
    return False


def _int8_source(value: ir.Value, layers: set[int], planned: set[int], depth: int = 0) -> bool:
    """Whether ``value`` comes from a layer of ``layers``, through data movement / a folded Relu."""
    producer = value.producer()
    if producer is None or depth > 8:
        return False
    if id(producer) in layers:
        return True
    if _passes_int8(producer, planned) and producer.inputs and producer.inputs[0] is not None:
        return _int8_source(producer.inputs[0], layers, planned, depth + 1)
    return False


def _float_reader(value: ir.Value, layers: set[int], planned: set[int], depth: int = 0) -> bool:
    """Whether a float op (or the graph output) reads ``value``, through data movement / a folded Relu."""
    if value.is_graph_output():
        return True
    for user, _ in value.uses():
        if id(user) in layers:
            continue
        moves = depth < 8 and _passes_int8(user, planned)
        if not moves or _float_reader(user.outputs[0], layers, planned, depth + 1):
            return True
    return False


def converted_values(node: ir.Node, others: set[int]) -> tuple[int, int] | None:
    """Channels converted for ``node`` alone, or None when the weight's shape is unknown.

    Returns:
        (input channels if its input Q is its own, output channels if a float op reads its output).
    """
    weight = _shape(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None or len(weight) < 2:
        return None
    if node.op_type == "Conv":
        in_channels, out_channels = weight[1] * node.attributes.get_int("group", 1), weight[0]
    elif node.op_type == "Gemm" and node.attributes.get_int("transB"):
        in_channels, out_channels = weight[1], weight[0]
    else:
        in_channels, out_channels = weight[0], weight[1]
    source = node.inputs[0]
    planned = others | {id(node)}  # rule 6b asks whether a MaxPool's Conv is int8: this one is
    input_int8 = source is not None and (_int8_source(source, others, planned) or _reads_int8(source, others, planned))
    output_float = _float_reader(node.outputs[0], others, planned)
    return (0 if input_int8 else in_channels), (out_channels if output_float else 0)


def islands(model: ir.Model, plan: QuantPlan, profile: CpuProfile) -> dict[str, str]:
    """Rule 2c: planned layers whose products do not pay for the conversions made for them alone.

    A layer's input Q is its own when no other planned layer makes or reads that input; its
    output DQ is its own when a float op reads its output. Each output value needs K products.
    """
    view = GraphView(model.graph)
    # Main-graph layers only: body layers (If/Loop/Scan) are left to the placement as they are.
    planned = {
        key: view.nodes[key] for key, layer in plan.layers.items() if layer.weight is not None and key in view.nodes
    }
    # Every planned node, bodies included: a body layer reading a main-graph value reads int8.
    ids = {
        id(node)
        for scope in control_flow_scopes(model)
        for key, node in GraphView(scope.graph, scope.prefix).nodes.items()
        if key in plan.layers
    }
    found: dict[str, str] = {}
    for key, node in planned.items():
        converted = converted_values(node, ids - {id(node)})
        intensity = macs_per_conversion(node)
        if converted is None or intensity is None or sum(converted) == 0:
            continue
        weight = _shape(node.inputs[1])
        assert weight is not None
        if node.op_type == "Conv":
            k, n = int(np.prod(weight[1:])), weight[0]
        else:
            trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB"))
            k, n = (weight[1], weight[0]) if trans_b else (weight[0], weight[1])
        per_value = k * n / sum(converted)
        if per_value < MIN_MACS_PER_CONVERSION:
            found[key] = (
                f"{per_value:.1f} multiply-adds per value converted for it alone < "
                f"{MIN_MACS_PER_CONVERSION:g}: Q/DQ cost more than int8 saves on {profile.kind.upper()} CPUs (rule 2c)"
            )
    return found
