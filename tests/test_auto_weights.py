"""auto's profile variants: sessions that read the weights from memory, sizes counted without serializing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import onnxshrink
from onnxshrink.autotune.profile import VariantBuilder, channel_spec, int4_spec
from onnxshrink.autotune.weights import InMemoryWeights
from onnxshrink.context import IN_MEMORY_BYTES
from onnxshrink.data.readers import open_samples
from onnxshrink.runtime import create_session, run
from onnxshrink.spec import make_spec

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"


@pytest.fixture(scope="module")
def builder() -> VariantBuilder:
    base = onnxshrink.shrink(MODEL, ["simplify"], verify=False).model
    return VariantBuilder(ir.serde.serialize_model(base), open_samples(str(CALIB)), "cpu")


@pytest.mark.parametrize(
    "spec",
    [
        channel_spec({"/res1/res1.0/Conv": 0.5}),
        make_spec("quantize", {"include": ("/fc1/Gemm",)}),
        int4_spec(("/fc1/Gemm",)),  # 4-bit arrays stay in the proto: onnxruntime takes no int4 OrtValue
    ],
    ids=["channels", "int8", "int4"],
)
def test_a_variant_is_counted_and_run_as_if_serialized(builder: VariantBuilder, spec: object) -> None:
    before = ir.serde.serialize_model(builder.model).SerializeToString()
    variant, record = builder.variant(spec)  # type: ignore[arg-type]
    assert record["modified"]
    serialized = ir.serde.serialize_model(variant)
    assert builder.weights.size(variant) == serialized.ByteSize()
    stubbed = builder.weights.stub(variant)
    assert stubbed.names and stubbed.proto.ByteSize() < serialized.ByteSize() / 4
    feed = {"input": open_samples(str(CALIB)).take(16)["input"]}
    expected = run(create_session(serialized.SerializeToString(), "cpu")[0], feed)
    found = run(builder.weights.session(variant, "cpu")[0], feed)
    assert all(np.array_equal(expected[name], found[name]) for name in expected)
    # The variant was a copy: the simplified model the next setting starts from is unchanged.
    assert ir.serde.serialize_model(builder.model).SerializeToString() == before


def test_only_large_numeric_initializers_go_by_memory() -> None:
    graph = ir.Graph([], [], nodes=[], name="g")
    model = ir.Model(graph, ir_version=8)
    big = ir.Value(name="big", const_value=ir.Tensor(np.ones(IN_MEMORY_BYTES, dtype=np.float32), name="big"))
    small = ir.Value(name="small", const_value=ir.Tensor(np.ones(4, dtype=np.float32), name="small"))
    text = ir.Value(
        name="text", const_value=ir.StringTensor([b"a" * IN_MEMORY_BYTES] * 2, shape=ir.Shape([2]), name="text")
    )
    for value in (big, small, text):
        graph.register_initializer(value)
    weights = InMemoryWeights(model)
    stubbed = weights.stub(model)
    assert stubbed.names == ["big"]
    assert weights.size(model) == ir.serde.serialize_model(model).ByteSize()
    assert big.const_value is not None and big.const_value.numpy().shape == (IN_MEMORY_BYTES,)  # left as it was
