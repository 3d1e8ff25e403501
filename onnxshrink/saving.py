"""Writing models: atomic, checker-valid, deterministic, with provenance.

The model (and its external data, if any) is written into a temporary folder beside the
destination, checked with the ONNX checker from there, and only then moved into place with
``os.replace``. A failure at any point leaves the destination as it was.

Before any work, :func:`check_write_paths` refuses destinations that would clobber the input,
a data file or each other; :func:`written_after` writes a companion file (the report) so that
it appears only once the model is in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxshrink._version import __version__
from onnxshrink.errors import PassFailure, UsageError
from onnxshrink.ir.checks import onnx_checker_problem, weightless_proto
from onnxshrink.ir.graphs import count_bytes

logger = logging.getLogger(__name__)

# Protobuf cannot hold a message past 2 GiB; leave room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

PROVENANCE_VERSION_KEY = "onnxshrink.version"
PROVENANCE_PIPELINE_KEY = "onnxshrink.pipeline"


@dataclasses.dataclass(frozen=True)
class SavedFiles:
    """What was written: the model file and, when used, its external data file."""

    model: Path
    external_data: Path | None


def record_provenance(model: ir.Model, pipeline: Sequence[dict[str, Any]]) -> None:
    """Stores the onnxshrink version and the pass list (with options) in ``metadata_props``."""
    model.metadata_props[PROVENANCE_VERSION_KEY] = __version__
    model.metadata_props[PROVENANCE_PIPELINE_KEY] = json.dumps(list(pipeline), sort_keys=True, separators=(",", ":"))


def external_files(model: ir.Model) -> set[Path]:
    """Resolved paths of every external-data file the model's tensors read from."""
    files = set()
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                files.add(Path(tensor.path).resolve())
    return files


@contextlib.contextmanager
def _inlined_external_tensors(model: ir.Model) -> Iterator[None]:
    """Temporarily holds external initializers in memory so the model saves as one file."""
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor):
                    swapped.append((value, tensor))
                    value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
        yield
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    protected: Sequence[Path] = (),
    on_tensor: Callable[[ir.TensorProtocol, ir.external_data.CallbackInfo], None] | None = None,
) -> SavedFiles:
    """Writes ``model`` to ``path`` atomically.

    Args:
        model: The model to write.
        path: Destination ``.onnx`` file; its folder must exist.
        external_data: True to write weights to ``<name>.data`` beside the model, False to keep
            them inline, None to decide by size (external past ~1.8 GB of weights).
        protected: The input model's files (model first, then its external data): none may be
            overwritten, unless the destination is the input model itself (the user named it).
        on_tensor: Called for each tensor written to external data (progress reporting).

    Returns:
        The paths written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"output folder does not exist: {path.parent}")
    weight_bytes = count_bytes(model)
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_THRESHOLD
    elif not external_data and weight_bytes > EXTERNAL_DATA_THRESHOLD:
        raise UsageError(
            f"the model holds {weight_bytes / 2**30:.2f} GiB of weights, past what one ONNX file can hold; "
            "use --external-data"
        )
    data_name = f"{path.name}.data"
    final_data = path.with_name(data_name) if external_data else None
    guarded = {p.resolve() for p in protected}
    replacing_input = bool(protected) and path.resolve() == protected[0].resolve()
    for target in filter(None, (path, final_data)):
        if target.resolve() in guarded and not replacing_input:
            raise UsageError(f"refusing to overwrite the input's file {target}; choose another output name")

    problem = onnx_checker_problem(weightless_proto(model))
    if problem:
        raise PassFailure(f"the output model fails the ONNX checker, nothing written: {problem}")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp_model = tmp_dir / path.name
        if external_data:
            ir.save(model, tmp_model, external_data=data_name, callback=on_tensor)
        else:
            with _inlined_external_tensors(model):
                write_streaming(model, tmp_model)
        if final_data is not None:
            os.replace(tmp_dir / data_name, final_data)
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("wrote %s", path)
    return SavedFiles(model=path, external_data=final_data)


_QUANT_ANNOTATION_KEY = "quant_parameter_tensor_names"  # onnx-ir's meta key for TensorAnnotation
_MODEL_GRAPH_FIELD = 7  # ModelProto.graph
_GRAPH_INITIALIZER_FIELD = 5  # GraphProto.initializer


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _length_delimited(field: int, length: int) -> bytes:
    return _varint(field << 3 | 2) + _varint(length)


def _as_loaded(value: ir.Value) -> onnx.TensorProto | None:
    """The TensorProto a loaded initializer still wraps, when it can be written as it is."""
    tensor = value.const_value
    if isinstance(tensor, ir.TensorProtoTensor) and tensor.raw.name == value.name and not tensor.metadata_props:
        return tensor.raw
    return None


_RAW_DATA_TAG = _varint(9 << 3 | 2)  # TensorProto.raw_data


def _raw_header(value: ir.Value) -> bytes | None:
    """A plain in-memory tensor's TensorProto fields but raw_data (written after them), or None."""
    tensor = value.const_value
    if type(tensor) is not ir.Tensor or tensor.dtype == ir.DataType.STRING or tensor.dtype.itemsize < 1:
        return None
    if tensor.metadata_props or tensor.doc_string:
        return None
    header = onnx.TensorProto(name=value.name or "", data_type=tensor.dtype.value, dims=tensor.shape.numpy())
    return header.SerializeToString()


def _initializer_size(value: ir.Value) -> int:
    loaded = _as_loaded(value)
    if loaded is not None:
        return loaded.ByteSize()
    header = _raw_header(value)
    if header is not None:
        assert value.const_value is not None
        length = value.const_value.nbytes
        return len(header) + len(_RAW_DATA_TAG) + len(_varint(length)) + length
    return len(_initializer_bytes(value))


def _write_initializer(handle: Any, value: ir.Value, size: int) -> None:
    handle.write(_length_delimited(_GRAPH_INITIALIZER_FIELD, size))
    header = _raw_header(value) if _as_loaded(value) is None else None
    if header is None:
        handle.write(_initializer_bytes(value))
        return
    assert value.const_value is not None
    data = value.const_value.tobytes()
    handle.write(header + _RAW_DATA_TAG + _varint(len(data)))
    handle.write(data)


def _initializer_bytes(value: ir.Value) -> bytes:
    loaded = _as_loaded(value)
    if loaded is not None:
        return loaded.SerializeToString()
    assert value.const_value is not None
    tensor = ir.serde.serialize_tensor(value.const_value)
    tensor.name = value.name or ""
    return tensor.SerializeToString()


def write_streaming(model: ir.Model, path: Path) -> None:
    """Writes a model with inline weights one initializer at a time.

    A protobuf message is the concatenation of its fields in any order, so the file is the model
    without its main-graph initializers, followed by each initializer as a ``graph.initializer``
    field. Peak memory is the skeleton plus one tensor, instead of two full copies of the model
    (a proto and its bytes). The result parses to the ModelProto ``ir.save`` writes, less the
    value_info entries of initializers (their tensors carry the same type and shape).
    """
    graph = model.graph
    values = list(graph.initializers.values())
    if any(value.meta.get(_QUANT_ANNOTATION_KEY) for value in values):
        ir.save(model, path)  # tensor annotations are written beside initializers: keep them
        return
    graph.initializers.clear()
    try:
        skeleton = ir.serde.serialize_model(model)
    finally:
        for value in values:
            graph.register_initializer(value)
    graph_head = skeleton.graph.SerializeToString()
    skeleton.ClearField("graph")
    model_head = skeleton.SerializeToString()
    # A first pass for sizes: the graph's length prefix comes before its fields.
    written = [value for value in values if value.const_value is not None]
    sizes = [_initializer_size(value) for value in written]
    graph_length = len(graph_head) + sum(len(_length_delimited(_GRAPH_INITIALIZER_FIELD, n)) + n for n in sizes)
    with open(path, "wb") as handle:
        handle.write(model_head)
        handle.write(_length_delimited(_MODEL_GRAPH_FIELD, graph_length))
        handle.write(graph_head)
        for value, size in zip(written, sizes, strict=True):
            _write_initializer(handle, value, size)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a ModelProto with every weight inline (for small models)."""
    with _inlined_external_tensors(model):
        return ir.serde.serialize_model(model)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (after links and relative parts are resolved)."""
    return a.resolve() == b.resolve()


def check_write_paths(model: Path, output: Path, report: Path | None, read: Mapping[str, Path | None]) -> None:
    """Refuses, before any work, destinations that would clobber each other or cannot be written.

    The output may replace the input model (the user named it) but no file in ``read`` (data and
    recipe files, keyed by their option); the report may replace none of them, nor the output
    or its external data. The folders of both must exist.

    Raises:
        UsageError: One line naming both paths.
    """
    for what, path in (("output", output), ("--report", report)):
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"{what} folder does not exist: {path.parent} (for {path})")
    kept = {f"the {option} file": path for option, path in read.items() if path is not None}
    clashes: list[tuple[str, Path, dict[str, Path]]] = [("output", output, kept)]
    if report is not None:
        outputs = {"the output model": output, "the output's external data": output.with_name(f"{output.name}.data")}
        clashes.append(("--report", report, {"the input model": model, **outputs, **kept}))
    for what, path, others in clashes:
        for other, taken in others.items():
            if same_file(path, taken):
                raise UsageError(f"{what} {path} is {other}; choose another name")


@contextlib.contextmanager
def written_after(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write into; it becomes ``path`` when the block succeeds.

    Write the companion file first, then the model, inside the block: a failure anywhere leaves
    neither behind. The file gets the permissions of any file the user writes (umask), not the
    owner-only mode of a temporary.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.resolve().parent)
    os.close(fd)
    pending = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(pending, 0o666 & ~umask)
        yield pending
        os.replace(pending, path)
    finally:
        pending.unlink(missing_ok=True)
