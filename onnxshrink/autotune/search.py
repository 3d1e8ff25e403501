"""The search over candidates.

Profile once, allocate on the predicted front, build and measure the candidates
that decide the answer, correct the prediction with what was measured, then let Optuna search the
global knobs; every trial is journaled so a study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from onnxshrink.autotune import allocate
from onnxshrink.autotune.allocate import Point
from onnxshrink.autotune.goal import BUDGETS, Goal
from onnxshrink.autotune.measure import Job, spec_dicts
from onnxshrink.autotune.profile import Profile, precision_kind
from onnxshrink.autotune.recipe import Knobs, candidate_specs, specs_key
from onnxshrink.autotune.result import choose, rank
from onnxshrink.autotune.study import BIAS_CORRECTIONS, MAX_POINTS, PERCENTILES, ROUNDINGS, TrialJournal
from onnxshrink.autotune.trials import TrialTask
from onnxshrink.executors import Executor, LocalExecutor
from onnxshrink.passes.quantize.statistics import CALIBRATORS

logger = logging.getLogger(__name__)

_TARGET_ATTEMPTS = 4  # rebuilds with a tightened cap when a measured cost misses its target
_MARGIN = 0.98  # a tightened cap aims this far inside the target
_STALE_LIMIT = 6  # Optuna proposals in a row that repeat a built pipeline end the search
# Objective offsets: a trial short of a target, past the budget (feasible ones are < 1), failed.
_INFEASIBLE, _OVER_BUDGET, _FAILED = 10.0, 20.0, 30.0


@dataclasses.dataclass
class Settings:
    """How the search runs (what :func:`onnxshrink.auto` was given, resolved)."""

    model: str
    calibration: str | None
    evaluation: str
    provider: str
    batch: int
    seed: int
    max_trials: int
    workers: int
    deadline: float
    trial_timeout: float
    trial_memory: int | None
    reference_macs: int
    reference_size: int
    metric: Any
    metric_reference: float | None
    folder: Path
    sys_path: tuple[str, ...]


class Search:
    """One study: the trials built so far and the rules that choose the next."""

    def __init__(
        self,
        goal: Goal,
        profile: Profile,
        settings: Settings,
        journal: TrialJournal,
        progress: Callable[[dict[str, Any]], None] | None,
        executor: Executor | None = None,
    ) -> None:
        self.goal = goal
        self.executor: Executor = executor if executor is not None else LocalExecutor(settings.workers)
        self.profile = profile
        self.settings = settings
        self.journal = journal
        self.progress = progress
        self.trials: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self.primary = "bytes"
        if goal.max_size is None and goal.max_macs is not None:
            self.primary = "macs"
        elif goal.max_size is None and goal.min_speedup is not None:
            self.primary = "latency" if profile.latency_ms > 0 else "macs"
        self.caps = self._target_caps()
        # Predicted latency (or MACs) of candidates known to meet / to miss --min-speedup.
        self._speed_bracket = [0.0, float("inf")]
        self.front: list[Point] = []
        self.sampler_study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=settings.seed))

    def _target_caps(self) -> dict[str, float]:
        caps: dict[str, float] = {}
        if self.goal.max_size is not None:
            # The profile counts serialized bytes of the simplified model; the saved file differs by
            # its provenance: start from the target moved by that difference.
            caps["bytes"] = self.goal.max_size - (self.settings.reference_size - self.profile.size)
        macs = []
        if self.goal.max_macs is not None:
            macs.append(self.goal.max_macs * self.settings.reference_macs)
        if self.goal.min_speedup is not None and self.profile.latency_ms > 0:
            # The latency model: the simplified model's measured latency over the target speedup.
            caps["latency"] = self.profile.latency_ms / self.goal.min_speedup
        elif self.goal.min_speedup is not None:  # no latency model: MACs stand in for latency
            macs.append(self.settings.reference_macs / self.goal.min_speedup)
        if macs:
            caps["macs"] = min(macs)
        return caps

    @property
    def out_of_time(self) -> bool:
        """Whether the time budget or the trial count is used up (never before the first trial)."""
        if not self.trials:
            return False
        return time.monotonic() >= self.settings.deadline or len(self.trials) >= self.settings.max_trials

    def evaluate(self, point: Point, index: int, knobs: Knobs, phase: str) -> dict[str, Any]:
        """Builds and measures one candidate, or reuses its result from this run or the journal."""
        return self.evaluate_many([(point, index, knobs, phase)])[0]

    def evaluate_many(self, items: Sequence[tuple[Point, int, Knobs, str]]) -> list[dict[str, Any]]:
        """Builds and measures candidates on the executor, up to ``workers`` at a time.

        Each result is journaled as it finishes (a driver that dies loses no finished trial); they are
        numbered in the order of ``items``, whatever order they finish in, so a study runs the same
        way with any number of workers and on any executor.
        """
        prepared = []
        todo: dict[str, tuple[list[Any], Point, int, Knobs, str]] = {}
        for point, index, knobs, phase in items:
            specs = candidate_specs(self.profile.units, point.choice, knobs)
            key = specs_key(specs)
            prepared.append((point, index, knobs, phase, key))
            if key not in self.by_key and self.journal.finished(key) is None and key not in todo:
                todo[key] = (specs, point, index, knobs, phase)
        fresh: dict[str, dict[str, Any]] = {}

        def done(task: TrialTask, outcome: dict[str, Any]) -> None:
            specs, point, index, knobs, phase = todo[task.key]
            record = self._trial_record(task.key, specs, point, knobs, phase, outcome)
            self.journal.record(record, {"point": min(index, MAX_POINTS - 1), **knobs.params()})
            fresh[task.key] = record

        s = self.settings
        tasks = [TrialTask(key, self._job(key, job[0]), s.trial_timeout, s.trial_memory) for key, job in todo.items()]
        if tasks:
            self.executor.trials(tasks, done)
        return [self._record(point, index, key, fresh) for point, index, _, _, key in prepared]

    def _record(self, point: Point, index: int, key: str, fresh: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """Numbers a fresh (already journaled) result or the journal's, and reports progress."""
        if key in self.by_key:
            return self.by_key[key]
        record = fresh.get(key)
        if record is None:
            found = self.journal.finished(key)
            assert found is not None
            record = {**found, "resumed": True}
        record["number"] = len(self.trials)
        record["front_index"] = index if record.get("phase") != "target" else None
        self.trials.append(record)
        self.by_key[key] = record
        if self.progress is not None:
            best, feasible = choose(self.goal, self.trials, self.primary)
            left = self.settings.deadline - time.monotonic()
            self.progress(
                {
                    "trial": record,
                    "done": len(self.trials),
                    "max_trials": self.settings.max_trials,
                    "best": best,
                    "feasible": feasible,
                    "seconds_left": left if left != float("inf") else None,
                }
            )
        return record

    def _job(self, key: str, specs: list[Any]) -> Job:
        """What a worker needs to build and measure one candidate."""
        s = self.settings
        output = s.folder / "trials" / f"{key}.onnx"
        output.parent.mkdir(parents=True, exist_ok=True)
        return Job(
            model=s.model,
            specs=spec_dicts(specs),
            output=str(output),
            calibration=s.calibration,
            evaluation=s.evaluation,
            provider=s.provider,
            reference_macs=s.reference_macs,
            metric=s.metric,
            metric_reference=s.metric_reference,
            speed_batch=s.batch if self.goal.min_speedup is not None else None,
            sys_path=s.sys_path,
        )

    def _trial_record(
        self, key: str, specs: list[Any], point: Point, knobs: Knobs, phase: str, outcome: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One candidate's record (settings, measurements or error) from what its worker returned."""
        record: dict[str, Any] = {
            "key": key,
            "phase": phase,
            "settings": point.settings(self.profile.units),
            "knobs": knobs.to_json(),
            "specs": [spec.to_json() for spec in specs],
            "predicted": {"size": point.size, "macs": point.macs, "latency_ms": point.latency, "damage": point.damage},
            "model": str(self.settings.folder / "trials" / f"{key}.onnx"),
            "seconds": outcome.get("seconds", 0.0),
            "error": outcome.get("error"),
        }
        if outcome.get("node"):
            record["node"] = outcome["node"]
        measured = outcome.get("measured")
        if measured is not None:
            if self.goal.max_drop is not None and measured["drop"] is None:
                record["error"] = "no accuracy: the evaluation data has no labels for a classifier-like output"
            elif self.goal.min_agreement is not None and measured["agreement"] is None:
                record["error"] = "no top-1 agreement: no output is classifier-like; use --min-cosine"
            else:
                record.update(measured)
                record["loss"] = self.goal.loss(measured)
                record["misses"] = self.goal.misses(measured)
                budget, target = self.goal.violation(measured)
                record["violation"] = {"budget": budget, "target": target}
        if record["error"] is not None:
            logger.warning("trial %s failed: %s", key, record["error"])
        return record

    def _objective(self, record: Mapping[str, Any]) -> float:
        """The sampler's value, ordered as :func:`choose` prefers: feasible, short of a target, past the budget."""
        if record.get("error") is not None:
            return _FAILED
        first, second = rank(self.goal, record, self.primary)
        base = {"bytes": self.settings.reference_size, "macs": self.settings.reference_macs}.get(self.primary, 1.0)
        value = first / base if not self.goal.has_target else min(first, 1.0) + 1e-3 * second / base
        if not record["misses"]:
            return value
        budget, target = self.goal.violation(record)
        if budget > 0:  # squashed below 1 in whatever unit the budget has
            return _OVER_BUDGET + budget / (1 + budget) + min(target, 1.0) * 1e-3
        return _INFEASIBLE + min(target, 1.0) + value * 1e-3

    def structure(self) -> None:
        """Phase 1: the allocation on the predicted front, corrected by measured costs.

        When no candidate meets the goal by then, the whole-model int8 (every layer the pass
        quantizes by default) is tried too: a profile cut short by the time budget, or one whose
        per-layer predictions add up wrong, must not lose to the plain pipeline a user would write.
        """
        if self.goal.has_target:
            self._meet_targets()
        else:
            self._bisect()
        uniform = allocate.uniform_int8(self.profile)
        if uniform is not None and not any(_ok(r) for r in self.trials) and not self.out_of_time:
            record = self.evaluate(uniform, 0, Knobs(), "uniform")
            if record.get("phase") == "uniform":  # not a point of the front: bisection must not count it
                record["front_index"] = None

    def _meet_targets(self) -> None:
        caps = dict(self.caps)
        tried: set[tuple[int, ...]] = set()
        for _ in range(_TARGET_ATTEMPTS):
            if self.out_of_time:
                return
            self.front = allocate.front(self.profile, caps, self.primary)
            if not self.front:
                logger.warning("no allocation is predicted to meet the targets %s", caps)
                self.front = allocate.front(self.profile, {}, self.primary)[-1:]
                if self.front:
                    self.evaluate(self.front[0], 0, Knobs(), "nearest")
                return
            point = self.front[0]
            if point.choice in tried:  # the corrected caps lead back to a built candidate
                return
            tried.add(point.choice)
            record = self.evaluate(point, 0, Knobs(), "target")
            if record.get("error") is not None:
                return
            moved = self._tighten(caps, point, record)
            moved = self._retarget_speed(caps, point, record) or moved
            moved = moved or self._loosen(caps, point, record)
            if not moved:
                return

    def _tighten(self, caps: dict[str, float], point: Point, record: Mapping[str, Any]) -> bool:
        """Moves the size and MACs caps by how far the measured costs missed them; False when none missed."""
        misses = record["misses"]
        moved = False
        if "max_size" in misses and self.goal.max_size:
            caps["bytes"] = point.size * self.goal.max_size / record["size"] * _MARGIN
            moved = True
        if "max_macs" in misses and self.goal.max_macs:
            caps["macs"] = min(caps.get("macs", point.macs), point.macs * self.goal.max_macs / record["macs_ratio"])
            moved = True
        return moved

    def _loosen(self, caps: dict[str, float], point: Point, record: Mapping[str, Any]) -> bool:
        """Moves the size cap out by how far the measured size undershot it, when the budget was missed.

        The prediction is corrected both ways: a candidate within ``--max-size`` that misses the
        accuracy budget leaves room that a less damaging allocation may use. False when the
        corrected cap is no larger.
        """
        if not self.goal.max_size or "bytes" not in caps or not set(record["misses"]) & set(BUDGETS):
            return False
        if "max_size" in record["misses"] or not record.get("size"):
            return False
        wanted = point.size * self.goal.max_size / record["size"]
        if wanted <= caps["bytes"]:
            return False
        caps["bytes"] = wanted
        return True

    def _retarget_speed(self, caps: dict[str, float], point: Point, record: Mapping[str, Any]) -> bool:
        """Moves the latency (or MACs) cap of ``--min-speedup`` by the measured speedup; False when it stays.

        A candidate below the target moves the cap down by its shortfall; one past the target that
        misses the accuracy budget moves it up by its surplus (less cut, less damage). The caps of
        candidates known to meet and to miss the target bracket the next cap (their midpoint when
        the estimate falls outside).
        """
        speedup = record.get("speedup")
        if not self.goal.min_speedup or not speedup:
            return False
        kind = "latency" if "latency" in caps else "macs"
        cost = point.cost(kind)
        misses = record["misses"]
        if "min_speedup" in misses:
            self._speed_bracket[1] = min(self._speed_bracket[1], cost)
        else:
            self._speed_bracket[0] = max(self._speed_bracket[0], cost)
            over_budget = bool(set(misses) & set(BUDGETS))
            if not over_budget or speedup * _MARGIN <= self.goal.min_speedup:
                return False
        wanted = cost * speedup / self.goal.min_speedup * _MARGIN
        low, high = self._speed_bracket
        if not low < wanted < high and high < float("inf"):
            wanted = (low + high) / 2
        caps[kind] = wanted
        return True

    def _bisect(self) -> None:
        """The smallest point of the front that meets the budget, assuming loss grows along it."""
        self.front = allocate.front(self.profile, self.caps, self.primary)
        self._bisect_from(-1, Knobs())
        if self._feasible_index() == -1 and self.front and not self.out_of_time:
            self.evaluate(self.front[0], 0, Knobs(), "bisect")

    def _feasible_index(self) -> int:
        """The most compressed front point some trial built within the budget, -1 when none."""
        found = [r["front_index"] for r in self.trials if r.get("front_index") is not None and _ok(r)]
        return max(found, default=-1)

    def _bisect_from(self, low: int, knobs: Knobs) -> list[dict[str, Any]]:
        """Searches the front beyond ``low`` (known good) for the last point that passes with ``knobs``.

        With one worker this is bisection; with ``k`` workers, each round builds ``k`` points that
        split the interval evenly (k-section), all at once.
        """
        high = len(self.front)
        records = []
        while high - low > 1 and not self.out_of_time:
            room = max(1, self.settings.max_trials - len(self.trials))
            count = max(1, min(self.settings.workers, high - low - 1, room))
            picks = sorted({low + (high - low) * (i + 1) // (count + 1) for i in range(count)} - {low, high})
            found = self.evaluate_many([(self.front[i], i, knobs, "bisect") for i in picks])
            for index, record in zip(picks, found, strict=True):
                record.setdefault("front_index", index)
            records.extend(found)
            passing = [i for i, r in zip(picks, found, strict=True) if _ok(r)]
            low = max(passing, default=low)
            high = min([i for i, r in zip(picks, found, strict=True) if not _ok(r) and i > low], default=high)
        return records

    def knobs(self) -> None:
        """Phase 2: Optuna's TPE (seeded) proposes global knobs.

        Only the knobs that change the candidates apply (:class:`Scope`). Optuna is seeded with the
        pass defaults; at a target (one trial a proposal) also with each other value of each knob
        alone (one factor at a time: every calibrator, 4-bit nearest rounding, no bias correction),
        then with the values that beat the defaults on their own, combined. TPE proposes the rest.
        Each proposal is tried where it can improve the answer: the target point, or a bisection of
        the front beyond the best point found so far (several trials a proposal, so only the
        defaults are seeded there). Stops when time or trials run out, or proposals keep repeating
        built ones.
        """
        if not self.front:
            return
        scope = Scope.of(self.profile, self.front if not self.goal.has_target else self.front[:1])
        seeds = scope.seeds() if self.goal.has_target else [scope.defaults()]
        for params in seeds:
            self.sampler_study.enqueue_trial(params)
        told: list[tuple[dict[str, Any], float]] = []
        combine = len(seeds) > 2  # once the seeds are told: at least two single changes to combine
        stale = 0
        while not self.out_of_time and stale < _STALE_LIMIT:
            before = len(self.trials)
            if self.goal.has_target:  # one proposal per worker, each at the target point
                room = max(1, self.settings.max_trials - len(self.trials))
                proposals = [self._propose(scope) for _ in range(min(self.settings.workers, room))]
                found = self.evaluate_many([(self.front[0], 0, knobs, "knobs") for _, knobs in proposals])
                for (trial, _), record in zip(proposals, found, strict=True):
                    told.append((trial.params, self._objective(record)))
                    self.sampler_study.tell(trial, told[-1][1])
            else:
                trial, knobs = self._propose(scope)
                values = [self._objective(r) for r in self._bisect_from(self._feasible_index(), knobs)]
                told.append((trial.params, min(values, default=_FAILED)))
                self.sampler_study.tell(trial, told[-1][1])
            if combine and len(told) >= len(seeds):
                combine = False
                combined = scope.combined(told[: len(seeds)])
                if combined is not None:
                    self.sampler_study.enqueue_trial(combined)
            stale = stale + 1 if len(self.trials) == before else 0

    def _propose(self, scope: Scope) -> tuple[optuna.trial.Trial, Knobs]:
        """The sampler's next global knobs, those of ``scope`` (its trial is told the outcome later)."""
        trial = self.sampler_study.ask()
        knobs = Knobs()
        if scope.int8:
            calibrate = str(trial.suggest_categorical("calibrate", tuple(CALIBRATORS)))
            percentile = None
            if calibrate == "percentile":  # a conditional parameter: TPE models it only where it exists
                percentile = float(trial.suggest_categorical("percentile", PERCENTILES))
            bias_correction = str(trial.suggest_categorical("bias_correction", BIAS_CORRECTIONS))
            knobs = dataclasses.replace(
                knobs, calibrate=calibrate, percentile=percentile, bias_correction=bias_correction
            )
        if scope.channels:
            reconstruct = bool(trial.suggest_categorical("reconstruct", (False, True)))
            knobs = dataclasses.replace(knobs, reconstruct=reconstruct)
        if scope.int4:
            knobs = dataclasses.replace(knobs, rounding=str(trial.suggest_categorical("rounding", ROUNDINGS)))
        return trial, knobs

    def front_json(self) -> list[dict[str, Any]]:
        """The predicted front, each point with the trials that built it."""
        built: dict[str, list[int]] = {}
        for record in self.trials:
            built.setdefault(json.dumps(record.get("settings"), sort_keys=True), []).append(record["number"])
        points = []
        for point in self.front:
            entry = point.to_json(self.profile.units)
            entry["trials"] = built.get(json.dumps(entry["settings"], sort_keys=True), [])
            points.append(entry)
        return points


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which global knobs change the candidates: reconstruct (channel cuts), the int8 and 4-bit options."""

    channels: bool
    int8: bool
    int4: bool

    @classmethod
    def of(cls, profile: Profile, points: Sequence[Point]) -> Scope:
        """The knobs that apply to any of ``points``."""
        kinds: set[str] = set()
        for point in points:
            for unit, index in zip(profile.units, point.choice, strict=True):
                if unit.knob != "channels":
                    kinds.add(precision_kind(unit.settings[index].value))
                elif index:  # a channel ratio other than "unchanged"
                    kinds.add("channels")
        return cls("channels" in kinds, "int8" in kinds, "int4" in kinds)

    def defaults(self) -> dict[str, Any]:
        """The pass defaults as Optuna parameters (reconstruct on: a cut usually needs its refit)."""
        found: dict[str, Any] = {}
        if self.int8:
            found |= {"calibrate": "minmax", "bias_correction": "fast"}
        if self.channels:
            found["reconstruct"] = True
        if self.int4:
            found["rounding"] = "auto"
        return found

    def seeds(self) -> list[dict[str, Any]]:
        """The defaults, then each other value of each knob alone (one factor at a time)."""
        base = self.defaults()
        changes: list[dict[str, Any]] = []
        if self.int8:
            changes += [{"calibrate": c} for c in CALIBRATORS if c != "minmax"]
            changes += [{"bias_correction": b} for b in BIAS_CORRECTIONS if b != "fast"]
        if self.int4:
            changes += [{"rounding": r} for r in ROUNDINGS if r != "auto"]
        return [base] + [base | change for change in changes]

    def combined(self, told: Sequence[tuple[Mapping[str, Any], float]]) -> dict[str, Any] | None:
        """The one-factor values that beat the defaults, all together (None when fewer than two did).

        ``told`` holds the seeds' parameters and objective values, the defaults' first.
        """
        (base, value), *others = told
        better: dict[str, tuple[dict[str, Any], float]] = {}
        for params, found in others:
            changed = {k: v for k, v in params.items() if k != "percentile" and base.get(k) != v}
            key = next(iter(changed), None)
            if len(changed) == 1 and found < value and (key not in better or found < better[key][1]):
                if changed.get("calibrate") == "percentile" and "percentile" in params:
                    changed["percentile"] = params["percentile"]  # the percentile TPE drew with it
                better[str(key)] = (changed, found)
        if len(better) < 2:
            return None
        combined = dict(base)
        for changed, _ in better.values():
            combined |= changed
        return combined


def _ok(record: Mapping[str, Any]) -> bool:
    return record.get("error") is None and not record["misses"]
