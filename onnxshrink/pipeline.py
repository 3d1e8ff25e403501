"""The pass manager: runs specs in order, checks invariants after each pass, records figures.

A preset expands into a fixed-point group: its passes repeat until none reports a change, with
a step bound. Every pass run gets a :class:`PassRecord` (time, nodes and bytes before/after,
stats). After each pass the cheap structural checks always run; ``full_checks`` adds the ONNX
checker, and ``after_pass`` lets the caller compare numerics (``--verify-each``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxshrink import registry
from onnxshrink.context import PassContext
from onnxshrink.errors import PassFailure, ShrinkError
from onnxshrink.ir.checks import model_problems
from onnxshrink.ir.graphs import all_nodes, totals
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.spec import PassSpec, build_options

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassRecord:
    """What one pass run did, for the report."""

    name: str
    options: dict[str, Any]
    exact: bool
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    stats: dict[str, Any]
    preset: str | None = None
    round: int | None = None
    diff: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # Figures of the pipeline's ``measure`` (None without one, and then left out of the JSON).
    macs_before: int | None = None
    macs_after: int | None = None
    bytes_compressed_before: int | None = None
    bytes_compressed_after: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Returns the record as plain JSON data, one key per field (measures only when measured)."""
        data = dataclasses.asdict(self)
        measures = ("macs_before", "macs_after", "bytes_compressed_before", "bytes_compressed_after")
        if all(data[key] is None for key in measures):
            for key in measures:
                del data[key]
        return data


def _node_snapshot(model: ir.Model) -> dict[int, ir.Node]:
    # Holding the nodes keeps their ids from being reused by nodes a pass creates.
    return {id(node): node for node in all_nodes(model)}


def _opsets(model: ir.Model) -> list[tuple[str, dict[str, int]]]:
    """The opset imports of the model and of each function: a pass that raises one changed the model."""
    scopes = [("", dict(model.opset_imports))]
    scopes += [
        (f"{key}", dict(f.opset_imports)) for key, f in sorted(model.functions.items(), key=lambda kv: str(kv[0]))
    ]
    return scopes


def _label(node: ir.Node) -> str:
    """A node as the diff names it: its name, else its op type and first output's name."""
    if node.name:
        return node.name
    output = node.outputs[0].name if node.outputs and node.outputs[0].name else "?"
    return f"{node.op_type}->{output}"


def _options_json(pass_: ShrinkPass[Any]) -> dict[str, Any]:
    """A pass's options keyed as a recipe takes them: ``for``, not the dataclass field ``for_``."""
    options: dict[str, Any] = {}
    for info in registry.options_of(type(pass_)):
        value = getattr(pass_.options, info.field)
        options[info.key.replace("-", "_")] = list(value) if isinstance(value, tuple) else value
    return options


AfterPass = Callable[[ir.Model, PassRecord, Sequence[PassRecord]], None]
Measure = Callable[[ir.Model], Mapping[str, "int | None"]]


@dataclasses.dataclass(frozen=True)
class _FixedPoint:
    preset: str
    passes: tuple[ShrinkPass[Any], ...]
    max_steps: int


class Pipeline:
    """An ordered list of passes and presets built from specs.

    Args:
        specs: What to run, in order.
        context: Data and settings offered to passes.
        full_checks: Also run the ONNX checker after every pass.
        after_pass: Called after every pass run that modified the model (e.g. verify-each).
        measure: Measures the model after every pass run that modified it (the figures of an
            unchanged model are the last ones): ``macs`` and ``bytes_compressed``, written into
            the record as ``macs_after`` and ``bytes_compressed_after``. ``initial`` holds the
            input's figures, for passes that run before any change.
    """

    def __init__(
        self,
        specs: Sequence[PassSpec],
        context: PassContext | None = None,
        *,
        full_checks: bool = False,
        after_pass: AfterPass | None = None,
        measure: Measure | None = None,
        initial: Mapping[str, int | None] | None = None,
    ) -> None:
        self.specs = list(specs)
        self.context = context or PassContext()
        self.full_checks = full_checks
        self.after_pass = after_pass
        self.measure = measure
        self._measured: Mapping[str, int | None] = dict(initial or {})
        self._steps: list[ShrinkPass[Any] | _FixedPoint] = [self._build(spec) for spec in self.specs]

    def _instantiate(self, spec: PassSpec) -> ShrinkPass[Any]:
        cls = registry.get_pass(spec.name)
        return cls(build_options(spec), self.context)

    def _build(self, spec: PassSpec) -> ShrinkPass[Any] | _FixedPoint:
        preset = registry.presets().get(spec.name)
        if preset is None:
            return self._instantiate(spec)
        inner = tuple(self._instantiate(PassSpec(name)) for name in preset.steps)
        return _FixedPoint(preset.name, inner, preset.max_steps if preset.fixed_point else 1)

    @property
    def exact(self) -> bool:
        """True when every pass in the pipeline keeps the function (up to float rounding)."""
        return all(
            all(p.exact for p in step.passes) if isinstance(step, _FixedPoint) else step.exact for step in self._steps
        )

    def describe(self) -> list[dict[str, Any]]:
        """The pipeline as data, for provenance and the report."""
        return [spec.to_json() for spec in self.specs]

    def run(self, model: ir.Model) -> list[PassRecord]:
        """Runs every step in place on ``model``; returns one record per pass run."""
        records: list[PassRecord] = []
        for step in self._steps:
            if isinstance(step, _FixedPoint):
                for round_ in range(1, step.max_steps + 1):
                    changed = False
                    for pass_ in step.passes:
                        record = self._run_one(pass_, model, records, preset=step.preset, round_=round_)
                        changed |= record.modified
                    if not changed:
                        break
                else:
                    logger.warning("preset '%s' still changing after %d rounds; stopped", step.preset, step.max_steps)
            else:
                self._run_one(step, model, records)
        return records

    def _run_one(
        self,
        pass_: ShrinkPass[Any],
        model: ir.Model,
        records: list[PassRecord],
        *,
        preset: str | None = None,
        round_: int | None = None,
    ) -> PassRecord:
        before_names = [r.name for r in records]
        before = totals(model)
        opsets_before = _opsets(model)
        nodes_before = _node_snapshot(model)
        logger.info("pass %s: started", pass_.name)
        start = time.perf_counter()
        try:
            result = pass_(model)
        except ShrinkError:
            raise
        except Exception as error:
            raise PassFailure(
                f"pass '{pass_.name}' failed: {type(error).__name__}: {error} (passes before it: {before_names})"
            ) from error
        seconds = time.perf_counter() - start
        stats, timings = {}, {}
        if isinstance(result, ShrinkPassResult):
            stats = dict(result.stats)
            timings = dict(result.timings)
            if result.skipped:
                stats["skipped"] = dict(result.skipped)
        after = totals(model)
        nodes_after = _node_snapshot(model)
        record = PassRecord(
            name=pass_.name,
            options=_options_json(pass_),
            exact=pass_.exact,
            modified=result.modified,
            seconds=seconds,
            nodes_before=before.nodes,
            nodes_after=after.nodes,
            bytes_before=before.bytes,
            bytes_after=after.bytes,
            stats=stats,
            preset=preset,
            round=round_,
            timings=timings,
            diff={
                "removed": [_label(n) for key, n in nodes_before.items() if key not in nodes_after],
                "added": [_label(n) for key, n in nodes_after.items() if key not in nodes_before],
            },
        )
        records.append(record)
        logger.info("pass %s: modified=%s in %.3fs", pass_.name, record.modified, seconds)
        if not record.modified and (record.nodes_before, record.bytes_before, opsets_before) != (
            record.nodes_after,
            record.bytes_after,
            _opsets(model),
        ):
            raise PassFailure(f"pass '{pass_.name}' changed the model but reported modified=False")
        problems = model_problems(model, full=self.full_checks)
        if problems:
            raise PassFailure(f"pass '{pass_.name}' broke the graph: {problems[0]} (passes before it: {before_names})")
        if self.measure is not None:
            record.macs_before = self._measured.get("macs")
            record.bytes_compressed_before = self._measured.get("bytes_compressed")
            if record.modified:
                self._measured = self.measure(model)
            record.macs_after = self._measured.get("macs")
            record.bytes_compressed_after = self._measured.get("bytes_compressed")
        if self.after_pass is not None and record.modified:
            self.after_pass(model, record, records)
        return record
