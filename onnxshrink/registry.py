"""The single source of pass names, options, defaults and help.

Passes register with :func:`register_pass`; presets (named pipelines usable wherever a pass
name is) with :func:`register_preset`. The CLI's ``passes`` command, option parsing and the
docs are all derived from what is registered here.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from onnxshrink.errors import UsageError
from onnxshrink.passbase import ShrinkPass, option_key

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

PassT = TypeVar("PassT", bound=type[ShrinkPass[Any]])


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option of a pass, as users see it."""

    key: str  # kebab-case, as typed on the command line
    field: str  # the dataclass field name
    type: Any
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    @property
    def type_name(self) -> str:
        """How help texts name the option's type: ``int``, ``a|b|c`` or ``list of a|b``."""
        if self.choices is not None:
            listed = "|".join(map(str, self.choices))
            return f"list of {listed}" if typing.get_origin(self.type) in (tuple, list) else listed
        return describe_type(self.type)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named pipeline: ``steps`` run in order, repeated to a fixed point if ``fixed_point``."""

    name: str
    steps: tuple[str, ...]
    fixed_point: bool
    max_steps: int
    doc: str


_PASSES: dict[str, type[ShrinkPass[Any]]] = {}
_PRESETS: dict[str, Preset] = {}
_LOADED = False


def register_pass(cls: PassT) -> PassT:
    """Class decorator that adds a pass to the registry after checking its declaration."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _KEBAB.match(name):
        raise TypeError(f"{cls.__name__}.name must be a kebab-case string, got {name!r}")
    if not isinstance(getattr(cls, "exact", None), bool):
        raise TypeError(f"{cls.__name__}.exact must be a bool")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    if not (cls.__doc__ or "").strip():
        raise TypeError(f"{cls.__name__} needs a docstring: it is the pass's help")
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"pass name '{name}' is registered twice")
    if name in _PRESETS:
        raise ValueError(f"pass name '{name}' is already a preset")
    _PASSES[name] = cls
    return cls


def register_preset(
    name: str, steps: tuple[str, ...], *, doc: str, fixed_point: bool = True, max_steps: int = 8
) -> Preset:
    """Registers a named pipeline of already-registered passes."""
    _ensure_loaded()
    if not _KEBAB.match(name) or name in _PASSES:
        raise ValueError(f"bad or taken preset name {name!r}")
    for step in steps:
        if step not in _PASSES:
            raise ValueError(f"preset '{name}' names unknown pass '{step}'")
    preset = Preset(name, tuple(steps), fixed_point, max_steps, doc)
    _PRESETS[name] = preset
    return preset


def unregister(name: str) -> None:
    """Removes a registered pass or preset, so that its name is free again.

    Meant for tests that register a pass or preset of their own and must leave the registry as
    they found it. A pass that a registered preset still names cannot be removed: the preset
    would point at nothing; unregister the preset first.

    Args:
        name: The pass or preset name, as registered.

    Raises:
        KeyError: No pass or preset has that name.
        ValueError: ``name`` is a pass that a registered preset still uses.
    """
    _ensure_loaded()
    if name in _PRESETS:
        del _PRESETS[name]
        return
    if name not in _PASSES:
        registered = ", ".join(known_names())
        raise KeyError(f"cannot unregister '{name}': no pass or preset has that name; registered: {registered}")
    users = sorted(preset.name for preset in _PRESETS.values() if name in preset.steps)
    if users:
        raise ValueError(f"cannot unregister pass '{name}': preset(s) {', '.join(users)} still use it")
    del _PASSES[name]


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        # Importing the package registers every pass module it holds.
        importlib.import_module("onnxshrink.passes")
        _LOADED = True


def passes() -> Mapping[str, type[ShrinkPass[Any]]]:
    """All registered passes by name."""
    _ensure_loaded()
    return dict(sorted(_PASSES.items()))


def presets() -> Mapping[str, Preset]:
    """All registered presets by name."""
    _ensure_loaded()
    return dict(sorted(_PRESETS.items()))


def known_names() -> list[str]:
    """Returns every registered pass and preset name, sorted."""
    return sorted([*passes(), *presets()])


def did_you_mean(word: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'prune'?)`` for the closest valid word, or an empty string when none is close."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def get_pass(name: str) -> type[ShrinkPass[Any]]:
    """Looks a pass up by name; an unknown name is a usage error listing the valid ones."""
    registered = passes()
    if name not in registered:
        raise UsageError(
            f"unknown pass '{name}'{did_you_mean(name, known_names())}; "
            f"valid passes and presets: {', '.join(known_names())}"
        )
    return registered[name]


def summary(cls: type[ShrinkPass[Any]]) -> str:
    """The first line of a pass's docstring."""
    return inspect.cleandoc(cls.__doc__ or "").splitlines()[0]


def options_of(cls: type[ShrinkPass[Any]]) -> list[OptionInfo]:
    """The options of a pass, in declaration order, with their types, defaults and help."""
    hints = typing.get_type_hints(cls.Options)
    infos = []
    for f in dataclasses.fields(cls.Options):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        infos.append(
            OptionInfo(
                key=option_key(f.name),
                field=f.name,
                type=hints[f.name],
                default=default,
                help=str(f.metadata.get("help", "")),
                choices=f.metadata.get("choices"),
            )
        )
    return infos


def describe_type(tp: Any) -> str:
    """A short, user-facing description of an option type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or none" if type(None) in args else "")
    if origin in (tuple, list):
        return f"list of {describe_type(args[0])}"
    return getattr(tp, "__name__", str(tp))
