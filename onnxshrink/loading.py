"""Loading models safely into the IR.

Weights stay memory-mapped (``onnx_ir`` reads external data lazily). Before anything is
deserialized, every external-data reference is checked: it must stay inside the model's
folder (no absolute paths, ``..`` or links out), exist, and fit in its file. Malformed models
fail with one line naming the problem (:class:`InvalidModelError`, exit 3).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxshrink.errors import InvalidModelError
from onnxshrink.ir.checks import onnx_checker_problem, structural_problems, weightless_proto

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedModel:
    """A model in the IR plus where it came from.

    Attributes:
        model: The IR model; external weights are still on disk.
        path: The file it was read from, or None for in-memory input.
        proto_bytes: The serialized model when it came from memory, so onnxruntime can open the
            untouched original as verification reference.
    """

    model: ir.Model
    path: Path | None = None
    proto_bytes: bytes | None = None

    @property
    def source(self) -> str | bytes | None:
        """The untouched input as onnxruntime opens it (path or bytes), or None when there is none."""
        return str(self.path) if self.path is not None else self.proto_bytes


def _tensors_in_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _tensors_in_attributes(node.attribute)


def _tensors_in_attributes(attributes: list[onnx.AttributeProto]) -> Iterator[onnx.TensorProto]:
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _tensors_in_graph(attr.g)
        for sub in attr.graphs:
            yield from _tensors_in_graph(sub)


def proto_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a model: graphs, subgraphs, attributes and function bodies."""
    yield from _tensors_in_graph(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _tensors_in_attributes(node.attribute)


def check_external_data(proto: onnx.ModelProto, base_dir: Path | None) -> None:
    """Refuses external-data references that escape ``base_dir``, are missing, or overrun."""
    root = base_dir.resolve() if base_dir is not None else None
    for tensor in proto_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        label = f"tensor '{tensor.name}'"
        if root is None:
            raise InvalidModelError(
                f"{label} keeps its data in external file '{location}', but the model was given "
                "in memory; load it from its path instead"
            )
        if not location:
            raise InvalidModelError(f"{label} is marked external but names no location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
            raise InvalidModelError(f"{label}: external data location '{location}' is absolute; refused")
        if ".." in Path(location.replace("\\", "/")).parts:
            raise InvalidModelError(f"{label}: external data location '{location}' leaves the model's folder; refused")
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise InvalidModelError(
                f"{label}: external data location '{location}' resolves outside the model's folder "
                f"(to {target}, through a link); refused"
            )
        if not target.is_file():
            raise InvalidModelError(f"{label}: external data file '{location}' not found next to the model")
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise InvalidModelError(f"{label}: external data offset/length are not integers") from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise InvalidModelError(
                f"{label}: external data offset {offset} + length {length} overruns '{location}' ({size} bytes)"
            )


def _parse(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise InvalidModelError(f"model file not found: {path}")
    if not path.is_file():
        raise InvalidModelError(f"model path is not a file: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as error:
        raise InvalidModelError(f"{path} is not a readable ONNX model (truncated or corrupt?): {error}") from None
    _require_model(proto, str(path))
    return proto


def _require_model(proto: onnx.ModelProto, label: str) -> None:
    # Protobuf happily parses many byte strings as an empty or odd message; a model has a graph.
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise InvalidModelError(f"{label} is not an ONNX model (no graph, IR version or opset)")


def _to_ir(proto: onnx.ModelProto, base_dir: Path | None, label: str) -> ir.Model:
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # the deserializer raises many types on malformed protos
        raise InvalidModelError(f"{label} cannot be read into the IR: {error}") from None
    if base_dir is not None:
        for graph in model.graphs():
            ir.external_data.set_base_dir(graph, base_dir)
        for function in model.functions.values():
            for node in ir.traversal.RecursiveGraphIterator(function):
                for attr in node.attributes.values():
                    if not attr.is_ref() and attr.type == ir.AttributeType.TENSOR:
                        tensor = attr.as_tensor()
                        if isinstance(tensor, ir.ExternalTensor):
                            tensor.base_dir = base_dir
    return model


def _has_external(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto_tensors(proto))


def _validate(model: ir.Model, label: str) -> None:
    problems = structural_problems(model)
    if problems:
        dangling = [p for p in problems if "dangling" in p]
        if dangling:
            raise InvalidModelError(f"{label}: {dangling[0]}")
        try:
            for graph in model.graphs():
                graph.sort()
        except ValueError:
            raise InvalidModelError(f"{label}: the graph contains a cycle ({problems[0]})") from None
        remaining = structural_problems(model)
        if remaining:
            raise InvalidModelError(f"{label}: {remaining[0]}")
        logger.info("%s: nodes were not in topological order; sorted them", label)
    # The checker sees the graph without its large weights: fast, and no 2 GiB limit.
    problem = onnx_checker_problem(weightless_proto(model))
    if problem:
        raise InvalidModelError(f"{label} fails the ONNX checker: {problem}")


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Reads a model file into the IR after the safety checks; weights stay on disk."""
    path = Path(path)
    proto = _parse(path)
    check_external_data(proto, path.parent)
    model = _to_ir(proto, path.parent, str(path))
    _validate(model, str(path))
    return LoadedModel(model=model, path=path)


def load_proto(proto: onnx.ModelProto, base_dir: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Reads an in-memory ModelProto into the IR (external data resolved against ``base_dir``)."""
    _require_model(proto, "the given ModelProto")
    root = Path(base_dir) if base_dir is not None else None
    check_external_data(proto, root)
    model = _to_ir(proto, root, "the given ModelProto")
    _validate(model, "the given ModelProto")
    return LoadedModel(model=model, proto_bytes=None if _has_external(proto) else proto.SerializeToString())
