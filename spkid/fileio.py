"""Files spkid writes: atomically, with the user's umask, never over an input, into run folders it owns.

- ``atomic_write``: a temp file beside the target, renamed over it: nothing half-written is ever left where a reader
  expects a finished file (disk full, Ctrl-C, SIGTERM, SIGKILL).
- ``refuse_overwriting_inputs``: an output path that names one of the command's own inputs is an error.
- ``RunDir``: a folder spkid made (a ``.spkid-run`` marker), locked while a command writes into it.
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from spkid.errors import SpkidError

MARKER = ".spkid-run"          # in every run directory spkid created; only such folders are ever deleted by spkid
LOCK = ".spkid-lock"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write, *, fsync: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    ``fsync=False`` skips the flush to disk (many small files): a killed process still never leaves a partial
    file under ``path``; only a power loss could. Any failure (disk full, read-only, target is a folder) is a
    one-line ``SpkidError`` naming ``path``; the temp file is removed and an earlier ``path`` stays intact.
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
        os.chmod(tmp, 0o666 & ~current_umask())     # what open() would give: follow the umask, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):      # e.g. the target is a directory, or the disk is full
            raise SpkidError(f"{path}: cannot write: {e.strerror or e}") from None
        if isinstance(e, RuntimeError):   # torch.save reports a failed write (full disk) as a RuntimeError
            first = (str(e).splitlines() or [type(e).__name__])[0][:120]
            raise SpkidError(f"{path}: cannot write: {first} (disk full?)") from None
        raise


def write_csv(path: str | Path, header: list[str], rows) -> None:
    """A CSV with ``header`` and ``rows`` (the csv module quotes commas, quotes and newlines), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def _identities(p: Path) -> list:
    """The resolved path and, for an existing file, its (device, inode): a hard link or symlink is the same file."""
    ids = []
    try:
        ids.append(p.resolve())
        st = p.stat()
        ids.append((st.st_dev, st.st_ino))
    except (OSError, RuntimeError, ValueError):
        pass
    return ids


def refuse_overwriting_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path]) -> None:
    """Raise ``SpkidError`` when an output path is (or links to) one of the inputs, naming both, or is an existing
    folder (every output checked here is a file: refused before the work, not after it)."""
    outputs = list(outputs)
    for out in outputs:
        if Path(out).is_dir():
            raise SpkidError(f"{out}: cannot write: Is a directory (give the path of a file to write)")
    index = {}
    for src in inputs:
        for key in _identities(Path(src)):
            index[key] = Path(src)
    for out in outputs:
        for key in _identities(Path(out)):
            if key in index:
                raise SpkidError(f"{out}: is also an input of this command ({index[key]}); refusing to overwrite it, "
                                 "choose another output path")


class DirLock:
    """An exclusive ``flock`` on ``DIR/.spkid-lock`` for as long as the block runs (the kernel drops it if the process
    dies); a second spkid process writing into the same folder gets a one-line error instead of racing."""

    def __init__(self, path: str | Path):
        self.path, self._fd = Path(path), None

    def __enter__(self) -> "DirLock":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise SpkidError(f"{self.path}: cannot create folder: {e.strerror or e}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise SpkidError(f"{self.path}: in use by another spkid process; wait for it or choose another "
                             "folder") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RunDir:
    """A run folder owned by one process at a time: ``with RunDir(path, fresh=True) as d: ...``.

    ``fresh=True`` (a new run): the folder must be absent or empty (or hold only spkid's marker and lock);
    ``fresh=False`` (resume): it must carry spkid's marker. The folder is created with the marker, then locked
    (``flock``, released when the process ends, even by SIGKILL); a second writer gets a one-line error.
    """

    def __init__(self, path: str | Path, *, fresh: bool):
        self.path, self.fresh, self._lock, self._created = Path(path), fresh, None, False

    def __enter__(self) -> "RunDir":
        p = self.path
        if p.exists() and not p.is_dir():
            raise SpkidError(f"{p}: exists and is not a folder; choose another --out")
        if self.fresh and p.is_dir():
            foreign = sorted(x.name for x in p.iterdir() if x.name not in (MARKER, LOCK))
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise SpkidError(f"{p}: not empty (holds {shown}); use --resume to continue a spkid run, "
                                 "or choose another --out")
        if not self.fresh and not (p / MARKER).is_file():
            raise SpkidError(f"{p}: not a spkid run folder (no {MARKER}); nothing to resume")
        self._created = not p.exists()
        self._lock = DirLock(p).__enter__()
        try:
            (p / MARKER).touch()
        except OSError as e:
            self._lock.__exit__()
            raise SpkidError(f"{p}: cannot create run folder: {e.strerror or e}") from None
        return self

    def __exit__(self, exc_type=None, *exc) -> None:
        if self._lock is not None:
            self._lock.__exit__()       # releases the lock
            self._lock = None
        # a run that failed before writing anything leaves no folder behind (only one spkid made just now)
        if exc_type is not None and self._created and {x.name for x in self.path.iterdir()} <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):
                (self.path / name).unlink(missing_ok=True)
            self.path.rmdir()


def is_run_dir(path: str | Path) -> bool:
    """Whether spkid created ``path`` (it carries the marker)."""
    return (Path(path) / MARKER).is_file()
