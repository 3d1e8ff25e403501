"""The Python API and the pass manager: inputs of every kind, presets, checks, verify-each."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, PassRegistrations, assert_close, parse_model, random_feed

import onnxshrink
from onnxshrink import registry
from onnxshrink.cli import main
from onnxshrink.errors import PassFailure, VerificationError
from onnxshrink.passbase import NoOptions, ShrinkPass, ShrinkPassResult

WITH_IDENTITY = parse_model("g (float[N, 4] x) => (float[N, 4] y) { a = Identity(x)  y = Relu(a) }")


class _SignFlip(ShrinkPass):
    """Negates the first initializer: claims to be exact, is not (a broken pass for the tests).

    1. Flips the sign of one weight tensor.
    """

    name = "test-sign-flip"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        value = next(iter(model.graph.initializers.values()))
        value.const_value = ir.Tensor(-value.const_value.numpy(), name=value.name)
        return ShrinkPassResult(model, modified=True, stats={"flipped": 1})


class _Dangler(ShrinkPass):
    """Points a node at a value nobody produces (breaks the graph).

    1. Rewires the last node's first input to a fresh value.
    """

    name = "test-dangler"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        node = list(model.graph)[-1]
        node.replace_input_with(0, ir.Value(name="nowhere"))
        return ShrinkPassResult(model, modified=True)


class _Liar(ShrinkPass):
    """Removes dead-looking nodes but reports modified=False.

    1. Deletes the first node's uses... then says nothing changed.
    """

    name = "test-liar"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        onnxshrink_cleanup = registry.get_pass("cleanup")()
        onnxshrink_cleanup(model)
        return ShrinkPassResult(model, modified=False)


@pytest.fixture(scope="module", autouse=True)
def _broken_passes(module_registrations: PassRegistrations) -> None:
    for cls in (_SignFlip, _Dangler, _Liar):
        module_registrations.add_pass(cls)
    module_registrations.add_preset(
        "test-tidy", ("cleanup", "cleanup"), doc="cleanup twice, to a fixed point", max_steps=3
    )


@pytest.mark.parametrize("kind", ["path", "proto", "ir", "graphsurgeon"])
def test_shrink_accepts_every_model_kind(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(WITH_IDENTITY, path)
    given = {
        "path": str(path),
        "proto": WITH_IDENTITY,
        "ir": ir.from_proto(WITH_IDENTITY),
        "graphsurgeon": gs.import_onnx(WITH_IDENTITY),
    }[kind]
    result = onnxshrink.shrink(given, ["cleanup"])
    assert result.report["verification"]["passed"] is True
    assert [n.op_type for n in result.model.graph] == ["Relu"]
    assert_close(WITH_IDENTITY, result.to_proto(), random_feed(WITH_IDENTITY, sizes={"N": 3}))
    graph = result.to_graphsurgeon()
    assert [n.op for n in graph.nodes] == ["Relu"]
    if kind == "ir":
        assert [n.op_type for n in given.graph] == ["Identity", "Relu"], "the caller's model was mutated"


def test_preset_runs_to_a_fixed_point() -> None:
    result = onnxshrink.shrink(WITH_IDENTITY, ["test-tidy"], verify=False)
    records = result.report["passes"]
    assert [(r["name"], r["round"], r["modified"]) for r in records] == [
        ("cleanup", 1, True),
        ("cleanup", 1, False),
        ("cleanup", 2, False),
        ("cleanup", 2, False),
    ]
    assert all(r["preset"] == "test-tidy" for r in records)


def test_exact_pipeline_beyond_tolerance_fails() -> None:
    with pytest.raises(VerificationError, match="output 'logits' differs"):
        onnxshrink.shrink(DIGITS, ["test-sign-flip"])


def test_verify_each_names_the_first_breaking_pass() -> None:
    with pytest.raises(
        VerificationError,
        match=r"numerics broke at pass 'test-sign-flip' \(passes so far: \['cleanup', 'test-sign-flip'\]\)",
    ):
        onnxshrink.shrink(DIGITS, ["cleanup", "test-sign-flip", "cleanup"], verify_each=True, calibration=DIGITS_CALIB)


def test_cli_writes_nothing_when_verification_fails(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["run", str(DIGITS), "-o", str(out), "-p", "test-sign-flip"])
    assert result.exit_code == 1
    assert result.stderr.startswith("onnxshrink: error: verification failed, nothing written")
    assert list(tmp_path.iterdir()) == []


def test_structural_checks_name_the_pass() -> None:
    with pytest.raises(PassFailure, match=r"pass 'test-dangler' broke the graph: .*'nowhere'.*dangling.*\['cleanup'\]"):
        onnxshrink.shrink(DIGITS, ["cleanup", "test-dangler"], verify=False)


def test_modified_flag_is_checked() -> None:
    with pytest.raises(PassFailure, match="reported modified=False"):
        onnxshrink.shrink(WITH_IDENTITY, ["test-liar"], verify=False)


def test_calibration_from_folder_and_reader_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(2):
        np.savez(folder / f"part{i}.npz", x=random_feed(WITH_IDENTITY, sizes={"N": 5})["x"])
    result = onnxshrink.shrink(WITH_IDENTITY, ["cleanup"], calibration=folder)
    assert result.report["verification"]["samples"] == 10
    (tmp_path / "my_reader.py").write_text(
        textwrap.dedent(
            """
        import numpy as np

        class Reader:
            def __init__(self):
                self.left = 3

            def get_next(self):
                if not self.left:
                    return None
                self.left -= 1
                return {"x": np.ones((2, 4), np.float32) * self.left}
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = onnxshrink.shrink(WITH_IDENTITY, ["cleanup"], calibration="my_reader:Reader")
    assert result.report["verification"]["samples"] == 6
    assert "my_reader:Reader" in result.report["verification"]["inputs"]


def test_report_options_use_recipe_keys_and_round_trip(tmp_path: Path) -> None:
    import json

    from onnxshrink.saving import PROVENANCE_PIPELINE_KEY
    from onnxshrink.spec import load_recipe, parse_spec

    result = onnxshrink.shrink(DIGITS, ["sort:for=2:4,seconds=5", "cleanup:cse=false"], verify=False)
    records = result.report["passes"]
    assert records[0]["options"] == {"key": "l1", "for": "2:4", "seconds": 5.0}
    assert records[1]["options"]["cse_max_constant"] == 1024
    provenance = json.loads(result.model.metadata_props[PROVENANCE_PIPELINE_KEY])
    assert provenance[0] == {"name": "sort", "options": {"for": "2:4", "seconds": 5.0}}
    tables = []
    for record in records:
        lines = [f"name = {json.dumps(record['name'])}"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in record["options"].items() if value is not None]
        tables.append("[[pass]]\n" + "\n".join(lines))
    recipe = tmp_path / "from_report.toml"
    recipe.write_text("\n\n".join(tables) + "\n")
    assert load_recipe(recipe) == [
        parse_spec("sort:key=l1,for=2:4,seconds=5"),
        parse_spec("cleanup:cse=false,cse-max-constant=1024,dedupe-initializers=true"),
    ]


# Issue 13, item 17: what a Python user sees first.


def test_result_repr_is_one_short_line() -> None:
    result = onnxshrink.shrink(DIGITS, ["simplify"])
    text = repr(result)
    assert text.startswith("ShrinkResult(simplify: 25 -> 19 nodes, ") and text.endswith("min cosine 1.000000)")
    assert "\n" not in text and len(text) < 200 and str(result) == text


def test_package_names_what_users_need() -> None:
    assert onnxshrink.__all__ == ["AutoResult", "ShrinkResult", "__version__", "auto", "open_samples", "shrink"]
    assert dir(onnxshrink) == sorted(onnxshrink.__all__)
    assert all(getattr(onnxshrink, name) is not None for name in onnxshrink.__all__)


def test_calibration_opens_from_a_path_in_one_call(tmp_path: Path) -> None:
    samples = onnxshrink.open_samples(DIGITS_CALIB)
    result = onnxshrink.shrink(DIGITS, ["quantize"], calibration=samples)
    assert result.report["passes"][0]["modified"]
    single = tmp_path / "calib.npy"
    np.save(single, np.load(DIGITS_CALIB)["input"][:8])
    assert onnxshrink.shrink(DIGITS, ["cleanup"], calibration=single).report["verification"]["samples"] == 8


def test_pass_classes_are_named_after_their_passes_and_keep_old_names() -> None:
    from onnxshrink.passes.fuse_bn import FuseBatchNormPass, FuseBnPass
    from onnxshrink.passes.prune import MagnitudePrunePass, PrunePass

    built_in = {name: cls for name, cls in registry.passes().items() if cls.__module__.startswith("onnxshrink.")}
    assert len(built_in) == 8
    for name, cls in built_in.items():
        assert cls.__name__ == "".join(part.capitalize() for part in name.split("-")) + "Pass", name
    assert MagnitudePrunePass is PrunePass and FuseBatchNormPass is FuseBnPass


def test_passes_take_keyword_options_checked_like_specs() -> None:
    from onnxshrink.errors import UsageError
    from onnxshrink.passes.prune import PrunePass

    model = ir.load(DIGITS)
    prune = PrunePass(sparsity=0.5, min_size=16)
    assert prune.options == PrunePass.Options(sparsity=0.5, min_size=16)
    assert prune(model).modified
    assert PrunePass(PrunePass.Options(sparsity=0.3), pattern="2:4").options.sparsity == 0.3
    with pytest.raises(UsageError, match=r"^prune: option sparsity: must be < 1.0, got 1.5$"):
        PrunePass(sparsity=1.5)
    with pytest.raises(UsageError, match=r"prune: unknown option\(s\) \['sparsty'\]; valid options: sparsity"):
        PrunePass(sparsty=0.5)


def test_data_and_budgets_are_checked_before_any_pass_runs(registrations: PassRegistrations) -> None:
    from onnxshrink.errors import UsageError

    ran: list[str] = []

    class RecordPass(ShrinkPass[NoOptions]):
        """Records that it ran."""

        name = "record"
        exact = True

        def call(self, model: ir.Model) -> ShrinkPassResult:
            ran.append(self.name)
            return ShrinkPassResult(model, modified=False)

    registrations.add_pass(RecordPass)

    wrong = {"input": np.zeros((4, 1, 8, 3), np.float32)}
    with pytest.raises(UsageError, match="has size 3 on axis 3, but the model fixes it to 8"):
        onnxshrink.shrink(DIGITS, ["record"], calibration=wrong, verify=False)
    with pytest.raises(UsageError, match="needs labelled data"):
        onnxshrink.shrink(DIGITS, ["record"], max_drop=0.01)
    assert ran == []


class _RunBreaker(ShrinkPass[NoOptions]):
    """Reshapes the output to 5 rows: onnxruntime loads the result but cannot run it on 4 samples.

    1. Appends ``Reshape(y, [5, -1])`` as the new output ``y``.
    """

    name = "test-run-breaker"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        graph = model.graph
        old = graph.outputs[0]
        old.name = "y_before"
        shape = ir.Value(name="five_rows", const_value=ir.tensor(np.array([5, -1], np.int64)))
        graph.register_initializer(shape)
        node = ir.Node("", "Reshape", [old, shape], num_outputs=1)
        graph.append(node)
        node.outputs[0].name = "y"
        node.outputs[0].type = old.type
        graph.outputs[0] = node.outputs[0]
        return ShrinkPassResult(model, modified=True)


def test_given_inputs_onnxruntime_cannot_run_are_blamed_on_the_right_model(registrations: PassRegistrations) -> None:
    from onnxshrink.errors import UsageError

    registrations.add_pass(_RunBreaker)
    four = {"x": np.ones((4, 4), np.float32)}
    with pytest.raises(VerificationError, match="runs the input model on given arrays but not the result"):
        onnxshrink.shrink(WITH_IDENTITY, ["test-run-breaker"], inputs=four)
    # Generated inputs (1 sample, 4 values) cannot be blamed on the user: verification is skipped.
    skipped = onnxshrink.shrink(WITH_IDENTITY, ["test-run-breaker"], shapes={"x": (4, 4)})
    assert "onnxruntime cannot run the model" in skipped.report["verification"]["skipped"]
    ragged = parse_model("g (float[N] a, float[M] b) => (float[K] y) { y = Add(a, b) }")
    with pytest.raises(UsageError, match="onnxruntime cannot run the model on given arrays"):
        onnxshrink.shrink(ragged, ["cleanup"], inputs={"a": np.ones(3, np.float32), "b": np.ones(5, np.float32)})
