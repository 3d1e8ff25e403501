"""``prune-channels:dead=only``: channels that are provably constant, folded into the consumers' biases.

A channel is dead when its producers' weight slices are all zero: it then carries its bias,
mapped through the ops on its way (BatchNormalization, activations, per-channel constants, pools,
depthwise Conv), as one constant ``k`` at every consumer. :func:`remove_dead` folds ``k`` into the
consumers' biases where that is exact and plans the channels' removal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.ir.optable import OpTable
from onnxshrink.passes.channels.analysis import analyze
from onnxshrink.passes.channels.edits import set_constant_input
from onnxshrink.passes.channels.groups import ChannelGroup, ChannelPlan, iter_ok
from onnxshrink.passes.channels.types import Site

ValueRule = Callable[["_DeadChannels", ir.Node, int], float]
"""``rule(dead, node, klass)``: the constant the node's output holds on channel class ``klass``, or NaN."""

_VALUE_RULES: OpTable[ValueRule] = OpTable("dead-channel values")


@_VALUE_RULES.register(
    *("Identity", "Dropout", "Cast", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Reshape"),
    *("Split", "Slice", "GlobalAveragePool", "GlobalMaxPool", "MaxPool", "Resize", "Upsample"),
    *("ReduceMean", "ReduceMax", "ReduceMin"),
)
def _same(dead: _DeadChannels, node: ir.Node, klass: int) -> float:
    return dead.operand(node, 0, klass)


@_VALUE_RULES.register("Concat")
def _concat(dead: _DeadChannels, node: ir.Node, klass: int) -> float:
    # Every input that holds the channel (all of them off the channel axis) must agree.
    found = [
        dead.operand(node, i, klass)
        for i, v in enumerate(node.inputs)
        if v is not None and (v not in dead.values or klass in dead.values[v])
    ]
    same = bool(found) and all(np.isfinite(v) and v == found[0] for v in found)
    return found[0] if same else float("nan")


@_VALUE_RULES.register("AveragePool")
def _average_pool(dead: _DeadChannels, node: ir.Node, klass: int) -> float:
    include_pad = bool(node.attributes.get_int("count_include_pad", 0))
    return float("nan") if include_pad and not _no_padding(node) else dead.operand(node, 0, klass)


@_VALUE_RULES.register("Pad")
def _pad(dead: _DeadChannels, node: ir.Node, klass: int) -> float:
    v = dead.operand(node, 0, klass)
    if node.attributes.get_string("mode", "constant") in ("reflect", "edge"):
        return v
    return v if v == dead.operand(node, 2, klass, default=0.0) else float("nan")


@_VALUE_RULES.register("BatchNormalization")
def _batch_norm(dead: _DeadChannels, node: ir.Node, klass: int) -> float:
    x, scale, bias, mean, var = (dead.operand(node, i, klass) for i in range(5))
    eps = node.attributes.get_float("epsilon", 1e-5)
    return float((x - mean) / np.sqrt(var + eps) * scale + bias)


@_VALUE_RULES.register("Clip")
def _clip(dead: _DeadChannels, node: ir.Node, klass: int) -> float:
    x = dead.operand(node, 0, klass)
    low, high = dead.operand(node, 1, klass, default=-np.inf), dead.operand(node, 2, klass, default=np.inf)
    return float(np.clip(x, low, high))


@_VALUE_RULES.register("Conv")
def _depthwise(dead: _DeadChannels, node: ir.Node, klass: int) -> float:
    """A depthwise Conv (its filter is a param of the group): a constant in, a constant out."""
    site = dead.params.get((id(node), 1))
    if site is None:
        return float("nan")
    x = dead.operand(node, 0, klass)
    bias = dead.operand(node, 2, klass, default=0.0)
    if x == 0:
        return bias
    total = float(np.take(dead.array(site), np.flatnonzero(site.classes == klass), axis=0).sum())
    return x * total + bias if _no_padding(node) else float("nan")


def _binary(dead: _DeadChannels, node: ir.Node, klass: int, combine: Callable[[Any, Any], Any]) -> float:
    operands = [dead.operand(node, i, klass) for i in range(len(node.inputs))]
    with np.errstate(all="ignore"):
        total = operands[0]
        for other in operands[1:]:
            total = float(combine(total, other))
    return total


def _unary(dead: _DeadChannels, node: ir.Node, klass: int, apply: Callable[[ir.Node, np.ndarray], Any]) -> float:
    with np.errstate(all="ignore"):
        return float(apply(node, np.array(dead.operand(node, 0, klass))))


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    return float(node.attributes.get_float(name, default))


def _register_elementwise() -> None:
    """Binary ops combine their operands' constants; unary activations map theirs."""
    binary: list[tuple[str, Callable[[Any, Any], Any]]] = [
        *[("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", np.divide), ("Pow", np.power)],
        *[("Max", np.maximum), ("Min", np.minimum), ("Sum", np.add)],
        ("PRelu", lambda x, s: np.where(x >= 0, x, x * s)),
    ]
    for op, combine in binary:
        _VALUE_RULES.add(op, functools.partial(_binary, combine=combine))
    unary: list[tuple[str, Callable[[ir.Node, np.ndarray], Any]]] = [
        ("Relu", lambda node, v: np.maximum(v, 0.0)),
        ("LeakyRelu", lambda node, v: np.where(v >= 0, v, v * _attr_float(node, "alpha", 0.01))),
        ("Sigmoid", lambda node, v: 1.0 / (1.0 + np.exp(-v))),
        (
            "HardSigmoid",
            lambda node, v: np.clip(_attr_float(node, "alpha", 0.2) * v + _attr_float(node, "beta", 0.5), 0, 1),
        ),
        ("HardSwish", lambda node, v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0)),
        ("Tanh", lambda node, v: np.tanh(v)),
        ("Abs", lambda node, v: np.abs(v)),
        ("Neg", lambda node, v: -v),
        ("Exp", lambda node, v: np.exp(v)),
        ("Softplus", lambda node, v: np.log1p(np.exp(v))),
        ("Elu", lambda node, v: np.where(v >= 0, v, _attr_float(node, "alpha", 1.0) * (np.exp(v) - 1.0))),
    ]
    for op, apply in unary:
        _VALUE_RULES.add(op, functools.partial(_unary, apply=apply))


_register_elementwise()


def _no_padding(node: ir.Node) -> bool:
    pads = node.attributes.get("pads")
    auto = node.attributes.get("auto_pad")
    return (pads is None or not any(pads.as_ints())) and (auto is None or auto.as_string() in ("NOTSET", "VALID"))


class _DeadChannels:
    """Per channel class, the constant each value holds (NaN where it is not provably constant)."""

    def __init__(self, model: ir.Model, plan: ChannelPlan) -> None:
        self.model = model
        self.values: dict[ir.Value, np.ndarray] = {}
        self.params: dict[tuple[int, int], Site] = {}
        self.producers: dict[int, Site] = {}
        for group in plan.groups:
            for site in group.sites:
                if site.kind == "value" and site.value is not None:
                    self.values[site.value] = site.classes
                elif site.kind == "param" and site.node is not None:
                    self.params[(id(site.node), site.index)] = site
                elif site.kind == "producer" and site.node is not None:
                    self.producers[id(site.node)] = site
        self.const: dict[ir.Value, dict[int, float]] = {}
        self.arrays: dict[int, np.ndarray] = {}  # per site: its constant, read once
        self.alive: dict[int, np.ndarray] = {}
        self.scalars: dict[ir.Value, float] = {}

    def array(self, site: Site) -> np.ndarray:
        if id(site) not in self.arrays:
            self.arrays[id(site)] = site.constant().astype(np.float64)
        return self.arrays[id(site)]

    def run(self) -> None:
        for node in self.model.graph:
            for output in node.outputs:
                if output in self.values:
                    classes = self.values[output]
                    found = {int(c): self.evaluate(node, int(c), p) for p, c in enumerate(classes.tolist())}
                    self.const[output] = {c: v for c, v in found.items() if np.isfinite(v)}

    def operand(self, node: ir.Node, index: int, klass: int, default: float = float("nan")) -> float:
        """Returns the constant that input ``index`` of ``node`` holds on channel class ``klass``.

        A missing input gives ``default``; an input not provably constant there gives NaN.
        """
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            return default
        if value in self.values:
            return self.const.get(value, {}).get(klass, float("nan"))
        site = self.params.get((id(node), index))
        if site is not None:
            return self.param(site, klass)
        if value not in self.scalars:  # a constant that is the same everywhere, else NaN
            array = constant_array(value)
            uniform = array is not None and array.size and np.all(array == array.reshape(-1)[0])
            self.scalars[value] = float(array.reshape(-1)[0]) if uniform and array is not None else float("nan")
        return self.scalars[value]

    def param(self, site: Site, klass: int) -> float:
        positions = np.flatnonzero(site.classes == klass)
        values = np.take(
            self.array(site), (positions[:, None] * site.inner + np.arange(site.inner)).reshape(-1), axis=site.axis
        )
        flat = values.reshape(-1)
        return float(flat[0]) if flat.size and np.all(flat == flat[0]) else float("nan")

    def evaluate(self, node: ir.Node, klass: int, position: int) -> float:
        """The constant the node's output holds on channel class ``klass`` (at ``position``), or NaN."""
        if id(node) in self.producers and node.outputs[0] in self.values:
            return self.produced(node, position)
        rule = _VALUE_RULES.lookup(node, None) if is_onnx_op(node) else None
        return rule(self, node, klass) if rule is not None else float("nan")

    def produced(self, node: ir.Node, position: int) -> float:
        """A producer's channel is the constant bias when its weight slice is all zero."""
        site = self.producers[id(node)]
        if id(site) not in self.alive:  # per channel: does any weight of the slice differ from zero
            weight = self.array(site)
            self.alive[id(site)] = np.asarray(
                np.moveaxis(weight, site.axis, 0).reshape(len(site.classes), -1).any(axis=1)
            )
        if self.alive[id(site)][position]:
            return float("nan")
        bias = self.params.get((id(node), 2))
        return self.param(bias, int(site.classes[position])) if bias is not None else 0.0


def _fold(site: Site, klass: int, k: float) -> tuple[int, np.ndarray]:
    """Which bias input of the consumer absorbs the constant channel, and by how much per output."""
    node = site.node
    assert node is not None
    weight = site.constant().astype(np.float64)
    position = int(np.flatnonzero(site.classes == klass)[0])
    if node.op_type == "Conv":
        groups = int(site.extra.get("groups", 1))
        per, rows = len(site.classes) // groups, weight.shape[0] // groups
        g = position // per
        delta = np.zeros(weight.shape[0])
        delta[g * rows : (g + 1) * rows] = k * weight[g * rows : (g + 1) * rows, position - g * per].reshape(
            rows, -1
        ).sum(axis=1)
        return 2, delta
    features = np.take(weight, np.arange(position * site.inner, (position + 1) * site.inner), axis=site.axis)
    alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
    beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
    return 2, alpha * k * features.sum(axis=site.axis) / beta


def _foldable(site: Site, k: float) -> bool:
    node = site.node
    assert node is not None
    if k == 0:
        return True
    if node.op_type == "Conv":
        return _no_padding(node)
    beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
    return node.op_type == "Gemm" and beta != 0


def remove_dead(
    model: ir.Model, plan: ChannelPlan, chosen: list[ChannelGroup]
) -> tuple[ChannelPlan, dict[int, np.ndarray], int]:
    """Folds provably constant channels into their consumers' biases and plans their removal."""
    evaluator = _DeadChannels(model, plan)
    evaluator.run()
    dead: list[tuple[ir.Node, int]] = []  # (a producer of the class, its position there)
    deltas: dict[tuple[int, int], tuple[ir.Node, np.ndarray]] = {}
    for group in chosen:
        consumers = group.of_kind("consumer")
        found: list[tuple[int, list[tuple[Site, float]]]] = []
        for local, klass in enumerate(group.classes.tolist()):
            pending: list[tuple[Site, float]] = []
            for site in consumers:
                if klass not in site.classes:
                    continue
                assert site.node is not None
                k = evaluator.const.get(site.node.inputs[0], {}).get(klass, float("nan"))  # type: ignore[arg-type]
                if not np.isfinite(k) or not _foldable(site, k):
                    break
                pending.append((site, k))
            else:
                found.append((local, pending))
        if len(found) == group.size:
            found = found[1:]  # a group keeps at least one channel: that one stays as it is
        for local, pending in found:
            klass = int(group.classes[local])
            producer = next(s for s in group.of_kind("producer") if klass in s.classes)
            assert producer.node is not None
            dead.append((producer.node, int(np.flatnonzero(producer.classes == klass)[0])))
            for site, k in pending:
                if k == 0:
                    continue
                index, delta = _fold(site, klass, k)
                assert site.node is not None
                key = (id(site.node), index)
                node_delta = deltas.get(key, (site.node, np.zeros_like(delta)))[1]
                deltas[key] = (site.node, node_delta + delta)
    for (_, index), (node, delta) in deltas.items():
        old = node.inputs[index] if index < len(node.inputs) else None
        weight = constant_array(node.inputs[1])
        base = constant_array(old) if old is not None else np.zeros(delta.shape)
        assert weight is not None and base is not None
        set_constant_input(model, node, index, (base.astype(np.float64) + delta).astype(weight.dtype))
    plan = analyze(model, "remove") if deltas else plan
    keeps: dict[int, np.ndarray] = {}
    dead_at: dict[int, list[int]] = {}
    for node, position in dead:
        dead_at.setdefault(id(node), []).append(position)
    for group in iter_ok(plan):
        gone: set[int] = set()
        for site in group.of_kind("producer"):
            if id(site.node) in dead_at:
                where = group.local(site)
                gone.update(int(where[p]) for p in dead_at[id(site.node)])
        if gone:
            keeps[group.index] = np.array([c for c in range(group.size) if c not in gone], dtype=np.int64)
    return plan, keeps, len(deltas)
