"""Atomic file writes: nothing half-written is ever left where a reader expects a finished file."""
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from spkid.errors import SpkidError


def atomic_write(path: str | Path, write, *, fsync: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    ``fsync=False`` skips the flush to disk (many small files): a killed process still never leaves a partial
    file under ``path``; only a power loss could.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:    # unwritable or missing place: a one-line user error, not a traceback
        raise SpkidError(f"{path}: cannot write: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):      # e.g. the target is a directory, or the disk is full
            raise SpkidError(f"{path}: cannot write: {e.strerror or e}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv(path: str | Path, header: list[str], rows) -> None:
    """A CSV with ``header`` and ``rows``, written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
