"""N:M checks along the reduction axis and ``inspect``'s per-layer sparsity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from helpers import ModelFile, parse_model

from onnxshrink.cli import main
from onnxshrink.sparsity import patterns_of, reduction_axis, satisfies_nm


def _two_four(shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Random weights with exactly 2 non-zeros in every 4 consecutive elements along ``axis``."""
    rng = np.random.default_rng(0)
    weight = np.moveaxis(rng.standard_normal(shape).astype(np.float32), axis, -1).copy()
    groups = weight.reshape(-1, 4)
    drop = np.argsort(np.abs(groups), axis=1)[:, :2]
    np.put_along_axis(groups, drop, 0.0, axis=1)
    return np.moveaxis(groups.reshape(weight.shape), -1, axis)


@pytest.mark.parametrize(("shape", "axis"), [((8, 16, 3, 3), 1), ((16, 8), 0), ((8, 16), 1)])
def test_nm_along_the_reduction_axis(shape: tuple[int, ...], axis: int) -> None:
    weight = _two_four(shape, axis)
    assert satisfies_nm(weight, 2, 4, axis)
    assert "2:4" in patterns_of(weight, axis) and "4:8" in patterns_of(weight, axis)
    other = 0 if axis else 1
    if shape[other] % 4 == 0:
        assert not satisfies_nm(weight, 2, 4, other) or np.count_nonzero(weight) == 0
    dense = np.ones(shape, np.float32)
    assert not satisfies_nm(dense, 2, 4, axis)


def test_sizes_not_divisible_by_m_never_satisfy() -> None:
    assert not satisfies_nm(np.zeros((6, 6), np.float32), 2, 4, 0)


def test_reduction_axes() -> None:
    gemm = ir.serde.deserialize_node(onnx.helper.make_node("Gemm", ["a", "b"], ["y"], transB=1))
    assert reduction_axis(gemm, 2) == 1
    matmul = ir.serde.deserialize_node(onnx.helper.make_node("MatMul", ["a", "b"], ["y"]))
    assert reduction_axis(matmul, 2) == 0 and reduction_axis(matmul, 3) is None


def test_inspect_reports_layers_and_patterns(model_file: ModelFile) -> None:
    weight = _two_four((16, 32), 0)  # MatMul B is [K, N]: groups run along K
    model = parse_model("g (float[1, 16] x) => (float[1, 32] y) { [mm] y = MatMul(x, w) }", initializers={"w": weight})
    path = model_file(model, "m.onnx")
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    (layer,) = json.loads(result.stdout)["layers"]
    assert layer["node"] == "mm" and layer["sparsity"] == pytest.approx(0.5)
    assert layer["nm_patterns"] == ["2:4", "4:8"]
