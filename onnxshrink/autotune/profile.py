"""Profiles: what each knob setting of each channel group and layer costs and how much it hurts.

Every setting is built alone with the real pass on the simplified input model (``prune-channels``
with one group's ratio, ``quantize`` with one layer included), so its costs are exact: bytes of
the serialized model and analytic MACs, as deltas from the simplified model. Its damage is
measured the way ``quantize:max-drop`` judges candidates (:class:`~onnxshrink.passes.quantize.budget.Judge`):
``1 - cosine`` of the model's outputs against the simplified model's on calibration samples.
Damages and costs are then taken as additive across units, which the allocation relies on and
the measured trials correct. A channel setting also records each node's work ratio (MACs, else
output elements, against the simplified model), from which the latency model
(:mod:`onnxshrink.autotune.latency_model`, measured once per provider and batch for
``--min-speedup``) gives every setting its latency.

Profiles are cached as JSON in the study folder, keyed by the hashes of the simplified model, the
calibration samples read, the knob and its grid, so another target on the same model reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxshrink.autotune.latency_model import LatencyTable, measure_table, node_work, shapes, timing_feed, work_ratios
from onnxshrink.autotune.weights import InMemoryContext, InMemoryWeights
from onnxshrink.data.samples import Samples
from onnxshrink.inspect.macs import graph_macs
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passes import channels
from onnxshrink.passes.quantize.budget import Judge
from onnxshrink.pipeline import Pipeline
from onnxshrink.spec import PassSpec, make_spec

logger = logging.getLogger(__name__)

KNOBS = ("channels", "int8", "int4")
PRECISIONS = ("int8", "int4")
# What each profile measures: channel groups, or the precision of each layer (float, int8, int4).
PROFILES = {"channels": ("channels",), "precision": ("int8", "int4")}
WEIGHT_ONLY_OPS = ("Gemm", "MatMul")  # int4 runs as MatMulNBits
INT4_BLOCK = 32  # the quantize pass's default block length along K
# 4-bit block lengths profiled when bytes count (size targets): a longer block stores fewer scales.
INT4_BLOCKS = (32, 64, 128)
CHANNEL_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
# Channels kept are a multiple of this, never fewer: finer than prune-channels' default of 8, so
# small layers have settings between "all" and "half".
CHANNEL_STEP = 4
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
_JUDGE_SAMPLES = 128
_VERSION = 6  # bump when what a profile measures changes: old cache entries are then ignored


@dataclasses.dataclass
class Setting:
    """One setting of a unit: its value and what it changes against the simplified model."""

    value: float | str  # a channel ratio, or "float" / "int8" / "int4" / "int4-b<block>" (see int4_value)
    bytes: int
    macs: int
    damage: float
    layers: dict[str, int] = dataclasses.field(default_factory=dict)  # weight bytes change per layer
    latency: float = 0.0  # milliseconds it adds, from the latency model (when there is one)
    work: dict[str, float] = dataclasses.field(default_factory=dict)  # channel cuts: node work ratios


@dataclasses.dataclass
class Unit:
    """A channel group (named by a producer node) or a layer, with its settings; the first is "unchanged"."""

    knob: str
    name: str
    settings: list[Setting]
    weight_bytes: int = 0  # precision units: the layer's float weight bytes

    def to_json(self) -> dict[str, Any]:
        """The unit as the profile cache and the report hold it."""
        settings = [dataclasses.asdict(s) for s in self.settings]
        return {"knob": self.knob, "name": self.name, "settings": settings, "weight_bytes": self.weight_bytes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unit:
        """A unit read back from the profile cache."""
        return cls(data["knob"], data["name"], [Setting(**s) for s in data["settings"]], data["weight_bytes"])


@dataclasses.dataclass
class Profile:
    """The simplified model's size and MACs and every unit's settings."""

    size: int
    macs: int
    units: list[Unit]
    seconds: float
    cached: list[str]
    layer_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    latency: LatencyTable | None = None  # the latency model, for --min-speedup
    # Units not measured because the profile's time ran out (left unchanged by the search), per knob.
    unmeasured: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        """The simplified model's measured latency (0 without a latency model)."""
        return self.latency.wall_ms["float"] if self.latency is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        """The profile as the report shows it."""
        return {
            "size": self.size,
            "macs": self.macs,
            "units": [u.to_json() for u in self.units],
            "seconds": self.seconds,
            "cached": self.cached,
            "layer_bytes": self.layer_bytes,
            "latency_ms": self.latency_ms,
            "latency": self.latency.to_json() if self.latency is not None else None,
            "unmeasured": self.unmeasured,
        }


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()[:24]


def _data_digest(samples: Samples, count: int) -> bytes:
    arrays = samples.take(count)
    return b"".join(name.encode() + arrays[name].tobytes() for name in sorted(arrays))


def layer_weight_bytes(model: ir.Model) -> dict[str, int]:
    """Bytes of the constant weight (input 1) of every named Conv, Gemm and MatMul of the main graph."""
    found = {}
    for node in model.graph:
        weight = node.inputs[1] if is_onnx_op(node, *QUANTIZED_OPS) and len(node.inputs) > 1 else None
        if node.name and weight is not None and weight.const_value is not None:
            found[node.name] = int(weight.const_value.nbytes)
    return found


def _macs_and_work(model: ir.Model) -> tuple[int, dict[str, float]]:
    """MACs as ``inspect`` counts them, and every node's work, from one shape inference."""
    shape_of = shapes(model)
    return int(graph_macs(model.graph, shape_of).macs), node_work(model, shape_of)


def int4_value(block: int) -> str:
    """A 4-bit setting's value: ``int4`` at the pass's default block length, else ``int4-b<block>``."""
    return "int4" if block == INT4_BLOCK else f"int4-b{block}"


def int4_block(value: float | str) -> int:
    """The block length of a 4-bit setting's value (see :func:`int4_value`)."""
    text = str(value)
    return int(text.removeprefix("int4-b")) if text.startswith("int4-b") else INT4_BLOCK


def precision_kind(value: float | str) -> str:
    """The precision knob a setting's value belongs to: ``float``, ``int8`` or ``int4`` (any block length)."""
    return "int4" if str(value).startswith("int4") else str(value)


class VariantBuilder:
    """Builds one-setting variants of the simplified model and measures them.

    The simplified model is deserialized once; each variant is a copy of it (sharing its weights)
    that the pass changes in place, measured without serializing its weights
    (:mod:`onnxshrink.autotune.weights`): a setting costs its pass and one run of the judged
    samples, not three serializations of the model.

    Args:
        base: The simplified model, serialized.
        calibration: The calibration samples (the passes' and the judge's).
        provider: Where the sessions run.
        precisions: The precision knobs searched (``int8``, ``int4``): only those are built.
        int4_blocks: The 4-bit block lengths built for each MatMul/Gemm.
    """

    def __init__(
        self,
        base: onnx.ModelProto,
        calibration: Samples,
        provider: str,
        precisions: Sequence[str] = PRECISIONS,
        int4_blocks: Sequence[int] = (INT4_BLOCK,),
    ) -> None:
        self.base = base
        self.calibration = calibration
        self.provider = provider
        self.precisions = tuple(p for p in PRECISIONS if p in precisions)
        self.int4_blocks = tuple(sorted(set(int4_blocks))) if "int4" in self.precisions else (INT4_BLOCK,)
        self.model = ir.serde.deserialize_model(base)
        self.weights = InMemoryWeights(self.model)
        self.size = self.weights.size(self.model)
        self.macs, self.work = _macs_and_work(self.model)
        self.layers = layer_weight_bytes(self.model)
        fitted = calibration.fitted_to(self.model)
        self.context = InMemoryContext(calibration=fitted, provider=provider, weights=self.weights)
        self.judge = Judge(self.context, self.model, "auto", _JUDGE_SAMPLES, None, None)

    def variant(self, spec: PassSpec) -> tuple[ir.Model, dict[str, Any]]:
        """The simplified model with ``spec`` run on it (a copy: the simplified model is unchanged), and its record."""
        model = self.model.clone()
        records = Pipeline([spec], self.context).run(model)
        return model, records[-1].to_json()

    def setting(self, value: float | str, model: ir.Model) -> Setting:
        """``model``'s costs and damage against the simplified model, as the setting ``value``.

        A channel ratio (a number) also records the work ratio of every node it changes. A
        precision (``int8``, ``int4``) changes no MACs: ``inspect`` counts a layer's MACs from its
        shapes, whatever its precision, so the shape inference is spared (seconds on BERT-base).
        """
        damage = self.judge.measure(model)
        macs, ratios = self.macs, {}
        if not isinstance(value, str):
            macs, work = _macs_and_work(model)
            ratios = work_ratios(self.work, work)
        now = layer_weight_bytes(model)
        layers = {name: now[name] - size for name, size in self.layers.items() if name in now and now[name] != size}
        damage_value = max(0.0, 1.0 - damage.cosine)
        size = self.weights.size(model)
        return Setting(value, size - self.size, macs - self.macs, damage_value, layers, work=ratios)


def channel_spec(ratios: dict[str, float]) -> PassSpec:
    """The ``prune-channels`` spec of per-group ratios, as profiles and candidates both build it."""
    options = {"ratio": 0.0, "ratios": ratios, "round-to": CHANNEL_STEP, "min-channels": CHANNEL_STEP}
    return make_spec("prune-channels", options)


Stop = Callable[[], bool]  # True once the profile's time is up: no further unit is measured


def _channel_units(builder: VariantBuilder, model: ir.Model, stop: Stop) -> tuple[list[Unit], list[str]]:
    """The channel groups' units, and the groups left unmeasured because ``stop`` said so."""
    units: list[Unit] = []
    left: list[str] = []
    for group in channels.iter_ok(channels.analyze(model, "remove")):
        names = [s.node.name for s in group.of_kind("producer") if s.node is not None and s.node.name]
        if not names:
            continue
        if left or stop():
            left.append(names[0])
            continue
        settings = [Setting(0.0, 0, 0, 0.0)]
        kept_seen: set[int] = set()
        for ratio in CHANNEL_RATIOS:
            variant, record = builder.variant(channel_spec({names[0]: ratio}))
            kept = sum(entry["after"] for entry in record["stats"]["channels"].values())
            if not record["modified"] or kept in kept_seen:
                continue  # rounding kept the same channels as a smaller ratio
            kept_seen.add(kept)
            settings.append(builder.setting(ratio, variant))
        if len(settings) > 1:
            units.append(Unit("channels", names[0], settings))
    return units, left


def int8_spec(options: dict[str, Any]) -> PassSpec:
    """The static ``quantize`` spec of auto's int8 settings: nearest rounding.

    The pass's ``rounding=auto`` rounds MatMul/Gemm weights by GPTQ, one more capture of the
    calibration data per run (BERT-base: 16 s -> about 150 s); auto pays each run from its time
    budget, so its profiles and trials round to nearest, as they were measured.
    """
    return make_spec("quantize", {**options, "rounding": "nearest"})


def int4_spec(layers: tuple[str, ...], block: int = INT4_BLOCK, rounding: str = "auto") -> PassSpec:
    """The ``quantize`` spec that stores the named MatMul/Gemm weights as 4-bit blocks (MatMulNBits).

    Args:
        layers: The MatMul/Gemm node names.
        block: The block length along K (options name it only when it is not the pass's default).
        rounding: ``auto`` (the pass's default: GPTQ with calibration data) or ``nearest``.
    """
    options: dict[str, Any] = {"mode": "weight-only", "weights": "s4", "include": layers}
    if block != INT4_BLOCK:
        options["block-size"] = block
    if rounding != "auto":
        options["rounding"] = rounding
    return make_spec("quantize", options)


def smaller_int4(settings: Sequence[Setting], found: Setting) -> bool:
    """Whether a 4-bit setting is smaller than the 4-bit settings before it (shorter blocks).

    A block longer than the layer's K only pads it: no fewer scales, so no setting of its own.
    """
    return all(found.bytes < s.bytes for s in settings if precision_kind(s.value) == "int4")


def _precision_units(builder: VariantBuilder, model: ir.Model, stop: Stop) -> tuple[list[Unit], list[str]]:
    """The layers' precision units, and the layers left unmeasured because ``stop`` said so."""
    units: list[Unit] = []
    left: list[str] = []
    for node in model.graph:
        if not is_onnx_op(node, *QUANTIZED_OPS) or not node.name:
            continue
        if left or stop():
            left.append(node.name)
            continue
        settings = [Setting("float", 0, 0, 0.0)]
        if "int8" in builder.precisions:
            variant, record = builder.variant(int8_spec({"include": (node.name,)}))
            if record["stats"].get("quantized_nodes"):
                settings.append(builder.setting("int8", variant))
        if "int4" in builder.precisions and is_onnx_op(node, *WEIGHT_ONLY_OPS):
            for block in builder.int4_blocks:
                variant, record = builder.variant(int4_spec((node.name,), block))
                if not record["modified"]:
                    break
                found = builder.setting(int4_value(block), variant)
                if smaller_int4(settings, found):
                    settings.append(found)
        if len(settings) > 1:
            units.append(Unit("precision", node.name, settings, builder.layers.get(node.name, 0)))
    return units, left


_MEASURE: dict[str, Callable[[VariantBuilder, ir.Model, Stop], tuple[list[Unit], list[str]]]] = {
    "channels": _channel_units,
    "precision": _precision_units,
}


def _only(unit: Unit, knobs: Sequence[str], int4_blocks: Sequence[int]) -> Unit | None:
    """The unit with only the settings of the knobs and 4-bit blocks searched (the first, unchanged, always)."""

    def searched(value: float | str) -> bool:
        kind = precision_kind(value)
        return kind in knobs and (kind != "int4" or int4_block(value) in int4_blocks)

    settings = [s for i, s in enumerate(unit.settings) if i == 0 or unit.knob == "channels" or searched(s.value)]
    return dataclasses.replace(unit, settings=settings) if len(settings) > 1 else None


def profile(
    base: ir.Model,
    calibration: Samples,
    *,
    provider: str,
    knobs: Sequence[str],
    cache: Path | None,
    batch: int | None = None,
    measure: Callable[[str, VariantBuilder, ir.Model, Path | None], list[Unit]] | None = None,
    deadline: float | None = None,
    int4_blocks: Sequence[int] = (INT4_BLOCK,),
) -> Profile:
    """Measures (or reads from ``cache``) every unit of every knob on the simplified model ``base``.

    With ``batch``, the latency model is measured too (on ``provider`` at that batch, see
    :mod:`onnxshrink.autotune.latency_model`) and gives each setting its latency.
    ``measure(knob, builder, base, cache_path)``, when given, measures a knob's units instead of
    the serial loop (:class:`onnxshrink.autotune.items.ItemMeasure` runs them as work items on an
    executor).

    ``deadline`` (``time.monotonic()``) bounds the serial loop: each knob still to measure gets an
    equal share of the time left, and once its share is spent its remaining units are not measured
    (the search leaves them unchanged, ``Profile.unmeasured`` lists them). A knob cut short is not
    cached, so a later study with more time measures it whole.

    ``int4_blocks`` are the 4-bit block lengths measured for each MatMul/Gemm (each a setting of
    its own, ``int4`` or ``int4-b<block>``): longer blocks store fewer scales, so size targets
    profile several.
    """
    started = time.perf_counter()
    proto = ir.serde.serialize_model(base)
    builder = VariantBuilder(proto, calibration, provider, [k for k in knobs if k in PRECISIONS], int4_blocks)
    model_digest = proto.SerializeToString(deterministic=True)
    data_digest = _data_digest(calibration, _JUDGE_SAMPLES)
    units: list[Unit] = []
    cached: list[str] = []
    unmeasured: dict[str, list[str]] = {}
    paths: dict[str, Path | None] = {}
    for knob, covers in PROFILES.items():
        if set(covers) & set(knobs):
            paths[knob] = _cache_path(
                cache, knob, model_digest, data_digest, provider, builder.precisions, builder.int4_blocks
            )
    to_measure = [knob for knob, path in paths.items() if path is None or not path.is_file()]
    for knob, path in paths.items():
        if knob not in to_measure:
            assert path is not None
            found = [Unit.from_json(u) for u in json.loads(path.read_text(encoding="utf-8"))]
            cached.append(knob)
        else:
            knob_started = time.perf_counter()
            left: list[str] = []
            if measure is not None:
                found = measure(knob, builder, base, path)
            else:
                found, left = _MEASURE[knob](builder, base, _stopper(deadline, len(to_measure)))
            to_measure.remove(knob)
            logger.info("profiled %d %s units in %.1f s", len(found), knob, time.perf_counter() - knob_started)
            if left:
                unmeasured[knob] = left
                logger.warning(
                    "the time budget stopped the %s profile: %d units not measured, left unchanged", knob, len(left)
                )
            else:
                _store(path, found)
        units.extend(u for u in (_only(unit, knobs, builder.int4_blocks) for unit in found) if u is not None)
    table = None
    if batch is not None:
        grid = json.dumps({"version": _VERSION, "knobs": sorted(knobs), "provider": provider, "batch": batch})
        path = cache / f"latency-{_digest(model_digest, data_digest, grid.encode())}.json" if cache else None
        if path is not None and path.is_file():
            table = LatencyTable.from_json(json.loads(path.read_text(encoding="utf-8")))
            cached.append("latency")
        else:
            table = _latency_table(builder, base, knobs, batch)
            logger.info("measured the latency model in %.1f s", table.seconds)
            _write(path, table.to_json())
        for unit in units:
            for setting in unit.settings[1:]:
                if unit.knob == "channels":
                    setting.latency = table.channel_delta(setting.work)
                else:
                    setting.latency = table.precision_delta(unit.name, precision_kind(setting.value))
    seconds = time.perf_counter() - started
    return Profile(builder.size, builder.macs, units, seconds, cached, builder.layers, table, unmeasured)


def _cache_path(
    cache: Path | None,
    knob: str,
    model_digest: bytes,
    data_digest: bytes,
    provider: str,
    precisions: Sequence[str],
    int4_blocks: Sequence[int] = (INT4_BLOCK,),
) -> Path | None:
    """Where a knob's profile is cached (None without a cache folder).

    A precision profile of some of the precisions or 4-bit block lengths is read from the cached
    profile of all of them when there is one (the settings not searched are then left out); else
    it has its own file.
    """
    if cache is None:
        return None
    found = None
    grid = {"version": _VERSION, "knob": knob, "ratios": CHANNEL_RATIOS, "step": CHANNEL_STEP, "provider": provider}
    keys = [grid]
    if knob == "precision":
        measured = dict.fromkeys([PRECISIONS, tuple(precisions)])
        lengths = dict.fromkeys([INT4_BLOCKS, tuple(int4_blocks)])
        # The default block length keeps the key it had before other lengths were profiled.
        keys = [
            grid | {"precisions": list(p)} | ({"int4_blocks": list(b)} if b != (INT4_BLOCK,) else {})
            for p in measured
            for b in lengths
        ]
    for entry in keys:
        key = json.dumps(entry)
        found = cache / f"{knob}-{_digest(model_digest, data_digest, key.encode())}.json"
        if found.is_file():
            return found
    return found


def _stopper(deadline: float | None, knobs_left: int) -> Stop:
    """True once this knob's equal share of the time left before ``deadline`` is spent (never without one)."""
    if deadline is None:
        return lambda: False
    share = time.monotonic() + (deadline - time.monotonic()) / knobs_left
    return lambda: time.monotonic() >= share


def _latency_table(builder: VariantBuilder, base: ir.Model, knobs: Sequence[str], batch: int) -> LatencyTable:
    """The latency model: the simplified model, and each precision searched applied to every layer it fits."""
    layers = {node.name for node in base.graph if node.name and is_onnx_op(node, *QUANTIZED_OPS)}
    models = {"float": base}
    if "int8" in knobs:
        variant, record = builder.variant(int8_spec({}))
        if record["stats"].get("quantized_nodes"):
            models["int8"] = variant
    weight_only = tuple(node.name for node in base.graph if node.name and is_onnx_op(node, *WEIGHT_ONLY_OPS))
    if "int4" in knobs and weight_only:
        variant, record = builder.variant(int4_spec(weight_only))
        if record["modified"]:
            models["int4"] = variant
    feed = timing_feed(base, builder.calibration, batch)
    return measure_table(models, feed, provider=builder.provider, layers=layers)


def _write(path: Path | None, data: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)


def _store(path: Path | None, units: list[Unit]) -> None:
    _write(path, [u.to_json() for u in units])
