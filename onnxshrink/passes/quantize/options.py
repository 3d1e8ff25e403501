"""The options of ``quantize``, each declared with what users may give (checked once by the pass base)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from onnxshrink.cpu import CPU_CHOICES, CpuProfile, profile
from onnxshrink.passbase import option
from onnxshrink.passes.quantize.kernels import weight_bits
from onnxshrink.passes.quantize.statistics import CALIBRATORS, DEFAULT_PERCENTILE

MODES = ("static", "dynamic", "weight-only")
TARGETS = ("ort-cpu", "ort-cuda", "tensorrt")


def _smooth_problem(value: str) -> str | None:
    if value in ("off", "auto"):
        return None
    try:
        alpha = float(value)
    except ValueError:
        return f"must be off, auto or a migration strength in (0, 1), got {value!r}"
    return None if 0.0 < alpha < 1.0 else f"a migration strength must be in (0, 1), got {value}"


def _block_size_problem(value: int) -> str | None:
    if value >= 16 and not value & (value - 1):
        return None
    return f"must be a power of 2 >= 16, got {value}"


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    """What ``quantize`` does; the placement rules per target are in docs/quantization.md."""

    mode: Literal["static", "dynamic", "weight-only"] = option(
        "static",
        "static: calibrated QDQ; dynamic: MatMul/Gemm with runtime activation scales; weight-only",
        choices=MODES,
    )
    target: Literal["ort-cpu", "ort-cuda", "tensorrt"] = option(
        "ort-cpu", "runtime whose placement rules to follow (docs/quantization.md)", choices=TARGETS
    )
    activations: Literal["u8", "s8"] = option(
        "u8", "activation type on ort-cpu (tensorrt and ort-cuda: always symmetric s8)", choices=("u8", "s8")
    )
    weights: Literal["s8", "s4", "u4"] = option(
        "s8", "weight type; s4/u4 only with mode=weight-only (MatMulNBits)", choices=("s8", "s4", "u4")
    )
    per_channel: bool = option(True, "one weight scale per output channel")
    reduce_range: Literal["auto", "on", "off"] = option(
        "auto",
        "7-bit weights [-63, 63]: exact on x86 without VNNI, where u8 x s8 int16 pair sums "
        "saturate; auto: on for ort-cpu with u8 activations (static) or dynamic mode when the "
        "CPU (see cpu) has no VNNI/AMX/ARM dot product",
        choices=("auto", "on", "off"),
    )
    cpu: Literal["auto", "avx2", "vnni"] = option(
        "auto",
        "ort-cpu: the CPU to choose kernels for; auto: this machine's (detected at run time), "
        "avx2/vnni: an x86 CPU without/with VNNI (docs/quantization.md, CPU-dependent choices)",
        choices=CPU_CHOICES,
    )
    keep_slow_float: bool = option(
        True,
        "static ort-cpu: leave float the layers whose int8 kernel is slower than float on the "
        "CPU (depthwise Conv, Conv on 1x1 inputs, < 48 multiply-adds per converted value; "
        "MaxPool not after an int8 Conv, AveragePool)",
    )
    bias_correction: Literal["off", "fast", "measured"] = option(
        "fast",
        "static: subtract each quantized Conv/Gemm's per-channel output mean shift from its bias; "
        "fast (default): computed from the float layer inputs; measured: both models run the calibration data",
        choices=("off", "fast", "measured"),
    )
    smooth: str = option(
        "auto",
        "static: SmoothQuant-style scale migration for MatMul/Gemm inputs with outlier channels; "
        "auto: per input, the strength of a grid with the lowest layer output error on calibration rows "
        "(left alone unless it gains 2 %); a number in (0, 1): that strength for every MatMul/Gemm input",
        check=_smooth_problem,
    )
    equalize: bool = option(
        False,
        "static: cross-layer equalization of Conv->(Relu|LeakyRelu)?->Conv pairs (exact in float)",
    )
    activation_matmuls: bool = option(
        False,
        "static ort-cpu/ort-cuda: also MatMuls of two activations (attention QK^T, probs x V); "
        "off by default: on AVX2 BERT-base it was no faster and tripled calibration time",
    )
    block_size: int = option(32, "4-bit block length along K: a power of 2, >= 16", check=_block_size_problem)
    rounding: Literal["auto", "nearest", "gptq"] = option(
        "auto",
        "weight-only s4/u4 MatMul/Gemm weights: nearest (each weight to its nearest level); gptq: "
        "GPTQ error feedback from the calibration inputs' Gram matrices, with clipping-searched "
        "block scales (needs calibration data); auto: gptq when calibration data is given, else nearest. "
        "static int8 Conv/Gemm/MatMul weights: gptq under nearest's scales; auto: gptq for MatMul/Gemm "
        "with at least as many calibration rows as inputs, nearest for the rest",
        choices=("auto", "nearest", "gptq"),
    )
    calibrate: Literal["minmax", "percentile", "entropy", "mse", "auto"] = option(
        "minmax",
        "how activation ranges are chosen from the streamed statistics; auto (static): per tensor, "
        "the calibrator whose range gives the Conv/Gemm/MatMul layers reading it the lowest output "
        "error on sampled calibration inputs (minmax unless another is 2 % lower)",
        choices=(*CALIBRATORS, "auto"),
    )
    percentile: float = option(
        DEFAULT_PERCENTILE, "percentile kept by calibrate=percentile, 50 < p <= 100", above=50.0, maximum=100.0
    )
    samples: int = option(128, "calibration samples read (static mode; weight-only with rounding=gptq)", minimum=1)
    include: tuple[str, ...] = option((), "quantize only layers whose op type or node-name glob matches (empty: all)")
    exclude: tuple[str, ...] = option((), "never quantize layers whose op type or node-name glob matches")
    max_drop: float | None = option(
        None,
        "budget: top-1 disagreement with the float model on calibration samples (static)",
        minimum=0.0,
        maximum=1.0,
    )
    min_cosine: float | None = option(
        None, "budget: output cosine with the float model on calibration samples (static)", minimum=-1.0, maximum=1.0
    )
    min_speedup: float | None = option(
        None,
        "static: time float and quantized model on a calibration batch; below this speedup "
        "the model is returned unchanged (int8 kernels can be slower than float on some CPUs)",
        above=0.0,
    )

    def problem(self) -> str | None:
        """What is wrong with the options together (each alone is checked by its metadata)."""
        if self.weights != "s8" and self.mode != "weight-only":
            return f"weights={self.weights} needs mode=weight-only (4-bit runs as MatMulNBits)"
        if (self.max_drop is not None or self.min_cosine is not None) and self.mode != "static":
            return "max-drop/min-cosine apply to mode=static only"
        if (self.smooth not in ("off", "auto") or self.equalize) and self.mode != "static":
            return f"smooth/equalize need mode=static, got mode={self.mode}"
        if self.rounding == "gptq" and (self.mode == "dynamic" or (self.weights == "s8" and self.mode != "static")):
            return (
                "rounding=gptq needs mode=static, or mode=weight-only with weights=s4 or u4, "
                f"got mode={self.mode}, weights={self.weights}"
            )
        if self.min_speedup is not None and self.mode != "static":
            return f"min-speedup needs mode=static, got mode={self.mode}"
        return None

    @property
    def cpu_profile(self) -> CpuProfile:
        """The CPU the ort-cpu choices are made for (``cpu``)."""
        return profile(self.cpu)

    @property
    def weight_bits(self) -> int:
        """7 where u8 x s8 products could saturate int16 pair sums (x86 AVX2 kernels), else 8."""
        if self.mode == "weight-only":
            return 8  # activations stay float: no integer products
        if self.reduce_range == "auto":
            u8 = self.mode == "dynamic" or self.activations == "u8"
            return weight_bits(self.cpu_profile, u8) if self.target == "ort-cpu" else 8
        return 7 if self.reduce_range == "on" else 8
