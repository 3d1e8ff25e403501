"""The one way to write an onnxshrink pass.

A pass is an onnx-ir :class:`~onnx_ir.passes.InPlacePass`, so it also runs inside anyone's
onnx-ir ``PassManager``. On top of that it declares:

* ``name``: kebab-case, the name users type after ``-p``;
* ``exact``: True when it keeps the function up to float rounding, False when lossy;
* ``Options``: a dataclass whose fields (with ``metadata={"help": ...}``) are its options;
* a docstring whose first line is its summary and which numbers its rewrite rules.

``call`` returns a :class:`ShrinkPassResult`: the exact ``modified`` flag plus a stats dict
that goes into the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import onnx_ir as ir

from onnxshrink.context import PassContext


@dataclasses.dataclass
class ShrinkPassResult(ir.passes.PassResult):
    """An onnx-ir pass result that also carries the pass's statistics for the report."""

    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


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


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


class ShrinkPass(ir.passes.InPlacePass):
    """Base class of every onnxshrink pass; see the module docstring for the contract."""

    name: ClassVar[str]
    exact: ClassVar[bool]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None, context: PassContext | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()
        self.context = context if context is not None else PassContext()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    def call(self, model: ir.Model) -> ShrinkPassResult:  # pragma: no cover - abstract
        raise NotImplementedError
