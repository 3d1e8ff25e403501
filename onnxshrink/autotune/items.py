"""Profile work items: one unit (channel group or layer) × one setting, measured anywhere.

A profile is split into items that depend on nothing but the simplified model and the calibration
samples, so an executor can measure them in any order, in any process, on any node
(:mod:`onnxshrink.executors`). Each finished item is appended to
``profiles/<knob>-<digest>.items.jsonl`` as it completes; a driver that dies and is run again
(``--resume`` or not: the file is keyed like the profile cache) submits only the missing items.
When every item is in, the units are put together in the order the serial profile lists them,
so a profile measured by items equals one measured in a loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink import progress
from onnxshrink.autotune.profile import (
    CHANNEL_RATIOS,
    INT4_BLOCK,
    PRECISIONS,
    QUANTIZED_OPS,
    WEIGHT_ONLY_OPS,
    Setting,
    Unit,
    VariantBuilder,
    channel_spec,
    int4_block,
    int4_spec,
    int4_value,
    int8_spec,
    precision_kind,
    smaller_int4,
)
from onnxshrink.data.readers import open_samples
from onnxshrink.errors import VerificationError
from onnxshrink.executors import Executor
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passes import channels

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Item:
    """One setting of one unit: ``knob`` is ``channels`` or ``precision``; ``value`` a ratio, ``int8`` or ``int4*``."""

    knob: str
    unit: str
    value: float | str

    @property
    def key(self) -> str:
        """The item's name in the items file."""
        return f"{self.knob}/{self.unit}/{self.value}"


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a worker needs to measure items (plain data: picklable, and put once into an object store)."""

    model: bytes  # the simplified model, serialized
    calibration: dict[str, np.ndarray]
    provider: str
    precisions: tuple[str, ...] = PRECISIONS  # the precision knobs searched
    int4_blocks: tuple[int, ...] = (INT4_BLOCK,)  # the 4-bit block lengths measured

    @property
    def timed(self) -> bool:
        """Items time nothing (the latency model of ``--min-speedup`` is measured by the driver)."""
        return False

    def builder(self) -> VariantBuilder:
        """The builder of one-setting variants (a worker makes it once and keeps it)."""
        proto = onnx.load_from_string(self.model)
        return VariantBuilder(proto, open_samples(self.calibration), self.provider, self.precisions, self.int4_blocks)

    # The executor's Workload: a worker's state is the builder, a piece an Item.
    def start(self) -> VariantBuilder:
        """The worker's state: the builder (see :meth:`builder`)."""
        return self.builder()

    def measure(self, state: VariantBuilder, piece: Item) -> dict[str, Any]:
        """One item's result (:func:`measure_item`)."""
        return measure_item(state, piece)

    def failed(self, piece: Item, reason: str) -> dict[str, Any]:
        """The result of an item that could not be measured (:func:`failed`)."""
        return failed(piece, reason)


def measure_item(builder: VariantBuilder, item: Item) -> dict[str, Any]:
    """Builds and measures one item: ``{"key", "modified", "kept", "setting"}`` (setting None when unmodified)."""
    if item.knob == "channels":
        variant, record = builder.variant(channel_spec({item.unit: float(item.value)}))
        kept = sum(entry["after"] for entry in record["stats"]["channels"].values())
        modified = bool(record["modified"])
    elif item.value == "int8":
        variant, record = builder.variant(int8_spec({"include": (item.unit,)}))
        kept, modified = None, bool(record["stats"].get("quantized_nodes"))
    else:
        variant, record = builder.variant(int4_spec((item.unit,), int4_block(item.value)))
        kept, modified = None, bool(record["modified"])
    setting = dataclasses.asdict(builder.setting(item.value, variant)) if modified else None
    return {"key": item.key, "modified": modified, "kept": kept, "setting": setting}


def plan(
    knob: str, model: ir.Model, precisions: Sequence[str] = PRECISIONS, int4_blocks: Sequence[int] = (INT4_BLOCK,)
) -> list[Item]:
    """Every item of a knob's profile, in the order the units are listed (only the ``precisions`` searched)."""
    items: list[Item] = []
    if knob == "channels":
        for group in channels.iter_ok(channels.analyze(model, "remove")):
            names = [s.node.name for s in group.of_kind("producer") if s.node is not None and s.node.name]
            if names:
                items.extend(Item(knob, names[0], ratio) for ratio in CHANNEL_RATIOS)
        return items
    for node in model.graph:
        if not is_onnx_op(node, *QUANTIZED_OPS) or not node.name:
            continue
        if "int8" in precisions:
            items.append(Item(knob, node.name, "int8"))
        if "int4" in precisions and is_onnx_op(node, *WEIGHT_ONLY_OPS):
            items.extend(Item(knob, node.name, int4_value(block)) for block in int4_blocks)
    return items


def assemble(
    knob: str, items: Sequence[Item], results: dict[str, dict[str, Any]], layers: dict[str, int]
) -> list[Unit]:
    """The units of a knob from its items' results (items that failed for good are left out)."""
    units: list[Unit] = []
    by_unit: dict[str, list[Item]] = {}
    for item in items:
        by_unit.setdefault(item.unit, []).append(item)
    for name, own in by_unit.items():
        settings = [Setting(0.0, 0, 0, 0.0) if knob == "channels" else Setting("float", 0, 0, 0.0)]
        kept_seen: set[int] = set()
        for item in own:
            result = results.get(item.key)
            if result is None or result.get("error") is not None or not result["modified"]:
                continue
            if knob == "channels":
                if result["kept"] in kept_seen:
                    continue  # rounding kept the same channels as a smaller ratio
                kept_seen.add(result["kept"])
            found = Setting(**result["setting"])
            if precision_kind(found.value) == "int4" and not smaller_int4(settings, found):
                continue  # a block longer than the layer's K: the same bytes as a shorter one
            settings.append(found)
        if len(settings) > 1:
            weight = 0 if knob == "channels" else layers.get(name, 0)
            units.append(Unit(knob, name, settings, weight))
    return units


def _read(path: Path | None) -> dict[str, dict[str, Any]]:
    """The finished items of an items file (a torn last line from a killed driver is skipped)."""
    found: dict[str, dict[str, Any]] = {}
    if path is None or not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("error") is None:
            found[entry["key"]] = entry
    return found


class ItemMeasure:
    """The profile's seam: measures a knob's units item by item on an executor, streaming results to disk."""

    def __init__(self, executor: Executor, calibration: dict[str, np.ndarray] | None = None) -> None:
        self.executor = executor
        self.calibration = calibration
        self.submitted = 0  # items measured in this run (not read back from an items file)
        self._setup: Setup | None = None

    def __call__(self, knob: str, builder: VariantBuilder, model: ir.Model, cache: Path | None) -> list[Unit]:
        """The units of ``knob`` (the same as the serial profile's); ``cache`` is the profile's JSON path."""
        items = plan(knob, model, builder.precisions, builder.int4_blocks)
        path = cache.with_suffix(".items.jsonl") if cache is not None else None
        results = _read(path)
        todo = [item for item in items if item.key not in results]
        if results:
            logger.info("%s profile: %d of %d items already measured", knob, len(items) - len(todo), len(items))
        if todo:
            if self._setup is None:  # one setup for every knob: an object store holds it once
                calibration = self.calibration if self.calibration is not None else builder.calibration.take()
                self._setup = Setup(
                    builder.base.SerializeToString(),
                    calibration,
                    builder.provider,
                    builder.precisions,
                    builder.int4_blocks,
                )
            setup = self._setup
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            with (
                path.open("a", encoding="utf-8") if path is not None else _NoFile() as journal,
                progress.task(f"profile {knob}: items", total=len(todo)) as step,
            ):

                def done(item: Item, result: dict[str, Any]) -> None:
                    results[item.key] = result
                    journal.write(json.dumps(result) + "\n")
                    journal.flush()
                    step.advance()
                    if result.get("error") is not None:
                        logger.warning("profile item %s failed: %s", item.key, result["error"])

                self.executor.profile_items(setup, todo, done)
            self.submitted += len(todo)
        lost = [results[i.key] for i in items if results[i.key].get("error") is not None]
        if lost:
            raise VerificationError(
                f"profile item {lost[0]['key']} failed: {lost[0]['error']} ({len(lost)} of {len(items)} items failed;"
                " run again to measure only the missing ones)"
            )
        return assemble(knob, items, results, builder.layers)


class _NoFile:
    def __enter__(self) -> _NoFile:
        return self

    def __exit__(self, *args: object) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def failed(item: Item, reason: str) -> dict[str, Any]:
    """The result of an item that could not be measured (after its retries)."""
    return {"key": item.key, "modified": False, "kept": None, "setting": None, "error": reason}


def keys(items: Iterable[Item]) -> list[str]:
    """The items' keys (for logs and tests)."""
    return [item.key for item in items]
