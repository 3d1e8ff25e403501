"""The pass contract (``onnxshrink.passbase``) and the checks the pipeline makes of every pass:
option metadata checked once, typed options from the type argument, ``skipped`` and ``timings``
in the pass record, and the opset comparison behind ``modified``."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
import pytest
from helpers import PassRegistrations, assert_close, parse_model

import onnxshrink
from onnxshrink import registry
from onnxshrink.errors import PassFailure, UsageError
from onnxshrink.passbase import (
    NoMatch,
    NoOptions,
    ShrinkPass,
    ShrinkPassResult,
    check_options,
    option,
    option_key,
)
from onnxshrink.passes.prune import MagnitudePruneOptions, MagnitudePrunePass
from onnxshrink.passes.quantize import QuantizeOptions, QuantizePass
from onnxshrink.passes.reconstruct import ReconstructOptions, ReconstructPass

MODEL = parse_model(
    '<ir_version: 8, opset_import: ["" : 11, "local" : 1]>\n'
    "g (float[N, 4] x) => (float[N, 4] y, float[N, 4] z) { a = Relu(x)  y = Neg(a)  z = local.Twice(a) }\n"
    '<domain: "local", opset_import: ["" : 11]>\n'
    "Twice (t) => (u) { u = Add(t, t) }"
)


def _even(value: int) -> str | None:
    return None if value % 2 == 0 else f"must be even, got {value}"


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    """Every kind of option metadata, and a cross-field rule."""

    mode: Literal["fast", "slow"] = option("fast", "how", choices=("fast", "slow"))
    level: int = option(2, "an even level in [0, 10]", minimum=0, maximum=10, check=_even)
    ratio: float = option(0.5, "in (0, 1)", above=0.0, below=1.0)
    key_name: str = option("k1", "a key", pattern=r"k\d+")
    tags: tuple[str, ...] = option((), "each one of a, b", choices=("a", "b"))
    limit: float | None = option(None, "optional, >= 1", minimum=1.0)
    for_: str = option("x", "a field named after a Python keyword")

    def problem(self) -> str | None:
        if self.mode == "slow" and self.level > 4:
            return f"mode=slow needs level <= 4, got {self.level}"
        return None


class ToyPass(ShrinkPass[ToyOptions]):
    """Reports what it would do, changes nothing (a test pass).

    1. Names every Relu in ``skipped`` and times its one phase.
    """

    name = "test-contract-toy"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        skipped = {node.name or "Relu": "a test pass changes nothing" for node in model.graph if node.op_type == "Relu"}
        stats = {"level": self.options.level, "mode": self.options.mode}
        return ShrinkPassResult(model, modified=False, stats=stats, skipped=skipped, timings={"look": 0.25})


@dataclasses.dataclass(frozen=True)
class RaiseOptions:
    """Where to raise the opset and what to report."""

    scope: Literal["model", "function"] = option("model", "model or function", choices=("model", "function"))
    report_modified: bool = option(False, "the modified flag to report")


class RaiseOpsetPass(ShrinkPass[RaiseOptions]):
    """Raises the default-domain opset from 11 to 13 and reports ``report-modified`` (a test pass).

    1. Sets the opset import of the model (or of its function) to 13; nodes stay as they are.
    """

    name = "test-contract-raise-opset"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        if self.options.scope == "model":
            model.opset_imports[""] = 13
        else:
            next(iter(model.functions.values())).opset_imports[""] = 13
        return ShrinkPassResult(model, modified=self.options.report_modified)


class UntypedPass(ShrinkPass):  # type: ignore[type-arg]
    """Takes no options (a test pass).

    1. Does nothing.
    """

    name = "test-contract-untyped"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        return ShrinkPassResult(model, modified=False)


@pytest.fixture(autouse=True)
def _contract_passes(registrations: PassRegistrations) -> None:
    """Registers the test passes for one test; the fixture unregisters them after it."""
    for cls in (ToyPass, RaiseOpsetPass, UntypedPass):
        registrations.add_pass(cls)


def test_options_come_from_the_type_argument_and_are_typed() -> None:
    assert ToyPass.Options is ToyOptions and RaiseOpsetPass.Options is RaiseOptions
    assert UntypedPass.Options is NoOptions and isinstance(UntypedPass().options, NoOptions)
    pass_ = ToyPass()
    assert pass_.options == ToyOptions() and pass_.options.level == 2
    for cls, options in ((QuantizePass, QuantizeOptions), (MagnitudePrunePass, MagnitudePruneOptions)):
        assert cls.Options is options and isinstance(cls().options, options)
    assert ReconstructPass.Options is ReconstructOptions


def test_registry_describes_options_from_their_metadata() -> None:
    infos = {info.key: info for info in registry.options_of(ToyPass)}
    assert list(infos) == ["mode", "level", "ratio", "key-name", "tags", "limit", "for"]
    assert infos["mode"].choices == ("fast", "slow") and infos["mode"].help == "how"
    assert infos["tags"].type_name == "list of a|b" and infos["limit"].default is None
    quantize = {info.key: info for info in registry.options_of(QuantizePass)}
    assert quantize["calibrate"].choices == ("minmax", "percentile", "entropy", "mse", "auto")
    assert "docs/quantization.md" in quantize["target"].help


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "medium"}, "option mode: 'medium' is not one of fast, slow"),
        ({"level": -2}, "option level: must be >= 0, got -2"),
        ({"level": 12}, "option level: must be <= 10, got 12"),
        ({"level": 3}, "option level: must be even, got 3"),
        ({"ratio": 0.0}, "option ratio: must be > 0.0, got 0.0"),
        ({"ratio": 1.0}, "option ratio: must be < 1.0, got 1.0"),
        ({"ratio": float("nan")}, "option ratio: NaN is not a number it can use"),
        ({"key_name": "key1"}, r"option key-name: 'key1' does not have the form k\d+"),
        ({"tags": ("a", "c")}, "option tags: 'c' is not one of a, b"),
        ({"limit": 0.5}, "option limit: must be >= 1.0, got 0.5"),
        ({"mode": "slow", "level": 6}, "mode=slow needs level <= 4, got 6"),
    ],
)
def test_bad_options_are_one_line_usage_errors_naming_pass_and_option(options: dict[str, Any], message: str) -> None:
    built = ToyOptions(**options)
    with pytest.raises(UsageError) as raised:
        ToyPass(built)
    assert str(raised.value) == f"test-contract-toy: {message}"
    with pytest.raises(UsageError, match=rf"^test-contract-toy: {re.escape(message)}$"):
        check_options("test-contract-toy", built)


def test_good_options_pass_and_none_skips_the_bounds() -> None:
    check_options("test-contract-toy", ToyOptions(mode="slow", level=4, ratio=0.99, key_name="k12", tags=("b", "a")))
    check_options("test-contract-toy", ToyOptions(limit=None))
    assert option_key("for_") == "for" and option_key("key_name") == "key-name"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("test-contract-toy:level=11", "test-contract-toy: option level: must be <= 10, got 11"),
        ("test-contract-toy:key-name=x", r"test-contract-toy: option key-name: 'x' does not have the form k\d+"),
        ("quantize:block-size=24", "quantize: option block-size: must be a power of 2 >= 16, got 24"),
        ("quantize:percentile=50", "quantize: option percentile: must be > 50.0, got 50.0"),
        ("quantize:mode=dynamic,min-speedup=1.2", "quantize: min-speedup needs mode=static, got mode=dynamic"),
        ("prune:sparsity=1", "prune: option sparsity: must be < 1.0, got 1.0"),
        ("prune:pattern=4:2", "prune: option pattern: 4:2 needs 0 < N < M (keep N of every M weights)"),
        ("prune:pattern=2-4", r"prune: option pattern: '2-4' does not have the form unstructured|\d+:\d+"),
        ("prune:allocation=sensitivity,scope=global", "prune: allocation=sensitivity chooses per-layer"),
        ("reconstruct:samples=0", "reconstruct: option samples: must be >= 1, got 0"),
    ],
)
def test_specs_are_checked_by_the_same_metadata(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        onnxshrink.shrink(MODEL, [spec], verify=False)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(message), text


def test_the_pipeline_puts_skipped_into_stats_and_timings_into_the_record() -> None:
    result = onnxshrink.shrink(MODEL, ["test-contract-toy:level=4,mode=slow"], verify=False)
    (record,) = result.report["passes"]
    assert record["stats"] == {"level": 4, "mode": "slow", "skipped": {"Relu": "a test pass changes nothing"}}
    assert record["timings"] == {"look": 0.25} and record["seconds"] >= 0 and record["modified"] is False
    (record,) = onnxshrink.shrink(MODEL, ["test-contract-untyped"], verify=False).report["passes"]
    assert record["stats"] == {} and record["timings"] == {}  # nothing skipped: no "skipped" key


@pytest.mark.parametrize("scope", ["model", "function"])
def test_a_pass_that_raises_an_opset_and_reports_modified_false_fails(scope: str) -> None:
    with pytest.raises(
        PassFailure, match="pass 'test-contract-raise-opset' changed the model but reported modified=False"
    ):
        onnxshrink.shrink(MODEL, [f"test-contract-raise-opset:scope={scope}"], verify=False)
    result = onnxshrink.shrink(MODEL, [f"test-contract-raise-opset:scope={scope},report-modified=true"], verify=False)
    assert result.report["passes"][0]["modified"] is True
    out = result.to_proto()
    opsets = out.opset_import if scope == "model" else out.functions[0].opset_import
    assert {o.domain: o.version for o in opsets}[""] == 13
    feed = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) - 4}
    assert_close(MODEL, out, feed)


def test_no_match_carries_its_reason() -> None:
    why = NoMatch("weight is not a constant")
    assert str(why) == why.reason == "weight is not a constant" and why.missing_facts is False
    assert NoMatch("shape unknown", missing_facts=True).missing_facts is True
