"""Feature sets in memory, optionally backed by one contiguous memory-mapped float16 cache file.

Without a cache every ``uttr-*.pt`` is read (in parallel threads) on each run. With ``cache_dir`` the first run
packs all frames into ``<key>.f16`` (frames x n_mels, float16) plus ``<key>.json`` (offsets, ids); later runs map
that file and slice views out of it: no per-file I/O, and pages are shared between DDP ranks on one machine.
The key hashes the data directory, the json index, ``n_mels`` and each feature file's size and mtime, so a changed
dataset or a rewritten ``.pt`` gets a new cache.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spkid.fileio import atomic_write
from spkid.errors import DataError
from spkid.data.hw4 import Utterance, load_features, read_testdata, read_train


@dataclass
class FeatureSet:
    utts: list[Utterance]
    feats: list[torch.Tensor]        # (T_i, F) float16 each
    speakers: list[str]              # class names by id (empty for test sets)


def _cache_key(root: Path, index_file: str, n_mels: int, utts: list[Utterance]) -> str:
    """Hash of the data directory, its json index, ``n_mels`` and every feature file's size and mtime: a changed
    ``.pt`` gets a new cache (one ``stat`` per file: about a second for the 56,666 files of HW4)."""
    p = root / index_file
    h = hashlib.sha1(f"{root.resolve()}|{index_file}|{n_mels}".encode())
    h.update(p.read_bytes())
    for u in utts:
        try:
            st = (root / u.feature_path).stat()
            h.update(f"{u.feature_path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:                     # missing: loading reports it by name
            h.update(f"{u.feature_path}|missing\n".encode())
    return h.hexdigest()[:20]


def _load_cached(root: Path, utts: list[Utterance], n_mels: int, cache_dir: Path | None, index_file: str,
                 progress: bool, desc: str) -> list[torch.Tensor]:
    if cache_dir is None:
        return load_features(root, utts, n_mels, progress=progress, desc=desc)
    key = _cache_key(root, index_file, n_mels, utts)
    data_path, index_path = cache_dir / f"{key}.f16", cache_dir / f"{key}.json"
    if not (data_path.is_file() and index_path.is_file()):
        build_cache(root, utts, n_mels, data_path, index_path, progress=progress, desc=desc)
    try:
        index = json.loads(index_path.read_text())
        offsets, ids = index["offsets"], index["ids"]
        flat = np.memmap(data_path, dtype=np.float16, mode="c").reshape(-1, n_mels)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise DataError(f"{index_path}: unreadable feature cache ({e}); delete it to rebuild") from None
    if ids != [u.feature_path for u in utts] or offsets[-1] != flat.shape[0]:
        raise DataError(f"{index_path}: feature cache does not match {root / index_file}; delete it to rebuild")
    big = torch.from_numpy(flat)
    return [big[offsets[i]: offsets[i + 1]] for i in range(len(utts))]


def build_cache(root: Path, utts: list[Utterance], n_mels: int, data_path: Path, index_path: Path, *,
                progress: bool = True, desc: str = "caching features") -> None:
    """Pack all features into one float16 file (atomically: temp file then rename)."""
    feats = load_features(root, utts, n_mels, progress=progress, desc=desc)
    offsets = [0]
    for f in feats:
        offsets.append(offsets[-1] + f.shape[0])

    def write(tmp):
        with open(tmp, "wb") as fh:
            for f in feats:
                fh.write(f.contiguous().numpy().tobytes())
    atomic_write(data_path, write)
    atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(
        {"offsets": offsets, "ids": [u.feature_path for u in utts], "n_mels": n_mels})))


def check_index(root: Path, index: str, file_mels: int, n_mels: int, definition=None) -> None:
    """An HW4 index's ``n_mels`` must be the model's, and (``definition``: the model's ``FeatureConfig``) its tensors
    made with the model's log-mel definition (``spkid.data.definition``)."""
    if file_mels != n_mels:
        raise DataError(f"{root / index}: n_mels is {file_mels}, the model expects {n_mels}")
    if definition is not None:
        from spkid.data.definition import check_definition
        check_definition(root, definition, str(root))


def load_train_features(root: str | Path, n_mels: int, *, progress: bool = True,
                        cache_dir: str | Path | None = None, definition=None) -> FeatureSet:
    """Training utterances of an HW4 directory with their features and the speaker list (by class id).

    ``definition``: the reading model's ``FeatureConfig``; tensors made with another (``features.json``) are refused.
    """
    root = Path(root)
    file_mels, speakers, utts = read_train(root)
    check_index(root, "metadata.json", file_mels, n_mels, definition)
    feats = _load_cached(root, utts, n_mels, Path(cache_dir) if cache_dir else None, "metadata.json",
                         progress, "loading train features")
    return FeatureSet(utts, feats, speakers)


def load_test_features(root: str | Path, n_mels: int, *, progress: bool = True,
                       cache_dir: str | Path | None = None, definition=None) -> FeatureSet:
    """Test utterances listed in ``testdata.json`` with their features (``definition``: as for training)."""
    root = Path(root)
    file_mels, utts = read_testdata(root)
    check_index(root, "testdata.json", file_mels, n_mels, definition)
    feats = _load_cached(root, utts, n_mels, Path(cache_dir) if cache_dir else None, "testdata.json",
                         progress, "loading test features")
    return FeatureSet(utts, feats, [])
