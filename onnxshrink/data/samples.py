"""The one data type, :class:`Samples`, and :class:`Feed`, the arrays one comparison runs on.

:class:`Samples` is a re-iterable stream of sample batches; a :class:`Feed` holds the concrete
arrays (and labels) of one comparison.

Calibration data (passes read it through ``PassContext.calibration_batches``), verification
inputs and evaluation data are all :class:`Samples`, whatever they were read from
(:func:`onnxshrink.data.open_samples`). Batches are streamed; a source is read whole only when a
caller asks for a bounded number of samples (:meth:`Samples.take`) or for every sample of an
inputs file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.data.model_inputs import fit_arrays, generate_inputs, input_specs, split_labels
from onnxshrink.errors import UsageError

Role = Literal["calibration", "inputs"]
GENERATED = "generated"  # the description of a feed of invented values
VERIFY_SAMPLES = 32  # calibration samples that verification runs on when no inputs are given
_NOUNS: dict[Role, str] = {"calibration": "calibration data", "inputs": "inputs"}
_LARGEST_DYNAMIC_RUN = 64


@dataclasses.dataclass
class Feed:
    """Arrays checked against a model's inputs, optional labels, and where they came from.

    Attributes:
        arrays: One array per model input, first axis = samples.
        labels: Class indices for accuracy, when the data held a ``labels`` array.
        description: Where the arrays came from, as the report says it.
    """

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    description: str

    @property
    def samples(self) -> int:
        """The shared first-axis size when every input has one, else 1."""
        size = _shared_size(self.arrays)
        return size if size is not None else 1

    def run_size(self, model: ir.Model) -> int | None:
        """Samples per run when the feed holds more samples than one run of ``model`` takes, else None.

        Splitting is only safe when every input is batched on its first axis: all of them dynamic
        there (runs of up to 64), or all fixed to the same size ``k`` that divides the sample count.
        """
        specs = input_specs(model)
        total = _shared_size(self.arrays)
        if not specs or total is None:
            return None
        if all(s.dynamic_batch for s in specs):
            return _LARGEST_DYNAMIC_RUN if total > _LARGEST_DYNAMIC_RUN else None
        fixed = {s.dims[0] for s in specs if s.dims}
        if len(fixed) == 1 and not any(s.dynamic_batch for s in specs):
            (k,) = fixed
            if isinstance(k, int) and 0 < k < total and total % k == 0:
                return k
        return None


def _shared_size(arrays: Mapping[str, np.ndarray]) -> int | None:
    """The first-axis size every array shares, or None (sizes differ, or a scalar is among them)."""
    sizes = {len(v) if np.ndim(v) > 0 else -1 for v in arrays.values()}
    return sizes.pop() if len(sizes) == 1 and -1 not in sizes else None


class Samples:
    """A re-iterable stream of sample batches.

    Each batch is a dict of arrays keyed by input name (first axis = samples), possibly with a
    ``labels`` array. ``make_batches`` starts a fresh pass over the source each time it is called.

    Attributes:
        description: Where the samples come from (``npz data.npz``, ``reader my_module:Reader``...).
        role: ``calibration`` or ``inputs`` (verification inputs); error messages name it.
        rereadable: Whether reading the first batch early costs nothing later (False for a reader
            instance that can be read only once).
    """

    def __init__(
        self,
        make_batches: Callable[[], Iterator[Mapping[str, np.ndarray]]],
        description: str,
        role: Role = "calibration",
        *,
        rereadable: bool = True,
    ) -> None:
        self._make_batches = make_batches
        self.description = description
        self.role = role
        self.rereadable = rereadable
        self.fixed_batch: int | None = None  # set by fitted_to for a model whose inputs fix the first axis

    def fitted_to(self, model: ir.Model) -> Samples:
        """These samples with every batch fitted to ``model``'s inputs (names, ranks, dims, dtypes).

        See :func:`~onnxshrink.data.model_inputs.fit_arrays`; a float64 cast is noted once.
        """
        specs = input_specs(model)
        source = f"{self.noun} {self.description}"
        noted: set[str] = set()

        def batches() -> Iterator[Mapping[str, np.ndarray]]:
            for batch in self._make_batches():
                yield fit_arrays(specs, batch, source, noted=noted)

        fitted = Samples(batches, self.description, self.role, rereadable=self.rereadable)
        firsts = {spec.dims[0] if spec.dims else None for spec in specs}
        if len(firsts) == 1 and isinstance(first := firsts.pop(), int):
            fitted.fixed_batch = first
        return fitted

    def check_first_batch(self) -> None:
        """Reads the first batch now, so data that does not fit fails before any work starts.

        Sources that can be read only once are left for their consumer to check.

        Raises:
            UsageError: The first batch does not fit (on samples from :meth:`fitted_to`).
        """
        if self.rereadable:
            next(iter(self.batches()), None)

    def __repr__(self) -> str:
        return f"Samples({self.role}: {self.description})"

    @property
    def noun(self) -> str:
        """How messages name this data: ``calibration data`` or ``inputs``."""
        return _NOUNS[self.role]

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches as the source gives them (labels and other keys included)."""
        for batch in self._make_batches():
            yield dict(batch)

    def take(self, count: int | None = None) -> dict[str, np.ndarray]:
        """The first ``count`` samples (every sample when None) in one batch, labels and other keys kept.

        Batches that cannot be split or joined (a scalar input, inputs batched on different axes)
        are one run each: the first such batch is returned as it is.

        Raises:
            UsageError: ``count`` was given and the source holds no samples.
        """
        parts: dict[str, list[np.ndarray]] = {}
        have = 0
        for batch in self.batches():
            if _shared_size({k: v for k, v in batch.items() if k != "labels"}) is None:
                # A batch that cannot be split (a scalar input): the first one is the one run.
                if not parts:
                    return batch
                break
            if count is not None:
                keep = min(min(len(v) for v in batch.values()) if batch else 0, count - have)
                batch = {key: value[:keep] for key, value in batch.items()}
                have += keep
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
            if count is not None and have >= count:
                break
        if count is not None and not parts:
            raise UsageError(f"{self.noun} {self.description} holds no samples")
        return {key: values[0] if len(values) == 1 else np.concatenate(values, axis=0) for key, values in parts.items()}

    def feeds(
        self,
        input_names: Collection[str],
        *,
        consumer: str,
        samples: int | None = None,
        batch_size: int = 32,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Streams feeds for the named model inputs in batches of at most ``batch_size``.

        Keys that are not among ``input_names`` (such as ``labels``) are dropped. At most
        ``samples`` samples are read when given (a batch that cannot be split, because an input is
        a scalar or the first axes differ, is yielded whole and counts as one). A model whose
        inputs fix the first axis to ``k`` (see :meth:`fitted_to`) gets batches of exactly ``k``;
        a last, shorter one is left out.

        Raises:
            UsageError: A named input is missing from a batch; ``consumer`` (``pass 'prune'``)
                opens the message.
        """
        wanted = list(input_names)
        left = samples
        for batch in self.batches():
            missing = [name for name in wanted if name not in batch]
            if missing:
                raise UsageError(
                    f"{consumer}: {self.noun} {self.description} has no input {missing[0]!r} (it has {sorted(batch)})"
                )
            feed = {name: np.asarray(batch[name]) for name in wanted}
            if feed and _shared_size(feed) is None:
                # A scalar input (a sample rate), or inputs batched on different axes (an RNN
                # state [layers, N, hidden]): the batch cannot be split, so it runs as given.
                yield feed
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
                continue
            count = min((len(v) for v in feed.values()), default=0)
            step = self.fixed_batch or batch_size
            if self.fixed_batch is not None:
                count -= count % self.fixed_batch  # a short last batch would not fit the model
            for start in range(0, count, step):
                stop = min(count, start + step)
                if left is not None:
                    stop = min(stop, start + left)
                if self.fixed_batch is not None and stop - start < self.fixed_batch:
                    return
                yield {name: value[start:stop] for name, value in feed.items()}
                if left is not None:
                    left -= stop - start
                    if left <= 0:
                        return

    def feed_for(self, model: ir.Model, count: int | None = None) -> Feed:
        """The first ``count`` samples (all when None) checked against ``model``, labels split off.

        Raises:
            UsageError: A model input is missing, or ``count`` was given and there are no samples.
        """
        feed, labels = split_labels(model, self.take(count), f"{self.noun} {self.description}")
        if count is None:
            return Feed(feed, labels, self.description)
        if _shared_size(feed) is None:  # a batch that cannot be split or joined, run whole
            return Feed(feed, labels, f"{self.role} {self.description} (first batch)")
        return Feed(feed, labels, f"{self.role} {self.description} (first {count} samples)")


def verification_feed(
    model: ir.Model,
    inputs: Samples | None,
    calibration: Samples | None,
    shapes: Mapping[str, tuple[int, ...]],
) -> Feed:
    """Returns the feed verification runs on.

    That is every sample of ``inputs``, else the first calibration samples, else generated values
    (dynamic dims from ``shapes`` or 1).

    Raises:
        UsageError: The data does not fit the model's inputs.
    """
    if inputs is not None:
        return inputs.feed_for(model)
    if calibration is not None:
        return calibration.feed_for(model, VERIFY_SAMPLES)
    return Feed(generate_inputs(model, shapes), None, GENERATED)


def batch_samples(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in one feed: the first-axis size its inputs share, else 1 (a batch run as given)."""
    size = _shared_size(feed)
    return size if size is not None else 1
