"""``inspect``'s MACs and FLOPs: small graphs whose counts are worked out by hand, the bundled
digits CNN, dynamic dims from ``--shape``, and the CLI's text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from onnxshrink.cli import main
from onnxshrink.errors import UsageError
from onnxshrink.inspection import inspect_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits_cnn.onnx"


def _model(io: str, body: str, weights: dict[str, tuple[int, ...]], domains: str = "") -> ir.Model:
    """A graph in ONNX text; weights are float initializers of the given shapes."""
    proto = onnx.parser.parse_model(f'<ir_version: 10, opset_import: ["" : 21{domains}]> g {io} {{ {body} }}')
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend(
        onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in weights.items()
    )
    return ir.serde.deserialize_model(proto)


# (io, body, weights, expected MACs by op); each count is worked out in the comment.
CASES = {
    # Y [1,4,8,8] = 256 outputs, each 3 channels x 3x3 = 27 products
    "conv": (
        "(float[1,3,8,8] x) => (float[1,4,8,8] y)",
        "y = Conv <pads = [1, 1, 1, 1]> (x, w)",
        {"w": (4, 3, 3, 3)},
        {"Conv": 6912},
    ),
    # group 2: Y [1,4,6,6] = 144 outputs, each 2 channels x 9 = 18 products
    "grouped conv": (
        "(float[1,4,8,8] x) => (float[1,4,6,6] y)",
        "y = Conv <group = 2> (x, w)",
        {"w": (4, 2, 3, 3)},
        {"Conv": 2592},
    ),
    # stride 2: Y [1,3,4,4] = 48 outputs x 18
    "strided conv": (
        "(float[1,2,9,9] x) => (float[1,3,4,4] y)",
        "y = Conv <strides = [2, 2]> (x, w)",
        {"w": (3, 2, 3, 3)},
        {"Conv": 864},
    ),
    # each of the 32 input elements is scattered over 3 out channels x 3x3 = 27 outputs
    "conv transpose": (
        "(float[1,2,4,4] x) => (float[1,3,6,6] y)",
        "y = ConvTranspose(x, w)",
        {"w": (2, 3, 3, 3)},
        {"ConvTranspose": 864},
    ),
    # transA: A [5,3] is read as [3,5], K = 5; Y [3,4] = 12 outputs x 5
    "gemm transA": ("(float[5,3] a) => (float[3,4] y)", "y = Gemm <transA = 1> (a, b)", {"b": (5, 4)}, {"Gemm": 60}),
    # transB: Y [2,4] = 8 outputs x K 6
    "gemm transB": ("(float[2,6] a) => (float[2,4] y)", "y = Gemm <transB = 1> (a, b)", {"b": (4, 6)}, {"Gemm": 48}),
    # batched: Y [2,3,7] = 42 outputs x K 5
    "batched matmul": ("(float[2,3,5] a) => (float[2,3,7] y)", "y = MatMul(a, b)", {"b": (5, 7)}, {"MatMul": 210}),
    # a chain: Conv 6912 as above, then MatMul [1,4,8,8] @ [8,2]: Y [1,4,8,2] = 64 outputs x K 8 = 512
    "conv then matmul": (
        "(float[1,3,8,8] x) => (float[1,4,8,2] y)",
        "c = Conv <pads = [1, 1, 1, 1]> (x, w)\n y = MatMul(c, m)",
        {"w": (4, 3, 3, 3), "m": (8, 2)},
        {"Conv": 6912, "MatMul": 512},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_macs_by_hand(name: str) -> None:
    io, body, weights, expected = CASES[name]
    info = inspect_model(_model(io, body, weights))
    assert info["macs_by_op"] == expected
    assert info["macs"] == sum(expected.values()) and info["flops"] == 2 * info["macs"]
    assert info["macs_unknown_nodes"] == 0
    assert info["params"] == sum(int(np.prod(shape)) for shape in weights.values())


def test_large_weights_are_not_read_for_shapes() -> None:
    """A 64x4096 weight (1 MiB, past the inline limit) still gives its shape to MAC counting."""
    info = inspect_model(_model("(float[3,64] a) => (float[3,4096] y)", "y = MatMul(a, b)", {"b": (64, 4096)}))
    assert info["macs"] == 3 * 4096 * 64


def test_dynamic_dims_default_to_one_or_come_from_shape() -> None:
    model = _model("(float[N,5] x) => (float[N,7] y)", "y = MatMul(x, w)", {"w": (5, 7)})
    assert inspect_model(model)["macs"] == 35
    assert inspect_model(model, {"x": (4, 5)})["macs"] == 140
    with pytest.raises(UsageError, match="'z', which is not an input; inputs: x"):
        inspect_model(model, {"z": (4, 5)})
    with pytest.raises(UsageError, match="--shape x has 3 dims, the input has 2"):
        inspect_model(model, {"x": (4, 5, 1)})


def test_unknown_shape_is_counted_not_guessed() -> None:
    model = _model(
        "(float[2,5] x) => (float[2,7] y)",
        "c = my.domain.Mystery(x)\n y = MatMul(c, w)",
        {"w": (5, 7)},
        domains=', "my.domain" : 1',
    )
    info = inspect_model(model)
    assert info["macs"] == 0 and info["macs_unknown_nodes"] == 1


def test_qlinear_conv_counts_like_conv() -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 10, opset_import: ["" : 21]> g (uint8[1,3,8,8] x) => (uint8[1,4,8,8] y) '
        "{ y = QLinearConv <pads = [1, 1, 1, 1]> (x, s, z, w, s, wz, s, z) }"
    )
    proto.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "w"),
            onnx.numpy_helper.from_array(np.float32(0.1), "s"),
            onnx.numpy_helper.from_array(np.uint8(128), "z"),
            onnx.numpy_helper.from_array(np.int8(0), "wz"),
        ]
    )
    info = inspect_model(ir.serde.deserialize_model(proto))
    assert info["macs_by_op"] == {"QLinearConv": 6912}


def test_digits_cnn_macs() -> None:
    """Conv: 16x8x8 outputs x 9 (stem) + 3 x 1024 x 144 (3x3, 16->16) + 1024 x 16 (1x1)
    + 32x4x4 x 288 (3x3, 32->32) = 615,424; Gemm: 64 x 512 + 10 x 64 = 33,408."""
    info = inspect_model(ir.load(DIGITS))
    assert info["macs_by_op"] == {"Conv": 615_424, "Gemm": 33_408}
    assert info["macs"] == 648_832 and info["flops"] == 1_297_664 and info["params"] == 50_458
    assert inspect_model(ir.load(DIGITS), {"input": (8, 1, 8, 8)})["macs"] == 8 * 648_832


def test_cli_text_json_and_bad_shape() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(DIGITS)])
    assert result.exit_code == 0, result.stderr
    assert "MACs 648,832 (FLOPs 1,297,664)  Conv 615,424  Gemm 33,408" in result.stdout
    assert "params 50,458" in result.stdout
    result = runner.invoke(main, ["inspect", str(DIGITS), "--json", "--shape", "input=2x1x8x8"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["macs"], info["flops"]) == (2 * 648_832, 4 * 648_832)
    result = runner.invoke(main, ["inspect", str(DIGITS), "--shape", "image=2x1x8x8"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "onnxshrink: error: --shape names 'image', which is not an input; inputs: input"
