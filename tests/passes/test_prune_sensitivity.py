"""``prune:allocation=sensitivity`` profiling on sub-graphs equals the whole-model measurement.

The reference here is computed the slow, obvious way: one onnxruntime session of the whole model
per (weight, sparsity), the pruned weight stored in it, all samples at once.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import DIGITS, DIGITS_CALIB

from onnxshrink import overrides
from onnxshrink.context import PassContext
from onnxshrink.data.readers import open_samples
from onnxshrink.passes.prune import sensitivity

# Sub-graph and whole-model runs differ only by onnxruntime's summation order.
CURVE_RTOL, CURVE_ATOL = 1e-4, 1e-9

# A skip connection (the sub-graph of Wa reads the graph input X and the upstream `h`), a source
# node (the Constant `k`) inside the sub-graph, and a second output that no weight but Wb reaches.
RESIDUAL = """
<ir_version: 8, opset_import: ["" : 17]>
residual (float[N, 16] X) => (float[N, 16] Y, float[N, 16] Z)
<float[16, 16] W0, float[16, 16] Wa, float[16, 16] Wb>
{
    h = MatMul (X, W0)
    r = Relu (h)
    a = MatMul (r, Wa)
    k = Constant <value = float {3.0}> ()
    ak = Mul (a, k)
    s = Add (ak, h)
    t = Tanh (s)
    Y = Add (t, X)
    Z = MatMul (h, Wb)
}
"""


def _residual() -> ir.Model:
    proto = onnx.parser.parse_model(RESIDUAL)
    rng = np.random.default_rng(0)
    for name in ("W0", "Wa", "Wb"):
        array = rng.standard_normal((16, 16)).astype(np.float32) / 4
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.serde.deserialize_model(proto)


def _whole_model_curve(model: ir.Model, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    proto = ir.serde.serialize_model(model)

    def outputs(weight: np.ndarray | None) -> list[np.ndarray]:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        if weight is not None:
            for index, tensor in enumerate(copy.graph.initializer):
                if tensor.name == name:
                    copy.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(weight, name))
        session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
        return [np.asarray(o, dtype=np.float64) for o in session.run(None, feed)]

    dense = outputs(None)
    energy = sum(float(np.sum(o**2)) for o in dense)
    stored = model.graph.initializers[name].const_value
    assert stored is not None
    weight = stored.numpy()
    order = np.argsort(np.abs(weight).ravel(), kind="stable")
    damage = []
    for sparsity in sensitivity.GRID:
        flat = weight.ravel().copy()
        flat[order[: round(sparsity * flat.size)]] = 0
        pruned = outputs(flat.reshape(weight.shape))
        damage.append(sum(float(np.sum((p - d) ** 2)) for p, d in zip(pruned, dense, strict=True)) / energy)
    return np.array(damage)


def _probe(model: ir.Model, names: list[str], feed: dict[str, np.ndarray], samples: int) -> sensitivity.Probe:
    context = PassContext(calibration=open_samples(feed))
    weights = {}
    for name in names:
        tensor = model.graph.initializers[name].const_value
        assert tensor is not None
        weights[name] = tensor.numpy()
    return sensitivity.Probe(context, model, weights, pass_name="prune", samples=samples, batch_size=16)


def test_cut_holds_what_depends_on_the_weight() -> None:
    model = _residual()
    part = overrides.cut(model.graph, ["Wa"])
    assert [node.op_type for node in part.nodes] == ["MatMul", "Constant", "Mul", "Add", "Tanh", "Add"]
    assert sorted(value.name for value in part.boundary) == ["X", "h", "r"]
    assert [value.name for value in part.outputs] == ["Y"]
    assert [node.op_type for node in overrides.cut(model.graph, ["Wb"]).nodes] == ["MatMul"]


def test_subgraph_model_takes_the_weight_as_input_and_keeps_the_model() -> None:
    model = _residual()
    before = ir.serde.serialize_model(model).SerializeToString()
    types = {"X": np.zeros((0, 16), np.float32), "h": np.zeros((0, 16), np.float32), "r": np.zeros((0, 16), np.float32)}
    sub = overrides.subgraph_model(model, "Wa", types)
    assert sorted(value.name for value in sub.graph.inputs) == ["Wa", "X", "h", "r"]
    assert list(sub.graph.initializers) == []
    assert [value.name for value in sub.graph.outputs] == ["Y"]
    onnx.checker.check_model(ir.serde.serialize_model(sub))
    assert ir.serde.serialize_model(model).SerializeToString() == before


@pytest.mark.parametrize("samples", [40, 7])
def test_curves_equal_the_whole_model_measurement(samples: int) -> None:
    model = _residual()
    feed = {"X": np.random.default_rng(1).standard_normal((samples, 16)).astype(np.float32)}
    curves = _probe(model, ["W0", "Wa", "Wb"], feed, samples).curves()
    for curve in curves:
        expected = _whole_model_curve(model, curve.name, feed)
        np.testing.assert_allclose(curve.damage, expected, rtol=CURVE_RTOL, atol=CURVE_ATOL)
    assert curves[0].damage[0] == 0.0 and curves[0].damage[-1] > 0


def test_curves_with_the_others_pruned_equal_the_whole_model_measurement() -> None:
    model = _residual()
    feed = {"X": np.random.default_rng(2).standard_normal((24, 16)).astype(np.float32)}
    probe = _probe(model, ["W0", "Wa"], feed, 24)
    base = {name: np.where(np.abs(probe.weights[name]) < 0.1, 0, probe.weights[name]) for name in ("W0", "Wa")}
    curves = probe.curves(base=base)
    reference_model = overrides.replaced(model, {"Wa": base["Wa"]})
    dense = [
        np.asarray(o, np.float64)
        for o in ort.InferenceSession(
            ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"]
        ).run(None, feed)
    ]
    # W0 measured with Wa pruned as in base, against the dense model's outputs.
    proto = ir.serde.serialize_model(reference_model)
    order = np.argsort(np.abs(probe.weights["W0"]).ravel(), kind="stable")
    energy = sum(float(np.sum(o**2)) for o in dense)
    for column, sparsity in enumerate(sensitivity.GRID):
        flat = probe.weights["W0"].ravel().copy()
        flat[order[: round(sparsity * flat.size)]] = 0
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        for index, tensor in enumerate(copy.graph.initializer):
            if tensor.name == "W0":
                copy.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(flat.reshape(16, 16), "W0"))
        out = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
        expected = sum(float(np.sum((np.asarray(o, np.float64) - d) ** 2)) for o, d in zip(out, dense, strict=True))
        assert curves[0].damage[column] == pytest.approx(expected / energy, rel=CURVE_RTOL, abs=CURVE_ATOL)


def test_digits_cnn_curves_equal_the_whole_model_measurement() -> None:
    model = ir.load(DIGITS)
    calibration = {name: array[:32] for name, array in np.load(DIGITS_CALIB).items() if name != "labels"}
    layers = [
        node.inputs[1].name
        for node in model.graph
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.inputs[1] is not None and node.inputs[1].is_initializer()
    ]
    names = [name for name in layers if name is not None]
    assert len(names) >= 3
    curves = _probe(model, names, calibration, 32).curves()
    for curve in curves:
        expected = _whole_model_curve(model, curve.name, calibration)
        np.testing.assert_allclose(curve.damage, expected, rtol=CURVE_RTOL, atol=CURVE_ATOL)
