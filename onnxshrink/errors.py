"""Errors that map to the CLI's exit codes.

Every error carries one line that speaks to the user: what was wrong, where, and what to do.
"""

from __future__ import annotations


class ShrinkError(Exception):
    """Base class of onnxshrink's own errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class VerificationError(ShrinkError):
    """The candidate model's numerics are outside the tolerance or budget (exit 1)."""

    exit_code = 1


class UsageError(ShrinkError):
    """A bad pass spec, option, value or file argument (exit 2)."""

    exit_code = 2


class InvalidModelError(ShrinkError):
    """The input model is malformed or unsafe to load (exit 3)."""

    exit_code = 3


class PassFailure(ShrinkError):
    """A pass broke an invariant of the graph; the message names the pass and those before it."""

    exit_code = 1
