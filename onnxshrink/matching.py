"""The one "no match" answer of every match step (passes, rules, selections).

It lives below every other module so that core helpers (``selection``) and passes answer alike;
:mod:`onnxshrink.passbase` re-exports it for pass authors.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NoMatch:
    """Why a pattern, rule or layer does not apply: the one "no match" answer of every pass.

    A pure match step returns either what to do or a ``NoMatch``; the rewrite step only ever sees
    the former. ``missing_facts`` is True when the answer could change once a dtype or shape that
    is unknown now becomes known (shape inference may tell), False when the graph rules it out.
    """

    reason: str
    missing_facts: bool = False

    def __str__(self) -> str:
        return self.reason
