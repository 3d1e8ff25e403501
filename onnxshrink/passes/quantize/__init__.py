"""``quantize``: QDQ insertion for onnxruntime CPU and TensorRT, streamed calibration, accuracy fallback."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import onnx_ir as ir

from onnxshrink.activations import capture
from onnxshrink.errors import UsageError
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.passes.quantize import budget as budget
from onnxshrink.passes.quantize import place as place
from onnxshrink.passes.quantize import plan as placement
from onnxshrink.passes.quantize import rewrite as rewrite
from onnxshrink.passes.quantize.opset import require_opset
from onnxshrink.passes.quantize.statistics import CALIBRATORS, DEFAULT_PERCENTILE, StatsCollector, calibrated_range
from onnxshrink.registry import register_pass
from onnxshrink.selection import selection_reason

logger = logging.getLogger(__name__)

_MODES = ("static", "dynamic", "weight-only")
# Samples per calibration run: every captured activation of a batch is alive at once (resnet18:
# ~2.6 GB peak at 32, see benchmarks/quantize.py), while per-sample speed barely changes.
_CALIBRATION_BATCH = 8
_TARGETS = ("ort-cpu", "ort-cuda", "tensorrt")


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
    activation_matmuls: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "static ort-cpu/ort-cuda: also MatMuls of two activations (attention QK^T, probs x V); "
            "off by default: on AVX2 BERT-base it was no faster and tripled calibration time"
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

    min_speedup: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "static: time float and quantized model on a calibration batch; below this speedup "
            "the model is returned unchanged (int8 kernels can be slower than float on some CPUs)"
        },
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
        if self.min_speedup is not None and (self.mode != "static" or not self.min_speedup > 0):
            raise UsageError(f"quantize: min-speedup must be > 0 and needs mode=static, got {self.min_speedup}")


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
       MatMulIntegerToFloat / QGemm with float output). With ``activation-matmuls``,
       a MatMul of two activations (attention's QKᵀ and probabilities·V) gets DQ on both
       inputs the same way. Bias is int32 with scale
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
       runs as MatMulNBits. Embedding tables (Gather along axis 0 of a constant float32
       ``[rows, hidden]`` initializer, non-constant indices) become com.microsoft
       GatherBlockQuantized on a table quantized in blocks along the row: ``s4``/``u4`` blocks of
       ``block-size``, or ``s8`` (stored u8 with zero point 128) in blocks of the largest power of
       2 dividing the row. DequantizeLinear → Gather would dequantize the whole table each run.
       With ``target=ort-cpu``, static and dynamic modes store such tables as ``s8`` the same way.
    10. ``max-drop``/``min-cosine``: each layer's sensitivity (output damage when it alone is
        quantized) is measured on calibration samples; the most damaging layers are kept float
        until the budget holds. Every layer's sensitivity and decision go into the stats.
    11. ``min-speedup`` (static): the float and the quantized model are timed on one
        calibration batch (up to 32 samples, median of 7 interleaved runs); below the ratio the
        input model is returned unchanged and the stats say why.
    """

    name = "quantize"
    exact = False
    Options = QuantizeOptions

    def call(self, model: ir.Model) -> ShrinkPassResult:
        options: QuantizeOptions = self.options
        started = time.perf_counter()
        if options.mode == "static":
            require_opset(model, 13, "per-channel QuantizeLinear")
            before = model.clone() if options.min_speedup is not None else None
            stats = self._static(model, options)
            if before is not None and options.min_speedup is not None:
                speed = budget.measure_speedup(self.context, before, model, self.name, options.samples)
                kept = speed["speedup"] >= options.min_speedup
                stats["speed"] = {**speed, "decision": "quantized" if kept else "kept float: below min-speedup"}
                if not kept:
                    logger.warning(
                        "quantize: %.2fx < min-speedup %g: model left float", speed["speedup"], options.min_speedup
                    )
                    stats["seconds"] = time.perf_counter() - started
                    model.graph = before.graph  # the pass works in place: the model object stays
                    model.opset_imports.update(before.opset_imports)
                    return ShrinkPassResult(model, modified=False, stats=stats)
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
                activation_matmuls=options.activation_matmuls,
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
        tables: dict[str, str] = {}
        if options.target == "ort-cpu":  # GatherBlockQuantized is an onnxruntime contrib op
            writer = rewrite.QdqWriter(model.graph)
            self._gather_tables(model, placement.GraphView(model.graph), writer, tables, plan.left_float, "s8")
            rewrite._drop_unused_initializers(model.graph)
            counts["weights_quantized"] += writer.counts["weights_quantized"]
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
            "tables": tables,
            "left_float": plan.left_float,
            "budget": budget_stats,
            **counts,
        }

    def _weights_only(self, model: ir.Model, options: QuantizeOptions) -> dict[str, Any]:
        bits = options.weights
        opset_change = require_opset(model, 21 if bits != "s8" else 13, f"{bits} weights")
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
            why = budget.weight_layer_problem(node, options.mode, bits) or selection_reason(
                node, key, options.include, options.exclude
            )
            if why is not None:
                left_float[key] = why
                continue
            nodes[key] = convert(node)
        if options.mode == "weight-only" or options.target == "ort-cpu":
            table_bits = bits if options.mode == "weight-only" else "s8"
            self._gather_tables(model, view, writer, nodes, left_float, table_bits)
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

    def _gather_tables(
        self,
        model: ir.Model,
        view: placement.GraphView,
        writer: rewrite.QdqWriter,
        nodes: dict[str, str],
        left_float: dict[str, str],
        bits: str,
    ) -> None:
        """Embedding tables (Gather from a constant 2-D table) → GatherBlockQuantized (rule 9b)."""
        options: QuantizeOptions = self.options
        for key, node in view.nodes.items():
            if not view.is_onnx(node, ("Gather",)):
                continue
            why = rewrite.gather_table_problem(node) or selection_reason(node, key, options.include, options.exclude)
            if why is not None:
                if node.inputs[0] is not None and node.inputs[0].const_value is not None:
                    left_float[key] = why  # only tables: a Gather of activations is no candidate
                continue
            nodes[key] = rewrite.gather_table(node, writer, bits, options.block_size)
            model.opset_imports.setdefault("com.microsoft", 1)


def _weight_bits(options: QuantizeOptions) -> int:
    """7 where u8 x s8 products could saturate int16 pair sums (x86 AVX2 kernels), else 8."""
    if options.mode == "weight-only":
        return 8  # activations stay float: no integer products
    if options.reduce_range == "auto":
        u8 = options.mode == "dynamic" or options.activations == "u8"
        return 7 if options.target == "ort-cpu" and u8 else 8
    return 7 if options.reduce_range == "on" else 8
