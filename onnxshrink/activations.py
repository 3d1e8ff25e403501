"""Intermediate activations on calibration data, captured in one onnxruntime session per call.

Passes that need activations (sensitivity, calibration statistics, layer refits) name the values
they want; the values are exposed as extra graph outputs for the duration of one session, the
calibration data is streamed through it batch by batch, and each batch's arrays are handed to
the caller and dropped. Nothing holds more than one batch of activations.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxshrink.context import PassContext
from onnxshrink.errors import UsageError
from onnxshrink.runtime import run


def exposed(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """A copy of ``model`` whose outputs are the named values (weights are shared, not copied)."""
    copy = model.clone()
    graph = copy.graph
    values = {v.name: v for v in graph.inputs}
    for node in graph:
        for output in node.outputs:
            values[output.name] = output
    missing = [name for name in names if name not in values and name not in graph.initializers]
    if missing:
        raise UsageError(f"no value named {missing[0]!r} in the main graph to capture")
    while graph.outputs:
        graph.outputs.pop()
    for name in names:
        if name in values:
            graph.outputs.append(values[name])
    return copy


def capture(
    context: PassContext,
    model: ir.Model,
    names: Sequence[str],
    *,
    pass_name: str,
    samples: int | None = None,
    batch_size: int = 32,
    augment: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Streams ``(feed, activations)`` per calibration batch for the named main-graph values.

    Graph inputs and initializers may be named too: they come from the feed or the weight.
    A batch's ``activations`` dict is emptied when the next batch is asked for: use (or copy)
    what it holds before that. ``augment`` turns each calibration feed into the one that runs
    (more samples from each, e.g. shifted images); the feed yielded is the one that ran.

    Raises:
        UsageError: No calibration data, or a name that is not a value of the main graph.
        RuntimeUnavailable: onnxruntime cannot load or run the model.
    """
    input_names = [v.name for v in model.graph.inputs if v.name and v.name not in model.graph.initializers]
    initializers = {
        name: model.graph.initializers[name].const_value
        for name in names
        if name in model.graph.initializers and name not in input_names
    }
    computed = [name for name in dict.fromkeys(names) if name not in input_names and name not in initializers]
    session = context.session(exposed(model, computed))[0] if computed else None
    constants = {name: tensor.numpy() for name, tensor in initializers.items() if tensor is not None}
    for feed in context.calibration_batches(pass_name, input_names, samples=samples, batch_size=batch_size):
        if augment is not None:
            feed = augment(feed)
        arrays = dict(run(session, feed)) if session is not None else {}
        arrays.update({name: feed[name] for name in names if name in feed})
        arrays.update(constants)
        yield feed, arrays
        # The caller asks for the next batch once it is done with this one: emptied before the
        # next run, the dict it still holds no longer keeps this batch's arrays alive beside the
        # next batch's (BERT-base calibration, batch 8: 255 MB).
        arrays.clear()
    del session
    release_freed_memory()


def release_freed_memory() -> None:
    """Hands the heap memory freed so far back to the system (glibc ``malloc_trim``; elsewhere nothing).

    An onnxruntime session frees hundreds of MB when it goes (BERT-base: its prepacked weights,
    its arena), which glibc keeps in the process's heap; what the pass allocates next (the
    quantized weights, the embedding tables' blocks) then counts on top of it in the peak RSS.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


class KeptBatches:
    """Some of the arrays of each captured batch, kept for a later pass over the same batches.

    A pass that reads a few small activations after another one's capture (bias correction after
    calibration) replays them instead of running the model again. Memory is bounded: once the
    kept arrays would pass ``limit`` bytes (estimated from the first batch for all ``samples``,
    then counted), nothing is kept and :meth:`holds` is False.

    Args:
        names: The values to keep.
        batch_size: Samples per captured batch (a reader of the kept batches checks it).
        samples: Samples the capture reads at most.
        limit: Bytes kept at most.
    """

    def __init__(self, names: Collection[str], *, batch_size: int, samples: int, limit: int) -> None:
        self.names = frozenset(names)
        self.batch_size = batch_size
        self.samples = samples
        self.limit = limit
        self.batches: list[dict[str, np.ndarray]] = []
        self.nbytes = 0
        self.dropped = False

    def add(self, arrays: Mapping[str, np.ndarray], samples: int) -> None:
        """Keeps this batch's arrays of ``names`` (references: a capture's arrays are fresh per batch)."""
        if self.dropped or not self.names:
            return
        batch = {name: np.asarray(arrays[name]) for name in self.names if name in arrays}
        self.nbytes += sum(array.nbytes for array in batch.values())
        # The first batch stands for all of them: no memory is spent on batches thrown away later.
        projected = self.nbytes * math.ceil(self.samples / max(1, samples)) if not self.batches else self.nbytes
        if projected > self.limit:
            self.clear()
            self.dropped = True
            return
        self.batches.append(batch)

    def clear(self) -> None:
        """Forgets every batch, and that any was dropped (a capture that starts over keeps them again)."""
        self.batches = []
        self.nbytes = 0
        self.dropped = False

    def forget(self, names: Collection[str]) -> None:
        """Drops the named values from every batch (their values changed since they were captured)."""
        self.names = self.names - set(names)
        for batch in self.batches:
            for name in names:
                batch.pop(name, None)

    def holds(self, names: Collection[str], batch_size: int) -> bool:
        """Whether every batch holds ``names``, captured in batches of ``batch_size``."""
        wanted = set(names)
        return (
            not self.dropped
            and bool(self.batches)
            and batch_size == self.batch_size
            and all(wanted <= batch.keys() for batch in self.batches)
        )

    def replay(self) -> Iterator[dict[str, np.ndarray]]:
        """The kept batches, in the order they were captured."""
        yield from self.batches
