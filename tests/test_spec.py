"""Pass specs, option typing, recipes and the registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import onnx_ir as ir
import pytest
from helpers import PassRegistrations

from onnxshrink import registry
from onnxshrink.errors import UsageError
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.spec import PassSpec, load_recipe, parse_spec


@dataclasses.dataclass(frozen=True)
class _ToyOptions:
    ratio: float = dataclasses.field(default=0.5, metadata={"help": "a fraction"})
    pattern: Literal["unstructured", "2:4"] = "unstructured"
    include: tuple[str, ...] = ()
    steps: int = 1
    limit: int | None = None
    on: bool = True


class _ToyPass(ShrinkPass):
    """A pass that only exists in this test module.

    1. Changes nothing.
    """

    name = "toy-spec"
    exact = True
    Options = _ToyOptions

    def call(self, model: ir.Model) -> ShrinkPassResult:
        return ShrinkPassResult(model, modified=False)


@pytest.fixture(scope="module", autouse=True)
def toy_pass(module_registrations: PassRegistrations) -> type[ShrinkPass]:
    return module_registrations.add_pass(_ToyPass)


def test_parses_typed_values() -> None:
    spec = parse_spec("toy-spec:ratio=0.3,pattern=2:4,include=Conv,Gemm,steps=4,limit=none,on=off")
    assert spec == PassSpec(
        "toy-spec",
        {
            "ratio": 0.3,
            "pattern": "2:4",
            "include": ("Conv", "Gemm"),
            "steps": 4,
            "limit": None,
            "on": False,
        },
    )
    assert str(spec) == "toy-spec:ratio=0.3,pattern=2:4,include=Conv,Gemm,steps=4,limit=None,on=False"


def test_snake_case_keys_are_accepted() -> None:
    assert parse_spec("cleanup:cse_max_constant=8").options == {"cse-max-constant": 8}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nope", "unknown pass 'nope'; valid passes and presets: cleanup"),
        ("toy-spec:bogus=1", "unknown option 'bogus' for pass 'toy-spec'"),
        ("toy-spec:ratio=abc", "expected float"),
        ("toy-spec:steps=1.5", "expected int"),
        ("toy-spec:pattern=3:9", "valid: unstructured, 2:4"),
        ("toy-spec:on=maybe", "valid: true, false"),
        ("toy-spec:ratio=0.1,ratio=0.2", "given twice"),
        ("toy-spec:ratio", "expected NAME:KEY=VALUE"),
        ("toy-spec:steps=1,2", "takes one value"),
    ],
)
def test_bad_specs_are_usage_errors(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(text)


def test_registry_describes_options() -> None:
    cls = registry.get_pass("toy-spec")
    infos = {i.key: i for i in registry.options_of(cls)}
    assert infos["ratio"].default == 0.5 and infos["ratio"].help == "a fraction"
    assert infos["pattern"].type_name == "unstructured|2:4"
    assert infos["include"].type_name == "list of str"
    assert registry.summary(cls) == "A pass that only exists in this test module."


def test_registration_is_checked() -> None:
    class Nameless(ShrinkPass):
        """Doc."""

        name = "Not Kebab"
        exact = True

    with pytest.raises(TypeError, match="kebab-case"):
        registry.register_pass(Nameless)


def test_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "cleanup"\ncse = false\n\n[[pass]]\nname = "toy-spec"\ninclude = ["Conv"]\n')
    assert load_recipe(recipe) == [
        PassSpec("cleanup", {"cse": False}),
        PassSpec("toy-spec", {"include": ("Conv",)}),
    ]
    recipe.write_text('[[pass]]\nname = "cleanup"\ncse = 3.5\n')
    with pytest.raises(UsageError, match="option 'cse' of pass 'cleanup'"):
        load_recipe(recipe)
    recipe.write_text("[[pass]\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_recipe(recipe)


def test_unregister_frees_the_name_and_refuses_unknown_or_used_names(registrations: PassRegistrations) -> None:
    class Scratch(_ToyPass):
        """A second toy pass, registered and removed inside this test.

        1. Changes nothing.
        """

        name = "toy-scratch"

    registry.register_pass(Scratch)
    registry.register_preset("toy-twice", ("toy-scratch", "toy-scratch"), doc="toy twice")
    with pytest.raises(ValueError, match="preset\\(s\\) toy-twice still use it"):
        registry.unregister("toy-scratch")
    registry.unregister("toy-twice")
    registry.unregister("toy-scratch")
    assert "toy-scratch" not in registry.passes() and "toy-twice" not in registry.presets()
    with pytest.raises(KeyError, match="cannot unregister 'toy-scratch': no pass or preset has that name"):
        registry.unregister("toy-scratch")
    # The name is free again: the fixture registers it anew and removes it after the test.
    registrations.add_pass(Scratch)
    assert registry.get_pass("toy-scratch") is Scratch


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("prun", "unknown pass 'prun' (did you mean 'prune'?); valid passes and presets: cleanup"),
        ("simplfy", "(did you mean 'simplify'?)"),
        (
            "prune:sparsty=0.5",
            "unknown option 'sparsty' for pass 'prune' in pass spec 'prune:sparsty=0.5' (did you mean 'sparsity'?)",
        ),
        ("nothing-alike", "unknown pass 'nothing-alike'; valid"),
    ],
)
def test_unknown_names_suggest_the_closest(spec: str, needle: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_spec(spec)
    assert needle in str(raised.value)
