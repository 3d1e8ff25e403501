"""``onnxshrink inspect A B``: two models side by side, layers matched by node name."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import onnx_ir as ir
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, ROOT, parse_ir_model, random_arrays

from onnxshrink.cli import main


def _two_layer_model(path: Path, first: str, second: str) -> Path:
    text = f"""<ir_version: 10, opset_import: ["" : 21]>
    g (float[2, 8] x) => (float[2, 4] y) <float[8, 8] w1, float[8, 4] w2> {{
        [{first}] h = MatMul(x, w1)
        [{second}] y = MatMul(h, w2)
    }}"""
    ir.save(parse_ir_model(text, initializers=random_arrays({"w1": (8, 8), "w2": (8, 4)})), path)
    return path


def test_float_and_quantized_digits_side_by_side(tmp_path: Path) -> None:
    quantized = tmp_path / "q.onnx"
    args = [
        "run",
        str(DIGITS),
        "-o",
        str(quantized),
        "-p",
        "quantize:keep-slow-float=false",
        "--calib",
        str(DIGITS_CALIB),
    ]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, ["inspect", str(DIGITS), str(quantized), "--json"])
    assert result.exit_code == 0, result.output  # was refused: inspect took one model
    diff = json.loads(result.stdout)
    assert diff["only_a"] == diff["only_b"] == 0 and len(diff["layers"]) == 8
    for row in diff["layers"]:
        assert row["in"] == "both" and row["a"]["precision"] == "float32" and row["b"]["precision"] == "int8"
        assert row["a"]["shape"] == row["b"]["shape"] and row["a"]["macs"] == row["b"]["macs"]
        assert row["b"]["bytes"] * 4 == row["a"]["bytes"]
    a_bytes, b_bytes = diff["totals"]["bytes"]
    assert b_bytes < a_bytes / 3
    text = CliRunner().invoke(main, ["inspect", str(DIGITS), str(quantized)]).stdout
    assert "8 in both, 0 only in A, 0 only in B" in text
    assert "A: MACs counted for inputs input [N=1 (assumed), 1, 8, 8]" in text
    assert "/fc1/Gemm" in text and "float32" in text and "int8" in text


def test_layers_in_only_one_model_are_named(tmp_path: Path) -> None:
    a = _two_layer_model(tmp_path / "a.onnx", "enc", "head")
    b = _two_layer_model(tmp_path / "b.onnx", "enc", "classifier")
    result = CliRunner().invoke(main, ["inspect", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["node"]: row["in"] for row in json.loads(result.stdout)["layers"]}
    assert rows == {"enc": "both", "head": "only a", "classifier": "only b"}
    text = CliRunner().invoke(main, ["inspect", str(a), str(b)]).stdout
    assert "1 in both, 1 only in A, 1 only in B" in text and "(absent)" in text


def test_three_models_or_kernels_with_two_is_a_usage_error(tmp_path: Path) -> None:
    a = _two_layer_model(tmp_path / "a.onnx", "enc", "head")
    assert CliRunner().invoke(main, ["inspect", str(a), str(a), str(a)]).exit_code == 2
    assert CliRunner().invoke(main, ["inspect", str(a), str(a), "--kernels"]).exit_code == 2


def test_readme_inspect_commands_run(tmp_path: Path) -> None:
    """The README's ``$ onnxshrink inspect`` lines run after its ``run`` example made /tmp/small.onnx."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = re.findall(r"^\$ onnxshrink (.+)$", text, flags=re.MULTILINE)
    inspects = [c for c in commands if c.startswith("inspect ")]
    assert inspects, "README lost its 'onnxshrink inspect A B' example"
    for command in [c for c in commands if c.startswith("run ")][:1] + inspects:
        args = shlex.split(command.replace("/tmp/", f"{tmp_path}/"))
        args = [str(ROOT / a) if a.startswith("models/") else a for a in args]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (command, result.output)
    assert "layers matched by node name: 8 in both" in result.stdout
