"""``inspect``'s MACs and FLOPs: small graphs whose counts are worked out by hand, the bundled
digits CNN, dynamic dims from ``--shape``, and the CLI's text and JSON."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from helpers import DIGITS, parse_ir_model, parse_model, random_arrays, session

from onnxshrink.cli import main
from onnxshrink.errors import UsageError
from onnxshrink.inspect.summary import inspect_model


def _model(io: str, body: str, weights: dict[str, tuple[int, ...]], domains: str = "") -> ir.Model:
    """A graph in ONNX text; weights are float initializers of the given shapes."""
    text = f'<ir_version: 10, opset_import: ["" : 21{domains}]> g {io} {{ {body} }}'
    return parse_ir_model(text, initializers=random_arrays(weights))


# (io, body, weights, expected MACs by op); each count is worked out in the comment.
CASES: dict[str, tuple[str, str, dict[str, tuple[int, ...]], dict[str, int]]] = {
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
    model = parse_ir_model(
        '<ir_version: 10, opset_import: ["" : 21]> g (uint8[1,3,8,8] x) => (uint8[1,4,8,8] y) '
        "{ y = QLinearConv <pads = [1, 1, 1, 1]> (x, s, z, w, s, wz, s, z) }",
        initializers={"w": np.ones((4, 3, 3, 3), np.int8), "s": np.float32(0.1), "z": np.uint8(128), "wz": np.int8(0)},
    )
    info = inspect_model(model)
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


def _stored_shape(proto: onnx.ModelProto, name: str, dims: list[int | str]) -> None:
    """Stores a shape for ``name`` the way exporters do, whatever shape inference would say."""
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))


# Conv 4x3x3x3 (pads 1) then Relu then Conv 2x4x1x1: per image 8x8 x (4 x 27 + 2 x 4) = 7,424 MACs.
_TWO_CONVS = (
    '<ir_version: 10, opset_import: ["" : 21]> g (float[N,3,8,8] x) => (float[N,2,8,8] y) '
    "{ c = Conv <pads = [1, 1, 1, 1]> (x, w1)\n r = Relu(c)\n y = Conv(r, w2) }"
)
_TWO_CONVS_MACS = 64 * (4 * 27 + 2 * 4)


def _two_convs(stored: dict[str, list[int | str]]) -> ir.Model:
    proto = parse_model(_TWO_CONVS, initializers=random_arrays({"w1": (4, 3, 3, 3), "w2": (2, 4, 1, 1)}))
    for name, dims in stored.items():
        _stored_shape(proto, name, dims)
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize(
    "stored",
    [
        # Paddle's export: a literal -1 batch and symbols inference would keep over the given sizes
        {"c": [-1, 4, "unk__0", "unk__1"], "r": [-1, 4, "unk__0", "unk__1"]},
        # stale static shapes from a batch-1 export
        {"c": [1, 4, 8, 8], "r": [1, 4, 8, 8]},
    ],
    ids=["minus-one", "stale-batch-1"],
)
def test_stored_intermediate_shapes_are_reinferred(stored: dict[str, list[int | str]]) -> None:
    model = _two_convs(stored)
    for batch in (1, 3):
        info = inspect_model(model, {"x": (batch, 3, 8, 8)})
        assert info["macs"] == batch * _TWO_CONVS_MACS and info["macs_unknown_nodes"] == 0


def test_literal_minus_one_input_dim_counts_as_dynamic() -> None:
    """An input declared ``[-1, 3, 8, 8]`` (no ``--shape``) counts one image, never -1 of them."""
    model = _two_convs({"c": [-1, 4, 8, 8]})
    model.graph.inputs[0].shape = ir.Shape([-1, 3, 8, 8])
    info = inspect_model(model)
    assert info["macs"] == _TWO_CONVS_MACS and info["macs_unknown_nodes"] == 0
    assert inspect_model(model, {"x": (2, 3, 8, 8)})["macs"] == 2 * _TWO_CONVS_MACS


def test_stored_shape_fills_in_where_inference_cannot() -> None:
    """Past a custom op inference knows nothing; a stored static shape is used, a ``-1`` is not."""
    body = "c = my.domain.Mystery(x)\n y = MatMul(c, w)"
    io = "(float[2,5] x) => (float[2,7] y)"
    good = _model(io, body, {"w": (5, 7)}, domains=', "my.domain" : 1')
    mystery = good.graph.node(0).outputs[0]
    mystery.type, mystery.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([2, 5])
    assert inspect_model(good)["macs"] == 70
    bad = _model(io, body, {"w": (5, 7)}, domains=', "my.domain" : 1')
    mystery = bad.graph.node(0).outputs[0]
    mystery.type, mystery.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([-1, 5])
    bad.graph.outputs[0].shape = ir.Shape([-1, 7])
    info = inspect_model(bad)
    assert info["macs"] == 0 and info["macs_unknown_nodes"] == 1


def _mini_bert() -> ir.Model:
    """BERT's embeddings and attention mask in miniature, each a shape onnx inference leaves open at
    batch 1 (a 1 broadcast with an unknown dim stays unknown):

    - ``position_ids[:, :S]``: a Slice whose end is ``Shape(ids)[1]``;
    - ``arange(S)`` positions: a Range, whose inference reads constant inputs only (its shape is
      needed at any batch);
    - a mask ``arange(N)`` whose N is ``Shape(h)[0]`` of a value known only once the above are.
    """
    text = (
        '<ir_version: 10, opset_import: ["" : 17]> '
        "g (int64[N,S] ids) => (float[N,S,4] y, float[N,S,8] att, float[S,4] py) "
        "<int64[1] zero = {0}, int64[1] one = {1}, int64[2] inner = {1, 2}, "
        "int64 axis = {1}, int64 start = {0}, int64 step = {1}> {"
        " shape = Shape(ids)\n seq = Gather <axis = 0> (shape, axis)\n end = Unsqueeze(seq, zero)\n"
        " pos = Slice(positions, zero, end, one, one)\n"
        " arange = Range(start, seq, step)\n"
        " token = Gather(tokens, ids)\n place = Gather(places, pos)\n aplace = Gather(places, arange)\n"
        " t = Add(token, place)\n h = Add(t, aplace)\n"
        " y = MatMul(h, w)\n py = MatMul(aplace, w)\n"
        " ht = Transpose <perm = [0, 2, 1]> (h)\n scores = MatMul(h, ht)\n"
        " hshape = Shape(h)\n batch = Gather <axis = 0> (hshape, start)\n brange = Range(start, batch, step)\n"
        " bmask = Unsqueeze(brange, inner)\n mask = Cast <to = 1> (bmask)\n masked = Add(scores, mask)\n"
        " att = MatMul(masked, h) }"
    )
    rng = np.random.default_rng(0)
    weights = {
        # 2 KiB: past the weightless limit, so shape inference sees it as an input, as in BERT
        "positions": np.arange(256, dtype=np.int64)[None],
        "tokens": rng.standard_normal((30, 8)).astype(np.float32),
        "places": rng.standard_normal((256, 8)).astype(np.float32),
        "w": rng.standard_normal((8, 4)).astype(np.float32),
    }
    return parse_ir_model(text, initializers=weights)


@pytest.mark.parametrize("batch, seq", [(1, 1), (1, 12), (3, 12)])
def test_shape_arithmetic_behind_slice_and_range_is_resolved(batch: int, seq: int) -> None:
    """Per token: h @ w is 4 x 8; h @ hᵀ and (scores + mask) @ h are S x 8 each; arange(S) @ w
    is S x 4 x 8 once per batch."""
    info = inspect_model(_mini_bert(), {"ids": (batch, seq)})
    assert info["macs_unknown_nodes"] == 0
    assert info["macs"] == batch * seq * (4 * 8 + 2 * seq * 8) + seq * 4 * 8
    # the graph really runs, with the shapes counted
    y, att, py = session(_mini_bert()).run(None, {"ids": np.zeros((batch, seq), np.int64)})
    assert y.shape == (batch, seq, 4) and att.shape == (batch, seq, 8) and py.shape == (seq, 4)
