"""The study folder's trial journal.

An Optuna JournalStorage (a file journal) holds every finished trial, so ``--resume`` after a crash
or ``kill -9`` reuses them instead of running them again. A trial is identified by the digest of its
pipeline; one study per goal lives in a journal.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from onnxshrink.passes.quantize.statistics import CALIBRATORS

logger = logging.getLogger(__name__)

MAX_POINTS = 64
PERCENTILES = (99.9, 99.99, 99.999)
ROUNDINGS = ("auto", "nearest")  # of 4-bit weights
BIAS_CORRECTIONS = ("fast", "off")  # of int8 layers


def distributions() -> dict[str, BaseDistribution]:
    """The parameters every trial records (and the global-knob search samples)."""
    return {
        "point": IntDistribution(0, MAX_POINTS - 1),
        "calibrate": CategoricalDistribution(tuple(CALIBRATORS)),
        "reconstruct": CategoricalDistribution((False, True)),
        "percentile": CategoricalDistribution(PERCENTILES),
        "rounding": CategoricalDistribution(ROUNDINGS),
        "bias_correction": CategoricalDistribution(BIAS_CORRECTIONS),
    }


class TrialJournal:
    """The finished trials of one study, read from and appended to the journal file."""

    def __init__(self, folder: Path, name: str, *, resume: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
        if not resume and name in {s.study_name for s in optuna.get_all_study_summaries(self.storage)}:
            optuna.delete_study(study_name=name, storage=self.storage)
        self.study = optuna.create_study(
            study_name=name, storage=self.storage, load_if_exists=True, directions=["minimize", "minimize"]
        )
        self._finished: dict[str, dict[str, Any]] = {}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            record = trial.user_attrs.get("record")
            if isinstance(record, dict) and "key" in record:
                self._finished.setdefault(record["key"], record)
        if self._finished:
            logger.info("resuming study '%s': %d finished trials in the journal", name, len(self._finished))

    def finished(self, key: str) -> dict[str, Any] | None:
        """The record of a finished trial with this pipeline digest, if the journal has one."""
        return self._finished.get(key)

    def record(self, record: dict[str, Any], params: dict[str, Any]) -> None:
        """Appends a finished (or failed) trial."""
        failed = record.get("error") is not None
        values = None if failed else [float(record["size"]), float(record["loss"])]
        self.study.add_trial(
            create_trial(
                state=TrialState.FAIL if failed else TrialState.COMPLETE,
                values=values,
                params=params,
                distributions={k: v for k, v in distributions().items() if k in params},
                user_attrs={"record": record},
            )
        )
        self._finished.setdefault(record["key"], record)
