"""Pass specs: ``NAME[:KEY=VALUE[,KEY=VALUE]...]``, from the CLI, the Python API or a recipe.

Values are typed by the pass's options dataclass. A list-typed option takes several values:
``include=Conv,Gemm`` (a token without ``=`` continues the previous list option). A mapping-typed
option takes ``NAME:VALUE`` items the same way (``ratios=/conv1/Conv:0.5,/fc1/Gemm:0.25``; the
last ``:`` splits, so names may hold colons); in a TOML recipe it is a table.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxshrink import registry
from onnxshrink.errors import UsageError
from onnxshrink.passbase import check_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """A pass (or preset) name with its options, already typed and validated."""

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        parts = []
        for key, value in self.options.items():
            if isinstance(value, Mapping):
                text = ",".join(f"{name}:{item}" for name, item in value.items())
            elif isinstance(value, (list, tuple)):
                text = ",".join(map(str, value))
            else:
                text = str(value)
            parts.append(f"{key}={text}")
        return f"{self.name}:{','.join(parts)}"

    @property
    def is_preset(self) -> bool:
        """Whether the name is a registered preset rather than a pass."""
        return self.name in registry.presets()

    def to_json(self) -> dict[str, Any]:
        """Returns the spec as plain JSON data: its name and options (tuples as lists)."""
        return {"name": self.name, "options": {k: _jsonable(v) for k, v in self.options.items()}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def parse_spec(text: str) -> PassSpec:
    """Parses ``NAME[:KEY=VALUE,...]`` into a validated :class:`PassSpec`."""
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    raw: dict[str, Any] = {}
    last_key: str | None = None
    if rest.strip():
        for token in rest.split(","):
            key, eq, value = token.partition("=")
            if eq:
                last_key = key.strip()
                if last_key in raw:
                    raise UsageError(f"option '{last_key}' is given twice in pass spec '{text}'")
                raw[last_key] = [value.strip()]
            elif last_key is not None:
                raw[last_key].append(token.strip())
            else:
                raise UsageError(f"bad pass spec '{text}': expected NAME:KEY=VALUE[,KEY=VALUE]...")
    values = {k: (v if len(v) > 1 else v[0]) for k, v in raw.items()}
    return make_spec(name, values, source=text)


def make_spec(name: str, values: Mapping[str, Any], *, source: str | None = None) -> PassSpec:
    """Validates a name and raw option values (strings, or TOML/Python values) into a spec."""
    where = f"pass spec '{source}'" if source else f"pass '{name}'"
    if name in registry.presets():
        if values:
            raise UsageError(f"preset '{name}' takes no options ({where})")
        return PassSpec(name, {})
    cls = registry.get_pass(name)
    infos = {info.key: info for info in registry.options_of(cls)}
    typed: dict[str, Any] = {}
    for key, value in values.items():
        norm = key.replace("_", "-")
        if norm not in infos:
            valid = ", ".join(infos) or "none"
            hint = registry.did_you_mean(norm, list(infos))
            raise UsageError(f"unknown option '{key}' for pass '{name}' in {where}{hint}; valid options: {valid}")
        info = infos[norm]
        typed[norm] = coerce(value, info.type, f"option '{norm}' of pass '{name}'")
    spec = PassSpec(name, typed)
    build_options(spec)  # bad values fail here, before any model is read
    return spec


def build_options(spec: PassSpec) -> Any:
    """The pass's options dataclass instance for a spec, checked against the options' metadata."""
    cls = registry.get_pass(spec.name)
    fields = {info.field: spec.options[info.key] for info in registry.options_of(cls) if info.key in spec.options}
    options = cls.Options(**fields)
    check_options(spec.name, options)
    return options


def coerce(value: Any, tp: Any, what: str) -> Any:
    """Converts a raw option value to ``tp``; a bad value is a usage error saying what is valid."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == str(value):
                return choice
        raise UsageError(f"bad value '{value}' for {what}; valid: {', '.join(map(str, args))}")
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and str(value).lower() == "none":
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, what)
            except UsageError as error:
                errors.append(str(error))
        raise UsageError(errors[0] if errors else f"bad value '{value}' for {what}")
    if origin in (tuple, list):
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce(item, args[0], what) for item in items)
    if origin in (dict, Mapping, collections.abc.Mapping):
        return _coerce_mapping(value, args[1], what)
    if isinstance(value, (list, tuple)):
        raise UsageError(f"{what} takes one value, got {len(value)}: {','.join(map(str, value))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise UsageError(f"bad value '{value}' for {what}; valid: true, false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise UsageError(f"bad value '{value}' for {what}; expected a number")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise UsageError(f"bad value '{value}' for {what}; expected {tp.__name__}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise UsageError(f"bad value '{value}' for {what}; expected int")
        return number
    if tp is str:
        return str(value)
    raise TypeError(f"unsupported option type {tp!r} for {what}")


def _coerce_mapping(value: Any, tp: Any, what: str) -> dict[str, Any]:
    """A table (TOML, Python) or ``NAME:VALUE`` items (CLI) as a dict of typed values."""
    if isinstance(value, Mapping):
        pairs = [(str(name), item) for name, item in value.items()]
    else:
        pairs = []
        for token in value if isinstance(value, (list, tuple)) else [value]:
            text = str(token).strip()
            if not text:
                continue  # ``ratios=`` names an empty table
            name, colon, item = text.rpartition(":")
            if not colon or not name:
                raise UsageError(f"bad item '{text}' for {what}; expected NAME:VALUE")
            pairs.append((name, item))
    table: dict[str, Any] = {}
    for name, item in pairs:
        if name in table:
            raise UsageError(f"'{name}' is given twice in {what}")
        table[name] = coerce(item, tp, f"{what} ('{name}')")
    return table


def parse_specs(texts: Sequence[str | PassSpec]) -> list[PassSpec]:
    """Parses a list of spec strings (or passes specs through unchanged)."""
    return [t if isinstance(t, PassSpec) else parse_spec(t) for t in texts]


def load_recipe(path: str | Path) -> list[PassSpec]:
    """Reads a TOML recipe: ``[[pass]]`` tables with ``name`` and the pass's options."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"recipe file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"recipe {path} is not valid TOML: {error}") from None
    tables = data.get("pass")
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"recipe {path} has no [[pass]] tables")
    specs = []
    for index, table in enumerate(tables, start=1):
        table = dict(table)
        name = table.pop("name", None)
        if not isinstance(name, str):
            raise UsageError(f"recipe {path}: [[pass]] number {index} has no name")
        specs.append(make_spec(name, table, source=f"{path} [[pass]] {index}"))
    return specs
