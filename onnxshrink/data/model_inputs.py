"""The model's side of the data: its runtime inputs, their sizes, generated values, feed checks.

A feed is checked against the inputs after its ``labels`` key is split off.
Generated inputs have the right dtype; dynamic dimensions come from ``--shape NAME=DIMS`` or 1;
integer inputs stay in a small safe range (they are often indices); sizes are capped so an
untrusted model cannot make us allocate without bound.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError

LABELS_KEY = "labels"
MAX_GENERATED_ELEMENTS = 64 * 1024 * 1024
_SHAPE = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+(?:[x,]\d+)*)\s*$")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A tensor input: name, element type, and dims (int, or a symbol / None when dynamic)."""

    name: str
    dtype: ir.DataType
    dims: tuple[int | str | None, ...]

    @property
    def dynamic_batch(self) -> bool:
        """Whether the first axis (the samples axis of a batched input) has no fixed size."""
        return bool(self.dims) and not isinstance(self.dims[0], int)


def parse_shapes(texts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parses ``NAME=1x3x224x224`` items; a bad item is a usage error."""
    shapes = {}
    for text in texts:
        match = _SHAPE.match(text)
        if not match:
            raise UsageError(f"bad --shape '{text}'; expected NAME=DIMS such as input=1x3x224x224")
        shapes[match.group(1)] = tuple(int(d) for d in re.split("[x,]", match.group(2)))
    return shapes


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's runtime inputs (initializers listed as inputs are left out)."""
    specs = []
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        if not isinstance(value.type, ir.TensorType) or value.dtype is None:
            raise UsageError(
                f"input '{value.name}' is not a plain tensor ({value.type}); pass its values with --inputs"
            )
        dims: tuple[int | str | None, ...] = ()
        if value.shape is not None:
            # A negative or zero size (some exporters write -1) is a dynamic dimension too.
            dims = tuple(d if isinstance(d, int) and d > 0 else getattr(d, "value", None) for d in value.shape)
        specs.append(InputSpec(value.name or "", value.dtype, dims))
    return specs


def _concrete_dims(spec: InputSpec, shapes: Mapping[str, tuple[int, ...]], batch: int | None) -> tuple[int, ...]:
    if spec.name in shapes:
        given = shapes[spec.name]
        if spec.dims and len(given) != len(spec.dims):
            raise UsageError(f"--shape {spec.name} has rank {len(given)}, but the input has rank {len(spec.dims)}")
        for got, want in zip(given, spec.dims, strict=False):
            if isinstance(want, int) and got != want:
                raise UsageError(f"--shape {spec.name}: dimension {got} contradicts the model's fixed size {want}")
        return given
    dims = []
    for axis, dim in enumerate(spec.dims):
        if isinstance(dim, int):
            dims.append(dim)
        elif axis == 0 and batch is not None:
            dims.append(batch)
        else:
            dims.append(1)
    return tuple(dims)


def generate_inputs(
    model: ir.Model,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    batch: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the right dtypes and shapes."""
    shapes = shapes or {}
    specs = input_specs(model)
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise UsageError(f"--shape names unknown input(s) {sorted(unknown)}; inputs: {[s.name for s in specs]}")
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        dims = _concrete_dims(spec, shapes, batch)
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if count > MAX_GENERATED_ELEMENTS:
            raise UsageError(
                f"input '{spec.name}' of shape {dims} has {count} elements, past the cap of "
                f"{MAX_GENERATED_ELEMENTS}; pass smaller --shape values or --inputs"
            )
        feed[spec.name] = _random_array(rng, spec, dims)
    return feed


def _random_array(rng: np.random.Generator, spec: InputSpec, dims: tuple[int, ...]) -> np.ndarray:
    dtype = spec.dtype
    if dtype == ir.DataType.BOOL:
        return rng.random(dims) < 0.5
    if dtype == ir.DataType.STRING:
        return np.full(dims, "onnxshrink", dtype=object)
    np_dtype = dtype.numpy()
    if dtype.is_floating_point():
        return rng.standard_normal(dims).astype(np_dtype)
    if dtype.is_integer():
        # Small non-negative values are valid indices, lengths and token ids for most models.
        return rng.integers(0, 4, size=dims).astype(np_dtype)
    raise UsageError(f"cannot generate values for input '{spec.name}' of type {dtype}; pass --inputs")


def split_labels(
    model: ir.Model, arrays: Mapping[str, np.ndarray], source: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Separates the feed from an optional ``labels`` array and checks names against the model.

    Keys that are not model inputs are dropped; ``labels`` is kept aside unless the model has an
    input of that name.

    Raises:
        UsageError: A model input is missing; ``source`` names where the arrays came from.
    """
    names = [s.name for s in input_specs(model)]
    feed = {k: v for k, v in arrays.items() if k in names}
    labels = arrays.get(LABELS_KEY) if LABELS_KEY not in names else None
    missing = [n for n in names if n not in feed]
    if missing:
        raise UsageError(f"{source} lacks input(s) {missing}; it has {sorted(arrays)}")
    return feed, labels
