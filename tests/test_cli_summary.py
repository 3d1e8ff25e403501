"""What ``onnxshrink run`` prints after its first lines: per-pass table, totals, op counts, warnings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, parse_model

from onnxshrink.cli import main
from onnxshrink.cli.run_summary import model_totals, totals_table
from onnxshrink.inspect.summary import inspect_model


def _run(*args: object) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["run", *(str(a) for a in args)])
    assert result.exit_code == 0, result.stderr
    return result.stdout, result.stderr


def _row(stdout: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first``."""
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row '{first}' in:\n{stdout}")


def test_prune_shows_sparsity_per_pass_and_in_totals(tmp_path: Path) -> None:
    stdout, _ = _run(DIGITS, tmp_path / "o.onnx", "-p", "prune:sparsity=0.9", "--no-verify")
    assert stdout.splitlines()[0].endswith("25 -> 25 nodes, 201.8 KB -> 201.8 KB of weights")
    assert _row(stdout, "pass")[:6] == ["pass", "nodes", "weight bytes", "zstd bytes", "MACs", "sparsity"]
    prune = _row(stdout, "prune")
    assert prune[:3] == ["prune", "25", "201,832"] and prune[4:6] == ["648,832", "90.0%"]
    assert _row(stdout, "MACs") == ["MACs", "648,832", "648,832"]
    sparsity = _row(stdout, "float weight sparsity")
    assert sparsity[1] == "0.0%" and float(sparsity[2].rstrip("%")) > 80
    compressed = _row(stdout, "weight bytes (zstd)") if "(zstd)" in stdout else _row(stdout, "weight bytes (gzip)")
    assert int(compressed[2].replace(",", "")) < int(compressed[1].replace(",", "")) / 2
    assert _row(stdout, "total") == ["total", "25", "25"]  # no op count changed: only the total row


def test_quantize_shows_layers_quantized_and_op_counts(tmp_path: Path) -> None:
    stdout, _ = _run(
        DIGITS,
        tmp_path / "o.onnx",
        "-p",
        "quantize:keep-slow-float=false,bias-correction=off",
        "--calib",
        DIGITS_CALIB,
        "--min-cosine",
        "0.9",
    )
    row = _row(stdout, "quantize")
    assert row[1] == "64" and row[6:8] == ["8", "2"]  # 8 layers quantized, 2 left float
    assert _row(stdout, "QuantizeLinear") == ["QuantizeLinear", "0", "15"]
    assert _row(stdout, "DequantizeLinear") == ["DequantizeLinear", "0", "25"]
    assert _row(stdout, "total") == ["total", "25", "64"]
    assert "Conv " not in stdout  # unchanged op types are left out
    assert _row(stdout, "quantized weight share")[1] == "0.0%"


def test_verify_each_error_after_every_pass(tmp_path: Path) -> None:
    stdout, _ = _run(DIGITS, tmp_path / "o.onnx", "-p", "fuse-bn", "-p", "cleanup", "--verify-each")
    assert _row(stdout, "pass")[-2:] == ["max rel err", "min cosine"]
    fuse = _row(stdout, "fuse-bn")
    assert float(fuse[-2]) < 1e-4 and float(fuse[-1]) > 0.9999
    assert _row(stdout, "cleanup (no change)")[-1] == "-"  # verify-each compares only after a change


def test_quiet_prints_only_the_first_lines(tmp_path: Path) -> None:
    stdout, _ = _run(DIGITS, tmp_path / "o.onnx", "-p", "cleanup", "--no-verify", "-q")
    assert stdout.splitlines() == [
        f"{tmp_path / 'o.onnx'}: 25 -> 25 nodes, 201.8 KB -> 201.8 KB of weights",
        "not verified (--no-verify)",
    ]


_CONSTANT_WEIGHTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 64] x) => (float[4, 64] y) {
    w = Constant <value = float[64, 64] w_data {%s}> ()
    t = Transpose <perm = [1, 0]> (w)
    y = MatMul (x, t)
}
"""


@pytest.fixture
def constant_weights(tmp_path: Path) -> Path:
    values = ", ".join(str((i % 13) / 13.0 - 0.5) for i in range(64 * 64))
    path = tmp_path / "constant_weights.onnx"
    onnx.save(parse_model(_CONSTANT_WEIGHTS % values), path)
    return path


def test_warns_when_a_lossy_pass_changed_nothing(tmp_path: Path, constant_weights: Path) -> None:
    stdout, stderr = _run(
        constant_weights, tmp_path / "o.onnx", "-p", "prune:sparsity=0.5,keep-first-last=false", "--no-verify"
    )
    assert "warning: lossy pass 'prune' changed nothing" in stderr
    assert "run fold first" in stderr
    assert _row(stdout, "prune (no change)")[1] == "3"


def test_no_warning_for_an_exact_pass_that_changed_nothing(tmp_path: Path) -> None:
    _, stderr = _run(DIGITS, tmp_path / "o.onnx", "-p", "cleanup", "--no-verify")
    assert "warning" not in stderr


def test_prune_channels_shows_channels_removed_and_fewer_macs(tmp_path: Path) -> None:
    stdout, _ = _run(
        DIGITS, tmp_path / "o.onnx", "-p", "fold", "-p", "fuse-bn", "-p", "prune-channels:ratio=0.5", "--no-verify"
    )
    assert int(_row(stdout, "prune-channels")[-1]) > 0
    macs = [int(cell.replace(",", "")) for cell in _row(stdout, "MACs")[1:]]
    assert macs[1] < macs[0]


def test_totals_past_the_read_limit_skip_compression_and_sparsity_only() -> None:
    model = ir.load(DIGITS)
    full, bounded = model_totals(model, {}), model_totals(model, {}, read_limit=1000)
    assert bounded["bytes_compressed"] is None and bounded["float_weight_sparsity"] is None
    assert (bounded["macs"], bounded["ops"], bounded["bytes"]) == (full["macs"], full["ops"], full["bytes"])
    lines = totals_table(full, bounded)
    assert any(line.split()[-1] == "-" for line in lines if "sparsity" in line)
    assert "not computed past 256 MiB" in lines[-1]


def _number(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_each_pass_row_shows_the_macs_and_compressed_bytes_of_the_model_after_it(tmp_path: Path) -> None:
    """The figures after prune-channels are inspect's of that intermediate model, and after quantize of the output."""
    report = tmp_path / "r.json"
    stdout, _ = _run(
        DIGITS, tmp_path / "o.onnx", "-p", "prune-channels:ratio=0.5", "-p", "quantize",
        "--calib", DIGITS_CALIB, "--report", report,
    )  # fmt: skip
    _run(DIGITS, tmp_path / "pruned.onnx", "-p", "prune-channels:ratio=0.5", "--no-verify", "-q")
    source, pruned, final = (inspect_model(ir.load(p)) for p in (DIGITS, tmp_path / "pruned.onnx", tmp_path / "o.onnx"))
    rows = {name: _row(stdout, name) for name in ("input", "prune-channels", "quantize")}
    for name, expected in (("input", source), ("prune-channels", pruned), ("quantize", final)):
        assert _number(rows[name][3]) == expected["bytes_compressed"], name
        assert _number(rows[name][4]) == expected["macs"], name
    assert pruned["macs"] < source["macs"] and final["macs"] == pruned["macs"]
    assert final["bytes_compressed"] < pruned["bytes_compressed"] < source["bytes_compressed"]
    records = json.loads(report.read_text())["passes"]
    assert [(r["macs_after"], r["bytes_compressed_after"]) for r in records] == [
        (pruned["macs"], pruned["bytes_compressed"]),
        (final["macs"], final["bytes_compressed"]),
    ]
    assert (records[0]["macs_before"], records[0]["bytes_compressed_before"]) == (
        source["macs"],
        source["bytes_compressed"],
    )


def test_a_pass_that_changed_nothing_keeps_the_figures_before_it(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    _run(
        DIGITS,
        tmp_path / "o.onnx",
        "-p",
        "prune-channels:ratio=0.5",
        "-p",
        "cleanup",
        "--no-verify",
        "--report",
        report,
    )
    first, second = json.loads(report.read_text())["passes"]
    assert second["modified"] is False
    assert (second["macs_after"], second["bytes_compressed_after"]) == (
        first["macs_after"],
        first["bytes_compressed_after"],
    )


def test_fix_shape_counts_the_output_totals_at_the_fixed_size(tmp_path: Path) -> None:
    """The last pass ran before --fix-shape wrote the sizes: the output's MACs are counted again, not copied."""
    stdout, _ = _run(DIGITS, tmp_path / "o.onnx", "-p", "simplify", "--no-verify", "--fix-shape", "input=4x1x8x8")
    before, after = (_number(cell) for cell in _row(stdout, "MACs")[1:])
    assert after == 4 * before == 4 * inspect_model(ir.load(DIGITS))["macs"]
    assert _number(_row(stdout, "cleanup (no change)")[4]) == before  # measured before the sizes were written


def test_a_shape_that_does_not_fit_fails_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(main, ["run", str(DIGITS), str(out), "-p", "cleanup", "--no-verify", "--shape", "zz=1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "onnxshrink: error: --shape names 'zz', which is not an input; inputs: input"
    assert not out.exists()
