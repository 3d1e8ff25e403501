"""The model's side of the data: its runtime inputs, their sizes, generated values, feed checks.

A feed is checked against the inputs after its ``labels`` key is split off.
Given arrays are fitted to the inputs (:func:`fit_arrays`): names, ranks, fixed dims and dtypes
are checked before any work starts, float64 is cast to a float32 input with a note, and the one
array of an ``.npy`` file feeds a single-input model.
Generated inputs have the right dtype; dynamic dimensions come from ``--shape NAME=DIMS`` (or
``NAME:DIMS``) or 1; integer inputs stay in a small safe range (they are often indices), except
sample rates, which get 16000; sizes are capped so an untrusted model cannot make us allocate
without bound.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError

logger = logging.getLogger(__name__)

LABELS_KEY = "labels"
NPY_KEY = ""  # the one array of an .npy file: it feeds the model's only input
MAX_GENERATED_ELEMENTS = 64 * 1024 * 1024
SAMPLE_RATE = 16000  # what a generated sample-rate input gets (speech models take 8000 or 16000)
_DIMS = r"(\d+(?:[x,]\d+)*)"
# NAME=DIMS first; NAME:DIMS splits at the last colon, so TensorFlow names such as 'x:0' still work.
_SHAPE_FORMS = (re.compile(rf"^\s*([^=]+?)\s*=\s*{_DIMS}\s*$"), re.compile(rf"^\s*(.+):\s*{_DIMS}\s*$"))
_SAMPLE_RATE_NAMES = re.compile(r"^(sr|sample_?rate|sampling_?rate|fs)$", re.IGNORECASE)


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


def parse_shapes(texts: Sequence[str], option: str = "--shape") -> dict[str, tuple[int, ...]]:
    """Parses ``NAME=1x3x224x224`` or ``NAME:1,3,224,224`` items; a bad item is a usage error."""
    shapes = {}
    for text in texts:
        match = next((m for form in _SHAPE_FORMS if (m := form.match(text))), None)
        if not match:
            raise UsageError(
                f"bad {option} '{text}'; expected NAME=DIMS such as input=1x3x224x224 or input:1,3,224,224"
            )
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


def _concrete_dims(
    spec: InputSpec, shapes: Mapping[str, tuple[int, ...]], batch: int | None, option: str = "--shape"
) -> tuple[int, ...]:
    if spec.name in shapes:
        given = shapes[spec.name]
        if spec.dims and len(given) != len(spec.dims):
            raise UsageError(f"{option} {spec.name} has rank {len(given)}, but the input has rank {len(spec.dims)}")
        for got, want in zip(given, spec.dims, strict=False):
            if isinstance(want, int) and got != want:
                raise UsageError(f"{option} {spec.name}: dimension {got} contradicts the model's fixed size {want}")
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
        if _SAMPLE_RATE_NAMES.match(spec.name):
            # A sample rate of 0..3 makes speech models (silero-vad's 'sr') fail or take odd branches.
            return np.full(dims, SAMPLE_RATE, dtype=np_dtype)
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
    specs = input_specs(model)
    names = [s.name for s in specs]
    labels = arrays.get(LABELS_KEY) if LABELS_KEY not in names else None
    fitted = fit_arrays(specs, arrays, source)
    return {name: fitted[name] for name in names}, labels


def fit_arrays(
    specs: Sequence[InputSpec],
    arrays: Mapping[str, np.ndarray],
    source: str,
    *,
    noted: set[str] | None = None,
) -> dict[str, np.ndarray]:
    """Checks arrays against the model's inputs and returns them ready to feed.

    Rules: every input is present (the one array of an ``.npy`` file feeds a single-input
    model); an array has the input's rank and its fixed dims (the first axis holds samples, so
    a fixed size there need only divide it); its dtype is the input's, except that float64 is
    cast to a float32 input (with a logged note, once per input when ``noted`` is shared across
    batches). Keys that are not inputs are kept as they are.

    Raises:
        UsageError: Data that does not fit, naming ``source``, the input and the rule.
    """
    fitted = dict(arrays)
    if NPY_KEY in fitted:
        if len(specs) != 1:
            raise UsageError(
                f"{source} holds one unnamed array (.npy), but the model has {len(specs)} inputs "
                f"{[s.name for s in specs]}; save an .npz keyed by input name"
            )
        fitted[specs[0].name] = fitted.pop(NPY_KEY)
    missing = [s.name for s in specs if s.name not in fitted]
    if missing:
        raise UsageError(f"{source} lacks input(s) {missing}; it has {sorted(arrays)}")
    for spec in specs:
        fitted[spec.name] = _fit_array(spec, np.asarray(fitted[spec.name]), source, set() if noted is None else noted)
    return fitted


def _fit_array(spec: InputSpec, array: np.ndarray, source: str, noted: set[str]) -> np.ndarray:
    where = f"{source}: input '{spec.name}'"
    # A model input without a shape has unknown rank: only its dtype can be checked.
    if spec.dims or array.ndim == 0:
        if array.ndim != len(spec.dims):
            raise UsageError(
                f"{where} has shape {array.shape} (rank {array.ndim}), but the model's input has rank "
                f"{len(spec.dims)} {_dims_text(spec.dims)}"
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.dims, strict=True)):
            fits = got == want or (axis == 0 and want > 0 and got % want == 0) if isinstance(want, int) else True
            if not fits:
                raise UsageError(
                    f"{where} has size {got} on axis {axis}, but the model fixes it to {want} {_dims_text(spec.dims)}"
                )
    return _fit_dtype(spec, array, where, noted)


def _fit_dtype(spec: InputSpec, array: np.ndarray, where: str, noted: set[str]) -> np.ndarray:
    if spec.dtype == ir.DataType.STRING:
        if array.dtype.kind not in "OUS":
            raise UsageError(f"{where} is {array.dtype}, but the model wants strings")
        return array
    wanted = np.dtype(spec.dtype.numpy())
    if array.dtype == wanted:
        return array
    if array.dtype == np.float64 and wanted == np.float32:
        if spec.name not in noted:
            noted.add(spec.name)
            logger.warning("%s is float64; cast to float32, the type the model takes", where)
        return array.astype(np.float32)
    raise UsageError(
        f"{where} is {array.dtype}, but the model wants {wanted}; only float64 is cast (to float32), "
        f"so save the array as {wanted}"
    )


def _dims_text(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def check_fixed_shapes(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Checks ``--fix-shape`` sizes against the model's inputs, like ``--shape``.

    Raises:
        UsageError: An unknown input, a wrong rank, or a dim that contradicts a fixed one.
    """
    specs = {spec.name: spec for spec in input_specs(model)}
    unknown = sorted(set(shapes) - set(specs))
    if unknown:
        raise UsageError(f"--fix-shape names unknown input(s) {unknown}; inputs: {sorted(specs)}")
    for name in shapes:
        _concrete_dims(specs[name], shapes, None, "--fix-shape")


def fix_input_shapes(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Writes concrete dims into the model's inputs (``--fix-shape``), checked first.

    Raises:
        UsageError: See :func:`check_fixed_shapes`.
    """
    check_fixed_shapes(model, shapes)
    values = {value.name: value for value in model.graph.inputs}
    for name, dims in shapes.items():
        values[name].shape = ir.Shape(dims)
