"""``quantize``: QDQ insertion for onnxruntime CPU and TensorRT, streamed calibration, accuracy fallback."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import onnx_ir as ir

from onnxshrink.activations import capture
from onnxshrink.calib_stats import CALIBRATORS, DEFAULT_PERCENTILE, StatsCollector, calibrated_range
from onnxshrink.errors import UsageError
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.passes import _qdq_budget as budget
from onnxshrink.passes import _qdq_place as place
from onnxshrink.passes import _qdq_plan as placement
from onnxshrink.passes import _qdq_rewrite as rewrite
from onnxshrink.registry import register_pass

logger = logging.getLogger(__name__)

_MODES = ("static", "dynamic", "weight-only")
# Samples per calibration run: every captured activation of a batch is alive at once (resnet18:
# ~2.6 GB peak at 32, see benchmarks/quantize.py), while per-sample speed barely changes.
_CALIBRATION_BATCH = 8
_TARGETS = ("ort-cpu", "ort-cuda", "tensorrt")
# Ops whose opset-13 form means something else at opset 21 (attribute moved to an input or
# semantics changed): 4-bit weights need opset 21, so a model using them must be converted first.
_CHANGED_BEFORE_21 = {
    **{op: 18 for op in ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2")},
    **{op: 18 for op in ("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "GridSample": 20,
    "DFT": 20,
    "GroupNormalization": 21,
}


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    mode: Literal["static", "dynamic", "weight-only"] = dataclasses.field(
        default="static",
        metadata={"help": "static: calibrated QDQ; dynamic: MatMul/Gemm with runtime activation scales; weight-only"},
    )
    target: Literal["ort-cpu", "ort-cuda", "tensorrt"] = dataclasses.field(
        default="ort-cpu", metadata={"help": "runtime whose placement rules to follow (../shared/QDQ_RULES.md)"}
    )
    activations: Literal["u8", "s8"] = dataclasses.field(
        default="u8", metadata={"help": "activation type on ort-cpu (tensorrt and ort-cuda: always symmetric s8)"}
    )
    weights: Literal["s8", "s4", "u4"] = dataclasses.field(
        default="s8", metadata={"help": "weight type; s4/u4 only with mode=weight-only (MatMulNBits)"}
    )
    per_channel: bool = dataclasses.field(default=True, metadata={"help": "one weight scale per output channel"})
    reduce_range: Literal["auto", "on", "off"] = dataclasses.field(
        default="auto",
        metadata={
            "help": "7-bit weights [-63, 63]: exact on x86 without VNNI, where u8 x s8 int16 pair sums "
            "saturate; auto: on for ort-cpu with u8 activations (static) or dynamic mode"
        },
    )
    block_size: int = dataclasses.field(
        default=32, metadata={"help": "4-bit block length along K: a power of 2, >= 16"}
    )
    calibrate: Literal["minmax", "percentile", "entropy", "mse"] = dataclasses.field(
        default="minmax", metadata={"help": "how activation ranges are chosen from the streamed statistics"}
    )
    percentile: float = dataclasses.field(
        default=DEFAULT_PERCENTILE, metadata={"help": "percentile kept by calibrate=percentile, 50 < p <= 100"}
    )
    samples: int = dataclasses.field(default=128, metadata={"help": "calibration samples read (static mode)"})
    include: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "quantize only layers whose op type or node-name glob matches (empty: all)"}
    )
    exclude: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "never quantize layers whose op type or node-name glob matches"}
    )
    max_drop: float | None = dataclasses.field(
        default=None,
        metadata={"help": "budget: top-1 disagreement with the float model on calibration samples (static)"},
    )
    min_cosine: float | None = dataclasses.field(
        default=None, metadata={"help": "budget: output cosine with the float model on calibration samples (static)"}
    )

    def __post_init__(self) -> None:
        for key, value, valid in (
            ("mode", self.mode, _MODES),
            ("target", self.target, _TARGETS),
            ("activations", self.activations, ("u8", "s8")),
            ("weights", self.weights, ("s8", "s4", "u4")),
            ("calibrate", self.calibrate, tuple(CALIBRATORS)),
            ("reduce-range", self.reduce_range, ("auto", "on", "off")),
        ):
            if value not in valid:
                raise UsageError(f"quantize: bad {key} {value!r}; valid: {', '.join(valid)}")
        if self.weights != "s8" and self.mode != "weight-only":
            raise UsageError(f"quantize: weights={self.weights} needs mode=weight-only (4-bit runs as MatMulNBits)")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UsageError(f"quantize: block-size must be a power of 2 >= 16, got {self.block_size}")
        if self.samples < 1:
            raise UsageError(f"quantize: samples must be >= 1, got {self.samples}")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"quantize: percentile must be in (50, 100], got {self.percentile}")
        if self.max_drop is not None and not 0 <= self.max_drop <= 1:
            raise UsageError(f"quantize: max-drop must be in [0, 1], got {self.max_drop}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise UsageError(f"quantize: min-cosine must be in [-1, 1], got {self.min_cosine}")
        if (self.max_drop is not None or self.min_cosine is not None) and self.mode != "static":
            raise UsageError("quantize: max-drop/min-cosine apply to mode=static only")


def _default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def _require_opset(model: ir.Model, version: int, why: str) -> str | None:
    """Raises the default-domain opset to ``version`` when no op changes meaning; returns what changed."""
    current = _default_opset(model)
    if current >= version:
        return None
    if current < 13:  # Softmax, Split, Squeeze, ReduceSum... changed meaning at 13
        raise UsageError(f"quantize: {why} needs opset {version}; the model has opset {current} (convert it first)")
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        changed_at = _CHANGED_BEFORE_21.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if changed_at is not None and current < changed_at <= version:
            raise UsageError(
                f"quantize: {why} needs opset {version}; node '{node.name}' ({node.op_type}) changed meaning "
                f"after opset {current}: convert the model first"
            )
    model.opset_imports[""] = version
    if version >= 21 and (model.ir_version or 0) < 10:
        model.ir_version = 10
    return f"{current}->{version}"


@register_pass
class QuantizePass(ShrinkPass):
    """Quantizes layers to int8 (or 4-bit weights) with Q/DQ placed by the target's rules (lossy).

    Rules (main graph; subgraphs and functions stay float). ``static`` placement follows
    ../shared/QDQ_RULES.md; the plan is computed as data, then applied:

    1. Layers are Conv, MatMul, Gemm (tensorrt: also ConvTranspose) whose weight (input 1) is a
       constant float32 initializer; ``include``/``exclude`` select by op type or node-name glob.
       Weights are symmetric narrow-range s8 ([-127, 127]; [-63, 63] with ``reduce-range``,
       the default for ort-cpu with u8 activations and for dynamic mode, because x86 AVX2
       kernels add u8 x s8 products in saturating int16 pairs), per output channel (Conv axis
       0, ConvTranspose axis 1, MatMul ``[K, N]`` axis 1, Gemm axis 0 with transB=1 else 1).
    2. Calibration: the placement is first made as if every range were known; the tensors it
       would quantize (only those) are captured in one onnxruntime session and ``samples``
       samples are streamed through it in batches of 8 into fixed-size histograms; ranges come
       from ``calibrate``, then the placement is made again with them. Non-finite values are
       counted and ignored; a tensor with no finite value leaves its layer float. Scales are
       always finite and > 0.
    3. ``target=ort-cpu``: activations ``u8`` (or ``s8``) asymmetric. Each layer gets DQ on its
       inputs and a Q on its output that is the output's only consumer (all readers use the DQ);
       MatMul/Gemm outputs are quantized only when an int8 kernel reads them (else
       MatMulIntegerToFloat / QGemm with float output). Bias is int32 with scale
       ``x_scale * w_scale`` and zero point 0, float when int32 would overflow.
    4. A lone Relu, or Clip with min 0, after a layer or elementwise op is removed only when the
       following Q's computed zero point is the type's minimum (it already clips at 0), and for
       Clip when its max is at least the Q's largest representable value.
    5. Data-movement ops (Reshape, Transpose, Flatten, MaxPool, Slice, ...) pass int8 through:
       the Q before them takes the qparams of the int8 tensor after them.
    6. Add, Mul, Concat, AveragePool, GlobalAveragePool, Sigmoid, LeakyRelu are quantized only
       when all their inputs are int8 already and an int8 kernel reads their output; no Q/DQ is
       put around ops without an integer kernel.
    7. ``target=tensorrt``: symmetric s8, zero points 0, float bias, Q/DQ only on the inputs of
       layers (no output Q); an Add fed by a quantized layer gets Q/DQ on its other (residual)
       input; GEMMs with K or N < 16 and convolutions with < 16 channels (unless the first, or
       group 1 with multiples of 8 and a square kernel) stay float. ``target=ort-cuda``: the
       ort-cpu placement with symmetric s8 activations (zero point 0, so no Relu is folded).
    8. ``mode=dynamic``: MatMul/Gemm only (never ConvInteger) become DynamicQuantizeLinear +
       MatMulInteger (ORT's DynamicQuantizeMatMul); no calibration.
    9. ``mode=weight-only``: MatMul/Gemm weights become s8 per channel, or ``s4``/``u4`` blocks of
       ``block-size`` along K behind DequantizeLinear (opset 21, raised when safe), which ORT
       runs as MatMulNBits.
    10. ``max-drop``/``min-cosine``: each layer's sensitivity (output damage when it alone is
        quantized) is measured on calibration samples; the most damaging layers are kept float
        until the budget holds. Every layer's sensitivity and decision go into the stats.
    """

    name = "quantize"
    exact = False
    Options = QuantizeOptions

    def call(self, model: ir.Model) -> ShrinkPassResult:
        options: QuantizeOptions = self.options
        started = time.perf_counter()
        if options.mode == "static":
            _require_opset(model, 13, "per-channel QuantizeLinear")
            stats = self._static(model, options)
        else:
            stats = self._weights_only(model, options)
        stats["seconds"] = time.perf_counter() - started
        modified = stats["q_nodes"] + stats["weights_quantized"] > 0
        return ShrinkPassResult(model, modified=modified, stats=stats)

    def _calibrate(self, model: ir.Model, names: list[str], options: QuantizeOptions) -> tuple[StatsCollector, float]:
        started = time.perf_counter()
        collector = StatsCollector(names)
        for feed, arrays in capture(
            self.context, model, names, pass_name=self.name, samples=options.samples, batch_size=_CALIBRATION_BATCH
        ):
            collector.update(arrays, len(next(iter(feed.values()))) if feed else 0)
        if collector.samples == 0:
            raise UsageError("quantize: the calibration data holds no sample")
        return collector, time.perf_counter() - started

    def _static(self, model: ir.Model, options: QuantizeOptions) -> dict[str, Any]:
        original = model.clone()
        symmetric = options.target != "ort-cpu"
        ranges: dict[str, tuple[float, float] | None] = {}
        collector: StatsCollector | None = None

        def range_of(name: str) -> tuple[float, float] | None:
            if collector is None:  # the dry run: every tensor as if calibrated
                return (-1.0, 1.0)
            if name not in ranges:
                stats = collector.stats.get(name)
                ranges[name] = (
                    calibrated_range(stats, options.calibrate, symmetric=symmetric, percentile=options.percentile)
                    if stats is not None and stats.finite
                    else None
                )
            return ranges[name]

        def make_plan(float_layers: tuple[str, ...] = ()) -> placement.QuantPlan:
            return place.plan_static(
                original,
                target=options.target,
                dtype=options.activations,
                per_channel=options.per_channel,
                include=options.include,
                exclude=options.exclude,
                range_of=range_of,
                float_layers=float_layers,
            )

        # Only the tensors a placement can quantize are captured: the plan with every range known
        # names them (BERT-base: ~50 of 429 float activations).
        wanted = list(make_plan().activations)
        collector, calibration_seconds = self._calibrate(model, wanted, options)
        plan = make_plan()
        budget_stats: dict[str, Any] | None = None
        if options.max_drop is not None or options.min_cosine is not None:
            judge = budget.Judge(
                self.context, original, self.name, options.samples, options.max_drop, options.min_cosine
            )
            bits = _weight_bits(options)

            def applied(model: ir.Model, plan: placement.QuantPlan) -> ir.Model:
                copy = model.clone()
                rewrite.apply_plan(copy, plan, bits)
                return copy

            plan, budget_stats = budget.fit_budget(judge, plan, make_plan, applied)
        counts = rewrite.apply_plan(model, plan, _weight_bits(options))
        nonfinite = collector.nonfinite()
        if nonfinite:
            logger.warning("quantize: %d tensors held non-finite values (ignored for ranges)", len(nonfinite))
        return {
            "mode": options.mode,
            "target": options.target,
            "calibrator": options.calibrate,
            "samples": collector.samples,
            "calibration_seconds": calibration_seconds,
            "calibration_tensors": len(collector.stats),
            "statistics_bytes": collector.nbytes,
            "nonfinite": nonfinite,
            "quantized_nodes": len(plan.layers),
            "weight_bits": _weight_bits(options),
            "folded_activations": len(plan.folds),
            "nodes": budget.node_summaries(plan),
            "left_float": plan.left_float,
            "budget": budget_stats,
            **counts,
        }

    def _weights_only(self, model: ir.Model, options: QuantizeOptions) -> dict[str, Any]:
        bits = options.weights
        opset_change = _require_opset(model, 21 if bits != "s8" else 13, f"{bits} weights")
        view = placement.GraphView(model.graph)
        writer = rewrite.QdqWriter(model.graph)
        nodes: dict[str, str] = {}
        left_float: dict[str, str] = {}
        convert: Callable[[ir.Node], str]
        if options.mode == "dynamic":

            def convert(node: ir.Node) -> str:
                return rewrite.dynamic_matmul(node, writer, options.per_channel, _weight_bits(options))
        else:

            def convert(node: ir.Node) -> str:
                return rewrite.weight_only(node, writer, bits, options.per_channel, options.block_size)

        for key, node in view.nodes.items():
            if not view.is_onnx(node, placement.TRT_LAYERS):
                continue
            why = budget.weight_layer_problem(node, options.mode, bits)
            if why is None and options.include and placement.matches(node, key, options.include) is None:
                why = f"not matched by include={','.join(options.include)}"
            if why is None and (pattern := placement.matches(node, key, options.exclude)) is not None:
                why = f"excluded by '{pattern}'"
            if why is not None:
                left_float[key] = why
                continue
            nodes[key] = convert(node)
        rewrite._drop_unused_initializers(model.graph)
        return {
            "mode": options.mode,
            "target": options.target,
            "opset_raised": opset_change,
            "quantized_nodes": len(nodes),
            "nodes": nodes,
            "left_float": left_float,
            **writer.counts,
        }


def _weight_bits(options: QuantizeOptions) -> int:
    """7 where u8 x s8 products could saturate int16 pair sums (x86 AVX2 kernels), else 8."""
    if options.mode == "weight-only":
        return 8  # activations stay float: no integer products
    if options.reduce_range == "auto":
        u8 = options.mode == "dynamic" or options.activations == "u8"
        return 7 if options.target == "ort-cpu" and u8 else 8
    return 7 if options.reduce_range == "on" else 8
