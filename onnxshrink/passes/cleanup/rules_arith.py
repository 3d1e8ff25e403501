"""``cleanup`` rules on values: Cast, single-input variadics, neutral operands, MatMul+Add -> Gemm."""

from __future__ import annotations

import onnx_ir as ir

from onnxshrink.passes.cleanup.rules import (
    RULES,
    Bypass,
    Decision,
    FormGemm,
    NoMatch,
    Rewire,
    RuleContext,
    feeds_only,
    input_at,
    int_attr,
    keeps_shape,
    producer,
    unknown,
)

# --------------------------------------------------------------------------- Cast

_FLOATS = {  # mantissa bits (with the implicit one), largest finite value
    ir.DataType.FLOAT16: (11, 65504.0),
    ir.DataType.BFLOAT16: (8, 3.39e38),
    ir.DataType.FLOAT: (24, 3.4e38),
    ir.DataType.DOUBLE: (53, 1.79e308),
}
_INTS = {  # value range
    ir.DataType.BOOL: (0, 1),
    ir.DataType.UINT8: (0, 2**8 - 1),
    ir.DataType.INT8: (-(2**7), 2**7 - 1),
    ir.DataType.UINT16: (0, 2**16 - 1),
    ir.DataType.INT16: (-(2**15), 2**15 - 1),
    ir.DataType.UINT32: (0, 2**32 - 1),
    ir.DataType.INT32: (-(2**31), 2**31 - 1),
    ir.DataType.UINT64: (0, 2**64 - 1),
    ir.DataType.INT64: (-(2**63), 2**63 - 1),
}


def _ints_fit(source: ir.DataType, target: ir.DataType) -> bool:
    lo, hi = _INTS[source]
    target_lo, target_hi = _INTS[target]
    return target_lo <= lo and hi <= target_hi


def casts_exactly(source: ir.DataType, target: ir.DataType) -> bool:
    """True when every value of ``source`` is exactly representable in ``target``."""
    if source == target:
        return True
    if source in _INTS and target in _INTS:
        return target != ir.DataType.BOOL and _ints_fit(source, target)
    if source in _INTS and target in _FLOATS:
        lo, hi = _INTS[source]
        bits, largest = _FLOATS[target]
        return max(abs(lo), hi) <= 2**bits and hi <= largest
    if source in _FLOATS and target in _FLOATS:
        if source == ir.DataType.FLOAT16:
            return target in (ir.DataType.FLOAT, ir.DataType.DOUBLE)
        if source == ir.DataType.BFLOAT16:
            return target in (ir.DataType.FLOAT, ir.DataType.DOUBLE)
        return source == ir.DataType.FLOAT and target == ir.DataType.DOUBLE
    return False


def _cast_chain_exact(source: ir.DataType, middle: ir.DataType, target: ir.DataType) -> bool:
    """Cast(Cast(x: source, middle), target) == Cast(x, target) for every x.

    The first cast must be lossless; then both sides convert the same value to ``target``.
    A float-to-integer conversion out of range is undefined, so an integer ``target`` reached
    through a float ``middle`` needs an integer ``source`` whose range fits ``target``.
    """
    if not casts_exactly(source, middle) or target not in (*_INTS, *_FLOATS):
        return False
    if middle in _FLOATS and target in _INTS:
        return source in _INTS and (target == ir.DataType.BOOL or _ints_fit(source, target))
    return True


def _dtype_or_none(code: int) -> ir.DataType | None:
    try:
        return ir.DataType(code)
    except ValueError:
        return None


@RULES.register("Cast")
def cast_noop_or_chain(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Cast to the input's own dtype is removed; an exact Cast chain reads the first input."""
    x = node.inputs[0]
    to = int_attr(node, "to", -1)
    if x is None or to is None or to < 0:
        return NoMatch("no input or no 'to'")
    target = _dtype_or_none(to)
    if target is None:
        return NoMatch(f"unknown dtype {to}")
    inner = producer(x, "Cast")
    middle = int_attr(inner, "to", -1) if inner is not None else None
    dtype = context.facts.dtype(x) or (_dtype_or_none(middle) if middle is not None else None)
    if dtype == target:
        return Bypass(x, "noop_removed")
    if inner is None or inner.inputs[0] is None:
        return NoMatch(f"input dtype {dtype} is not {target} and no Cast feeds it") if dtype else unknown("input dtype")
    source = context.facts.dtype(inner.inputs[0])
    if source is None or dtype is None:
        return unknown("dtype before the Cast chain")
    if not _cast_chain_exact(source, dtype, target):
        return NoMatch(f"Cast chain {source} -> {dtype} -> {target} is not exact")
    rewire = Rewire(((0, inner.inputs[0]),), "casts_merged")
    if source != target:
        return rewire
    # A same-dtype Cast reading the first input only pays when the inner Cast dies.
    return Bypass(inner.inputs[0], "casts_merged", rewire if feeds_only(x) else None)


@RULES.register("CastLike", since=15)
def castlike_noop(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """CastLike to the input's own dtype is removed."""
    x, like = node.inputs[0], input_at(node, 1)
    dtype, like_dtype = context.facts.dtype(x), context.facts.dtype(like)
    if x is None or dtype is None or like_dtype is None:
        return unknown("dtype")
    if dtype != like_dtype:
        return NoMatch(f"{dtype} is not {like_dtype}")
    return Bypass(x, "noop_removed")


# --------------------------------------------------------------------------- single-input variadics


@RULES.register("Concat", "Sum", "Max", "Min", "Mean")
def single_input_variadic(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Concat, Sum, Max, Min or Mean of a single input is that input."""
    if len(node.inputs) != 1 or node.inputs[0] is None:
        return NoMatch("more than one input")
    return Bypass(node.inputs[0], "noop_removed")


# --------------------------------------------------------------------------- neutral operands

# op -> (neutral element, operand positions it may take)
_NEUTRAL = {"Add": (0, (0, 1)), "Sub": (0, (1,)), "Mul": (1, (0, 1)), "Div": (1, (1,))}


@RULES.register("Add", "Sub", "Mul", "Div")
def neutral_operand(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """x+0, 0+x, x-0, x*1, 1*x and x/1 are x when the constant cannot broadcast x larger.

    Exact for every value: NaN stays NaN, and x+0 only turns -0.0 into +0.0 (equal values).
    """
    facts = context.facts
    if len(node.inputs) != 2 or None in node.inputs:
        return NoMatch("needs two inputs")
    neutral, positions = _NEUTRAL[node.op_type]
    missing = False
    for position in positions:
        x, constant = node.inputs[1 - position], node.inputs[position]
        assert x is not None and constant is not None
        if not facts.is_constant(constant):
            continue
        dims = facts.static_dims(constant)
        if dims is None or not facts.is_filled_with(constant, neutral):
            continue
        x_dtype = facts.dtype(x)
        if x_dtype is not None and x_dtype != facts.dtype(constant):
            continue
        if keeps_shape(facts.dims(x), dims):
            return Bypass(x, "noop_removed")
        missing = missing or facts.dims(x) is None
    if missing:
        return unknown("rank of the other operand")
    return NoMatch(f"no constant {neutral} operand that keeps the other's shape")


# --------------------------------------------------------------------------- MatMul + Add -> Gemm

_GEMM_TYPES = {ir.DataType.FLOAT: 7, ir.DataType.DOUBLE: 7, ir.DataType.FLOAT16: 7, ir.DataType.BFLOAT16: 13}


@RULES.register("Add", since=7)
def matmul_add_to_gemm(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """``Add(MatMul(A, W), b)`` with A of rank 2, W a constant [K, N] and b a constant [N] or [1, N]."""
    if len(node.inputs) != 2:
        return NoMatch("needs two inputs")
    reasons = []
    for position in (0, 1):
        product, bias = node.inputs[position], node.inputs[1 - position]
        matmul = producer(product, "MatMul")
        if matmul is None or product is None or bias is None:
            continue
        decision = _gemm_of(matmul, product, bias, context)
        if not isinstance(decision, NoMatch):
            return decision
        if decision.missing_facts:
            return decision
        reasons.append(decision.reason)
    return NoMatch("; ".join(reasons) or "no MatMul operand")


def _gemm_of(matmul: ir.Node, product: ir.Value, bias: ir.Value, context: RuleContext) -> FormGemm | NoMatch:
    facts = context.facts
    a, w = matmul.inputs[0], matmul.inputs[1]
    if a is None or w is None or product.is_graph_output() or len(product.uses()) != 1:
        return NoMatch("the MatMul output has other uses")
    if matmul.graph is not next(iter(product.uses())).node.graph:
        return NoMatch("the MatMul is in another graph")
    w_dims, bias_dims, dtype = facts.static_dims(w), facts.static_dims(bias), facts.dtype(w)
    if not facts.is_constant(w) or w_dims is None or len(w_dims) != 2:
        return NoMatch("W is not a constant matrix")
    if not facts.is_constant(bias) or bias_dims not in ((w_dims[1],), (1, w_dims[1])):
        return NoMatch(f"bias dims {bias_dims} are not [N] or [1, N] for N = {w_dims[1]}")
    if dtype is None or context.opset < _GEMM_TYPES.get(dtype, 10**6) or facts.dtype(bias) != dtype:
        return NoMatch(f"Gemm does not take {dtype} at opset {context.opset}")
    if facts.rank(a) is None:
        return unknown("rank of A")
    if facts.rank(a) != 2:
        return NoMatch(f"A has rank {facts.rank(a)}, Gemm needs 2")
    return FormGemm(matmul, a, w, bias)
