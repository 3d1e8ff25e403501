"""Saving: deterministic bytes, provenance, external data, atomic writes, the input protected."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from helpers import ModelFile, assert_close, random_feed

import onnxshrink
from onnxshrink.errors import UsageError
from onnxshrink.loading import load_model
from onnxshrink.saving import (
    PROVENANCE_PIPELINE_KEY,
    PROVENANCE_VERSION_KEY,
    check_write_paths,
    save_model,
    written_after,
)


def _feed(digits: Path) -> dict:
    return random_feed(digits, sizes={"N": 4})


def test_same_input_same_pipeline_gives_identical_bytes(digits_path: Path, tmp_path: Path) -> None:
    for name in ("a.onnx", "b.onnx"):
        onnxshrink.shrink(digits_path, ["cleanup"], verify=False).save(tmp_path / name)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_provenance_is_recorded(digits_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    onnxshrink.shrink(digits_path, ["cleanup:cse=false"], verify=False).save(out)
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props[PROVENANCE_VERSION_KEY] == onnxshrink.__version__
    assert json.loads(props[PROVENANCE_PIPELINE_KEY]) == [{"name": "cleanup", "options": {"cse": False}}]


def test_external_data_round_trip(digits_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ext.onnx"
    saved = onnxshrink.shrink(digits_path, ["cleanup"], verify=False).save(out, external_data=True)
    assert saved.external_data == tmp_path / "ext.onnx.data"
    assert saved.external_data.stat().st_size > 150_000
    assert out.stat().st_size < 20_000
    assert_close(digits_path, out, _feed(digits_path))
    # Re-saving the external model inline reads the weights through the memory map.
    inline = tmp_path / "inline.onnx"
    save_model(load_model(out).model, inline, external_data=False)
    assert_close(digits_path, inline, _feed(digits_path))


def test_failed_write_leaves_destination_untouched(digits_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous contents")
    model = load_model(digits_path).model
    written = []

    def fail_midway(tensor: ir.TensorProtocol, info: object) -> None:
        written.append(tensor.name)
        if len(written) == 3:
            raise OSError("disk full (simulated by the test)")

    with pytest.raises(OSError, match="disk full"):
        save_model(model, out, external_data=True, on_tensor=fail_midway)
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_input_files_are_protected(digits_path: Path, model_file: ModelFile, tmp_path: Path) -> None:
    source = model_file(onnx.load(digits_path), external_data="model.onnx.data")
    result = onnxshrink.shrink(source, ["cleanup"], verify=False)
    data_before = (tmp_path / "model.onnx.data").read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite"):
        result.save(tmp_path / "model.onnx.data")
    assert (tmp_path / "model.onnx.data").read_bytes() == data_before


def test_output_may_be_the_input_when_named(digits_path: Path, model_file: ModelFile) -> None:
    source = model_file(onnx.load(digits_path), external_data="model.onnx.data")
    onnxshrink.shrink(source, ["cleanup"], verify=False).save(source, external_data=True)
    assert_close(digits_path, source, _feed(digits_path))


def test_missing_output_folder_is_a_usage_error(digits_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="output folder does not exist"):
        onnxshrink.shrink(digits_path, ["cleanup"], verify=False).save(tmp_path / "no" / "out.onnx")


def test_streaming_write_parses_to_what_onnx_ir_writes(digits_path: Path, tmp_path: Path) -> None:
    """Weights are written one initializer at a time; the file means the same as ``ir.save``'s."""
    from onnxshrink.saving import write_streaming

    model = load_model(digits_path).model
    model.graph.initializers["conv3.0.weight"].const_value = ir.Tensor(
        model.graph.initializers["conv3.0.weight"].const_value.numpy() * 2, name="conv3.0.weight"
    )  # one in-memory tensor beside the loaded ones
    write_streaming(model, tmp_path / "streamed.onnx")
    ir.save(model, tmp_path / "reference.onnx")
    streamed, reference = onnx.load(tmp_path / "streamed.onnx"), onnx.load(tmp_path / "reference.onnx")
    initializers = {t.name for t in reference.graph.initializer}
    kept = [v for v in reference.graph.value_info if v.name not in initializers]
    del reference.graph.value_info[:]
    reference.graph.value_info.extend(kept)
    assert streamed.SerializeToString() == reference.SerializeToString()


def test_companion_file_appears_only_when_the_block_succeeds(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    with pytest.raises(RuntimeError, match="model write failed"), written_after(report) as pending:
        pending.write_text("{}")
        raise RuntimeError("model write failed")
    assert list(tmp_path.iterdir()) == []
    with written_after(report) as pending:
        assert pending.parent == tmp_path and pending.suffix == ".json"
        pending.write_text("{}")
        assert not report.exists()
    assert report.read_text() == "{}" and list(tmp_path.iterdir()) == [report]
    umask = os.umask(0)
    os.umask(umask)
    assert report.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_paths_that_clobber_are_refused(tmp_path: Path) -> None:
    model, out, data = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "d.npz"
    check_write_paths(model, model, tmp_path / "r.json", {"--calib": data})  # replacing the input is the user's call
    for output, report, needle in [
        (out, model, "--report {p} is the input model"),
        (out, tmp_path / "sub/../o.onnx", "--report {p} is the output model"),
        (out, tmp_path / "o.onnx.data", "--report {p} is the output's external data"),
        (data, None, "output {p} is the --calib file"),
        (out, tmp_path / "nodir/r.json", "--report folder does not exist"),
    ]:
        shown = report if report is not None and "nodir" not in str(report) else output
        with pytest.raises(UsageError, match=re.escape(needle.format(p=shown))):
            check_write_paths(model, output, report, {"--calib": data, "--inputs": None})
