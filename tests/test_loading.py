"""Loading: every kind of bad or unsafe input fails with one line, exit 3, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import DIGITS, ModelFile

from onnxshrink.errors import InvalidModelError
from onnxshrink.loading import load_model


def _cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Runs the installed console script, as users do."""
    script = Path(sys.executable).parent / "onnxshrink"
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, check=False)


def _set_locations(path: Path, location: str, offset: int | None = None) -> None:
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            if entry.key == "offset" and offset is not None:
                entry.value = str(offset)
    onnx.save(proto, path)


def _assert_refused(model: Path, tmp_path: Path, needle: str) -> None:
    out = tmp_path / "out.onnx"
    result = _cli("run", model, "-o", out, "-p", "cleanup")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxshrink: error:"), result.stderr
    assert needle in lines[0], lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")] == []


def test_truncated_protobuf(tmp_path: Path) -> None:
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(DIGITS.read_bytes()[:5000])
    _assert_refused(bad, tmp_path, "truncated.onnx")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is a text file, not a model\n")
    _assert_refused(bad, tmp_path, "not")


def test_missing_model_file(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "absent.onnx", tmp_path, "not found")


def _external_digits(model_file: ModelFile, name: str = "model.onnx") -> Path:
    """The digits model with its weights in ``weights.bin`` next to it."""
    return model_file(onnx.load(DIGITS), name, external_data="weights.bin")


def test_missing_external_file(model_file: ModelFile, tmp_path: Path) -> None:
    path = _external_digits(model_file)
    (tmp_path / "weights.bin").unlink()
    _assert_refused(path, tmp_path, "not found")


@pytest.mark.parametrize(
    ("location", "needle"),
    [("/etc/passwd", "absolute"), ("../weights.bin", "leaves the model's folder"), ("sub/../../weights.bin", "leaves")],
)
def test_external_location_escaping_is_refused(model_file: ModelFile, location: str, needle: str) -> None:
    path = _external_digits(model_file, "m/model.onnx")
    _set_locations(path, location)
    _assert_refused(path, path.parent, needle)


def test_external_symlink_out_of_folder_is_refused(model_file: ModelFile, tmp_path: Path) -> None:
    path = _external_digits(model_file, "m/model.onnx")
    folder = path.parent
    outside = tmp_path / "outside.bin"
    (folder / "weights.bin").rename(outside)
    (folder / "weights.bin").symlink_to(outside)
    _assert_refused(path, folder, "through a link")


def test_external_offset_overrun_is_refused(model_file: ModelFile, tmp_path: Path) -> None:
    path = _external_digits(model_file)
    _set_locations(path, "weights.bin", offset=10**9)
    _assert_refused(path, tmp_path, "overruns")


def test_external_data_loads_lazily(model_file: ModelFile) -> None:
    import onnx_ir as ir

    loaded = load_model(_external_digits(model_file))
    tensors = [v.const_value for v in loaded.model.graph.initializers.values()]
    assert tensors and all(isinstance(t, ir.ExternalTensor) for t in tensors)


CYCLE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { a = Add(x, b)  b = Relu(a)  y = Neg(b) }"""
DANGLING = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { a = Relu(x)  y = Add(a, ghost) }"""
UNSORTED = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { y = Neg(a)  a = Relu(x) }"""


def test_graph_cycle(model_file: ModelFile, tmp_path: Path) -> None:
    _assert_refused(model_file(CYCLE), tmp_path, "cycle")


def test_dangling_input(model_file: ModelFile, tmp_path: Path) -> None:
    _assert_refused(model_file(DANGLING), tmp_path, "ghost")


def test_unsorted_graph_is_sorted_not_refused(model_file: ModelFile) -> None:
    loaded = load_model(model_file(UNSORTED))
    assert [n.op_type for n in loaded.model.graph] == ["Relu", "Neg"]


def test_debug_shows_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    result = _cli("--debug", "run", bad, "-o", tmp_path / "o.onnx", "-p", "cleanup")
    assert result.returncode == 3
    assert "Traceback" in result.stderr


def test_api_raises_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidModelError):
        load_model(bad)
