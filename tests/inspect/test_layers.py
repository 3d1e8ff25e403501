"""``inspect``'s per-layer table on quantized models, and names shortened from the middle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, fetch, get_real_model, parse_ir_model

from onnxshrink.cli import main
from onnxshrink.inspect.int_kernels import format_kernels, kernel_report
from onnxshrink.inspect.summary import inspect_model


@pytest.fixture(scope="module")
def quantized_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled digits CNN quantized as the README shows (QDQ, int8 weights)."""
    out = tmp_path_factory.mktemp("quantized") / "digits_q.onnx"
    args = ["run", str(DIGITS), "-o", str(out), "-p", "quantize:keep-slow-float=false", "--calib", str(DIGITS_CALIB)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_quantized_digits_keeps_every_layer_with_its_precision(quantized_digits: Path) -> None:
    float_layers = inspect_model(ir.load(DIGITS))["layers"]
    layers = inspect_model(ir.load(quantized_digits))["layers"]
    assert [layer["node"] for layer in layers] == [layer["node"] for layer in float_layers]
    assert len(layers) == 8
    assert {layer["precision"] for layer in float_layers} == {"float32"}
    assert {layer["precision"] for layer in layers} == {"int8"}
    for before, after in zip(float_layers, layers, strict=True):
        assert after["shape"] == before["shape"] and after["macs"] == before["macs"] > 0
        assert after["bytes"] * 4 == before["bytes"]  # int8 against float32
        assert 0 <= after["sparsity"] < 0.05


def test_kernels_column_names_the_integer_kernel(quantized_digits: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(quantized_digits), "--kernels", "--json"])
    assert result.exit_code == 0, result.output
    kernels = {layer["op"]: layer["kernel"] for layer in json.loads(result.stdout)["layers"]}
    assert kernels["Conv"].endswith("QLinearConv") and kernels["Gemm"].endswith("QGemm")
    text = CliRunner().invoke(main, ["inspect", str(quantized_digits), "--kernels"]).stdout
    assert "/res1/res1.0/Conv" in text and "int8" in text and "QLinearConv" in text


def test_block_quantized_layers_are_listed_as_int4(int4_gather_matmul: ir.Model) -> None:
    quantized = int4_gather_matmul
    layers = {layer["op"]: layer for layer in inspect_model(quantized)["layers"]}
    assert layers["GatherBlockQuantized"]["precision"] == "int4"
    (matmul,) = [layer for op, layer in layers.items() if op in ("MatMulNBits", "MatMul")]
    assert matmul["precision"] == "int4" and matmul["shape"] in ([8, 64], [64, 8])


def test_matmul_nbits_is_an_int4_layer_with_macs() -> None:
    # N 8 outputs, K 64 in blocks of 16: B is [N, K/16, 16 * 4 bits / 8 bytes], one scale per block.
    text = """<ir_version: 10, opset_import: ["" : 21, "com.microsoft" : 1]>
    g (float[2, 64] x) => (float[2, 8] y) <uint8[8, 4, 8] b, float[32] s> {
        y = com.microsoft.MatMulNBits <K = 64, N = 8, bits = 4, block_size = 16> (x, b, s)
    }"""
    weights = {"b": np.arange(256, dtype=np.uint8).reshape(8, 4, 8), "s": np.ones(32, np.float32)}
    info = inspect_model(parse_ir_model(text, initializers=weights))
    (layer,) = info["layers"]
    assert layer["op"] == "MatMulNBits" and layer["precision"] == "int4" and layer["shape"] == [8, 64]
    assert layer["macs"] == info["macs"] == 2 * 8 * 64  # rows x N x K
    assert layer["bytes"] == 256 and layer["sparsity"] is None  # packed nibbles are not unpacked


def test_ddddocr_integer_convolutions_are_layers() -> None:
    layers = inspect_model(ir.load(fetch(get_real_model("ddddocr"))))["layers"]
    convs = [layer for layer in layers if layer["op"] == "ConvInteger"]
    assert convs and {layer["precision"] for layer in convs} == {"uint8"}  # were left out of the table
    assert all(layer["macs"] and 0 <= layer["sparsity"] < 0.5 for layer in convs)


def test_magika_float_nodes_stay_distinct_in_kernels_text() -> None:
    model = ir.load(fetch(get_real_model("magika")))
    report = kernel_report(model, "cpu")
    text = format_kernels(report)
    rows = text.split("float nodes:\n", 1)[1].splitlines()
    listed = [row.split()[0] for row in rows if "->" in row]
    assert len(listed) == min(len([n for n in report.nodes if n.precision == "float"]), 40)
    assert len(set(listed)) == len(listed)  # the tail was cut before: many rows read the same
    assert all(name.startswith("jax2tf_get_logits_") for name in listed)
    assert any(name.endswith("Mul_3") for name in listed)
