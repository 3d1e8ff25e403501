"""``quantize``'s CPU-dependent choices (kernels.py) and bias correction, on tiny ONNX-text graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from helpers import DIGITS, DIGITS_CALIB, DIGITS_TEST, op_counts, parse_model, run, run_pass, run_unfused

from onnxshrink.cpu import CpuProfile, parse_cpuinfo, profile
from onnxshrink.passes.quantize import kernels
from onnxshrink.passes.quantize.options import QuantizeOptions

INTEL_AMX = "processor : 0\nmodel name : Intel(R) Xeon(R)\nflags : fpu sse4_2 avx avx2 avx512f avx512_vnni amx_int8\n"
AMD_AVX2 = "processor : 0\nmodel name : AMD EPYC 7B12\nflags : fpu sse4_2 avx avx2 fma\n"
ALDER = "processor : 0\nmodel name : 12th Gen Intel(R) Core(TM)\nflags : avx avx2 avx_vnni\n"
ARM = "processor : 0\nFeatures : fp asimd asimddp\nCPU part : 0xd0c\n"
OLD_X86 = "processor : 0\nmodel name : Old\nflags : sse4_2 avx\n"


@pytest.mark.parametrize(
    ("text", "kind", "flags", "bits"),
    [
        (INTEL_AMX, "vnni", ["avx2", "avx512_vnni", "amx_int8"], 8),
        (AMD_AVX2, "avx2", ["avx2"], 7),
        (ALDER, "vnni", ["avx2", "avx_vnni"], 8),
        (ARM, "vnni", ["arm_dotprod"], 8),
        (OLD_X86, "avx2", [], 7),
    ],
    ids=["avx512-vnni-amx", "avx2", "avx-vnni", "arm-dotprod", "no-avx2"],
)
def test_each_cpu_flag_set_picks_its_decision_path(text: str, kind: str, flags: list[str], bits: int) -> None:
    cpu = parse_cpuinfo(text)
    assert cpu.kind == kind and cpu.flags() == flags
    assert kernels.weight_bits(cpu, u8_activations=True) == bits
    assert kernels.weight_bits(cpu, u8_activations=False) == 8  # s8 x s8 never uses the int16 pair path
    assert cpu.to_json()["kind"] == kind


def test_forced_profiles_and_reduce_range_auto_follow_the_cpu_option() -> None:
    assert profile("avx2").kind == "avx2" and profile("vnni").kind == "vnni"
    assert profile("avx2").source == "forced:avx2"
    assert QuantizeOptions(cpu="avx2").weight_bits == 7
    assert QuantizeOptions(cpu="vnni").weight_bits == 8
    assert QuantizeOptions(cpu="avx2", activations="s8").weight_bits == 8
    assert QuantizeOptions(cpu="avx2", reduce_range="off").weight_bits == 8
    assert QuantizeOptions(cpu="vnni", reduce_range="on").weight_bits == 7
    assert QuantizeOptions(cpu="avx2", target="tensorrt").weight_bits == 8
    with pytest.raises(ValueError, match="cpu must be one of"):
        profile("sse")  # type: ignore[arg-type]


def _conv_model(seed: int = 0, bias: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {"W": (rng.standard_normal((64, 64, 1, 1)) / 8).astype(np.float32)}
    if bias:
        weights["B"] = (rng.standard_normal(64) * 0.1).astype(np.float32)
    inputs = "(x, W, B)" if bias else "(x, W)"
    return parse_model(
        f"""g (float[N, 64, 4, 4] x) => (float[N, 64, 4, 4] y) {{
            y = Conv {inputs}
        }}""",
        initializers=weights,
    )


def test_cpu_choice_sets_the_weight_range_in_the_written_model() -> None:
    calib = {"x": np.random.default_rng(1).standard_normal((8, 64, 4, 4)).astype(np.float32)}
    for cpu, limit in (("avx2", 63), ("vnni", 127)):
        # One 1x1 64->64 Conv alone: 32 multiply-adds per converted value, float under rule 2c.
        result = run_pass(_conv_model(), f"quantize:cpu={cpu},keep-slow-float=false", calibration=calib)
        weights = [t for t in result.model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims]
        assert max(int(np.abs(onnx.numpy_helper.to_array(t)).max()) for t in weights) == limit
        assert result.stats["cpu"]["kind"] == cpu and result.stats["cpu"]["source"] == f"forced:{cpu}"


MOBILE_BLOCK = """g (float[N, 16, 8, 8] x) => (float[N, 32, 8, 8] y) {
    e = Conv (x, We, Be)
    er = Relu(e)
    d = Conv <group = 64, pads = [1, 1, 1, 1]> (er, Wd, Bd)
    dr = Relu(d)
    p = GlobalAveragePool(dr)
    s1 = Conv (p, Ws1, Bs1)
    s1r = Relu(s1)
    s2 = Conv (s1r, Ws2, Bs2)
    s = HardSigmoid(s2)
    m = Mul(dr, s)
    h = HardSigmoid(m)
    q = Conv (h, Wq, Bq)
    r = Relu(q)
    y = Conv <pads = [1, 1, 1, 1]> (r, Wy, By)
}"""


def _mobile_block() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    shapes = {
        "We": (64, 16, 1, 1), "Wd": (64, 1, 3, 3), "Ws1": (16, 64, 1, 1), "Ws2": (64, 16, 1, 1),
        "Wq": (8, 64, 1, 1), "Wy": (32, 8, 3, 3),
    }  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        arrays[name] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        arrays["B" + name[1:]] = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
    return parse_model(MOBILE_BLOCK, initializers=arrays)


@pytest.mark.parametrize("cpu", ["avx2", "vnni"])
def test_layers_slower_in_int8_stay_float_with_their_reason_deterministically(cpu: str) -> None:
    model = _mobile_block()
    calib = {"x": np.random.default_rng(1).standard_normal((8, 16, 8, 8)).astype(np.float32)}
    runs = [run_pass(model, f"quantize:cpu={cpu}", calibration=calib) for _ in range(2)]
    skipped = runs[0].stats["skipped"]
    assert skipped == runs[1].stats["skipped"]  # the same decision every time: no timing involved
    assert "depthwise Conv" in skipped["Conv#2"] and "rule 2a" in skipped["Conv#2"]
    assert "1x1 spatial input" in skipped["Conv#5"] and "1x1 spatial input" in skipped["Conv#7"]
    assert f"on {cpu.upper()} CPUs" in skipped["Conv#2"]
    # Conv#0 (16->64 expand) reads the graph input and feeds the float depthwise Conv: 1024 / 80.
    assert "rule 2c" in skipped["Conv#0"] and "12.8 multiply-adds" in skipped["Conv#0"]
    # Conv#11 (64->8) reads a float HardSigmoid: 64 * 8 products for 64 converted inputs = 8 < 32.
    assert "rule 2c" in skipped["Conv#11"] and "8.0 multiply-adds" in skipped["Conv#11"]
    # Conv#13 (8->32, 3x3): 72 * 32 products for 8 + 32 converted values = 57.6: int8.
    assert "Conv#13" not in skipped
    assert runs[0].stats["quantized_nodes"] == 1
    everything = run_pass(model, f"quantize:cpu={cpu},keep-slow-float=false", calibration=calib)
    assert everything.stats["quantized_nodes"] >= 6
    assert not any(key.startswith("Conv") for key in everything.stats.get("skipped", {}))


def test_slow_rules_read_shapes_only() -> None:
    graph = ir.from_proto(_mobile_block()).graph
    nodes = {f"{node.op_type}#{i}": node for i, node in enumerate(graph)}
    cpu = CpuProfile(model="test", avx2=True)
    assert kernels.macs_per_conversion(nodes["Conv#0"]) == pytest.approx(16 * 64 / 80)
    assert kernels.macs_per_conversion(nodes["Conv#13"]) == pytest.approx(72 * 32 / 40)
    assert kernels.slow_reason(nodes["Conv#13"], cpu) is None
    assert kernels.slow_reason(nodes["Conv#2"], cpu) is not None
    assert kernels.slow_reason(nodes["Conv#0"], cpu) is None  # rule 2c needs the plan (islands)


def _shifted_model() -> onnx.ModelProto:
    """A 1x1 Conv whose weights all round the same way: int8 shifts each output mean by a known amount."""
    rng = np.random.default_rng(0)
    ints = rng.integers(-100, 100, (64, 64)).astype(np.float64)
    weight = (ints + 0.45) / 127.0
    weight[:, 0] = 1.0  # sets every channel's scale to exactly 1/127
    return parse_model(
        """g (float[N, 64, 4, 4] x) => (float[N, 64, 4, 4] y) {
            y = Conv (x, W)
        }""",
        initializers={"W": weight.reshape(64, 64, 1, 1).astype(np.float32)},
    )


@pytest.mark.parametrize("method", ["fast", "measured"])
def test_bias_correction_removes_a_known_mean_shift(method: str) -> None:
    model = _shifted_model()
    rng = np.random.default_rng(1)
    calib = {"x": rng.uniform(0.0, 1.0, (32, 64, 4, 4)).astype(np.float32)}
    test = {"x": rng.uniform(0.0, 1.0, (32, 64, 4, 4)).astype(np.float32)}
    (reference,) = run(model, test)
    # Each weight rounds down by 0.45/127 (weight bits 8: cpu=vnni), inputs average 0.5: the mean
    # of every output channel drops by about 63 * 0.45/127 * 0.5 = 0.11.
    spec = "quantize:cpu=vnni,keep-slow-float=false"  # one 1x1 Conv alone: float under rule 2c
    plain = run_pass(model, f"{spec},bias-correction=off", calibration=calib)
    corrected = run_pass(model, f"{spec},bias-correction={method}", calibration=calib)
    (before,), (after,) = run_unfused(plain.model, test), run_unfused(corrected.model, test)
    shift_before = np.abs((before - reference).mean(axis=(0, 2, 3)))
    shift_after = np.abs((after - reference).mean(axis=(0, 2, 3)))
    assert shift_before.mean() == pytest.approx(63 * 0.45 / 127 * 0.5, rel=0.1)
    assert shift_after.mean() < shift_before.mean() / 10
    assert np.mean((after - reference) ** 2) < np.mean((before - reference) ** 2) / 5
    record = corrected.stats["bias_correction"]
    assert record["layers"]["Conv#0"]["mean_abs_shift"] == pytest.approx(shift_before.mean(), rel=0.1)
    assert record["not_corrected"] == {} and plain.stats["bias_correction"] is None
    # The new bias is int32 behind a DequantizeLinear, so onnxruntime still fuses a QLinearConv.
    assert corrected.stats["bias_int32"] == 1
    assert op_counts(corrected.model)["Conv"] == 1


def test_bias_correction_keeps_an_unbiased_layer_unchanged_and_names_matmuls_it_skips() -> None:
    rng = np.random.default_rng(0)
    model = parse_model(
        """g (float[N, 32] x) => (float[N, 32] y) {
            h = MatMul (x, W1)
            r = Relu(h)
            y = Gemm <transB = 1> (r, W2, B2)
        }""",
        initializers={
            "W1": (rng.standard_normal((32, 64)) / 6).astype(np.float32),
            "W2": (rng.standard_normal((32, 64)) / 8).astype(np.float32),
            "B2": np.zeros(32, np.float32),
        },
    )
    calib = {"x": rng.standard_normal((32, 32)).astype(np.float32)}
    result = run_pass(model, "quantize:cpu=vnni,bias-correction=fast", calibration=calib)
    record = result.stats["bias_correction"]
    assert record["not_corrected"] == {"MatMul#0": "MatMul has no bias input"}
    assert set(record["layers"]) == {"Gemm#2"}
    test = {"x": rng.standard_normal((64, 32)).astype(np.float32)}
    (reference,), (quantized,) = run(model, test), run_unfused(result.model, test)
    assert np.corrcoef(reference.ravel(), quantized.ravel())[0, 1] > 0.999


def _kernel_agreement(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    """Cosine between onnxruntime's integer kernels and the same QDQ model computed in float (no fusion)."""
    (fused,), (reference,) = run(model, feed), run_unfused(model, feed)
    x, y = fused.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_weight_bits_for_this_cpu_keep_its_int8_kernels_exact() -> None:
    """Rule 1 on the machine at hand: the detected profile's model runs as its QDQ says; 8 bits saturate on AVX2."""
    calib = dict(np.load(DIGITS_CALIB))
    feed = {"input": np.load(DIGITS_TEST)["input"][:64]}
    # Simplified first: BatchNorm folded into the Convs, whose larger products reach int16's limit.
    detected = run_pass(onnx.load(DIGITS), ["simplify", "quantize:cpu=auto"], calibration=calib)
    assert _kernel_agreement(detected.model, feed) > 0.99999
    eight_bits = run_pass(onnx.load(DIGITS), ["simplify", "quantize:cpu=vnni"], calibration=calib)
    agreement = _kernel_agreement(eight_bits.model, feed)
    if profile("auto").vnni:
        assert agreement > 0.99999
    else:  # u8 x s8 pairs summed in int16 (vpmaddubsw): measured 0.9926 on an AMD EPYC, onnxruntime 1.32
        assert agreement < 0.999
