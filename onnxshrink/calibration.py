"""Calibration data: an ``.npz`` (keys = input names, first axis = samples), a folder of them,
or ``module:attribute`` naming an onnxruntime-style ``CalibrationDataReader``.

Samples are streamed batch by batch; a source is never loaded whole unless a caller asks for a
bounded number of samples with :meth:`CalibrationSource.take`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnxshrink.errors import UsageError

LABELS_KEY = "labels"


class CalibrationDataReader(Protocol):
    """onnxruntime's reader protocol: ``get_next()`` returns one feed dict, then None."""

    def get_next(self) -> Mapping[str, np.ndarray] | None: ...


def _npz_batches(path: Path) -> Iterator[dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            yield {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read calibration file {path}: {error}") from None


class CalibrationSource:
    """A re-iterable stream of sample batches (dicts of arrays keyed by input name)."""

    def __init__(self, make_batches: Callable[[], Iterator[Mapping[str, np.ndarray]]], description: str) -> None:
        self._make_batches = make_batches
        self.description = description

    def __repr__(self) -> str:
        return f"CalibrationSource({self.description})"

    @classmethod
    def from_spec(cls, spec: Any) -> CalibrationSource:
        """Builds a source from a path, ``module:attribute`` string, dict of arrays or reader."""
        if isinstance(spec, CalibrationSource):
            return spec
        if isinstance(spec, Mapping):
            arrays = {k: np.asarray(v) for k, v in spec.items()}
            return cls(lambda: iter([arrays]), "in-memory arrays")
        if hasattr(spec, "get_next"):
            return cls._from_reader_factory(lambda: spec, f"reader {type(spec).__name__}", single_use=True)
        text = str(spec)
        path = Path(text)
        if path.is_file():
            return cls(lambda: _npz_batches(path), f"npz {path}")
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise UsageError(f"calibration folder {path} holds no .npz files")
            return cls(lambda: (b for f in files for b in _npz_batches(f)), f"{len(files)} npz files in {path}")
        if ":" in text and not path.suffix:
            return cls._from_module(text)
        raise UsageError(
            f"calibration data not found: {text} (expected an .npz, a folder of them, or module:attribute)"
        )

    @classmethod
    def _from_module(cls, text: str) -> CalibrationSource:
        module_name, _, attribute = text.partition(":")
        if "." not in sys.path and "" not in sys.path:
            sys.path.insert(0, "")  # let users name a module in the working directory
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise UsageError(f"cannot import calibration reader '{text}': {error}") from None
        if not isinstance(target, type) and hasattr(target, "get_next"):
            return cls._from_reader_factory(lambda: target, text, single_use=True)
        if callable(target):  # a reader class or a factory: a fresh reader per pass over the data
            return cls._from_reader_factory(target, text, single_use=False)
        raise UsageError(f"'{text}' is neither a CalibrationDataReader nor a callable returning one")

    @classmethod
    def _from_reader_factory(
        cls, factory: Callable[[], Any], description: str, *, single_use: bool
    ) -> CalibrationSource:
        used = False

        def batches() -> Iterator[Mapping[str, np.ndarray]]:
            nonlocal used
            reader = factory()
            if used and single_use:
                if not hasattr(reader, "rewind"):
                    raise UsageError(
                        f"calibration reader {description} can be read only once; "
                        "name a class or factory instead of an instance, or give it rewind()"
                    )
                reader.rewind()
            used = True
            if not hasattr(reader, "get_next"):
                raise UsageError(f"{description} did not return a CalibrationDataReader (no get_next())")
            while (feed := reader.get_next()) is not None:
                yield {k: np.asarray(v) for k, v in feed.items()}

        return cls(batches, description)

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Yields batches; each holds every input, first axis = samples."""
        for batch in self._make_batches():
            yield dict(batch)

    def take(self, count: int) -> dict[str, np.ndarray]:
        """The first ``count`` samples concatenated into one batch (labels kept if present)."""
        parts: dict[str, list[np.ndarray]] = {}
        have = 0
        for batch in self.batches():
            n = min(len(v) for v in batch.values()) if batch else 0
            keep = min(n, count - have)
            for key, value in batch.items():
                parts.setdefault(key, []).append(value[:keep])
            have += keep
            if have >= count:
                break
        if not parts:
            raise UsageError(f"calibration data {self.description} holds no samples")
        return {key: np.concatenate(values, axis=0) for key, values in parts.items()}
