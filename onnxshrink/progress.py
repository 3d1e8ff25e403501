"""Progress of long steps, reported to whoever is watching; library code never prints it.

Passes announce a long step with :func:`task` and call ``advance()`` as work finishes::

    with progress.task("sensitivity: layer x sparsity", total=n) as step:
        for ...:
            ...
            step.advance()

By default nothing is shown. The command line installs a terminal display when stderr is a TTY
(:func:`use`); tests install a recording :class:`Reporter`. The reporter is process-wide, like a
logging handler, rather than a field of ``PassContext``: progress is wanted deep inside helpers
(budget fitting, calibration streams) that are not handed the context, and it changes no result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Step(Protocol):
    """One running task: advanced as its units of work finish."""

    def advance(self, count: int = 1) -> None:
        """Marks ``count`` more units of the task done."""


class Reporter(Protocol):
    """Receives tasks as they start and finish (a terminal display, a test's recorder)."""

    def start(self, label: str, total: int | None) -> Step:
        """A task named ``label`` starts; ``total`` units of work, or None when unknown."""

    def finish(self, step: Step) -> None:
        """The task of ``step`` ended (done or failed)."""


class _Silent:
    """The default: no display."""

    def advance(self, count: int = 1) -> None:
        pass

    def start(self, label: str, total: int | None) -> Step:
        return self

    def finish(self, step: Step) -> None:
        pass


_SILENT = _Silent()
SILENT: Reporter = _SILENT
"""The reporter that shows nothing: ``use(SILENT)`` keeps a block quiet (e.g. under ``--json``)."""
_reporter: Reporter = _SILENT


@contextmanager
def task(label: str, total: int | None = None) -> Iterator[Step]:
    """A long step: ``label`` says what it does, ``total`` how many units (None: unknown)."""
    step = _reporter.start(label, total)
    try:
        yield step
    finally:
        _reporter.finish(step)


@contextmanager
def use(reporter: Reporter) -> Iterator[Reporter]:
    """Installs ``reporter`` for the duration of the block, restoring the previous one after."""
    global _reporter
    previous, _reporter = _reporter, reporter
    try:
        yield reporter
    finally:
        _reporter = previous


def install(reporter: Reporter | None) -> None:
    """Installs ``reporter`` for the rest of the process (None: silent again); for the command line."""
    global _reporter
    _reporter = reporter if reporter is not None else _SILENT
