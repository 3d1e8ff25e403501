"""What the pipeline offers to passes that need data: calibration samples, provider, shapes.

Passes never build onnxruntime sessions of their own; they ask the context, so every session
uses the provider the user chose and calibration data is read the one way it is documented.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from onnxshrink.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
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

        Raises:
            RuntimeUnavailable: onnxruntime cannot load the model.
        """
        from onnxshrink.runtime import create_session, model_source

        with model_source(model) as source:
            return create_session(source, self.provider)

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
