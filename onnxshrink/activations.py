"""Intermediate activations on calibration data, captured in one onnxruntime session per call.

Passes that need activations (sensitivity, calibration statistics, layer refits) name the values
they want; the values are exposed as extra graph outputs for the duration of one session, the
calibration data is streamed through it batch by batch, and each batch's arrays are handed to
the caller and dropped. Nothing holds more than one batch of activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

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
