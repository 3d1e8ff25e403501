"""The command line: README commands, exit codes, one-line errors, registry-derived help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.parser
import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, DIGITS_TEST, ROOT, ModelFile, parse_model

from onnxshrink.cli import main


def _invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")  # join continued lines
    return re.findall(r"^\$ (.+)$", text, flags=re.MULTILINE)


def test_readme_run_command_works(tmp_path: Path) -> None:
    """The README's main command runs as written (minus the pip install this venv already did)."""
    commands = [c[c.index("onnxshrink run") :] for c in _readme_commands() if "onnxshrink run" in c]
    assert commands, "README lost its 'onnxshrink run' example"
    # The console script installed beside this interpreter, also when its venv is not activated.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in commands:
        command = command.replace("/tmp/", f"{tmp_path}/")
        result = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(report) >= {"input", "output", "passes", "pipeline", "verification", "exact", "seconds"}
    assert report["verification"]["passed"] is True


def test_run_with_report_and_labels(tmp_path: Path) -> None:
    out, report_path = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, stderr = _invoke(
        "run", DIGITS, "-o", out, "-p", "cleanup", "--inputs", DIGITS_TEST, "--report", report_path
    )
    assert code == 0, stderr
    assert "accuracy 0.9963 -> 0.9963" in stdout
    report = json.loads(report_path.read_text())
    verification = report["verification"]
    assert verification["samples"] == 540
    assert verification["accuracy_reference"] == verification["accuracy_candidate"] > 0.98
    assert verification["provider"] == "CPUExecutionProvider"
    (record,) = report["passes"]
    assert record["name"] == "cleanup" and record["exact"] is True
    assert {"seconds", "nodes_before", "nodes_after", "bytes_before", "bytes_after", "stats"} <= set(record)


def test_run_with_calibration_and_verify_each(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _invoke(
        "run", DIGITS, "-o", out, "-p", "cleanup", "-p", "cleanup", "--calib", DIGITS_CALIB, "--verify-each"
    )
    assert code == 0, stderr
    assert "calibration" in stdout


def test_custom_domain_op_is_kept_and_verification_skipped(model_file: ModelFile, tmp_path: Path) -> None:
    path = model_file(
        '<ir_version: 8, opset_import: ["" : 17, "my.custom" : 1]> g (float[2] x) => (float[2] y) '
        "{ a = Identity(x)  b = my.custom.Frobnicate(a)  c = Relu(b)  d = Relu(b)  y = Add(c, d) }",
        "custom.onnx",
    )
    out, report_path = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, stderr = _invoke("run", path, "-o", out, "-p", "cleanup", "--report", report_path)
    assert code == 0, stderr
    assert "not verified: onnxruntime cannot run the model" in stdout and "Frobnicate" in stdout
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Frobnicate", "Relu", "Add"]
    assert "skipped" in json.loads(report_path.read_text())["verification"]


def test_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "cleanup"\ncse = false\n')
    code, _, stderr = _invoke("run", DIGITS, "-o", tmp_path / "o.onnx", "--recipe", recipe, "--no-verify")
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-p", "nope"], "unknown pass 'nope'; valid passes and presets: cleanup"),
        (["-p", "cleanup:bogus=1"], "valid options: cse, cse-max-constant, dedupe-initializers"),
        (["-p", "cleanup:cse=perhaps"], "valid: true, false"),
        (["-p", "cleanup", "--report", "nodir/r.json"], "--report folder does not exist: nodir"),
        (["-p", "cleanup", "--shape", "input=oops"], "bad --shape"),
        (["-p", "cleanup", "--shape", "other=1x2"], "unknown input"),
        (["-p", "cleanup", "--calib", "missing.npz"], "calibration data not found"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "o.onnx"
    code, _, stderr = _invoke("run", DIGITS, "-o", out, *args)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr
    assert not out.exists()


def test_verification_failure_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    """A candidate that differs: ``verify`` exits 1 and says which output differs."""
    changed = onnx.load(DIGITS)
    changed.graph.initializer[0].raw_data = bytes(len(changed.graph.initializer[0].raw_data))
    cand = tmp_path / "changed.onnx"
    onnx.save(changed, cand)
    code, stdout, stderr = _invoke("verify", DIGITS, cand)
    assert code == 1
    assert "DIFFERS" in stdout and "differ beyond tolerance" in stderr
    code, _, _ = _invoke("verify", DIGITS, DIGITS, "--inputs", DIGITS_TEST)
    assert code == 0


def test_passes_listing_is_derived_from_the_registry() -> None:
    code, stdout, _ = _invoke("passes")
    assert code == 0 and re.search(r"^cleanup\s+exact\s+Removes", stdout, re.MULTILINE)
    code, stdout, _ = _invoke("passes", "cleanup")
    assert code == 0 and "cse-max-constant=int  (default: 1024)" in stdout and "1. ``y = Identity(x)``" in stdout


def test_inspect_json() -> None:
    code, stdout, stderr = _invoke("inspect", DIGITS, "--json")
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["nodes"] == 25 and info["ops"]["Conv"] == 6
    assert info["params"] > 50_000 and info["bytes"] > info["bytes_compressed"] > 0
    assert info["macs"] > 600_000 and info["macs_unknown_nodes"] == 0
    assert info["float_weight_sparsity"] == 0.0


def test_bench_json() -> None:
    code, stdout, stderr = _invoke(
        "bench", DIGITS, "--runs", "3", "--warmup", "1", "--batch", "4", "--threads", "1", "--json"
    )
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["runs"] == 3 and result["median_ms"] > 0 and result["input_shapes"] == {"input": [4, 1, 8, 8]}


def test_help_imports_no_heavy_modules() -> None:
    """``onnxshrink --help`` must start fast: no onnx, onnxruntime, numpy or torch on that path."""
    probe = (
        "import sys; from click.testing import CliRunner; from onnxshrink.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy', 'torch', 'onnx_ir') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_console_script_is_installed() -> None:
    result = subprocess.run(["onnxshrink", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "onnxshrink" in result.stdout


def test_passes_is_a_plain_subpackage() -> None:
    import onnxshrink
    import onnxshrink.passes

    assert Path(onnxshrink.passes.__file__).parent == Path(onnxshrink.__file__).parent / "passes"


def test_generated_inputs_respect_shape_option(model_file: ModelFile) -> None:
    path = model_file(parse_model("g (float[N, M] x) => (float[N, M] y) { y = Relu(x) }"), "m.onnx")
    code, stdout, stderr = _invoke("bench", path, "--shape", "x=3x5", "--runs", "1", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["input_shapes"] == {"x": [3, 5]}
