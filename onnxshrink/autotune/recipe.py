"""A candidate as passes, and passes as a recipe.

The chosen per-unit settings and global knobs become pass specs (``simplify`` -> ``prune-channels``
-> ``reconstruct`` -> ``quantize``), and specs become the TOML recipe that ``onnxshrink run
--recipe`` turns back into the same model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from onnxshrink.autotune.profile import Unit, channel_spec, int4_block, int4_spec, int8_spec, precision_kind
from onnxshrink.spec import PassSpec, make_spec


@dataclasses.dataclass(frozen=True)
class Knobs:
    """Global knobs that have no per-unit curve, searched with Optuna."""

    calibrate: str = "minmax"
    reconstruct: bool = False
    percentile: float | None = None  # with calibrate=percentile; None: the pass's default
    rounding: str = "auto"  # of 4-bit weights: auto (GPTQ with calibration data) or nearest
    bias_correction: str = "fast"  # of int8 layers: fast (the pass's default) or off

    def params(self) -> dict[str, Any]:
        """The knobs as Optuna parameters (``percentile`` only where it applies)."""
        found: dict[str, Any] = {
            "calibrate": self.calibrate,
            "reconstruct": self.reconstruct,
            "rounding": self.rounding,
            "bias_correction": self.bias_correction,
        }
        if self.calibrate == "percentile" and self.percentile is not None:
            found["percentile"] = self.percentile
        return found

    def to_json(self) -> dict[str, Any]:
        """The knobs as the report shows them."""
        return dataclasses.asdict(self)


def candidate_specs(units: Sequence[Unit], choice: Sequence[int], knobs: Knobs) -> list[PassSpec]:
    """The pipeline that builds an allocation: only the passes it needs, each with its per-unit table."""
    ratios = {
        u.name: float(u.settings[i].value) for u, i in zip(units, choice, strict=True) if u.knob == "channels" and i
    }
    precision = {u.name: u.settings[i].value for u, i in zip(units, choice, strict=True) if u.knob == "precision"}
    int4 = tuple(name for name, value in precision.items() if precision_kind(value) == "int4")
    kept_float = tuple(name for name, value in precision.items() if value == "float")
    specs = [make_spec("simplify", {})]
    if ratios:
        specs.append(channel_spec(ratios))
        if knobs.reconstruct:  # refits what channel removal disturbed; nothing to refit otherwise
            specs.append(make_spec("reconstruct", {}))
    blocks = sorted({int4_block(precision[name]) for name in int4})
    for block in blocks:  # weight-only first: the static pass then leaves MatMulNBits alone
        layers = tuple(name for name in int4 if int4_block(precision[name]) == block)
        specs.append(int4_spec(layers, block, knobs.rounding))
    if "int8" in precision.values():
        options: dict[str, Any] = {"exclude": kept_float + int4, "calibrate": knobs.calibrate}
        if knobs.calibrate == "percentile" and knobs.percentile is not None:
            options["percentile"] = knobs.percentile
        if knobs.bias_correction != "fast":
            options["bias-correction"] = knobs.bias_correction
        specs.append(int8_spec(options))
    return specs


def specs_key(specs: Sequence[PassSpec]) -> str:
    """A stable digest of a pipeline: the identity of a trial in the study journal."""
    text = json.dumps([s.to_json() for s in specs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a recipe cannot hold {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"a recipe cannot hold {type(value).__name__}")


def to_toml(specs: Sequence[PassSpec], header: Sequence[str] = ()) -> str:
    """The specs as a TOML recipe of ``[[pass]]`` tables, ``header`` lines as comments on top."""
    lines = [f"# {line}" for line in header]
    for spec in specs:
        lines += ["", "[[pass]]", f"name = {_toml_value(spec.name)}"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in spec.options.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
