"""One-setting variants opened and counted without serializing their weights.

A profile builds hundreds of variants of one model, each differing from it in a layer or two.
Serializing a whole variant (BERT-base: 438 MB) to open each onnxruntime session, and again to
count its bytes, cost more than running it. Here the large main-graph initializers are written
as external-data stubs of a few bytes, and onnxruntime reads their data from memory
(``SessionOptions.add_external_initializers``, the arrays themselves, not copies); the
model's exact serialized size is the stub model's size with each stub's size swapped for its
tensor's, which is counted once per tensor and kept. The outputs are those of a session opened
from the fully serialized model, bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink.context import PassContext, in_memory_initializers, serialized_with_stubs, session_reading_memory
from onnxshrink.runtime import ProviderChoice


def _varint_bytes(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def _field_bytes(size: int) -> int:
    """Bytes of a length-delimited protobuf field of ``size`` bytes with a one-byte tag (fields 1 to 15)."""
    return 1 + _varint_bytes(size) + size


@dataclasses.dataclass(frozen=True)
class _Kept:
    tensor: ir.TensorProtocol  # held, so that its id stays its own
    value: Any  # the OrtValue over its array
    size: int  # bytes of its serialized TensorProto


@dataclasses.dataclass
class Stubbed:
    """A model serialized with its large initializers as stubs, and what the stubs stand for."""

    proto: onnx.ModelProto
    names: list[str]
    values: list[Any]  # OrtValues, in the order of ``names``
    sizes: dict[str, int]  # name -> bytes of the initializer's real TensorProto

    @property
    def size(self) -> int:
        """Bytes of the model serialized with every initializer's data in place (exact)."""
        graph = self.proto.graph
        stub_bytes = graph.ByteSize()
        real_bytes = stub_bytes + sum(
            _field_bytes(self.sizes[t.name]) - _field_bytes(t.ByteSize())
            for t in graph.initializer
            if t.name in self.sizes
        )
        return self.proto.ByteSize() - _field_bytes(stub_bytes) + _field_bytes(real_bytes)


class InMemoryWeights:
    """The large initializers of a model and its variants as OrtValues, with their serialized sizes.

    Args:
        base: The model the variants are built from: its tensors are kept for the lifetime of
            this object; a variant's own tensors only until the next model is stubbed.
    """

    def __init__(self, base: ir.Model) -> None:
        self._pinned: dict[int, _Kept] = {}
        self._recent: dict[int, _Kept] = {}
        self.stub(base)
        self._pinned, self._recent = self._recent, {}

    def _kept(self, tensor: ir.TensorProtocol) -> _Kept:
        found = self._pinned.get(id(tensor)) or self._recent.get(id(tensor))
        if found is None:
            import onnxruntime as ort

            array = np.ascontiguousarray(tensor.numpy())
            size = ir.serde.serialize_tensor(tensor).ByteSize()
            found = _Kept(tensor, ort.OrtValue.ortvalue_from_numpy(array), size)
        return found

    def stub(self, model: ir.Model) -> Stubbed:
        """``model`` serialized with its large main-graph initializers as stubs (the model is left as it was)."""
        recent: dict[int, _Kept] = {}
        stubs = in_memory_initializers(model)
        values: list[Any] = []
        sizes: dict[str, int] = {}
        for value in stubs:
            assert value.const_value is not None and value.name is not None
            kept = self._kept(value.const_value)
            if id(value.const_value) not in self._pinned:
                recent[id(value.const_value)] = kept
            values.append(kept.value)
            sizes[value.name] = kept.size
        proto = serialized_with_stubs(model, stubs)
        self._recent = recent
        return Stubbed(proto, list(sizes), values, sizes)

    def size(self, model: ir.Model) -> int:
        """Bytes of ``model`` serialized (as ``ir.serde.serialize_model(model).ByteSize()``)."""
        return self.stub(model).size

    def session(self, model: ir.Model, provider: str) -> tuple[Any, ProviderChoice]:
        """An onnxruntime session of ``model`` that reads the large initializers from memory."""
        stubbed = self.stub(model)
        return session_reading_memory(stubbed.proto, stubbed.names, stubbed.values, provider)


@dataclasses.dataclass
class InMemoryContext(PassContext):
    """A pass context whose sessions read the large initializers from memory (:class:`InMemoryWeights`).

    Attributes:
        weights: The kept initializers of the base model and the latest variant.
    """

    weights: InMemoryWeights | None = None

    def session(self, model: ir.Model) -> tuple[Any, ProviderChoice]:
        """An onnxruntime session for ``model`` on the user's provider, and which provider ran."""
        if self.weights is None:
            return super().session(model)
        return self.weights.session(model, self.provider)
