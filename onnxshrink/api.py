"""The Python API: ``onnxshrink.shrink(model, passes, ...)``.

It orchestrates: open the data, load the model, run the pipeline, verify, build the result.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxshrink._version import __version__
from onnxshrink.context import PassContext
from onnxshrink.data.model_inputs import check_fixed_shapes, fix_input_shapes
from onnxshrink.data.readers import open_samples
from onnxshrink.data.samples import GENERATED, Feed, verification_feed
from onnxshrink.errors import UsageError, VerificationError
from onnxshrink.executors import Executor, check_executor_options, make_executor
from onnxshrink.ir.graphs import totals
from onnxshrink.loading import LoadedModel, load_model, load_proto
from onnxshrink.pipeline import Measure, PassRecord, Pipeline
from onnxshrink.runtime import RuntimeUnavailable, create_session, run, run_batched
from onnxshrink.saving import SavedFiles, external_files, record_provenance, save_model, to_proto
from onnxshrink.spec import PassSpec, parse_specs
from onnxshrink.verify import DEFAULT_ATOL, DEFAULT_RTOL, Verifier

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ShrinkResult:
    """What :func:`shrink` returns.

    Attributes:
        model: The optimized model (onnx_ir.Model).
        report: JSON-serializable report (schema in the README).
    """

    model: ir.Model
    report: dict[str, Any]
    _protected: tuple[Path, ...] = dataclasses.field(default=(), repr=False)

    def __repr__(self) -> str:
        before, after = self.report["input"], self.report["output"]
        verification = self.report.get("verification")
        if verification is None:
            verified = "not verified"
        elif "skipped" in verification:
            verified = "verification skipped"
        else:
            verified = f"verified, min cosine {verification['min_cosine']:.6f}"
        return (
            f"ShrinkResult({', '.join(step['name'] for step in self.report['pipeline'])}: "
            f"{before['nodes']} -> {after['nodes']} nodes, {before['bytes']} -> {after['bytes']} bytes, {verified})"
        )

    def to_proto(self) -> onnx.ModelProto:
        """The model as a ModelProto with weights inline."""
        return to_proto(self.model)

    def to_graphsurgeon(self) -> Any:
        """The model as an ``onnx_graphsurgeon.Graph``."""
        import onnx_graphsurgeon as gs

        return gs.import_onnx(self.to_proto())

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        external_data: bool | None = None,
        on_tensor: Callable[[ir.TensorProtocol, ir.external_data.CallbackInfo], None] | None = None,
    ) -> SavedFiles:
        """Writes the model atomically (external data when past 2 GiB or when asked)."""
        saved = save_model(
            self.model, path, external_data=external_data, protected=self._protected, on_tensor=on_tensor
        )
        self.report["output"]["path"] = str(saved.model)
        return saved


def _load_any(model: Any) -> LoadedModel:
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, onnx.ModelProto):
        return load_proto(model)
    if isinstance(model, ir.Model):
        # Passes work in place; the caller's model stays as it was.
        return load_proto(ir.serde.serialize_model(model)) if not external_files(model) else LoadedModel(model.clone())
    if type(model).__module__.startswith("onnx_graphsurgeon"):
        import onnx_graphsurgeon as gs

        return load_proto(gs.export_onnx(model))
    raise UsageError(
        f"cannot read a model from {type(model).__name__}; give a path, onnx.ModelProto, onnx_ir.Model "
        "or onnx_graphsurgeon.Graph"
    )


def _check_budget_data(feed: Feed, max_drop: float | None) -> None:
    """A ``max_drop`` budget needs labels; one that cannot be checked is refused, not ignored."""
    if max_drop is not None and feed.labels is None:
        raise UsageError(
            f"max_drop (--max-drop) needs labelled data, but the verification inputs ({feed.description}) "
            "have no 'labels' array; add one to the --inputs npz, or use --min-cosine"
        )


def _refuse_given_data(error: RuntimeUnavailable, verifier: Verifier, candidate: ir.Model) -> None:
    """Data the user gave that onnxruntime cannot run is an error; generated data is only skipped.

    The input model is run alone to tell whose fault it is: when it runs, the pipeline's result is
    what onnxruntime refuses, and verification fails (nothing written).

    Raises:
        UsageError: The input model cannot run on the given data either.
        VerificationError: The input model runs on the data; the result does not.
    """
    feed = verifier.feed
    if error.stage != "run" or feed.description == GENERATED or not verifier.reference:
        return
    try:
        session, _ = create_session(verifier.reference, verifier.provider)
        chunk = feed.run_size(candidate)
        run(session, feed.arrays) if chunk is None else run_batched(session, feed.arrays, chunk)
    except RuntimeUnavailable:
        raise UsageError(f"onnxruntime cannot run the model on {feed.description}: {error}") from None
    raise VerificationError(
        f"verification failed, nothing written: onnxruntime runs the input model on {feed.description} "
        f"but not the result: {error}"
    ) from None


def _summary(model: ir.Model) -> dict[str, Any]:
    counted = totals(model)
    return {"nodes": counted.nodes, "params": counted.params, "bytes": counted.bytes}


def shrink(
    model: str | os.PathLike[str] | onnx.ModelProto | ir.Model | Any,
    passes: Sequence[str | PassSpec],
    *,
    calibration: Any = None,
    inputs: Any = None,
    provider: str = "auto",
    verify: bool = True,
    verify_each: bool = False,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    max_drop: float | None = None,
    min_cosine: float | None = None,
    fix_shapes: Mapping[str, tuple[int, ...]] | None = None,
    measure: Measure | None = None,
    executor: str | Executor = "local",
    workers: int = 1,
    ray_address: str = "auto",
    gpus_per_worker: float | None = None,
) -> ShrinkResult:
    """Runs a pipeline of passes on a model and verifies the result with onnxruntime.

    Args:
        model: A path, ``onnx.ModelProto``, ``onnx_ir.Model`` or ``onnx_graphsurgeon.Graph``.
        passes: Pass specs such as ``"cleanup"`` or ``"prune:sparsity=0.5"``.
        calibration: An npz path, folder, ``module:attribute`` reader, dict of arrays or reader.
        inputs: Verification inputs: an npz path (may hold ``labels``) or a dict of arrays.
        provider: ``auto`` (CUDA when usable, else CPU), ``cpu`` or ``cuda``.
        verify: Compare the result against the input model.
        verify_each: Also compare after every pass; the first pass that breaks numerics is named.
        shapes: Sizes for dynamic input dims of generated inputs.
        rtol: Relative tolerance of exact pipelines: ``|d| <= atol + rtol * max|ref|``.
        atol: Absolute tolerance of exact pipelines (see ``rtol``).
        max_drop: Lossy pipelines: the largest top-1 accuracy drop accepted (checked when the data has labels).
        min_cosine: Lossy pipelines: the smallest cosine similarity of outputs accepted.
        fix_shapes: Concrete dims written into the named inputs of the result after the passes
            (and used for generated inputs), like onnxsim's ``--overwrite-input-shape``.
        measure: Called on the input and after every pass that changed the model; the ``macs``
            and ``bytes_compressed`` it returns go into each pass record as ``macs_after`` and
            ``bytes_compressed_after`` (``onnxshrink run`` measures as ``inspect`` does).
        executor: Where passes hand independent measurements (the layers of
            ``prune:allocation=sensitivity``): ``local`` (``workers`` processes on this machine;
            one: in this process), ``ray`` (a Ray cluster, ``pip install 'onnxshrink[ray]'``), or an
            executor object (:mod:`onnxshrink.executors`; the caller closes it).
        workers: Local worker processes, or the most Ray workers.
        ray_address: With ``executor="ray"``: ``auto``, ``HOST:PORT`` or ``local`` (start one here).
        gpus_per_worker: With ``executor="ray"``: GPUs each worker declares (default: 1 when
            ``provider`` is ``cuda`` and the cluster has GPUs, else 0).

    Raises:
        UsageError: Bad pass spec, option or data (data is checked against the model's inputs
            before any pass runs), or a ``max_drop`` that the data cannot check (no labels).
        InvalidModelError: The input model is malformed or unsafe.
        VerificationError: The result is outside the tolerance or budget.
        PassFailure: A pass broke a graph invariant.
    """
    started = time.perf_counter()
    specs = parse_specs(passes)
    if not specs:
        raise UsageError("no passes given; name at least one with -p (see 'onnxshrink passes')")
    if isinstance(executor, str):
        check_executor_options(executor, workers, gpus_per_worker, ray_address)
    shapes = dict(shapes or {})
    if max_drop is not None and not verify:
        raise UsageError("max_drop (--max-drop) is checked by verification; drop --no-verify or the budget")
    calib = open_samples(calibration) if calibration is not None else None
    loaded = _load_any(model)
    work = loaded.model
    if fix_shapes:
        check_fixed_shapes(work, fix_shapes)
        shapes = {**fix_shapes, **shapes}
    if calib is not None:
        calib = calib.fitted_to(work)
        calib.check_first_batch()
    load_seconds = time.perf_counter() - started
    # The input's files, listed before any pass swaps a weight out: saving never overwrites them.
    protected = (loaded.path, *sorted(external_files(work))) if loaded.path is not None else ()
    context = PassContext(calibration=calib, provider=provider, shapes=shapes, reference=loaded.source)
    input_summary = _summary(work)

    verifier: Verifier | None = None
    if verify or verify_each:
        given = open_samples(inputs, role="inputs") if inputs is not None else None
        feed = verification_feed(work, given, calib, shapes)
        _check_budget_data(feed, max_drop)
        verifier = Verifier(loaded.source, feed, provider, rtol, atol)
    each_reports: list[dict[str, Any]] = []

    def after_pass(candidate: ir.Model, record: PassRecord, records: Sequence[PassRecord]) -> None:
        assert verifier is not None
        try:
            report = verifier.compare(candidate)
        except RuntimeUnavailable as error:
            _refuse_given_data(error, verifier, candidate)
            each_reports.append({"pass": record.name, "skipped": str(error)})
            return
        each_reports.append({"pass": record.name, **report.to_json()})
        exact_so_far = all(r.exact for r in records)
        failure = report.failure(exact=exact_so_far, max_drop=max_drop, min_cosine=min_cosine)
        if failure:
            names = [r.name for r in records]
            raise VerificationError(f"numerics broke at pass '{record.name}' (passes so far: {names}): {failure}")

    pipeline = Pipeline(
        specs,
        context,
        full_checks=verify_each,
        after_pass=after_pass if verify_each else None,
        measure=measure,
        initial=measure(work) if measure is not None else None,
    )
    passes_started = time.perf_counter()
    if isinstance(executor, str):
        owned: Executor | None = make_executor(executor, workers, ray_address, gpus=gpus_per_worker, provider=provider)
        context.executor = owned
    else:
        owned, context.executor = None, executor
    try:
        records = pipeline.run(work)
    finally:
        context.executor = None
        if owned is not None:
            owned.close()
    passes_seconds = time.perf_counter() - passes_started
    if fix_shapes:
        # After the passes, so calibration may still run batches of any size.
        fix_input_shapes(work, fix_shapes)
    record_provenance(work, pipeline.describe())

    verification: dict[str, Any] | None = None
    verify_seconds = 0.0
    if verify and verifier is not None:
        verify_started = time.perf_counter()
        try:
            report = verifier.compare(work)
        except RuntimeUnavailable as error:
            _refuse_given_data(error, verifier, work)
            hint = "; pass --inputs or --shape for valid inputs" if error.stage == "run" else ""
            verification = {"skipped": f"onnxruntime cannot run the model: {error}{hint}"}
            # The report holds it; the CLI says it once, from there.
            logger.info("verification skipped: onnxruntime cannot run the model: %s", error)
        else:
            failure = report.failure(exact=pipeline.exact, max_drop=max_drop, min_cosine=min_cosine)
            verification = {**report.to_json(), "passed": failure is None, "exact_pipeline": pipeline.exact}
            if failure:
                raise VerificationError(f"verification failed, nothing written: {failure}")
        verify_seconds = time.perf_counter() - verify_started

    report_data: dict[str, Any] = {
        "onnxshrink_version": __version__,
        "input": {"path": str(loaded.path) if loaded.path else None, **input_summary},
        "output": {"path": None, **_summary(work)},
        "pipeline": pipeline.describe(),
        "exact": pipeline.exact,
        "passes": [r.to_json() for r in records],
        "verification": verification,
        "verify_each": each_reports if verify_each else None,
        "seconds": {"load": load_seconds, "passes": passes_seconds, "verify": verify_seconds},
    }
    return ShrinkResult(work, report_data, protected)
