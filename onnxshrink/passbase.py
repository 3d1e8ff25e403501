"""The one way to write an onnxshrink pass.

A pass is an onnx-ir :class:`~onnx_ir.passes.InPlacePass`, so it also runs inside anyone's
onnx-ir ``PassManager``. On top of that it declares:

* ``name``: kebab-case, the name users type after ``-p``;
* ``exact``: True when it keeps the function up to float rounding, False when lossy;
* its options: a frozen dataclass named as the type argument, ``class FoldPass(ShrinkPass[FoldOptions])``,
  whose fields are declared with :func:`option` (help, allowed values, bounds); they are checked
  once, by :func:`check_options`, whoever builds them (CLI, recipe or Python);
* a docstring whose first line is its summary and which numbers its rewrite rules.

``call`` returns a :class:`ShrinkPassResult`: the exact ``modified`` flag, the stats that go into
the report, ``skipped`` (what the pass left alone, each with the reason) and ``timings`` (seconds
of its phases; kept out of the stats so that stats are the same on every run). A pure match step
answers "no" with a :class:`NoMatch` carrying the reason.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import onnx_ir as ir

from onnxshrink.context import PassContext
from onnxshrink.errors import UsageError
from onnxshrink.matching import NoMatch

__all__ = ["NoMatch", "NoOptions", "ShrinkPass", "ShrinkPassResult", "check_options", "option", "option_key"]

OptionsT = TypeVar("OptionsT")


@dataclasses.dataclass
class ShrinkPassResult(ir.passes.PassResult):
    """An onnx-ir pass result that also carries what the pass reports.

    Attributes:
        stats: What the pass did, for the report (counts, per-layer facts). Deterministic: no
            timings, so the same input gives the same stats.
        skipped: What the pass left alone (a node, layer or group name) and why.
        timings: Seconds spent in the pass's phases (calibration, search...); the pipeline
            reports them beside the pass's total time.
    """

    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    above: float | None = None,
    pattern: str | None = None,
    check: Callable[[Any], str | None] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A pass option: a dataclass field whose metadata says what users may give.

    Args:
        default: The default value.
        help: One line shown by ``onnxshrink passes NAME``.
        choices: The allowed values (for a list option: allowed items).
        minimum: Smallest allowed number (inclusive).
        maximum: Largest allowed number (inclusive).
        below: Numbers must be smaller than this.
        above: Numbers must be larger than this.
        pattern: A regular expression the whole string must match (``fullmatch``).
        check: A last check for rules the others cannot say; returns what is wrong, or None.
        default_factory: For mutable defaults.
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "maximum": maximum,
        "below": below,
        "above": above,
        "pattern": pattern,
        "check": check,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_key(field_name: str) -> str:
    """The kebab-case key users type for a field (``for_``, a Python keyword, is typed ``for``)."""
    return field_name.rstrip("_").replace("_", "-")


def _field_problem(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    items = value if isinstance(value, (tuple, list)) else (value,)
    choices = meta.get("choices")
    for item in items:
        if choices is not None and item not in choices:
            return f"{item!r} is not one of {', '.join(map(str, choices))}"
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if math.isnan(item):
                return "NaN is not a number it can use"
            for key, ok, words in (
                ("minimum", lambda x, b: x >= b, ">="),
                ("maximum", lambda x, b: x <= b, "<="),
                ("below", lambda x, b: x < b, "<"),
                ("above", lambda x, b: x > b, ">"),
            ):
                bound = meta.get(key)
                if bound is not None and not ok(item, bound):
                    return f"must be {words} {bound}, got {item!r}"
        pattern = meta.get("pattern")
        if pattern is not None and isinstance(item, str) and not re.fullmatch(pattern, item):
            return f"{item!r} does not have the form {pattern}"
    check = meta.get("check")
    return check(value) if check is not None else None


def check_options(pass_name: str, options: Any) -> None:
    """Checks every field of an options dataclass against its :func:`option` metadata.

    Cross-field rules live in the dataclass's own ``problem()`` method (returning what is wrong,
    or None), called after the fields pass.

    Raises:
        UsageError: One line naming the pass, the option and what is valid.
    """
    for field in dataclasses.fields(options):
        problem = _field_problem(getattr(options, field.name), field.metadata)
        if problem is not None:
            raise UsageError(f"{pass_name}: option {option_key(field.name)}: {problem}")
    cross_check = getattr(options, "problem", None)
    if callable(cross_check) and (problem := cross_check()) is not None:
        raise UsageError(f"{pass_name}: {problem}")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


class ShrinkPass(ir.passes.InPlacePass, Generic[OptionsT]):
    """Base class of every onnxshrink pass; see the module docstring for the contract.

    Subclass as ``class FoldPass(ShrinkPass[FoldOptions])``: ``Options`` is then ``FoldOptions``
    and ``self.options`` is typed as one.

    Options may also be given as keywords, ``PrunePass(sparsity=0.5)``, alone or on top of
    ``options``; they are checked the same way.

    Args:
        options: The pass options, checked here; None for the defaults.
        context: Data and settings the pipeline offers (calibration, provider, shapes); None for
            an empty context.
        **values: Option fields by their Python names (``min_size=...``), replacing those of ``options``.

    Raises:
        UsageError: An unknown option, or one out of its declared range or choices.
    """

    name: ClassVar[str]
    exact: ClassVar[bool]
    Options: ClassVar[type[Any]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is ShrinkPass:
                (argument,) = typing.get_args(base)
                if isinstance(argument, type):
                    cls.Options = argument

    def __init__(self, options: OptionsT | None = None, context: PassContext | None = None, **values: Any) -> None:
        super().__init__()
        chosen: Any = options if options is not None else self.Options()
        if values:
            fields = [field.name for field in dataclasses.fields(chosen)]
            unknown = sorted(set(values) - set(fields))
            if unknown:
                raise UsageError(
                    f"{self.name}: unknown option(s) {unknown}; valid options: {', '.join(fields) or 'none'}"
                )
            chosen = dataclasses.replace(chosen, **values)
        self.options: OptionsT = chosen
        check_options(self.name, self.options)
        self.context = context if context is not None else PassContext()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    def call(self, model: ir.Model) -> ShrinkPassResult:  # pragma: no cover - abstract
        """Rewrites ``model`` in place and says exactly whether anything changed.

        Raises:
            UsageError: The model or the data does not suit the pass (named in the message).
        """
        raise NotImplementedError
