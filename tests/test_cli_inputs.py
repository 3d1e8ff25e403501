"""What ``run`` checks before any work starts, and the habits users bring from other tools (issue 13).

Paths that would clobber each other, folders that do not exist, data that does not fit the model,
budgets that cannot be checked, a closed stdout; positional OUTPUT, the default pipeline,
``NAME:DIMS`` shapes, ``--fix-shape`` and "did you mean". Real files, the real command, real
onnxruntime.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, DIGITS_TEST, ModelFile

from onnxshrink.cli import main

_TWO_INPUTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] a, float[N, 4] b) => (float[N, 4] y) { y = Add(a, b) }
"""
# Both inputs dynamic: any sizes pass the checks, but onnxruntime cannot broadcast 3 against 5.
_UNCHECKED_SIZES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N] a, float[M] b) => (float[K] y) { y = Add(a, b) }
"""


def _invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _command(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The real command in a child process (its logging goes to its own stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "onnxshrink.cli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        **kwargs,  # type: ignore[call-overload]
    )


def _digits_copy(tmp_path: Path) -> Path:
    path = tmp_path / "in.onnx"
    path.write_bytes(DIGITS.read_bytes())
    return path


def _calib() -> np.ndarray:
    with np.load(DIGITS_CALIB) as data:
        return data["input"]


def _one_usage_line(code: int, stderr: str, needle: str) -> None:
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr


# Items 1, 2 and 9: paths.


@pytest.mark.parametrize("clash", ["input", "output", "external data"])
def test_report_that_would_replace_a_model_is_refused_before_any_work(tmp_path: Path, clash: str) -> None:
    model = _digits_copy(tmp_path)
    out = tmp_path / "out.onnx"
    report = {"input": model, "output": out, "external data": tmp_path / "out.onnx.data"}[clash]
    code, _, stderr = _invoke("run", model, "-o", out, "-p", "simplify", "--report", report)
    _one_usage_line(code, stderr, f"--report {report} is the")
    assert "choose another name" in stderr
    assert model.read_bytes() == DIGITS.read_bytes()
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


@pytest.mark.parametrize(("option", "which"), [("--calib", "--report"), ("--calib", "-o"), ("--inputs", "-o")])
def test_data_files_are_never_written_over(tmp_path: Path, option: str, which: str) -> None:
    data = tmp_path / "data.npz"
    data.write_bytes(DIGITS_TEST.read_bytes())
    out = data if which == "-o" else tmp_path / "out.onnx"
    extra = ["--report", data] if which == "--report" else []
    code, _, stderr = _invoke("run", DIGITS, "-o", out, "-p", "simplify", option, data, *extra)
    _one_usage_line(code, stderr, f"{'output' if which == '-o' else which} {data} is the {option} file")
    assert data.read_bytes() == DIGITS_TEST.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]


@pytest.mark.parametrize("which", ["--report", "output"])
def test_missing_folder_is_a_usage_error_and_nothing_is_written(tmp_path: Path, which: str) -> None:
    out = tmp_path / ("nodir/out.onnx" if which == "output" else "out.onnx")
    report = tmp_path / ("nodir/r.json" if which == "--report" else "r.json")
    code, _, stderr = _invoke("run", DIGITS, "-o", out, "-p", "simplify", "--report", report)
    _one_usage_line(code, stderr, f"{which} folder does not exist")
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = _invoke("run", DIGITS, "-o", tmp_path, "-p", "simplify")
    assert code == 2 and "is a directory" in stderr and list(tmp_path.iterdir()) == []


def test_model_and_report_are_written_together_or_not_at_all(tmp_path: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, _, stderr = _invoke("run", DIGITS, "-o", out, "-p", "simplify", "--report", report)
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "r.json"]  # no temporaries left
    assert json.loads(report.read_text())["output"]["path"] == str(out)
    assert report.stat().st_mode & 0o044 == 0o044  # readable like any file the user writes
    # A failed verification writes neither.
    failed = tmp_path / "failed"
    failed.mkdir()
    code, _, _ = _invoke(
        "run", DIGITS, "-o", failed / "o.onnx", "-p", "prune:sparsity=0.9", "--min-cosine", "0.99999",
        "--report", failed / "r.json",
    )  # fmt: skip
    assert code == 1 and list(failed.iterdir()) == []


def test_output_named_as_the_input_after_lossy_passes_says_so(tmp_path: Path) -> None:
    model = _digits_copy(tmp_path)
    code, _, stderr = _invoke("run", model, "-o", model, "-p", "prune:sparsity=0.5", "--no-verify")
    assert code == 0 and f"replaced the input model {model} with the lossy result" in stderr
    assert model.read_bytes() != DIGITS.read_bytes()
    code, _, stderr = _invoke("run", model, "-o", model, "-p", "simplify")
    assert code == 0 and "replaced the input" not in stderr


# Items 3 to 7: data.


@pytest.mark.parametrize("option", ["--calib", "--inputs"])
def test_data_of_the_wrong_shape_is_a_usage_error_naming_input_and_axis(tmp_path: Path, option: str) -> None:
    data = tmp_path / "wrongshape.npz"
    np.savez(data, input=_calib()[:, :, :3])
    out = tmp_path / "out.onnx"
    code, _, stderr = _invoke("run", DIGITS, "-o", out, "-p", "quantize", "--calib", DIGITS_CALIB, option, data)
    _one_usage_line(code, stderr, "input 'input' has size 3 on axis 2, but the model fixes it to 8 [N, 1, 8, 8]")
    assert not out.exists()


def test_data_of_the_wrong_rank_is_a_usage_error(tmp_path: Path) -> None:
    data = tmp_path / "flat.npz"
    np.savez(data, input=_calib().reshape(len(_calib()), -1))
    code, _, stderr = _invoke("run", DIGITS, "-o", tmp_path / "o.onnx", "-p", "simplify", "--inputs", data)
    _one_usage_line(code, stderr, "(rank 2), but the model's input has rank 4")


def test_float64_calibration_is_cast_to_float32_with_a_note(tmp_path: Path) -> None:
    data = tmp_path / "f64.npz"
    np.savez(data, input=_calib().astype(np.float64))
    out = tmp_path / "out.onnx"
    done = _command("run", DIGITS, "-o", out, "-p", "quantize", "--calib", data)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("input 'input' is float64; cast to float32") == 1, done.stderr
    assert out.exists()


@pytest.mark.parametrize("dtype", [np.int32, np.float16])
def test_other_dtypes_are_refused_naming_the_rule(tmp_path: Path, dtype: type) -> None:
    data = tmp_path / "typed.npz"
    np.savez(data, input=_calib().astype(dtype))
    out = tmp_path / "out.onnx"
    code, _, stderr = _invoke("run", DIGITS, "-o", out, "-p", "simplify", "--inputs", data)
    _one_usage_line(code, stderr, f"input 'input' is {np.dtype(dtype)}, but the model wants float32; only float64")
    assert not out.exists()


def test_npy_feeds_a_single_input_model(tmp_path: Path) -> None:
    data = tmp_path / "calib.npy"
    np.save(data, _calib())
    code, stdout, stderr = _invoke("run", DIGITS, "-o", tmp_path / "o.onnx", "-p", "quantize", "--calib", data)
    assert code == 0, stderr
    assert f"npy {data}" in stdout


def test_npy_for_a_model_with_several_inputs_is_a_usage_error(model_file: ModelFile, tmp_path: Path) -> None:
    model = model_file(_TWO_INPUTS)
    data = tmp_path / "one.npy"
    np.save(data, np.ones((2, 4), np.float32))
    code, _, stderr = _invoke("run", model, "-o", tmp_path / "o.onnx", "-p", "cleanup", "--inputs", data)
    _one_usage_line(code, stderr, "holds one unnamed array (.npy), but the model has 2 inputs ['a', 'b']")


def test_inputs_that_onnxruntime_cannot_run_are_a_usage_error_said_once(model_file: ModelFile, tmp_path: Path) -> None:
    model = model_file(_UNCHECKED_SIZES)
    data = tmp_path / "inputs.npz"
    np.savez(data, a=np.ones(3, np.float32), b=np.ones(5, np.float32))
    out = tmp_path / "o.onnx"
    done = _command("run", model, "-o", out, "-p", "cleanup", "--inputs", data)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "onnxruntime cannot run the model on" in done.stderr
    assert done.stdout == "" and not out.exists()


def test_max_drop_without_labels_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    code, _, stderr = _invoke("run", DIGITS, "-o", out, "-p", "prune:sparsity=0.9", "--max-drop", "0.01")
    _one_usage_line(code, stderr, "--max-drop) needs labelled data")
    code, _, stderr = _invoke("run", DIGITS, "-o", out, "-p", "simplify", "--max-drop", "0.01", "--no-verify")
    _one_usage_line(code, stderr, "drop --no-verify or the budget")
    assert not out.exists()
    code, _, stderr = _invoke(
        "run", DIGITS, "-o", out, "-p", "prune:sparsity=0.5", "--max-drop", "0.5", "--inputs", DIGITS_TEST
    )
    assert code == 0, stderr


# Item 8: a reader that leaves.


def test_closed_stdout_is_not_an_error() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxshrink.cli", "passes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like 'head -1' leaving before the listing is written
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert "BrokenPipeError" not in stderr and "error" not in stderr, stderr


# Item 15: habits from onnxsim and friends.


def test_positional_output_and_simplify_by_default(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _invoke("run", DIGITS, out)
    assert code == 0, stderr
    assert "running 'simplify' (fold -> fuse-bn -> cleanup)" in stderr
    assert out.exists() and f"{out}: 25 -> 19 nodes" in stdout
    code, _, stderr = _invoke("run", DIGITS, out, "-o", tmp_path / "other.onnx")
    _one_usage_line(code, stderr, "two outputs given")
    code, _, stderr = _invoke("run", DIGITS)
    _one_usage_line(code, stderr, "no output given")


@pytest.mark.parametrize("spelling", ["input:4,1,8,8", "input=4x1x8x8", "input = 4,1,8,8"])
def test_shape_spellings(tmp_path: Path, spelling: str) -> None:
    report = tmp_path / "r.json"
    code, _, stderr = _invoke(
        "run", DIGITS, tmp_path / "o.onnx", "-p", "simplify", "--shape", spelling, "--report", report
    )
    assert code == 0, stderr
    assert json.loads(report.read_text())["verification"]["samples"] == 4


def test_fix_shape_writes_concrete_input_dims(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    code, _, stderr = _invoke("run", DIGITS, out, "--fix-shape", "input:2,1,8,8")
    assert code == 0, stderr
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 1, 8, 8] and not any(d.dim_param for d in dims)
    # Fixed after the passes: calibration still runs in batches, verification one sample per run.
    code, stdout, stderr = _invoke(
        "run", DIGITS, out, "-p", "quantize", "--calib", DIGITS_CALIB, "--fix-shape", "input=1x1x8x8"
    )
    assert code == 0 and "verified on" in stdout, stderr
    assert [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim] == [1, 1, 8, 8]
    code, _, stderr = _invoke("run", DIGITS, out, "-p", "simplify", "--fix-shape", "input=2x1x9x8")
    _one_usage_line(code, stderr, "--fix-shape input: dimension 9 contradicts the model's fixed size 8")
    code, _, stderr = _invoke("run", DIGITS, out, "-p", "simplify", "--fix-shape", "image=2x1x8x8")
    _one_usage_line(code, stderr, "--fix-shape names unknown input(s) ['image']")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("prun", "unknown pass 'prun' (did you mean 'prune'?)"), ("prune:sparsty=0.5", "(did you mean 'sparsity'?)")],
)
def test_did_you_mean(tmp_path: Path, spec: str, needle: str) -> None:
    code, _, stderr = _invoke("run", DIGITS, tmp_path / "o.onnx", "-p", spec)
    _one_usage_line(code, stderr, needle)


# Item 12 (second half): generated inputs.


def test_generated_verification_says_it_invented_inputs(tmp_path: Path) -> None:
    code, stdout, _ = _invoke("run", DIGITS, tmp_path / "o.onnx")
    assert code == 0 and "verification used invented inputs" in stdout
    code, stdout, _ = _invoke("run", DIGITS, tmp_path / "o.onnx", "--inputs", DIGITS_TEST)
    assert code == 0 and "invented" not in stdout


def test_verify_command_checks_its_inputs_too(tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    np.save(data, _calib()[:, :, :, :5])
    code, _, stderr = _invoke("verify", DIGITS, DIGITS, "--inputs", data)
    _one_usage_line(code, stderr, "inputs npy")
    assert "has size 5 on axis 3" in stderr
    np.save(data, _calib().astype(np.float64))
    code, stdout, stderr = _invoke("verify", DIGITS, DIGITS, "--inputs", data)
    assert code == 0 and f"inputs: npy {data}" in stdout, stderr


def test_calibration_of_a_model_with_a_fixed_batch_runs_in_batches_it_takes(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.onnx"
    code, _, stderr = _invoke("run", DIGITS, fixed, "-p", "simplify", "--fix-shape", "input=1x1x8x8", "--no-verify")
    assert code == 0, stderr
    code, stdout, stderr = _invoke("run", fixed, tmp_path / "q.onnx", "-p", "quantize", "--calib", DIGITS_CALIB)
    assert code == 0 and "verified on" in stdout, stderr
