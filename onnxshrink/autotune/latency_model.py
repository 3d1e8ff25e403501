"""The latency model of ``--min-speedup``: per-node times from onnxruntime's profiler.

Timing each setting against the simplified model gives deltas lost in the noise of a shared
machine (a 3 % change of a 1 ms model is 30 us). Instead, onnxruntime's own profiler
(:func:`onnxshrink.latency.node_times`) says how a run's time splits over the nodes, once for the
simplified float model and once for each precision the search may choose, with every layer that
can take it converted (``int8``: the ``quantize`` pass as candidates run it; ``int4``: 4-bit
weights on every MatMul/Gemm). The model is then:

1. Each optimized node onnxruntime ran is attributed to one node of the model
   (:func:`attribute`): by name (``conv0_token_3`` is ``conv0``); a fused or re-laid-out compute
   kernel named after an output (``relu_0.tmp_0_nchwc``) to the Conv/Gemm/MatMul that output
   comes from; a node writing a tensor of the model to that tensor's producer; layout and
   reshape helpers to the node they feed. Nodes a precision variant adds (Q/DQ) count for the
   quantized layer they serve (:func:`fold_added`). What matches nothing is a constant remainder.
2. Each configuration's node times are scaled so that they add up to its whole-run latency,
   measured without the profiler and interleaved with the others (the profiler's bookkeeping
   inflates small nodes).
3. A node runs at the precision of the layer that owns it (itself for a layer, else the nearest
   layer upstream), and its time scales with its work (MACs, else output elements) when channels
   are cut: ``predicted = remainder + sum(time[precision(owner(n))][n] * work ratio(n))``.
4. For the knapsack each setting gets the additive delta of that sum: a channel cut
   ``sum(t_float[n] * (ratio(n) - 1))``, a precision ``sum(t_p[n] - t_float[n])`` over the nodes
   the layer owns. Allocations are then judged by the full prediction (3), and the search
   corrects it with every measured trial.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink.data.samples import Samples
from onnxshrink.inspect.macs import node_macs
from onnxshrink.inspect.summary import value_shapes
from onnxshrink.latency import NodeTimes, interleaved_latency, node_times, one_run_seconds, timing_plan
from onnxshrink.runtime import create_session, model_source, run

PROFILE_RUNS, PROFILE_WARMUP = 20, 3
TABLE_SECONDS = 30.0  # timed runs of the whole table, about (fast models take far less)
_WALL_ROUNDS, _WALL_RUNS = 12, 3
# onnxruntime kernels that compute a layer (possibly fused with what follows it).
_COMPUTE_KERNELS = frozenset(
    {
        "Conv",
        "FusedConv",
        "QLinearConv",
        "ConvInteger",
        "ConvTranspose",
        "Gemm",
        "FusedGemm",
        "QGemm",
        "MatMul",
        "FusedMatMul",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
    }
)
_LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulNBits"})
# What onnxruntime fuses into the layer before it (activation, bias or residual add, output Q).
_FUSED_AFTER = frozenset(
    {"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh", "Add", "Sum", "QuantizeLinear"}
)
_MAX_HOPS = 8
_TOKEN = re.compile(r"_token_\d+$")


def _named(model: ir.Model) -> tuple[dict[str, ir.Node], dict[str, ir.Node]]:
    """The main graph's named nodes by name, and every node by the names of its outputs."""
    by_name: dict[str, ir.Node] = {}
    by_output: dict[str, ir.Node] = {}
    for node in model.graph:
        if node.name:
            by_name[node.name] = node
        for value in node.outputs:
            if value.name:
                by_output[value.name] = node
    return by_name, by_output


def _fused_layer(node: ir.Node) -> ir.Node:
    """The layer a fused kernel computes when it is named after (or writes) ``node``'s output.

    ``node`` itself when it is a layer; else, back through up to three ops onnxruntime fuses
    after a layer (Relu, Clip, Add, Q...), the layer whose output only that chain reads; else ``node``.
    """
    current = node
    for _ in range(3):
        if current.op_type in _LAYER_OPS:
            return current
        if current.op_type not in _FUSED_AFTER:
            break
        sole = [p for v in current.inputs if v is not None and (p := v.producer()) is not None and len(v.uses()) == 1]
        step = next((p for p in sole if p.op_type in _LAYER_OPS), None)
        step = step or next((p for p in sole if p.op_type in _FUSED_AFTER), None)
        if step is None:
            break
        current = step
    return current if current.op_type in _LAYER_OPS else node


class _Resolver:
    """Finds the model node an optimized node stands for (rule 1 of the module docstring)."""

    def __init__(self, graph: onnx.GraphProto, model: ir.Model) -> None:
        self.by_name, self.by_output = _named(model)
        self.optimized = {node.name: node for node in graph.node if node.name}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def resolve(self, name: str) -> str | None:
        """The model node's name, or None."""
        found = self._resolve(self.optimized.get(name), name, 0, set())
        return found.name if found is not None and found.name else None

    def _resolve(self, node: onnx.NodeProto | None, name: str, hops: int, seen: set[str]) -> ir.Node | None:
        plain = _TOKEN.sub("", name)  # onnxruntime's copies of a node: "conv0_token_1"
        for candidate in (name, plain):
            if candidate in self.by_name:
                return self.by_name[candidate]
        compute = node is not None and node.op_type in _COMPUTE_KERNELS
        base = plain.removesuffix("_nchwc")
        if base != plain and base in self.by_output:
            return _fused_layer(self.by_output[base])
        if node is None or hops > _MAX_HOPS or name in seen:
            return None
        seen.add(name)
        for output in node.output:
            if output in self.by_output:
                writer = self.by_output[output]
                return _fused_layer(writer) if compute else writer
        for output in node.output:  # layout changes and reshapes: the node they feed
            for consumer in self.consumers.get(output, []):
                found = self._resolve(consumer, consumer.name, hops + 1, seen)
                if found is not None:
                    return found
        for value in node.input:
            source = self.producer.get(value)
            if source is not None:
                found = self._resolve(source, source.name, hops + 1, seen)
                if found is not None:
                    return found
        return None


def attribute(times: NodeTimes, model: ir.Model) -> tuple[dict[str, float], float]:
    """Milliseconds of each named main-graph node of ``model`` from onnxruntime's per-node times.

    Returns:
        The times by node name (nodes onnxruntime fused into another take none), and the
        milliseconds of optimized nodes that match no node of the model.
    """
    resolver = _Resolver(times.graph, model)
    found: dict[str, float] = {}
    rest = 0.0
    for name, value in times.times.items():
        owner = resolver.resolve(name)
        if owner is None:
            rest += value
        else:
            found[owner] = found.get(owner, 0.0) + value
    return found, rest


def fold_added(times: Mapping[str, float], variant: ir.Model, base: set[str], layers: set[str]) -> dict[str, float]:
    """Times of a variant's nodes by the base model's names: an added node (Q/DQ) counts for a layer it serves.

    An added node counts for the base node upstream of it when that is a layer, else for the
    first base node downstream when that is a layer, else for whichever of the two exists.
    """
    by_name, _ = _named(variant)
    folded: dict[str, float] = {}
    for name, value in times.items():
        owner = name if name in base else _serves(by_name.get(name), base, layers)
        if owner is not None:
            folded[owner] = folded.get(owner, 0.0) + value
    return folded


def _upstream(node: ir.Node, base: set[str]) -> str | None:
    """The first base node up the chain of first computed inputs."""
    current = node
    for _ in range(_MAX_HOPS):
        value = next((v for v in current.inputs if v is not None and v.producer() is not None), None)
        producer = value.producer() if value is not None else None
        if producer is None:
            return None
        if producer.name in base:
            return producer.name
        current = producer
    return None


def _downstream(node: ir.Node, base: set[str]) -> str | None:
    """The first base node among the readers of the node's outputs, searched breadth first."""
    frontier = [node]
    for _ in range(_MAX_HOPS):
        following = [use.node for n in frontier for v in n.outputs for use in v.uses()]
        hit = next((n.name for n in following if n.name in base), None)
        if hit is not None or not following:
            return hit
        frontier = following
    return None


def _serves(node: ir.Node | None, base: set[str], layers: set[str]) -> str | None:
    if node is None:
        return None
    up, down = _upstream(node, base), _downstream(node, base)
    if up in layers:
        return up
    if down in layers:
        return down
    return up or down


def shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """Static shapes of the main graph's values (empty when inference fails, as ``inspect`` does)."""
    try:
        return value_shapes(model, {})
    except Exception:  # serialization or inference fails on some custom ops: MACs and work unknown
        return {}


def node_work(model: ir.Model, shape_of: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """Work of each named main-graph node: MACs for layers, else elements of its first output."""
    work: dict[str, float] = {}
    for node in model.graph:
        if not node.name:
            continue
        macs = node_macs(node, shape_of)
        if macs is None:
            out = node.outputs[0] if node.outputs else None
            shape = shape_of.get(out.name) if out is not None and out.name else None
            if shape is None:
                continue
            macs = math.prod(shape)
        work[node.name] = float(macs)
    return work


def work_ratios(base: Mapping[str, float], variant: Mapping[str, float]) -> dict[str, float]:
    """``variant / base`` work of every node whose work changed (0 for a node the variant dropped)."""
    ratios = {}
    for name, before in base.items():
        after = variant.get(name, 0.0)
        if before > 0 and abs(after - before) > 1e-9 * before:
            ratios[name] = after / before
    return ratios


def owners(model: ir.Model, layers: set[str]) -> dict[str, str]:
    """Each named node's owning layer: itself for a layer, else the owner of its first computed input."""
    found: dict[str, str] = {}
    of_value: dict[str, str] = {}
    for node in model.graph:
        owner = node.name if node.name in layers else None
        if owner is None:
            source = next((v for v in node.inputs if v is not None and v.name in of_value), None)
            owner = of_value.get(source.name) if source is not None and source.name else None
        if owner is None:
            continue
        if node.name:
            found[node.name] = owner
        for value in node.outputs:
            if value.name:
                of_value[value.name] = owner
    return found


@dataclasses.dataclass
class LatencyTable:
    """Per-node milliseconds of the simplified model at each precision, scaled to whole-run latencies.

    Attributes:
        wall_ms: Whole-run median latency of each configuration (``float`` is the simplified model).
        nodes: Configuration -> node name -> milliseconds (scaled, rule 2).
        rest_ms: The float run's milliseconds no node took (scaled): a constant of every prediction.
        owner: Node name -> the layer whose precision it runs at (rule 3).
        unattributed: Configuration -> share of its profiled time that matched no node.
        seconds: How long measuring took.
        runs: Profiled runs per configuration (the per-node medians' sample size).
    """

    wall_ms: dict[str, float]
    nodes: dict[str, dict[str, float]]
    rest_ms: float
    owner: dict[str, str]
    unattributed: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    runs: int = 0

    def to_json(self) -> dict[str, Any]:
        """The table as the profile cache and the report hold it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyTable:
        """A table read back from the profile cache."""
        return cls(**data)

    def _float(self) -> dict[str, float]:
        return self.nodes["float"]

    def channel_delta(self, work: Mapping[str, float]) -> float:
        """Milliseconds a channel cut adds (negative: saves), from its nodes' work ratios."""
        return sum(self._float().get(name, 0.0) * (ratio - 1.0) for name, ratio in work.items())

    def precision_delta(self, layer: str, value: str) -> float:
        """Milliseconds running ``layer`` (and the nodes it owns) at ``value`` adds against float."""
        if value not in self.nodes or value == "float":
            return 0.0
        table, base = self.nodes[value], self._float()
        return sum(table.get(n, 0.0) - base.get(n, 0.0) for n, owner in self.owner.items() if owner == layer)

    def predict(self, ratios: Mapping[str, float], precision: Mapping[str, str]) -> float:
        """Milliseconds of an allocation: node work ratios (product of the cuts) and layer precisions."""
        names = set().union(*self.nodes.values())
        total = self.rest_ms
        for name in names:
            value = precision.get(self.owner.get(name, ""), "float")
            total += self.nodes.get(value, self._float()).get(name, 0.0) * ratios.get(name, 1.0)
        return total


def timing_feed(model: ir.Model, calibration: Samples, batch: int) -> dict[str, np.ndarray]:
    """``batch`` calibration samples for every runtime input (repeated when there are fewer)."""
    names = [v.name for v in model.graph.inputs if v.name and v.name not in model.graph.initializers]
    arrays = calibration.take(batch)
    return {n: np.resize(arrays[n], (batch, *arrays[n].shape[1:])) for n in names}


def measure_table(
    models: Mapping[str, ir.Model],
    feed: Mapping[str, np.ndarray],
    *,
    provider: str,
    layers: set[str],
    runs: int = PROFILE_RUNS,
    budget: float = TABLE_SECONDS,
) -> LatencyTable:
    """Profiles each configuration (``float``: the simplified model, first) and builds the table.

    Args:
        models: Configuration name -> model; ``float`` is the base every name refers to.
        feed: The inputs every run takes.
        provider: Where to run.
        layers: The base model's layer names (what precisions apply to).
        runs: Profiled runs per configuration (medians per node), fewer for a slow model.
        budget: About how many seconds the timed runs may take (half profiled, half whole runs):
            a model taking seconds a run (BERT-base at batch 8 on two cores) gets fewer runs.
    """
    started = time.perf_counter()
    base = models["float"]
    base_names = {n.name for n in base.graph if n.name}
    sessions = {}
    for config, model in models.items():
        with model_source(model) as source:
            sessions[config] = create_session(source, provider)[0]
    seconds = one_run_seconds(functools.partial(run, sessions["float"], feed))
    profiled_runs = max(3, min(runs, int(budget / 2 / (len(models) * max(seconds, 1e-6)))))
    warmup = PROFILE_WARMUP if profiled_runs == runs else 1
    rounds, per_round = timing_plan(
        seconds, models=len(models), rounds=_WALL_ROUNDS, runs=_WALL_RUNS, budget=budget / 2
    )
    nodes: dict[str, dict[str, float]] = {}
    shares: dict[str, float] = {}
    rests: dict[str, float] = {}
    for config, model in models.items():
        with model_source(model) as source:
            profiled = node_times(source, feed, provider=provider, runs=profiled_runs, warmup=warmup)
        found, rest = attribute(profiled, model)
        nodes[config] = found if config == "float" else fold_added(found, model, base_names, layers)
        rests[config] = rest
        total = sum(profiled.times.values())
        shares[config] = rest / total if total > 0 else 0.0
    walls = interleaved_latency(
        {config: functools.partial(run, session, feed) for config, session in sessions.items()},
        rounds=rounds,
        runs_per_round=per_round,
        warmup=1,
    )
    wall_ms = {config: float(statistics.median(values)) for config, values in walls.items()}
    scaled: dict[str, dict[str, float]] = {}
    rest_ms = 0.0
    for config, table in nodes.items():
        profiled_total = sum(table.values()) + rests[config]
        scale = wall_ms[config] / profiled_total if profiled_total > 0 else 0.0
        scaled[config] = {name: value * scale for name, value in table.items()}
        if config == "float":
            rest_ms = rests[config] * scale
    return LatencyTable(
        wall_ms=wall_ms,
        nodes=scaled,
        rest_ms=rest_ms,
        owner=owners(base, layers),
        unattributed=shares,
        seconds=time.perf_counter() - started,
        runs=profiled_runs,
    )
