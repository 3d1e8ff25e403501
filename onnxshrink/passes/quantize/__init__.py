"""``quantize``: QDQ insertion for onnxruntime CPU and TensorRT, streamed calibration, accuracy fallback."""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from onnxshrink import progress
from onnxshrink.activations import KeptBatches, capture, release_freed_memory
from onnxshrink.data.samples import batch_samples
from onnxshrink.errors import UsageError
from onnxshrink.ir.constants import lift_weight_constants
from onnxshrink.ir.graphs import graph_likes, is_onnx_op, taken_names
from onnxshrink.passbase import NoMatch, ShrinkPass, ShrinkPassResult
from onnxshrink.passes.quantize import bias_correction as bias_correction
from onnxshrink.passes.quantize import budget as budget
from onnxshrink.passes.quantize import calibrators as calibrators
from onnxshrink.passes.quantize import equalize as equalize
from onnxshrink.passes.quantize import gptq as gptq
from onnxshrink.passes.quantize import hard_swish as hard_swish
from onnxshrink.passes.quantize import int8_rounding as int8_rounding
from onnxshrink.passes.quantize import kernels as kernels
from onnxshrink.passes.quantize import place as place
from onnxshrink.passes.quantize import plan as placement
from onnxshrink.passes.quantize import rewrite as rewrite
from onnxshrink.passes.quantize import smooth as smooth
from onnxshrink.passes.quantize.opset import opset_needed, raise_opset
from onnxshrink.passes.quantize.options import QuantizeOptions
from onnxshrink.passes.quantize.scopes import (
    body_value_names,
    control_flow_scopes,
    exposing_bodies,
    read_outer_values_locally,
    unique_value_names,
)
from onnxshrink.passes.quantize.statistics import ChannelStats, StatsCollector, TensorStats, calibrated_range
from onnxshrink.registry import register_pass
from onnxshrink.runtime import RuntimeUnavailable
from onnxshrink.selection import unselected

__all__ = ["QuantizeOptions", "QuantizePass"]

logger = logging.getLogger(__name__)

# Samples per calibration run: every captured activation of a batch is alive at once (resnet18:
# ~2.6 GB peak at 32, see benchmarks/quantize.py), while per-sample speed barely changes.
_CALIBRATION_BATCH = 8
# Layer inputs bias-correction=fast reads, kept from the calibration run when they fit (BERT-base:
# the pooler's, 3 KB a sample); past this, bias correction captures them in a run of its own.
_KEPT_BYTES = 64 << 20


def _settled_plan(
    model: ir.Model,
    make_plan: Callable[[], placement.QuantPlan],
    slow: dict[str, str],
    options: QuantizeOptions,
    speed_rules: bool,
) -> placement.QuantPlan:
    """The plan once kernels.py's island rounds settle: each round's islands join ``slow`` (in place)."""
    plan = make_plan()
    for _ in range(4 if speed_rules else 0):
        found = kernels.islands(model, plan, options.cpu_profile)
        if not found:
            break
        slow.update(found)
        plan = make_plan()
    return plan


def _nested_layers(model: ir.Model, *, bodies_placed: bool) -> dict[str, str]:
    """Layers that stay float because of where they are: functions, and bodies the mode does not reach."""
    placed = {id(scope.graph) for scope in control_flow_scopes(model)} if bodies_placed else {id(model.graph)}
    skipped: dict[str, str] = {}
    for scope in graph_likes(model):
        if id(scope) in placed:
            continue
        if isinstance(scope, ir.Function):
            where = f"in function '{scope.name}': quantize does not rewrite functions"
        elif bodies_placed:
            where = f"in subgraph '{scope.name}' of a node other than If/Loop/Scan"
        else:
            where = f"in subgraph '{scope.name}': this mode works on the main graph only"
        for index, node in enumerate(scope):
            table = is_onnx_op(node, "Gather") and node.inputs[0] is not None and node.inputs[0].const_value is not None
            if table or is_onnx_op(node, *placement.TRT_LAYERS):
                skipped[f"{scope.name}/{node.name or f'{node.op_type}#{index}'}"] = where
    return skipped


@dataclasses.dataclass
class _PendingSmooth:
    """Smoothing whose statistics the calibration run fills; ``record`` is the report's, once applied."""

    found: smooth.Candidates
    error_model: smooth.ErrorModel
    record: dict[str, Any] | None = None


@register_pass
class QuantizePass(ShrinkPass[QuantizeOptions]):
    """Quantizes layers to int8 (or 4-bit weights) with Q/DQ placed by the target's rules (lossy).

    Rules (``static``: the main graph and every If/Loop/Scan body, each placed as a graph of its
    own, keys ``If_0/then_branch/<node>``; ``dynamic``/``weight-only``: the main graph; layers in
    functions always stay float, each named in ``skipped``). ``static`` placement follows
    docs/quantization.md; the plan is computed as data, then applied to a copy of the model,
    which replaces the model only when it is kept:

    1. Layers are Conv, MatMul, Gemm (tensorrt: also ConvTranspose) whose weight (input 1) is a
       constant float32 initializer; ``include``/``exclude`` select by op type or node-name glob.
       Weights are symmetric narrow-range s8 ([-127, 127]; [-63, 63] with ``reduce-range``,
       the default for ort-cpu with u8 activations and for dynamic mode on a CPU without VNNI
       (``cpu``: detected, or forced avx2/vnni), because x86 AVX2 kernels add u8 x s8
       products in saturating int16 pairs), per output channel (Conv axis
       0, ConvTranspose axis 1, MatMul ``[K, N]`` axis 1, Gemm axis 0 with transB=1 else 1).
    2. Calibration: the placement is first made as if every range were known; the tensors it
       would quantize (only those; of a chain through data-movement ops, rule 5, only its first
       tensor, whose range the chain's Qs take) are captured in one onnxruntime session and ``samples``
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
       the Q before them takes the qparams of the int8 tensor after them. With the ort-cpu speed
       rules (``keep-slow-float``) a MaxPool does only after an int8 Conv (through Relu/Clip or
       Concat), where onnxruntime runs it channels-last, and AveragePool stays float.
    6. Add, Mul, Concat, AveragePool, GlobalAveragePool, Sigmoid, LeakyRelu are quantized only
       when all their inputs are int8 already and an int8 kernel reads their output; no Q/DQ is
       put around ops without an integer kernel. An Add/Mul may take one one-element constant
       operand, and a Div a one-element constant divisor (run as a Mul by its reciprocal): the
       constant is stored as one u8/s8 level (QLinearAdd/QLinearMul). A fused hard-swish
       (``HardSwish``, or ``x * HardSigmoid(x, 1/6, 0.5)``) is planned written out as
       ``x * Clip(x + 3, 0, 6) / 6`` so that this applies to it, and fused again where it stays
       float (``hard_swish`` in the stats: ``written_out``, ``fused_again``).
    7. ``target=tensorrt``: symmetric s8, zero points 0, float bias, Q/DQ only on the inputs of
       layers (no output Q); an Add fed by a quantized layer gets Q/DQ on its other (residual)
       input; GEMMs with K or N < 16 and convolutions with < 16 channels (unless the first, or
       group 1 with multiples of 8 and a square kernel) stay float. ``target=ort-cuda``: the
       ort-cpu placement with symmetric s8 activations (zero point 0, so no Relu is folded).
    8. ``mode=dynamic``: MatMul/Gemm only (never ConvInteger) become DynamicQuantizeLinear +
       MatMulInteger (ORT's DynamicQuantizeMatMul); no calibration.
    9. ``mode=weight-only``: MatMul/Gemm weights become s8 per channel, or ``s4``/``u4`` blocks of
       ``block-size`` along K behind DequantizeLinear (opset 21), which ORT
       runs as MatMulNBits. Embedding tables (Gather along axis 0 of a constant float32
       ``[rows, hidden]`` initializer, non-constant indices) become com.microsoft
       GatherBlockQuantized on a table quantized in blocks along the row: ``s4``/``u4`` blocks of
       ``block-size``, or ``s8`` (stored u8 with zero point 128) in blocks of the largest power of
       2 dividing the row. DequantizeLinear → Gather would dequantize the whole table each run.
       With ``target=ort-cpu``, static and dynamic modes store such tables as ``s8`` the same way.
    10. ``max-drop``/``min-cosine``: layers are ranked by their damage alone, measured in one
        probe session (each layer quantized behind a switch, a few samples per layer; probe.py),
        or, inside If/Loop/Scan bodies, predicted from the calibration statistics (the relative
        noise its Qs and weight rounding add, no model run). The fully quantized candidate is
        judged on calibration samples, and when it misses the budget the smallest float prefix
        of that ranking meeting it is searched with judged candidates (O(log layers) of them).
        Every layer's prediction, damage alone and decision, and every judged candidate, go
        into the stats.
    11. ``min-speedup`` (static): the float and the quantized model are timed on one
        calibration batch (up to 32 samples, median of 7 interleaved runs); below the ratio the
        input model is returned unchanged and the stats say why.
    12. Q/DQ need opset 13 (4-bit weights: 21). An older opset (11 or later) is raised only when no
        op of the model changes meaning between the two versions (else the pass refuses the
        model), and only when something is quantized: a model left float keeps its opset.
    13. Bodies (static): calibration runs a copy that carries each wanted body value out (an
        extra output of both If branches, the untaken one giving an empty tensor; an extra scan
        output of a Loop/Scan body). A layer whose inputs no sample reached stays float ("no
        calibration sample ran this body"); a body layer reading an enclosing graph's
        activation reads a local Identity of it, removed again where no Q reads it. When
        onnxruntime cannot stack a Loop/Scan body value (its shape changes between iterations),
        calibration runs again without the Loop/Scan body values, whose layers stay float.
    14. ``keep-slow-float`` (static ort-cpu, on by default): layers whose int8 kernel is slower
        than float on the CPU stay float, each with its reason (kernels.py: depthwise Conv, Conv
        on a 1x1 spatial input, fewer than 48 multiply-adds per converted value). The CPU
        profile is in the stats.
    15. ``bias-correction`` (``fast`` by default): each quantized Conv/Gemm's per-channel output
        mean shift is computed from its float inputs (``fast``) or measured by running both
        models (``measured``) on the calibration data and subtracted from its bias
        (bias_correction.py; ``fast`` reads the inputs the calibration run kept when they are
        small); the shift per layer is in the stats.
    16. ``equalize`` (static, off by default): cross-layer equalization rescales the channels of
        Conv→(Relu|LeakyRelu)?→Conv pairs so both weights' channel ranges match, before
        calibration; exact in float (equalize.py). Each pair is in the stats.
    17. ``smooth`` (static; ``auto`` by default, which does nothing in other modes): SmoothQuant-style
        migration of activation channels into MatMul/Gemm weights (``X / s``, ``s W``), folded into
        a LayerNormalization or a Mul by a constant; exact in float (smooth.py). With ``calibrate=minmax``
        and no budget its statistics come from the calibration run, else from a capture before
        calibration. Each layer's strength and output error are in the stats.
    18. ``rounding`` (weight-only ``s4``/``u4``; ``auto`` by default): with calibration data, the
        MatMul/Gemm weights are rounded by GPTQ-style error feedback from each layer input's Gram
        matrix, under block scales chosen by a clipping search (gptq.py); without calibration
        data (or ``rounding=nearest``), each weight is rounded to its nearest level. Static int8
        (``rounding=gptq``): the same error feedback for each quantized Conv (im2col patches, per
        group), Gemm and MatMul of the main graph, from the float layer input, under nearest
        rounding's scales (int8_rounding.py); ``rounding=auto`` there: MatMul and Gemm only, each
        with at least as many calibration rows as inputs (the rest nearest). The method,
        and per layer the output error of both on sampled calibration rows, are in the stats.
    19. ``calibrate=auto`` (static): each tensor of the plan made with minmax ranges takes the
        range of minmax, percentile (99.9, 99.99, 99.999), entropy or mse that gives the
        quantized Conv/Gemm/MatMul layers reading it the lowest output error on whole calibration
        samples of their inputs, kept from the calibration stream, with ranges fitted on the
        other samples (calibrators.py); minmax unless another is 2 % lower; the chosen
        calibrator's range from every sample then makes the plan again. Each tensor's choice, its readers and
        every candidate's error are in ``calibrator_choice``.
    """

    name = "quantize"
    exact = False

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Quantizes the model per ``mode``; ``skipped`` names the layers left float, and why."""
        static = self.options.mode == "static"
        result = self._static(model) if static else self._weights_only(model)
        result.skipped.update(_nested_layers(model, bodies_placed=static))
        return result

    def _calibrate(
        self,
        model: ir.Model,
        names: list[str],
        judged: budget.JudgedSamples | None = None,
        sample: calibrators.InputSample | None = None,
        kept: KeptBatches | None = None,
        channels: dict[str, ChannelStats] | None = None,
    ) -> tuple[StatsCollector, dict[str, str]]:
        """Streams the calibration data through ``model``, collecting statistics of ``names``.

        Values inside If/Loop/Scan bodies are read through a copy that carries them out
        (:func:`~onnxshrink.passes.quantize.scopes.exposing_bodies`). When onnxruntime cannot
        run that copy because a Loop/Scan body value changes shape between iterations, the
        calibration runs again without the Loop/Scan body values.

        Args:
            model: The float model.
            names: The tensors to collect statistics of.
            judged: Where the budget's judged samples are kept, with the model's outputs on them
                (the calibration run computes them anyway), or None.
            sample: Where ``calibrate=auto`` keeps whole samples of its layers' inputs, or None.
            kept: Main-graph values kept batch by batch for a later reader (bias correction),
                captured beside ``names`` without statistics, or None.
            channels: Per-channel statistics of main-graph values to fill as well (smoothing's), or None.

        Returns:
            The statistics, and the tensors left uncalibrated with why.
        """
        try:
            return self._collect(model, names, judged, sample, kept, channels), {}
        except RuntimeUnavailable as error:
            looped = body_value_names(model, loops_only=True).intersection(names)
            if not looped:
                raise
            reason = f"onnxruntime could not calibrate inside this Loop/Scan body ({error})"
            logger.warning("quantize: %s; its layers stay float", reason)
            if judged is not None:
                judged.clear()
            if sample is not None:
                sample.clear()
            if kept is not None:
                kept.clear()
            for stats in (channels or {}).values():
                stats.clear()
            kept_names = [name for name in names if name not in looped]
            collector = self._collect(model, kept_names, judged, sample, kept, channels)
            collector.stats.update(StatsCollector(sorted(looped)).stats)
            return collector, dict.fromkeys(looped, reason)

    def _collect(
        self,
        model: ir.Model,
        names: list[str],
        judged: budget.JudgedSamples | None,
        sample: calibrators.InputSample | None,
        kept: KeptBatches | None,
        channels: dict[str, ChannelStats] | None,
    ) -> StatsCollector:
        collector = StatsCollector(names)
        outputs = [value.name for value in model.graph.outputs if value.name]
        in_bodies = body_value_names(model).intersection(names)
        carried: dict[str, str] = {}
        if in_bodies:
            model, carried = exposing_bodies(model, sorted(in_bodies))
        wanted = [carried.get(name, name) for name in names]
        if judged is not None:  # the model's outputs on the judged samples: the budget's reference
            wanted = list(dict.fromkeys([*wanted, *outputs]))
        if kept is not None:
            wanted = list(dict.fromkeys([*wanted, *sorted(kept.names)]))
        channels = channels or {}
        wanted = list(dict.fromkeys([*wanted, *channels]))
        back = {outer: name for name, outer in carried.items()}
        # Counted in samples: the reader may hold fewer than asked, so the total is an upper bound.
        with progress.task(f"quantize calibration: {len(names)} tensors", total=self.options.samples) as step:
            for feed, arrays in capture(
                self.context,
                model,
                wanted,
                pass_name=self.name,
                samples=self.options.samples,
                batch_size=_CALIBRATION_BATCH,
            ):
                count = batch_samples(feed) if feed else 0
                collector.update({back.get(name, name): array for name, array in arrays.items()}, count)
                if sample is not None:
                    sample.update(arrays)
                if judged is not None:
                    judged.add(feed, {name: arrays[name] for name in outputs}, count)
                if kept is not None:
                    kept.add(arrays, count)
                for name, stats in channels.items():
                    stats.update(arrays[name])
                step.advance(count)
        if collector.samples == 0:
            raise UsageError("quantize: the calibration data holds no sample")
        return collector

    def _static_plan(
        self, float_model: ir.Model, timings: dict[str, float], pending: _PendingSmooth | None = None
    ) -> tuple[placement.QuantPlan, StatsCollector, dict[str, Any] | None, dict[str, Any] | None, KeptBatches | None]:
        """Calibrates ``float_model`` and fits the budget (rules 2, 10 and 19).

        ``float_model`` is not changed, except by ``pending`` smoothing: the calibration run
        fills its statistics, then it is applied (in place) and the plan is made for the
        smoothed model (:meth:`_smoothed_statistics`).

        Returns:
            The plan, the calibration statistics, the budget's record (None without a budget),
            each tensor's calibrator choice (None unless ``calibrate=auto``), and the layer
            inputs ``bias-correction=fast`` reads as the calibration run kept them (None with
            another setting).
        """
        options = self.options
        symmetric = options.target != "ort-cpu"
        ranges: dict[str, tuple[float, float] | None] = {}
        roots: dict[str, str] = {}  # tensor -> the tensor whose statistics give its range
        collector: StatsCollector | None = None
        chosen: dict[str, calibrators.RangeChoice] = {}  # calibrate=auto: root -> its calibrator

        def range_of(name: str) -> tuple[float, float] | None:
            if collector is None:  # the dry run: every tensor as if calibrated
                return (-1.0, 1.0)
            if name not in ranges:
                # A tensor reached through data-movement ops holds its chain root's values.
                root = roots.get(name, name)
                stats = collector.stats.get(root)
                if stats is None or not stats.finite:
                    ranges[name] = None
                elif root in chosen:
                    ranges[name] = chosen[root].range
                else:
                    method = "minmax" if options.calibrate == "auto" else options.calibrate
                    ranges[name] = calibrated_range(stats, method, symmetric=symmetric, percentile=options.percentile)
            return ranges[name]

        # Layers whose int8 kernel is slower than float on the CPU (kernels.py rule 2).
        speed_rules = options.target == "ort-cpu" and options.keep_slow_float
        slow = kernels.slow_layers(float_model, options.cpu_profile) if speed_rules else {}
        body_values = body_value_names(float_model)
        uncalibrated: dict[str, str] = {}

        def unreached(name: str) -> str | None:
            name = roots.get(name, name)
            stats = collector.stats.get(name) if collector is not None else None
            if name in uncalibrated:
                return uncalibrated[name]
            if name in body_values and stats is not None and stats.count == 0 and stats.nonfinite == 0:
                return "no calibration sample ran this body (an If branch not taken, or a loop never run)"
            return None

        def make_plan(float_layers: tuple[str, ...] = ()) -> placement.QuantPlan:
            return place.plan_static(float_model, options, range_of, float_layers, unreached, slow)

        # Only the tensors a placement can quantize are captured: the plan with every range known
        # names them, and of a data-movement chain (Reshape, Transpose, ...) only its root, whose
        # range the Q takes (rule 5). BERT-base: 49 of 429 float activations.
        dry_run = make_plan()
        roots.update((name, q.root) for name, q in dry_run.activations.items())
        started = time.perf_counter()
        wanted = list(roots.values())
        budgeted = options.max_drop is not None or options.min_cosine is not None
        judged = budget.JudgedSamples(options.samples) if budgeted else None
        if budgeted:  # the budget's prediction reads each layer's output energy too
            wanted += budget.layer_outputs(float_model, dry_run)
        readers = calibrators.layer_readers(float_model, dry_run) if options.calibrate == "auto" else {}
        sample = None
        if readers:  # rule 19: the readers' inputs, sampled from the same calibration stream
            inputs = [reader.input for group in readers.values() for reader in group]
            sample = calibrators.InputSample(inputs, options.samples, _CALIBRATION_BATCH)
            wanted += inputs
        kept = None
        if options.bias_correction == "fast":  # the layer inputs it reads, from this run when small
            names = bias_correction.fast_inputs(float_model, dry_run)
            kept = KeptBatches(names, batch_size=_CALIBRATION_BATCH, samples=options.samples, limit=_KEPT_BYTES)
        channels = pending.found.stats if pending is not None else None
        collector, failed = self._calibrate(float_model, list(dict.fromkeys(wanted)), judged, sample, kept, channels)
        uncalibrated.update(failed)
        timings["calibration"] = time.perf_counter() - started
        if pending is not None:
            started = time.perf_counter()
            captured, collector = collector, None  # the placement as if calibrated, on the smoothed model
            pending.record, smoothed = smooth.smooth_captured(float_model, pending.found, pending.error_model)
            roots.clear()
            roots.update((name, q.root) for name, q in make_plan().activations.items())
            timings["smooth"] += time.perf_counter() - started
            started = time.perf_counter()
            collector = self._smoothed_statistics(
                float_model, captured, smoothed, pending.found.stats, list(dict.fromkeys(roots.values()))
            )
            if kept is not None:
                kept.forget([choice.smoothed for choice in smoothed if choice.smoothed])
            timings["calibration"] += time.perf_counter() - started
        plan = _settled_plan(float_model, make_plan, slow, options, speed_rules)
        choices: dict[str, Any] | None = None
        if options.calibrate == "auto":
            # Chosen for the layers the plan quantizes with minmax ranges (the dry run also held
            # those the kernel rules leave float), then the plan is made again with the choices.
            started = time.perf_counter()
            root_stats = {
                q.root: collector.stats[q.root] for q in plan.activations.values() if q.root in collector.stats
            }
            settled_readers = calibrators.layer_readers(float_model, plan)
            chosen.update(self._choose_calibrators(float_model, plan, settled_readers, root_stats, sample))
            choices = {tensor: choice.to_json() for tensor, choice in chosen.items()}
            ranges.clear()
            plan = _settled_plan(float_model, make_plan, slow, options, speed_rules)
            timings["calibrator_choice"] = time.perf_counter() - started
        if not budgeted:
            return plan, collector, None, choices, kept
        started = time.perf_counter()
        judge = budget.Judge(
            self.context, float_model, self.name, options.samples, options.max_drop, options.min_cosine, judged
        )
        plan, record = budget.fit_budget(judge, plan, make_plan, options.weight_bits, collector.stats)
        timings["budget"] = time.perf_counter() - started
        return plan, collector, record, choices, kept

    def _smoothed_statistics(
        self,
        model: ir.Model,
        captured: StatsCollector,
        choices: list[smooth.SmoothChoice],
        channels: dict[str, ChannelStats],
        names: list[str],
    ) -> StatsCollector:
        """The statistics of ``names`` in the smoothed ``model``, from a run of the model before smoothing.

        A smoothed tensor ``X / s`` gets its extremes from ``X``'s per channel
        (:func:`~onnxshrink.passes.quantize.smooth.smoothed_extremes`); any other tensor holds the
        same values as before smoothing (up to float rounding: smoothing is exact in real
        arithmetic) and keeps its statistics. Tensors neither gives (new ones, or a smoothed
        tensor that held non-finite values) are calibrated in a run of the smoothed model.
        """
        derived: dict[str, TensorStats] = {}
        changed: set[str] = set()
        for choice in choices:
            if choice.smoothed is None:
                continue
            changed.add(choice.smoothed)
            stats = channels[choice.tensor]
            extremes = smooth.smoothed_extremes(choice, stats)
            if extremes is not None:
                count = stats.seen * int(stats.abs_max.size)
                derived[choice.smoothed] = TensorStats.from_extremes(*extremes, count)
        collector = StatsCollector([])
        collector.samples = captured.samples
        missing: list[str] = []
        for name in names:
            if name in derived:
                collector.stats[name] = derived[name]
            elif name in captured.stats and name not in changed:
                collector.stats[name] = captured.stats[name]
            else:
                missing.append(name)
        if missing:
            more, _ = self._calibrate(model, missing)
            collector.stats.update(more.stats)
        return collector

    def _choose_calibrators(
        self,
        float_model: ir.Model,
        dry_run: placement.QuantPlan,
        readers: dict[str, list[calibrators.Reader]],
        stats: dict[str, TensorStats],
        sample: calibrators.InputSample | None,
    ) -> dict[str, calibrators.RangeChoice]:
        """Rule 19: each calibrated tensor's calibrator, by its readers' output error (calibrators.py)."""
        options = self.options
        symmetric = options.target != "ort-cpu"
        error_model = smooth.ErrorModel(
            "s8" if symmetric else options.activations, symmetric, options.weight_bits, options.per_channel
        )
        return calibrators.choose_ranges(
            self.context,
            float_model,
            dry_run,
            readers,
            stats,
            sample or calibrators.InputSample([], options.samples, _CALIBRATION_BATCH),
            error_model,
            bias_correction=options.bias_correction != "off",
        )

    def _static(self, model: ir.Model) -> ShrinkPassResult:
        """Rules 1-7 and 10-12 on a copy of the model, which replaces the model's graph only when kept."""
        options = self.options
        opset = opset_needed(model, 13, "per-channel QuantizeLinear")
        # The float model at the opset Q/DQ need (the same function: raised only where no op
        # changes meaning): calibration, the budget and the candidate all start from it.
        float_model = model.clone()
        # Exporters such as paddle2onnx hold weights in Constant nodes: the same data, as initializers.
        lifted = lift_weight_constants(float_model.graph, placement.TRT_LAYERS)
        # Bodies are placed like the main graph: names unique model-wide, activations local to each body.
        unique_value_names(float_model)
        read_outer_values_locally(float_model, placement.TRT_LAYERS)
        opset_raised = raise_opset(float_model, opset)
        # A fused hard-swish has no int8 kernel: written out, rule 7b can run it between int8 layers.
        chains = hard_swish.expand(float_model, taken_names(float_model)) if options.target == "ort-cpu" else []
        timings: dict[str, float] = {}
        smoothed, equalized, pending = self._float_methods(float_model, timings)
        plan, collector, budget_stats, calibrator_choice, kept = self._static_plan(float_model, timings, pending)
        if pending is not None:
            smoothed = pending.record
        rounded, rounding = self._static_rounding(float_model, plan, timings)
        corrections: dict[str, Any] | None = None
        if options.bias_correction != "off" and plan.layers:
            started = time.perf_counter()
            shifts = bias_correction.correct_biases(
                self.context,
                float_model,
                plan,
                options.weight_bits,
                pass_name=self.name,
                samples=options.samples,
                int32_bias=options.target != "tensorrt",
                method=options.bias_correction,
                rounded=rounded,
                kept=kept,
            )
            float_model, plan, corrections = shifts.model, shifts.plan, shifts.to_json()
            del shifts
            timings["bias_correction"] = time.perf_counter() - started
        candidate = float_model.clone()
        counts = rewrite.apply_plan(candidate, plan, options.weight_bits, rounded)
        refused = hard_swish.refuse(candidate, chains)  # the ones left float run fused again
        # The float weights the candidate no longer reads go before the tables are quantized: the
        # smoothed ones are held by nothing else (BERT-base: 324 MB, else beside the tables' peak).
        # The graph's nodes and values reference each other: only the cycle collector frees them.
        rewrite.drop_unused_initializers(candidate.graph)
        del float_model
        gc.collect()
        release_freed_memory()
        tables: dict[str, str] = {}
        if options.target == "ort-cpu":  # GatherBlockQuantized is an onnxruntime contrib op
            writer = rewrite.QdqWriter(candidate)
            self._gather_tables(candidate, writer, tables, plan.left_float, "s8")
            rewrite.drop_unused_initializers(candidate.graph)
            counts["weights_quantized"] += writer.counts["weights_quantized"]
        nonfinite = collector.nonfinite()
        if nonfinite:
            logger.warning("quantize: %d tensors held non-finite values (ignored for ranges)", len(nonfinite))
        stats: dict[str, Any] = {
            "mode": options.mode,
            "target": options.target,
            "calibrator": options.calibrate,
            "calibrator_choice": calibrator_choice,
            "samples": collector.samples,
            "calibration_tensors": len(collector.stats),
            "statistics_bytes": collector.nbytes,
            "nonfinite": nonfinite,
            "quantized_nodes": len(plan.layers),
            "weight_bits": options.weight_bits,
            "folded_activations": len(plan.folds),
            "nodes": budget.node_summaries(plan),
            "tables": tables,
            "budget": budget_stats,
            "cpu": options.cpu_profile.to_json() if options.target == "ort-cpu" else None,
            "bias_correction": corrections,
            "smooth": smoothed,
            "equalize": equalized,
            "rounding": rounding,
            "hard_swish": {"written_out": len(chains), "fused_again": refused} if chains else None,
            **counts,
        }
        keep = counts["q_nodes"] + counts["weights_quantized"] > 0
        if keep and options.min_speedup is not None:
            keep = self._fast_enough(model, candidate, stats, timings)
        stats["opset_raised"] = opset_raised if keep else None
        stats["constants_lifted"] = lifted if keep else 0
        if keep:
            # The pass works in place: the model object stays and takes the candidate's graph,
            # which holds the opset imports.
            model.graph = candidate.graph
            model.ir_version = candidate.ir_version
        return ShrinkPassResult(model, modified=keep, stats=stats, skipped=dict(plan.left_float), timings=timings)

    def _smoothing_rides_calibration(self) -> bool:
        """Whether smoothing's statistics come from the calibration run (no capture of its own).

        The calibration run then sees the model before smoothing: a smoothed tensor ``X / s`` is
        known by its extremes only (from ``X``'s per channel), which is all ``calibrate=minmax``
        reads; the budget and the other calibrators read histograms.
        """
        options = self.options
        return options.calibrate == "minmax" and options.max_drop is None and options.min_cosine is None

    def _float_methods(
        self, float_model: ir.Model, timings: dict[str, float]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, _PendingSmooth | None]:
        """Rules 16-17 on ``float_model``, in place: exact rewrites that make it easier to quantize.

        Returns:
            The ``smooth`` and ``equalize`` records (None when the option is off, or smoothing
            waits for the calibration run), and the smoothing candidates whose statistics the
            calibration run fills (None when smoothing is done or off).
        """
        options = self.options
        smoothed: dict[str, Any] | None = None
        equalized: dict[str, Any] | None = None
        if options.equalize:
            started = time.perf_counter()
            equalized = equalize.equalize_model(float_model)
            timings["equalize"] = time.perf_counter() - started
        calibration = self.context.calibration
        if options.smooth == "auto" and calibration is not None and not calibration.rereadable:
            # Smoothing reads the data once more before calibration; a one-shot reader cannot.
            reason = f"calibration data {calibration.description} can be read only once"
            return {"setting": "auto", "layers": {}, "not_smoothed": {}, "reason": reason}, equalized, None
        if options.smooth != "off":
            started = time.perf_counter()
            speed_rules = options.target == "ort-cpu" and options.keep_slow_float
            slow = kernels.slow_layers(float_model, options.cpu_profile) if speed_rules else {}
            # The layers _static_plan will leave float for speed get no smoothing.
            dry_run = _settled_plan(
                float_model,
                lambda: place.plan_static(float_model, options, lambda name: (-1.0, 1.0), slow=slow),
                slow,
                options,
                speed_rules,
            )
            symmetric = options.target != "ort-cpu"
            error_model = smooth.ErrorModel(
                "s8" if symmetric else options.activations, symmetric, options.weight_bits, options.per_channel
            )
            # Tensors int8 before the layer's own Q: a quantized node's output, or data movement
            # after one. A Mul by 1/s there would add a dequantize/quantize pair (smooth.py rule 5);
            # a chain whose root is a float op's output only moves its Q after the Mul.
            quantized_outputs = {layer.output for layer in dry_run.layers.values() if layer.output_q and layer.output}
            int8_already = {name for name, q in dry_run.activations.items() if q.root in quantized_outputs}
            layer_keys = [key for key, layer in dry_run.layers.items() if layer.weight is not None]
            if self._smoothing_rides_calibration():
                found = smooth.candidates(
                    float_model,
                    layer_keys,
                    options.smooth,
                    int8_already=int8_already,
                    samples=options.samples,
                    batch_size=_CALIBRATION_BATCH,
                )
                timings["smooth"] = time.perf_counter() - started
                return None, equalized, _PendingSmooth(found, error_model)
            smoothed = smooth.smooth_model(
                self.context,
                float_model,
                layer_keys,
                options.smooth,
                error_model,
                int8_already=int8_already,
                pass_name=self.name,
                samples=options.samples,
                batch_size=_CALIBRATION_BATCH,
            )
            timings["smooth"] = time.perf_counter() - started
        return smoothed, equalized, None

    def _fast_enough(
        self, model: ir.Model, candidate: ir.Model, stats: dict[str, Any], timings: dict[str, float]
    ) -> bool:
        """Rule 11: times the float and the quantized model; False when below ``min-speedup``."""
        threshold = self.options.min_speedup
        assert threshold is not None
        started = time.perf_counter()
        speed = budget.measure_speedup(self.context, model, candidate, self.name, self.options.samples)
        timings["speed_check"] = time.perf_counter() - started
        timings["float_run"] = speed["float_ms"] / 1000.0
        timings["quantized_run"] = speed["quantized_ms"] / 1000.0
        kept = speed["speedup"] >= threshold
        stats["speed"] = {
            "batch": speed["batch"],
            "speedup": speed["speedup"],
            "min_speedup": threshold,
            "decision": "quantized" if kept else "kept float: below min-speedup",
        }
        if not kept:
            logger.warning("quantize: %.2fx < min-speedup %g: model left float", speed["speedup"], threshold)
        return kept

    def _weights_only(self, model: ir.Model) -> ShrinkPassResult:
        """Rules 8 and 9, in place: only layers that pass every check are rewritten."""
        options = self.options
        bits = options.weights
        opset = opset_needed(model, 21 if bits != "s8" else 13, f"{bits} weights")
        lifted = lift_weight_constants(model.graph, placement.TRT_LAYERS)
        writer = rewrite.QdqWriter(model, options.weight_bits)
        nodes: dict[str, str] = {}
        left_float: dict[str, str] = {}
        layers: dict[str, ir.Node] = {}
        for key, node in placement.GraphView(model.graph).nodes.items():
            if not is_onnx_op(node, *placement.TRT_LAYERS):
                continue
            why = budget.weight_layer_problem(node, options.mode, bits) or unselected(
                node, key, options.include, options.exclude
            )
            if why is not None:
                left_float[key] = why.reason
                continue
            layers[key] = node
        timings: dict[str, float] = {}
        rounded, rounding = self._rounding(model, layers, timings)
        for key, node in layers.items():
            if options.mode == "dynamic":
                nodes[key] = rewrite.dynamic_matmul(node, writer, options.per_channel, options.weight_bits)
            else:
                nodes[key] = rewrite.weight_only(
                    node, writer, bits, options.per_channel, options.block_size, rounded.get(key)
                )
        if options.mode == "weight-only" or options.target == "ort-cpu":
            table_bits = bits if options.mode == "weight-only" else "s8"
            self._gather_tables(model, writer, nodes, left_float, table_bits)
        quantized = writer.counts["weights_quantized"] > 0
        modified = quantized or lifted > 0
        if quantized:
            rewrite.drop_unused_initializers(model.graph)
        stats = {
            "mode": options.mode,
            "target": options.target,
            "opset_raised": raise_opset(model, opset) if quantized else None,
            "constants_lifted": lifted,
            "quantized_nodes": len(nodes),
            "nodes": nodes,
            "rounding": rounding,
            **writer.counts,
        }
        return ShrinkPassResult(model, modified=modified, stats=stats, skipped=left_float, timings=timings)

    def _rounding(
        self, model: ir.Model, layers: dict[str, ir.Node], timings: dict[str, float]
    ) -> tuple[dict[str, gptq.RoundedWeight], dict[str, Any] | None]:
        """Rule 18: GPTQ rounding of 4-bit MatMul/Gemm weights, or why nearest rounding stays.

        Returns:
            The rounded weight of each GPTQ layer, and the report's ``rounding`` record (None
            outside weight-only 4-bit).
        """
        options = self.options
        if options.mode != "weight-only" or options.weights == "s8":
            return {}, None
        if options.rounding == "nearest":
            return {}, {"method": "nearest", "reason": "rounding=nearest"}
        if options.rounding == "auto" and self.context.calibration is None:
            return {}, {"method": "nearest", "reason": "no calibration data (rounding=auto)"}
        if not layers:
            return {}, {"method": "nearest", "reason": "no MatMul/Gemm layer to round"}
        started = time.perf_counter()
        try:
            rounded, record = gptq.round_layers(
                self.context,
                model,
                layers,
                options.block_size,
                options.weights,
                pass_name=self.name,
                samples=options.samples,
                batch_size=_CALIBRATION_BATCH,
            )
        except RuntimeUnavailable as error:
            if options.rounding == "gptq":
                raise
            logger.warning("quantize: onnxruntime cannot run the model for GPTQ rounding (%s): nearest", error)
            return {}, {"method": "nearest", "reason": f"onnxruntime cannot run the model ({error}; rounding=auto)"}
        timings["rounding"] = time.perf_counter() - started
        return rounded, {"method": "gptq", "layers": record}

    def _static_rounding(
        self, float_model: ir.Model, plan: placement.QuantPlan, timings: dict[str, float]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rule 18 for static int8 weights: GPTQ levels by weight name (``rounding=gptq``), or why nearest.

        Returns:
            The GPTQ int8 levels per weight initializer name (empty for nearest rounding), and the
            report's ``rounding`` record.

        Raises:
            UsageError: ``rounding=gptq`` with calibration data that can be read only once.
        """
        options = self.options
        if options.rounding == "nearest":
            return {}, {"method": "nearest", "reason": "rounding=nearest"}
        calibration = self.context.calibration
        auto = options.rounding == "auto"
        if auto and (options.max_drop is not None or options.min_cosine is not None):
            # The budget judged nearest-rounded candidates: the written model is what it judged.
            return {}, {"method": "nearest", "reason": "the budget judged nearest rounding (rounding=auto)"}
        if calibration is not None and not calibration.rereadable:
            if auto:
                reason = f"{calibration.description} can be read only once (rounding=auto)"
                return {}, {"method": "nearest", "reason": reason}
            raise UsageError(
                f"quantize: rounding=gptq reads the calibration data again; {calibration.description} "
                "can be read only once"
            )
        started = time.perf_counter()
        rounded, record = int8_rounding.round_static(
            self.context,
            float_model,
            plan,
            options.weight_bits,
            pass_name=self.name,
            samples=options.samples,
            batch_size=_CALIBRATION_BATCH,
            auto=auto,
        )
        timings["rounding"] = time.perf_counter() - started
        if not rounded:
            return {}, {"method": "nearest", "reason": "no MatMul/Gemm layer for GPTQ (rounding=auto)", **record}
        return rounded, {"method": "gptq", **record}

    def _gather_tables(
        self, model: ir.Model, writer: rewrite.QdqWriter, nodes: dict[str, str], left_float: dict[str, str], bits: str
    ) -> None:
        """Embedding tables (Gather from a constant 2-D table) → GatherBlockQuantized (rule 9b)."""
        options = self.options
        for key, node in placement.GraphView(model.graph).nodes.items():
            if not is_onnx_op(node, "Gather"):
                continue
            why: NoMatch | None = rewrite.gather_table_problem(node) or unselected(
                node, key, options.include, options.exclude
            )
            if why is not None:
                if node.inputs[0] is not None and node.inputs[0].const_value is not None:
                    left_float[key] = why.reason  # only tables: a Gather of activations is no candidate
                continue
            nodes[key] = rewrite.gather_table(node, writer, bits, options.block_size)
            model.opset_imports.setdefault("com.microsoft", 1)
