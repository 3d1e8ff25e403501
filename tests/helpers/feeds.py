"""Inputs for tests: random feeds, a calibration reader, and the ONNX backend node suite.

:func:`random_feed` (dtype and shape aware, seeded, dynamic dims by a sizes map),
:class:`OnceReader` (a calibration reader), :func:`node_cases` and :func:`node_case_feed` (the
ONNX backend node suite), :class:`NodeSuiteTally` (the node-suite counts the run's summary prints).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from .models import ModelLike, as_proto


def random_feed(
    model: ModelLike,
    *,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    dynamic_size: int = 1,
    int_range: tuple[int, int] = (0, 3),
    special_values: bool = False,
) -> dict[str, np.ndarray]:
    """Deterministic inputs for every graph input that is not an initializer.

    One generator seeded with ``seed`` draws the inputs in graph-input order: floats standard
    normal, integers uniform over ``int_range`` (``high`` exclusive), bools fair coin flips, each
    cast to the input's declared type. A dim with a positive ``dim_value`` keeps it; a dynamic dim
    takes ``sizes[dim_param]``, else ``dynamic_size``. An input without a shape is a scalar.

    Args:
        model: The model whose inputs are fed.
        seed: Seed of the generator.
        sizes: Sizes of named dynamic dims (``{"N": 4}``).
        dynamic_size: Size of the other dynamic dims.
        int_range: ``(low, high)`` of integer inputs; the default also makes valid pads and indices.
        special_values: Put NaN and -0.0 into the first two elements of every float input with
            more than one element, so a rewrite that changes how they travel shows.

    Raises:
        ValueError: An input is not a tensor.
    """
    graph = as_proto(model).graph
    initializers = {t.name for t in graph.initializer}
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise ValueError(f"random_feed: input '{value.name}' is not a tensor; build its feed by hand")
        tensor_type = value.type.tensor_type
        shape = [
            d.dim_value if d.dim_value > 0 else (sizes or {}).get(d.dim_param, dynamic_size)
            for d in tensor_type.shape.dim
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if dtype == np.bool_:
            feed[value.name] = rng.integers(0, 2, shape).astype(dtype)
        elif dtype.kind in "iu":
            feed[value.name] = rng.integers(*int_range, shape).astype(dtype)
        else:
            data = rng.standard_normal(shape).astype(dtype)
            if special_values and data.size > 1:
                data.reshape(-1)[:2] = [np.nan, -0.0]
            feed[value.name] = data
    return feed


class OnceReader:
    """An onnxruntime-style calibration reader: one feed per ``get_next()``, then None; no rewind."""

    def __init__(self, batches: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._batches = iter([dict(b) for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@functools.cache
def node_cases() -> dict[str, Any]:
    """The ONNX backend node test cases (``onnx.backend.test``), by name, collected once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return {case.name: case for case in collect_testcases(None)}


def node_case_feed(case: Any) -> dict[str, Any]:
    """The first data set's inputs of a node test case, as onnxruntime takes them."""
    inputs, _ = case.data_sets[0]
    initializers = {t.name for t in case.model.graph.initializer}
    names = [i.name for i in case.model.graph.input if i.name not in initializers]
    return {name: _runtime_value(value) for name, value in zip(names, inputs, strict=False)}


def _runtime_value(value: Any) -> Any:
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, list):
        return [_runtime_value(v) for v in value]
    return value


@dataclasses.dataclass
class NodeSuiteTally:
    """ONNX node-suite cases that passed or were skipped, and the skips by reason (conftest prints it)."""

    passed: int = 0
    skipped: int = 0
    skips: dict[str, int] = dataclasses.field(default_factory=dict)
