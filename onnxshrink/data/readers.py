"""Where samples come from: npz files and folders, readers, or arrays in memory.

A source is an ``.npz`` (keys = input names, first axis = samples), an ``.npy`` (one array, for
a single-input model), a folder of ``.npz`` files,
``module:attribute`` naming an onnxruntime-style ``CalibrationDataReader`` (or a class or
factory returning one), a reader instance, or a dict of arrays. Every source becomes a
:class:`~onnxshrink.data.samples.Samples`; files are read when samples are first asked for, one
file at a time.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnxshrink.data.model_inputs import NPY_KEY
from onnxshrink.data.samples import Role, Samples
from onnxshrink.errors import UsageError


class CalibrationDataReader(Protocol):
    """onnxruntime's reader protocol: ``get_next()`` returns one feed dict, then None."""

    def get_next(self) -> Mapping[str, np.ndarray] | None:
        """Returns the next feed dict (input name to array), or None when the data is exhausted."""
        ...


def open_samples(spec: Any, *, role: Role = "calibration") -> Samples:
    """Opens samples from a path, ``module:attribute`` string, dict of arrays, reader or Samples.

    This is the one way to open data from a path in one call (exported as
    ``onnxshrink.open_samples``): ``open_samples("calib.npz")``. Calibration paths are checked
    now (a missing file, an empty folder or an unknown module is a usage error at once). An
    inputs path (``role="inputs"``) is read when its samples are first asked for, so unused
    verification inputs cost nothing.

    Raises:
        UsageError: The data cannot be found or imported.
    """
    if isinstance(spec, Samples):
        return spec
    if isinstance(spec, Mapping):
        arrays = {k: np.asarray(v) for k, v in spec.items()}
        where = "in-memory arrays" if role == "calibration" else "given arrays"
        return Samples(lambda: iter([arrays]), where, role)
    if hasattr(spec, "get_next"):
        return _from_reader_factory(lambda: spec, f"reader {type(spec).__name__}", role, single_use=True)
    text = str(spec)
    path = Path(text)
    if role == "inputs" or path.is_file():
        kind = "npy" if path.suffix == ".npy" else "npz"
        return Samples(lambda: _npz_batches(path, role), f"{kind} {path}", role)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise UsageError(f"calibration folder {path} holds no .npz files")
        return Samples(
            lambda: (b for f in files for b in _npz_batches(f, role)), f"{len(files)} npz files in {path}", role
        )
    if ":" in text and not path.suffix:
        return _from_module(text, role)
    raise UsageError(
        f"calibration data not found: {text} (expected an .npz, an .npy, a folder of .npz, or module:attribute)"
    )


def _npz_batches(path: Path, role: Role) -> Iterator[dict[str, np.ndarray]]:
    """Reads one file: an npz gives its arrays by key, an npy its one array under ``NPY_KEY``."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            batch = {NPY_KEY: loaded}
        else:
            with loaded as data:
                batch = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise UsageError(f"{role} file not found: {path}") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {role} file {path}: {error}") from None
    yield batch


def _from_module(text: str, role: Role) -> Samples:
    module_name, _, attribute = text.partition(":")
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, "")  # let users name a module in the working directory
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"cannot import calibration reader '{text}': {error}") from None
    if not isinstance(target, type) and hasattr(target, "get_next"):
        return _from_reader_factory(lambda: target, text, role, single_use=True)
    if callable(target):  # a reader class or a factory: a fresh reader per pass over the data
        return _from_reader_factory(target, text, role, single_use=False)
    raise UsageError(f"'{text}' is neither a CalibrationDataReader nor a callable returning one")


def _from_reader_factory(factory: Callable[[], Any], description: str, role: Role, *, single_use: bool) -> Samples:
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

    return Samples(batches, description, role, rereadable=not single_use)
