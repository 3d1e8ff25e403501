"""Running passes in tests: through the real pipeline with every check on; scratch registrations.

:func:`run_pass` returns a :class:`PassRun` (the result, checked, and the pass records);
:class:`PassRegistrations` registers passes and presets for one test and removes them afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from onnxshrink import registry
from onnxshrink.context import PassContext
from onnxshrink.data.readers import open_samples
from onnxshrink.loading import LoadedModel, load_model, load_proto
from onnxshrink.passbase import ShrinkPass
from onnxshrink.pipeline import Pipeline
from onnxshrink.saving import to_proto
from onnxshrink.spec import PassSpec, parse_specs

from .models import ModelLike, as_proto


@dataclasses.dataclass
class PassRun:
    """What :func:`run_pass` returns.

    Attributes:
        model: The result as a ``ModelProto`` with weights inline, already checked.
        records: One record per pass run, as in the report's ``passes`` list.
        ir_model: The result as the pipeline left it.
    """

    model: onnx.ModelProto
    records: list[dict[str, Any]]
    ir_model: ir.Model

    @property
    def record(self) -> dict[str, Any]:
        """The record of the only pass run (use :attr:`records` for presets and several passes)."""
        assert len(self.records) == 1, f"{len(self.records)} pass runs: {[r['name'] for r in self.records]}"
        return self.records[0]

    @property
    def modified(self) -> bool:
        """Whether any pass run reported a change."""
        return any(r["modified"] for r in self.records)

    @property
    def stats(self) -> dict[str, Any]:
        """The stats of the only pass run."""
        return self.record["stats"]


PassLike = str | PassSpec | type[ShrinkPass[Any]]


def run_pass(
    model: ModelLike,
    passes: PassLike | Sequence[PassLike],
    *,
    calibration: Any = None,
    reference: ModelLike | None = None,
    provider: str = "cpu",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> PassRun:
    """Runs passes on a model through the pipeline, with every check after every pass.

    The model is loaded as ``onnxshrink.shrink`` loads it (validated, sorted). After every pass
    the pipeline checks the graph's structure and runs the ONNX checker, and fails naming the
    pass; the result must then pass the ONNX full checker (strict shape inference) if the input
    did. Nothing is verified numerically here: compare with :func:`assert_close`.

    Args:
        model: A ``ModelProto``, ``onnx_ir.Model`` (left untouched) or path.
        passes: Spec strings (``"prune:sparsity=0.5"``), ``PassSpec``, registered pass classes,
            or a list of them run in order.
        calibration: Anything ``--calib``/``calibration=`` takes: npz path, dict of arrays, reader.
        reference: The model passes see as the pipeline's input (a teacher); default ``model``.
        provider: onnxruntime provider preference offered to passes.
        shapes: Sizes for dynamic input dims, offered to passes.
    """
    items = [passes] if isinstance(passes, (str, PassSpec, type)) else list(passes)
    specs = parse_specs([PassSpec(p.name) if isinstance(p, type) else p for p in items])
    loaded = _load(model)
    if reference is None:
        source: str | bytes | None = str(loaded.path) if loaded.path is not None else loaded.proto_bytes
    elif isinstance(reference, (str, os.PathLike)):
        source = os.fspath(reference)
    else:
        source = as_proto(reference).SerializeToString()
    context = PassContext(
        calibration=open_samples(calibration) if calibration is not None else None,
        provider=provider,
        shapes=dict(shapes or {}),
        reference=source,
    )
    if loaded.path is not None:
        stat = loaded.path.stat()
        strict_before = _file_passes_full_check(str(loaded.path), stat.st_mtime_ns, stat.st_size)
    else:
        strict_before = _passes_full_check(to_proto(loaded.model))
    records = Pipeline(specs, context, full_checks=True).run(loaded.model)
    out = to_proto(loaded.model)
    onnx.checker.check_model(out, full_check=strict_before)
    return PassRun(out, [r.to_json() for r in records], loaded.model)


def _load(model: ModelLike) -> LoadedModel:
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, ir.Model):
        return load_proto(to_proto(model))
    return load_proto(as_proto(model))


def _passes_full_check(model: onnx.ModelProto | str) -> bool:
    # Some real exports declare shapes strict inference disagrees with; a pass is not blamed for that.
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False
    return True


@functools.lru_cache(maxsize=64)
def _file_passes_full_check(path: str, mtime_ns: int, size: int) -> bool:
    # Real models go through many tests; check each file once (keyed by its stat, in case it changes).
    return _passes_full_check(path)


class PassRegistrations:
    """Passes and presets registered for a test; :meth:`close` unregisters them, newest first.

    A context manager: ``with PassRegistrations() as scratch: scratch.add_pass(MyPass)``.
    """

    def __init__(self) -> None:
        self._names: list[str] = []

    def __enter__(self) -> PassRegistrations:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_pass(self, cls: type[ShrinkPass[Any]]) -> type[ShrinkPass[Any]]:
        """Registers a pass class (checked as ``@register_pass`` checks it) and returns it."""
        registry.register_pass(cls)
        self._names.append(cls.name)
        return cls

    def add_preset(self, name: str, steps: tuple[str, ...], *, doc: str, **kwargs: Any) -> registry.Preset:
        """Registers a preset (``fixed_point``, ``max_steps`` as ``register_preset`` takes them)."""
        preset = registry.register_preset(name, steps, doc=doc, **kwargs)
        self._names.append(name)
        return preset

    def close(self) -> None:
        """Unregisters everything this object registered (``registry.unregister``), newest first."""
        while self._names:
            registry.unregister(self._names.pop())


def assert_exact_change(
    text: str,
    spec: str,
    ops_after: Mapping[str, int],
    stats: Mapping[str, Any],
    *,
    feed: Mapping[str, Any] | None = None,
    context: str = "",
) -> None:
    """An exact pass changes the model in ONNX ``text`` as expected and then reaches its fixed point.

    Checks the op counts and stats after the pass, ``modified``, the signature, onnxruntime numerics
    (on ``feed``, or random inputs) and that a second run changes nothing and reports no stats.
    """
    from .models import assert_same_signature, op_counts, parse_model
    from .numerics import assert_close

    model = parse_model(text)
    changed = run_pass(model, spec)
    out, record = changed.model, changed.record
    assert dict(op_counts(out)) == ops_after
    assert record["modified"] is True
    assert record["stats"] == stats
    assert_same_signature(model, out)
    assert_close(model, out, feed, context=context)
    again = run_pass(out, spec).record
    assert again["modified"] is False and again["stats"] == {}
