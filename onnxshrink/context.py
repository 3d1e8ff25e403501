"""What the pipeline offers to passes that need data: calibration samples, provider, shapes.

Passes never build onnxruntime sessions of their own; they ask the context, so every session
uses the provider the user chose and calibration data is read the one way it is documented.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from onnxshrink.errors import UsageError

# Main-graph initializers larger than this reach onnxruntime from memory, not serialized.
IN_MEMORY_BYTES = 1024
# Tensors left in the proto (subgraphs, strings, 4-bit) past this size go through a file.
_PROTO_LIMIT = 1 << 30
IN_MEMORY_LOCATION = "onnxshrink-in-memory"  # the stubs' external-data location (no such file is read)
# What an OrtValue can wrap from numpy (not strings, nor 4-bit or bfloat16 arrays).
ORT_VALUE_TYPE_NAMES = (
    "FLOAT",
    "FLOAT16",
    "DOUBLE",
    "INT8",
    "UINT8",
    "INT16",
    "UINT16",
    "INT32",
    "UINT32",
    "INT64",
    "UINT64",
    "BOOL",
)

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnx_ir as ir

    from onnxshrink.data.samples import Samples
    from onnxshrink.executors import Executor
    from onnxshrink.runtime import ProviderChoice


@dataclasses.dataclass
class PassContext:
    """Shared, read-only facts about the run.

    Attributes:
        calibration: Where calibration samples come from, if the user gave any.
        provider: ``auto``, ``cpu`` or ``cuda``; the provider preference for any session.
        shapes: Concrete sizes for dynamic input dimensions, by input name.
        reference: The pipeline's input model as onnxruntime opens it (a path or serialized
            bytes), kept for passes that use the input model as teacher; None when unknown.
        executor: Where a pass may hand independent measurements (``--executor``, ``--workers``);
            None: the pass measures in this process, one at a time.
    """

    calibration: Samples | None = None
    provider: str = "auto"
    shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    reference: str | bytes | None = None
    executor: Executor | None = None

    def require_calibration(self, pass_name: str) -> Samples:
        """Returns the calibration samples, or fails with a usage error naming the pass."""
        if self.calibration is None:
            raise UsageError(
                f"pass '{pass_name}' needs calibration data: pass --calib FILE.npz "
                "(or calibration=... in the Python API)"
            )
        return self.calibration

    def reference_model(self, pass_name: str) -> ir.Model:
        """The pipeline's input model (weights memory-mapped when it came from a file).

        Raises:
            UsageError: The input model is not available (an in-memory model with external weights).
        """
        import onnx
        import onnx_ir as ir

        from onnxshrink.loading import load_model

        if self.reference is None:
            raise UsageError(f"pass '{pass_name}' needs the input model as teacher; pass the model as a path")
        if isinstance(self.reference, str):
            return load_model(self.reference).model
        return ir.serde.deserialize_model(onnx.load_from_string(self.reference))

    def session(self, model: ir.Model) -> tuple[Any, ProviderChoice]:
        """An onnxruntime session for ``model`` on the user's provider, and which provider ran.

        The main graph's large numeric initializers are not serialized: onnxruntime reads them
        from the model's own arrays (``SessionOptions.add_external_initializers``), which the
        session keeps alive. BERT-base (438 MB): no serialized copy of the weights, and no copy
        of them parsed by onnxruntime, per session.

        Raises:
            RuntimeUnavailable: onnxruntime cannot load the model.
        """
        from onnxshrink.runtime import create_session, model_source

        stubbed = _stubbed(model)
        if stubbed is None:
            with model_source(model) as source:
                return create_session(source, self.provider)
        return session_reading_memory(*stubbed, self.provider)

    def calibration_batches(
        self,
        pass_name: str,
        input_names: Collection[str],
        *,
        samples: int | None = None,
        batch_size: int = 32,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Streams calibration feeds for the named model inputs in batches of at most ``batch_size``.

        Keys that are not model inputs (such as ``labels``) are dropped; a model input missing from
        the data is a usage error naming it. At most ``samples`` samples are read when given.
        """
        calibration = self.require_calibration(pass_name)
        consumer = f"pass '{pass_name}'"
        yield from calibration.feeds(input_names, consumer=consumer, samples=samples, batch_size=batch_size)


def in_memory_initializers(model: ir.Model) -> list[ir.Value]:
    """The main-graph initializers onnxruntime can read from memory: OrtValue dtypes, over ``IN_MEMORY_BYTES``."""
    import onnx_ir as ir

    kinds = {ir.DataType[name] for name in ORT_VALUE_TYPE_NAMES}
    return [
        value
        for value in model.graph.initializers.values()
        if value.name is not None
        and value.const_value is not None
        and value.const_value.dtype in kinds
        and value.const_value.nbytes > IN_MEMORY_BYTES
    ]


def serialized_with_stubs(model: ir.Model, values: Sequence[ir.Value]) -> onnx.ModelProto:
    """``model`` serialized with the tensors of ``values`` as external-data stubs of a few bytes.

    The model is left as it was; the stubs name ``IN_MEMORY_LOCATION``, a file never read.
    """
    import onnx_ir as ir

    held: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in values:
            tensor = value.const_value
            assert tensor is not None and value.name is not None
            held.append((value, tensor))
            value.const_value = ir.ExternalTensor(
                IN_MEMORY_LOCATION,
                0,
                tensor.nbytes,
                tensor.dtype,
                shape=ir.Shape(tensor.shape.numpy()),
                name=value.name,
            )
        return ir.serde.serialize_model(model)
    finally:
        for value, tensor in held:
            value.const_value = tensor


def session_reading_memory(
    proto: onnx.ModelProto, names: list[str], values: list[Any], provider: str
) -> tuple[Any, ProviderChoice]:
    """A session of a stub model whose initializers ``names`` onnxruntime reads from the OrtValues ``values``.

    The session holds ``values`` (as ``onnxshrink_weights``): onnxruntime reads them for its life.
    """
    from onnxshrink.runtime import create_session

    def configure(options: Any) -> None:
        if names:
            options.add_external_initializers(names, values)

    session, choice = create_session(proto.SerializeToString(), provider, configure=configure)
    session.onnxshrink_weights = values
    return session, choice


def _stubbed(model: ir.Model) -> tuple[onnx.ModelProto, list[str], list[Any]] | None:
    """``model`` serialized with its large main-graph initializers as external-data stubs.

    The model is left as it was. Returns the proto, and the stubbed initializers' names with an
    OrtValue over each one's array (the array itself, not a copy); None when a tensor left in
    the proto is external data of its own or they hold more than ``_PROTO_LIMIT`` bytes.
    """
    import numpy as np
    import onnx_ir as ir
    import onnxruntime as ort

    from onnxshrink.ir.graphs import all_tensors

    stubs = in_memory_initializers(model)
    chosen = {id(value.const_value) for value in stubs}
    rest = [tensor for tensor in all_tensors(model) if id(tensor) not in chosen]
    if any(isinstance(tensor, ir.ExternalTensor) for tensor in rest) or sum(t.nbytes for t in rest) > _PROTO_LIMIT:
        return None
    names: list[str] = []
    values: list[Any] = []
    for value in stubs:  # every one has a name and a tensor (in_memory_initializers)
        assert value.name is not None and value.const_value is not None
        names.append(value.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value.const_value.numpy())))
    return serialized_with_stubs(model, stubs), names, values
