"""The one file scanner: which files of a folder spkid reads (``prepare``, ``predict``, ``embed``, ``enroll``...).

Rules: recursive; names starting with ``.`` (files and folders) are skipped; a file counts when its lower-cased
suffix is an audio format libsndfile reads (``spkid.audio.io.AUDIO_EXTENSIONS``) or, where features are allowed,
``.pt``; results are sorted by path; ids are paths relative to the folder in POSIX form.
"""
from __future__ import annotations

import os
from pathlib import Path

from spkid.audio.io import AUDIO_EXTENSIONS
from spkid.errors import DataError

FEATURE_SUFFIX = ".pt"


def scan(folder: str | os.PathLike, *, features: bool = False) -> list[Path]:
    """Audio files (and ``.pt`` feature files when ``features``) under ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: " + ("folder not found" if not folder.exists() else "not a folder"))
    wanted = AUDIO_EXTENSIONS | ({FEATURE_SUFFIX} if features else set())
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / n for n in filenames if not n.startswith(".") and Path(n).suffix.lower() in wanted]
    return sorted(found)


def as_sources(sources) -> list:
    """``sources`` as a list: one path (``str`` or ``os.PathLike``) is one source, not its characters."""
    return [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)


def gather(sources, *, features: bool = True) -> tuple[list[str], list[Path]]:
    """``(ids, paths)`` for files and folders: a folder contributes ``scan(folder)`` (id = path relative to it),
    a file itself (id = the path as given)."""
    ids, items = [], []
    for src in as_sources(sources):
        src = Path(src)
        if src.is_dir():
            found = scan(src, features=features)
            if not found:
                kinds = ".pt feature files or audio files" if features else "audio files"
                raise DataError(f"{src}: no {kinds} in this folder")
            ids += [p.relative_to(src).as_posix() for p in found]
            items += found
        elif src.is_file():
            ids.append(str(src))
            items.append(src)
        else:
            raise DataError(f"{src}: file or folder not found")
    return ids, items


def sample(folder: str | os.PathLike, max_files: int, seed: int, what: str) -> list[Path]:
    """``scan(folder)``, at most ``max_files`` of them (a seeded random choice, in path order); an empty folder is
    a ``DataError`` naming ``what`` it should hold (e.g. "noise", "impulse-response")."""
    files = scan(folder)
    if not files:
        raise DataError(f"{folder}: no audio files in this {what} folder")
    if len(files) > max_files:
        import numpy as np
        pick = np.random.default_rng(seed).choice(len(files), max_files, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files


def input_files(sources) -> list[Path]:
    """Every file a command reads from ``sources``: an HW4 directory's index and listed feature files (test and
    training: the user's data), else the files ``gather`` finds. Sources that cannot be read contribute nothing here:
    the command itself names what is wrong with them. For ``fileio.refuse_overwriting_inputs``."""
    from spkid.data.hw4 import read_metadata, read_testdata
    files: list[Path] = []
    for src in as_sources(sources):
        src = Path(src)
        if src.is_dir() and (src / "testdata.json").is_file():
            files += [src / n for n in ("testdata.json", "metadata.json", "mapping.json")]
            for reader in (read_testdata, read_metadata):
                try:
                    files += [src / u.feature_path for u in reader(src)[1]]
                except DataError:
                    pass
        elif src.exists():
            try:
                files += gather(src)[1]
            except DataError:
                pass
        else:
            files.append(src)
    return files
