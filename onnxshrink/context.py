"""What the pipeline offers to passes that need data: calibration samples, provider, shapes.

Passes never build onnxruntime sessions of their own; they ask the context, so every session
uses the provider the user chose and calibration data is read the one way it is documented.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from onnxshrink.errors import UsageError

if TYPE_CHECKING:
    from onnxshrink.calibration import CalibrationSource


@dataclasses.dataclass
class PassContext:
    """Shared, read-only facts about the run.

    Attributes:
        calibration: Where calibration samples come from, if the user gave any.
        provider: ``auto``, ``cpu`` or ``cuda``; the provider preference for any session.
        shapes: Concrete sizes for dynamic input dimensions, by input name.
    """

    calibration: CalibrationSource | None = None
    provider: str = "auto"
    shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def require_calibration(self, pass_name: str) -> CalibrationSource:
        """Returns the calibration source, or fails with a usage error naming the pass."""
        if self.calibration is None:
            raise UsageError(
                f"pass '{pass_name}' needs calibration data: pass --calib FILE.npz "
                "(or calibration=... in the Python API)"
            )
        return self.calibration
