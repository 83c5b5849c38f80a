"""Files in the data directory written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, text: str, *, mode: int = 0o644) -> None:
    """Write `text` to `path` through a temporary file beside it, then rename it over `path`:
    a reader sees the old file or the new one, never half of one, and a failed write leaves
    the old file and no temporary behind. The temporary's name is unique (mkstemp), so two
    processes writing one path never share it. `mode` is set before any byte is written (0o600
    for a secret)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
