"""How far the model's outputs are from the input model's, streamed over the calibration data."""

from __future__ import annotations

import dataclasses

import numpy as np

# Bytes of the input model's outputs kept from the first data pass for the final check.
KEPT_OUTPUTS = 256 << 20


@dataclasses.dataclass
class OutputError:
    """Streamed ``Σ(student - teacher)²`` and ``Σ teacher²`` over the model's float outputs.

    The first streaming also keeps the teacher's outputs, batch by batch, while they fit in
    ``KEPT_OUTPUTS`` bytes, so that the check after the refits need not run the input model again.
    """

    squared_error: float = 0.0
    squared_norm: float = 0.0
    batch_size: int = 0  # the calibration batch size the kept outputs were streamed with
    kept: list[dict[str, np.ndarray]] | None = dataclasses.field(default_factory=list)
    kept_bytes: int = 0

    def add(self, student: np.ndarray, teacher: np.ndarray) -> None:
        """Adds one batch of one output (skipped when the shapes differ or it is not float)."""
        if student.shape == teacher.shape and teacher.dtype.kind == "f":
            difference = student.astype(np.float64) - teacher
            self.squared_error += float(np.sum(difference * difference))
            self.squared_norm += float(np.sum(np.square(teacher, dtype=np.float64)))

    def keep(self, batch: dict[str, np.ndarray]) -> None:
        """Keeps one batch of the teacher's outputs (copies), or stops keeping past the budget."""
        if self.kept is None:
            return
        self.kept_bytes += sum(array.nbytes for array in batch.values())
        self.kept = [*self.kept, {k: v.copy() for k, v in batch.items()}] if self.kept_bytes <= KEPT_OUTPUTS else None

    @property
    def relative(self) -> float:
        """``sqrt(Σ(student - teacher)² / Σ teacher²)``; 0 when nothing was added."""
        return float(np.sqrt(self.squared_error / self.squared_norm)) if self.squared_norm > 0 else 0.0
