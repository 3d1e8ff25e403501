"""``reconstruct``: layer-wise least-squares refit of weights against the input model (lossy-aware)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink import progress
from onnxshrink.activations import capture
from onnxshrink.ir.constants import lift_weight_constants
from onnxshrink.ir.graphs import graph_likes, is_onnx_op, taken_names
from onnxshrink.passbase import NoMatch, ShrinkPass, ShrinkPassResult, option
from onnxshrink.passes.reconstruct import augment as augmentation
from onnxshrink.passes.reconstruct import layers as refit_layers
from onnxshrink.passes.reconstruct import least_squares as lstsq
from onnxshrink.passes.reconstruct import matrices as matrices
from onnxshrink.passes.reconstruct.output_error import OutputError
from onnxshrink.passes.reconstruct.segments import ChainedCapture
from onnxshrink.registry import register_pass

logger = logging.getLogger(__name__)

# A layer whose output is this close to the teacher's already reproduces it (float rounding).
_MATCHED = 1e-6
_EXACT = (
    "already matches the input model: its weights are the input model's (output channels removed) "
    "and it reads the input model's value (order=single)"
)
# Layers per data pass above which capture batches shrink (every captured value of a batch is alive).
_MANY_LAYERS = 16


def _is_number(value: object) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{value!r} is not a number"


@dataclasses.dataclass(frozen=True)
class ReconstructOptions:
    """Which layers ``reconstruct`` refits, and how."""

    ridge: float = option(
        1e-3,
        "ridge towards the current weights, relative to the mean diagonal of XᵀX (>= 0)",
        minimum=0.0,
        check=_is_number,
    )
    samples: int = option(512, "calibration samples used (at most)", minimum=1)
    include: tuple[str, ...] = option((), "refit only layers whose op type or node-name glob matches (empty: all)")
    exclude: tuple[str, ...] = option((), "never refit layers whose op type or node-name glob matches")
    method: Literal["auto", "lstsq", "obs"] = option(
        "auto",
        "lstsq: exact masked solve; obs: dense solve + SparseGPT-style mask update; auto: by cost",
        choices=("auto", "lstsq", "obs"),
    )
    bias: bool = option(True, "refit Conv/Gemm biases too, adding one to layers that have none")
    augment: Literal["none", "shifts"] = option(
        "none",
        "shifts: each calibration image is also seen moved by one pixel in the 8 directions (9x the "
        "rows, float [N, C, H, W] inputs), so a few hundred samples fit convolutions without overfitting",
        choices=("none", "shifts"),
    )
    order: Literal["staged", "single"] = option(
        "staged",
        "staged: one data pass per depth stage, later layers see earlier refits (each pass after the first "
        "runs only the part of the model not run yet); single: every layer "
        "from one data pass, each fit on the input model's values of its input (its kept channels where "
        "the layer lost some), as if the layers before it reproduced the input model (fast on deep models)",
        choices=("staged", "single"),
    )


def _nested_layers(model: ir.Model) -> dict[str, str]:
    """Layers in subgraphs and functions: their inputs are not values the calibration run can capture."""
    skipped: dict[str, str] = {}
    for scope in graph_likes(model):
        if scope is not model.graph:
            kind = "function" if isinstance(scope, ir.Function) else "subgraph"
            for index, node in enumerate(scope):
                if is_onnx_op(node, *refit_layers.LAYERS):
                    key = f"{scope.name}/{node.name or f'{node.op_type}#{index}'}"
                    skipped[key] = f"in {kind} '{scope.name}': reconstruct refits main-graph layers only"
    return skipped


def _borrowed(
    layer: refit_layers.Layer, student: np.ndarray, teacher: np.ndarray, kept: dict[str, np.ndarray | None]
) -> np.ndarray:
    """The input model's value of the layer's input, as the layer reads it (``order=single``).

    The same value when the shapes agree; the channels the student kept (found once per input
    name on the first batch, cached in ``kept``) when the student's value lost channels along
    the layer's channel axis; else the student's own value.
    """
    if teacher.shape == student.shape:
        return teacher
    axis = matrices.input_channel_axis(layer, student.ndim)
    if axis is None or teacher.ndim != student.ndim or teacher.shape[axis] <= student.shape[axis]:
        return student
    if any(a != b for i, (a, b) in enumerate(zip(teacher.shape, student.shape, strict=True)) if i != axis):
        return student
    if layer.input_name not in kept:
        kept[layer.input_name] = lstsq.matched_channels(student, teacher, axis)
    channels = kept[layer.input_name]
    return student if channels is None else np.take(teacher, channels, axis=axis)


@register_pass
class ReconstructPass(ShrinkPass[ReconstructOptions]):
    """Refits layer weights by least squares so each layer reproduces the input model's value (lossy).

    Rules, in the main graph (subgraph and function layers are left alone, each named in ``skipped``):

    1. A layer is a Conv or ConvTranspose (any group count, N-D, strides, pads, dilations; Conv
       auto_pad too; ConvTranspose output_padding, but not output_shape or auto_pad SAME_*), a Gemm
       (alpha, beta, transA, transB) or a MatMul whose weight (input 1) is a constant float
       initializer, or a DequantizeLinear of constant integers (rule 4), that no other node reads
       and that is not a graph input or output.
    2. Its teacher point is the value of the input model (the pipeline's input) with the name of
       its output, moved forward past per-channel affine nodes (BatchNormalization, Mul/Add/Sub/Div
       by a constant) whose outputs this model no longer has: fuse-bn folds them into the layer,
       which keeps its own output name. A layer without a teacher point, or whose teacher value
       has another shape, is skipped with a reason; except that a layer that lost output channels
       (prune-channels; group 1, bias refit or absent) is fit to the teacher channels it kept,
       found as the increasing sequence of channels most similar (cosine) to its current outputs.
    3. Layers run in stages (a stage = layers with the same number of refittable layers on their
       longest path from the inputs, counting what If/Loop/Scan bodies read), so each is fit on
       inputs that carry every earlier refit. Per stage the calibration data streams once through
       the current model (layer inputs) and once through the input model (teacher values). The
       first data pass runs both models whole; each later one runs only the segment of each graph
       that no pass ran yet (extracted from the model as it is then, refits included), fed the
       boundary values kept from the passes before, per batch (:mod:`.segments`: in memory up to
       1 GiB per model, then on disk). Each model so runs about twice over the data, plus the
       refit model once at the end, whatever the depth (BERT-base: 49 stages). A boundary value
       that is not a tensor, or a segment that cannot be extracted, turns the remaining passes
       into whole-model runs (``whole_model_runs`` says why).
       ``order=single`` accumulates every layer in one pass instead. A layer then reads the input model's value
       of its input (what earlier refits aim at): the same value where it has the same shape;
       where the layer's input lost channels (prune-channels), the input model's channels it
       kept, found as the increasing sequence of channels most similar (cosine, first batch) to
       the input as the pass found it; else that value, before any refit. Each layer is so fit
       as if every layer before it reproduced the input model; rule 6 still undoes refits that
       do not help.
    4. Per layer (and Conv group), ``XᵀX`` and ``XᵀY`` are summed batch by batch in float64 (im2col
       rows for convolutions, split so one piece stays near 64 MiB) and
       ``min ||X wᵀ - Y||² + λ||w - w₀||²`` is solved, ``λ = ridge · mean(diag XᵀX)``: the ridge
       pulls towards the current weights ``w₀``, so directions the data does not see keep them.
       Zero weights stay exactly zero (pruning masks survive); a layer with fewer input channels is
       just a smaller problem. A weight that a DequantizeLinear makes out of constant integers
       (per tensor or per axis) is refit in float and rounded back onto the same grid
       (scale and zero point kept); pruned entries stay at the zero point, and a kept weight may
       round onto it. ``method=lstsq`` solves the masked problem exactly (one factorisation
       per distinct row support); ``obs`` solves densely, then enforces the mask column by column
       with SparseGPT's Optimal Brain Surgeon update; ``auto`` takes lstsq for a layer without zeros
       (one factorisation) or up to about 2e9 multiply-adds of factorisations, else obs.
    5. With ``bias`` (default), Conv, ConvTranspose and Gemm biases are refit too; a layer without
       one gets a new initializer (a shared one is copied). A bias that is not refit (``bias=false``,
       one out of a DequantizeLinear, a Gemm C that is not one value per output column or has
       beta=0) stays as it is and is subtracted from the target.
    6. A layer's refit is kept only when, as stored (cast to the weight's dtype or rounded onto
       its grid), it lowers the layer's error on the calibration data; a
       layer already within 1e-6 (relative) of its teacher point is left alone. When all refits
       together do not lower the error of the model's outputs on the calibration data, every one
       of them is undone and the pass reports ``modified=False``.
    7. ``augment=shifts``: every calibration batch runs through both models 9 times, its images
       (float ``[N, C, H, W]`` inputs) moved by one pixel in each of the 8 directions (zeros
       shifted in) and as they are; other inputs are repeated. Targets stay the input model's
       values on the same shifted images. A model without an image input is a usage error.
    Stats: per layer the teacher point, relative error ``||X wᵀ - Y|| / ||Y||`` before and after,
    method and calibration rows; the relative error of the model's outputs before and after; a
    reason for each layer left alone (``skipped``); ``model_runs`` (whole and segment runs of the
    model and the input model) and ``boundary_bytes`` (peak kept between passes, spilled to disk).
    Timings: seconds spent streaming activations (``capture``) and refitting each layer
    (``refit.{layer}``).
    """

    name = "reconstruct"
    exact = False

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Refits the layers stage by stage; ``skipped`` names the layers left as they were, and why."""
        options = self.options
        self.context.require_calibration(self.name)
        teacher = self.context.reference_model(self.name)
        # Exporters such as paddle2onnx hold weights and biases in Constant nodes: lift them.
        lifted = sum(lift_weight_constants(model.graph, refit_layers.LAYERS, index) for index in (1, 2))
        points = refit_layers.TeacherPoints(teacher, model)
        layers, skipped = refit_layers.plan(model, options, points)
        outputs = [v.name for v in model.graph.outputs if v.name and v.name in points.outputs]
        per_layer: dict[str, dict[str, Any]] = {}
        stages = sorted({layer.stage for layer in layers})
        edits = matrices.Edits()
        before = OutputError()
        timings = {"capture": 0.0}
        taken = taken_names(model)
        single = options.order == "single"
        rounds = [layers] if single else [[layer for layer in layers if layer.stage == s] for s in stages]
        # One pass: a layer cannot see earlier refits, so it reads the input model's value of its
        # input where that has the same shape (what those refits aim at).
        shared = {name for name in points.values if name} if single else set()
        borrowed = [[n for n in dict.fromkeys(layer.input_name for layer in m) if n in shared] for m in rounds]
        # Every captured value of a batch is alive at once: many layers, smaller batches.
        batch = 32 if max(map(len, rounds), default=0) <= _MANY_LAYERS else 8
        before.batch_size = batch
        student, reference = (
            self._chain(chained, names, outputs, batch)
            for chained, names in (
                (model, [[layer.input_name for layer in m] for m in rounds]),
                (teacher, [[*(layer.output_name for layer in m), *b] for m, b in zip(rounds, borrowed, strict=True)]),
            )
        )
        title = f"reconstruct: {len(layers)} layers in {len(rounds)} data passes"
        with progress.task(title, total=len(rounds)) as step, student, reference:
            for index, members in enumerate(rounds):
                started = time.perf_counter()
                # The model's outputs ride along with the first pass, before anything is refit.
                watched = outputs if index == 0 else []
                streams = student.run(index), reference.run(index)
                equations, reasons = self._accumulate(teacher, members, streams, watched, before, borrowed[index])
                timings["capture"] += time.perf_counter() - started
                skipped.update(reasons)
                for layer in members:
                    if layer.key in equations:
                        started = time.perf_counter()
                        per_layer[layer.key] = self._refit(model, layer, equations[layer.key], edits, taken)
                        timings[f"refit.{layer.key}"] = time.perf_counter() - started
                step.advance()
        stats: dict[str, Any] = {"stages": len(stages), "data_passes": len(rounds), "constants_lifted": lifted}
        stats["model_runs"] = {"model": dict(student.runs), "input_model": dict(reference.runs)}
        stats["boundary_bytes"] = {
            "peak": student.peak_boundary_bytes + reference.peak_boundary_bytes,
            "spilled": student.store.spilled_bytes + reference.store.spilled_bytes,
        }
        if student.whole_runs or reference.whole_runs:
            stats["whole_model_runs"] = student.whole_runs or reference.whole_runs
        if edits.tensors:
            started = time.perf_counter()
            after = OutputError()
            with progress.task("reconstruct: checking the model's outputs"):
                if before.kept is not None:
                    self._compare(model, outputs, before, after)
                else:
                    streams = (self._captured(model, outputs, batch), self._captured(teacher, outputs, batch))
                    self._accumulate(teacher, [], streams, outputs, after)
            timings["capture"] += time.perf_counter() - started
            stats.update(output_error_before=before.relative, output_error_after=after.relative)
            # No comparable output (all differ in shape or are not float): nothing to judge by.
            if before.squared_norm > 0 and after.relative >= before.relative:
                edits.revert(model)
                stats["reverted"] = "the refits did not lower the error of the model's outputs"
                for entry in per_layer.values():
                    entry.update(refit=False, reason="reverted with all others: the model's outputs got worse")
        for key, entry in per_layer.items():
            if not entry["refit"]:
                skipped[key] = entry.pop("reason")
        stats.update(layers_refit=sum(entry["refit"] for entry in per_layer.values()), layers=per_layer)
        skipped.update(_nested_layers(model))
        return ShrinkPassResult(
            model, modified=bool(edits.tensors) or lifted > 0, stats=stats, skipped=skipped, timings=timings
        )

    def _chain(self, model: ir.Model, rounds: list[list[str]], outputs: list[str], batch: int) -> ChainedCapture:
        """The data passes over ``model``: each streams one round's values (the first also ``outputs``)."""
        return ChainedCapture(
            self.context,
            model,
            rounds,
            also=outputs,
            pass_name=self.name,
            samples=self.options.samples,
            batch_size=batch,
            augment=augmentation.AUGMENTS[self.options.augment],
        )

    def _captured(self, model: ir.Model, names: list[str], batch: int) -> Iterator[dict[str, np.ndarray]]:
        """One whole-model data pass streaming the named values."""
        augment = augmentation.AUGMENTS[self.options.augment]
        samples = self.options.samples
        stream = capture(
            self.context, model, names, pass_name=self.name, samples=samples, batch_size=batch, augment=augment
        )
        for _, arrays in stream:
            yield arrays

    def _accumulate(
        self,
        teacher: ir.Model,
        layers: list[refit_layers.Layer],
        streams: tuple[Iterable[dict[str, np.ndarray]], Iterable[dict[str, np.ndarray]]],
        outputs: list[str],
        error: OutputError,
        borrowed: list[str] | None = None,
    ) -> tuple[dict[str, lstsq.NormalEquations], dict[str, str]]:
        """Accumulates one data pass: the streamed values of the model and of the ``teacher``, per batch.

        Each layer's input rows and teacher values go into its normal equations; the difference of
        the named model ``outputs`` goes into ``error``. A layer input named in ``borrowed`` is read
        from the teacher's stream instead, when its value there has the same shape.

        Returns:
            The normal equations by layer key, and the layers that could not be accumulated with
            the reason.
        """
        borrowed = borrowed or []
        inputs = [layer.input_name for layer in layers]
        points = [layer.output_name for layer in layers]
        student, reference = streams
        equations: dict[str, lstsq.NormalEquations] = {}
        reasons: dict[str, str] = {}
        # Per borrowed input that lost channels: which of the input model's channels it kept.
        kept: dict[str, np.ndarray | None] = {}
        # Layers that reproduce the input model exactly when they read its value (its weights,
        # minus output channels): not accumulated when they do.
        exact = {
            layer.key
            for layer in layers
            if layer.input_name in borrowed and refit_layers.is_teacher_slice(layer, teacher)
        }
        for xs, ys in zip(student, reference, strict=True):
            for name in outputs:
                error.add(xs[name], ys[name])
            if outputs:
                error.keep({name: ys[name] for name in outputs})
            for layer, x_name, y_name in zip(layers, inputs, points, strict=True):
                if layer.key in reasons:
                    continue
                x_all = _borrowed(layer, xs[x_name], ys[x_name], kept) if x_name in borrowed else xs[x_name]
                if layer.key in exact and x_all is ys[x_name]:
                    reasons[layer.key] = _EXACT
                    continue
                for x, y in matrices.pieces(layer, x_all, ys[y_name]):
                    found = matrices.rows_and_targets(layer, x, y)
                    if isinstance(found, NoMatch):
                        reasons[layer.key] = found.reason
                        equations.pop(layer.key, None)
                        break
                    rows, targets = found
                    if layer.key not in equations:
                        equations[layer.key] = lstsq.NormalEquations.zeros(
                            rows.shape[1], rows.shape[2], targets.shape[-1]
                        )
                    equations[layer.key].add(rows, targets)
        return equations, reasons

    def _compare(self, model: ir.Model, outputs: list[str], kept: OutputError, error: OutputError) -> None:
        """Streams the calibration data through ``model`` alone, against the teacher outputs ``kept``."""
        for xs, ys in zip(self._captured(model, outputs, kept.batch_size), kept.kept or [], strict=True):
            for name in outputs:
                error.add(xs[name], ys[name])

    def _refit(
        self,
        model: ir.Model,
        layer: refit_layers.Layer,
        equations: lstsq.NormalEquations,
        edits: matrices.Edits,
        taken: set[str],
    ) -> dict[str, Any]:
        current = matrices.as_matrix(layer)
        entry: dict[str, Any] = {"teacher_point": layer.output_name, "rows": equations.rows}
        if equations.xty.shape[-1] != current.shape[1]:
            kept = lstsq.kept_columns(equations, current)
            if kept is None:
                entry.update(refit=False, reason="cannot tell which of the input model's channels the layer kept")
                return entry
            equations = equations.columns(kept)
            entry["teacher_channels"] = kept.tolist()
        before = equations.relative_error(current)
        entry["error_before"] = before
        if before <= _MATCHED:
            entry.update(refit=False, reason=f"already matches the input model (relative error {before:.2g})")
            return entry
        keep = current != 0
        if layer.fit_bias:
            keep[..., -1] = True
        method = lstsq.choose_method(keep) if self.options.method == "auto" else self.options.method
        new = lstsq.solve(equations, current, keep, self.options.ridge, method)
        mark = edits.mark()
        matrices.write(model, layer, new, edits, taken)
        # Measured on the weights as stored: after the cast to their dtype or the integer grid.
        after = equations.relative_error(matrices.as_matrix(layer))
        entry.update(error_after=after, method=method, refit=after < before)
        if after >= before:
            edits.revert(model, mark)
            entry["reason"] = f"refit did not lower the error ({before:.4g} -> {after:.4g})"
        logger.info("reconstruct %s: relative error %.4g -> %.4g (%s)", layer.key, before, after, method)
        return entry
