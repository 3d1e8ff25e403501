"""Writing report files: atomic, with the permissions the user's umask gives."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename.

    A failure never leaves a partial file. The temporary file is created 0600; it gets the mode
    an ordinary ``open(path, "w")`` would give (0666 less the umask) before it is renamed, so a
    report is as readable as any other file the user writes.

    Args:
        path: Destination file; its folder must exist.
        text: The content, written as UTF-8.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
