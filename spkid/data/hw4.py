"""Read the HW4 data layout; the only module that knows the format.

Layout of a data directory::

    metadata.json  {"n_mels": 40, "speakers": {"<spk>": [{"feature_path": "uttr-<hex>.pt", "mel_len": 435}, ...]}}
    mapping.json   {"speaker2id": {"<spk>": 0, ...}, "id2speaker": {"0": "<spk>", ...}}
    testdata.json  {"n_mels": 40, "utterances": [{"feature_path": ..., "mel_len": ...}]}
    uttr-*.pt      tensor (frames, n_mels), natural-log mel power, float32 or float16

and the Kaggle CSVs: predictions and answers are ``Id,Category`` with Id = a ``feature_path`` (or a file name).
Readers check everything and raise ``DataError("<file>: <problem>")``; writers are atomic.
"""
from __future__ import annotations

import csv
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from spkid.errors import DataError
from spkid.fileio import atomic_write, write_csv

ANSWERS_HEADER = ("Id", "Category")


@dataclass(frozen=True)
class Utterance:
    feature_path: str          # relative to the data directory; the Kaggle "Id"
    mel_len: int               # frames, as declared in the json
    speaker: str | None = None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found" if path.parent.is_dir() else f"{path.parent}: directory not found")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be an HW4 index") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a JSON object at top level, found {type(d).__name__}")
    return d


def _get(d: dict, key: str, kind, path: Path, where: str = ""):
    if key not in d:
        raise DataError(f"{path}: {where.rstrip('.') + ': ' if where else ''}missing key {key!r}")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {where}{key} must be {name}, found {type(value).__name__}")
    return value


def _utterance(item, path: Path, where: str, speaker: str | None) -> Utterance:
    if not isinstance(item, dict):
        raise DataError(f"{path}: {where} must be an object, found {type(item).__name__}")
    fp = _get(item, "feature_path", str, path, where + ".")
    n = _get(item, "mel_len", int, path, where + ".")
    if not fp or "\x00" in fp or os.path.isabs(fp) or ".." in Path(fp).parts:
        raise DataError(f"{path}: {where}.feature_path {fp!r} must be a relative path inside the data directory")
    if n < 1:
        raise DataError(f"{path}: {where} ({fp}) has mel_len {n}; utterances need at least 1 frame")
    return Utterance(fp, n, speaker)


def read_mapping(root: str | Path) -> list[str]:
    """Speaker names ordered by class id, from ``mapping.json`` (ids must be 0..N-1)."""
    path = Path(root) / "mapping.json"
    d = _read_json(path)
    s2i = _get(d, "speaker2id", dict, path)
    if not s2i:
        raise DataError(f"{path}: 'speaker2id' is empty")
    ids = sorted(s2i.values(), key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else 0))
    if any(not isinstance(v, int) or isinstance(v, bool) for v in s2i.values()) or ids != list(range(len(s2i))):
        raise DataError(f"{path}: 'speaker2id' ids must be the integers 0..{len(s2i) - 1}, each once")
    speakers = [""] * len(s2i)
    for name, i in s2i.items():
        speakers[i] = name
    i2s = d.get("id2speaker")
    if i2s is not None:
        if not isinstance(i2s, dict) or any(i2s.get(str(i)) != name for i, name in enumerate(speakers)):
            raise DataError(f"{path}: 'id2speaker' does not mirror 'speaker2id'")
    return speakers


def _collect(path: Path, entries, kind: str) -> list[Utterance]:
    """Utterances from ``(where, item, speaker)`` entries; a repeated feature_path is an error."""
    utts, seen = [], set()
    for where, item, speaker in entries:
        u = _utterance(item, path, where, speaker)
        key = os.path.normpath(u.feature_path)          # ./x.pt and x.pt are one file
        if key in seen:
            raise DataError(f"{path}: duplicate {kind} id {u.feature_path!r} ({where}; one file listed twice)")
        seen.add(key)
        utts.append(u)
    if not utts:
        raise DataError(f"{path}: no {kind} utterances")
    return utts


def read_metadata(root: str | Path) -> tuple[int, list[Utterance]]:
    """``(n_mels, training utterances)`` from ``metadata.json``."""
    path = Path(root) / "metadata.json"
    d = _read_json(path)
    n_mels = _get(d, "n_mels", int, path)
    speakers = _get(d, "speakers", dict, path)
    for spk, items in speakers.items():
        if not isinstance(items, list):
            raise DataError(f"{path}: speakers[{spk!r}] must be a list, found {type(items).__name__}")
    entries = ((f"speakers[{spk!r}][{j}]", item, spk) for spk, items in speakers.items()
               for j, item in enumerate(items))
    return n_mels, _collect(path, entries, "training")


def read_testdata(root: str | Path) -> tuple[int, list[Utterance]]:
    """``(n_mels, test utterances)`` from ``testdata.json``; duplicate ids are an error."""
    path = Path(root) / "testdata.json"
    d = _read_json(path)
    n_mels = _get(d, "n_mels", int, path)
    items = _get(d, "utterances", list, path)
    return n_mels, _collect(path, ((f"utterances[{j}]", item, None) for j, item in enumerate(items)), "test")


def read_train(root: str | Path) -> tuple[int, list[str], list[Utterance]]:
    """``(n_mels, speakers by id, utterances)``; every metadata speaker must be in the mapping."""
    speakers = read_mapping(root)
    n_mels, utts = read_metadata(root)
    known = set(speakers)
    for u in utts:
        if u.speaker not in known:
            raise DataError(f"{Path(root) / 'mapping.json'}: speaker {u.speaker!r} from metadata.json is missing")
    return n_mels, speakers, utts


_FLOAT_DTYPES = (torch.float16, torch.float32, torch.bfloat16, torch.float64)


def check_tensor(x, where: str, n_mels: int, expect_len: int | None = None) -> None:
    """Raise ``DataError("<where>: ...")`` unless ``x`` is a plain dense float tensor ``(T, n_mels)`` whose values all
    live in its own storage, of ``expect_len`` frames when given. Cheap checks come first: nothing here allocates
    more than the file holds (a 2 KB file can describe a (1e9, 40) zero-stride view)."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{where}: expected a tensor (frames, {n_mels}), found {type(x).__name__}")
    kind = ("sparse" if x.layout != torch.strided else "meta" if x.is_meta else "nested" if x.is_nested
            else "quantised" if x.is_quantized else None)
    if kind:
        raise DataError(f"{where}: {kind} tensors are not supported; save a dense float16/float32 tensor")
    if x.dtype not in _FLOAT_DTYPES:
        raise DataError(f"{where}: expected float16/float32 values, found {x.dtype}")
    if x.dim() != 2 or x.shape[1] != n_mels:
        raise DataError(f"{where}: expected shape (frames, {n_mels}), found {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise DataError(f"{where}: zero-length utterance (0 frames)")
    if expect_len is not None and x.shape[0] != expect_len:
        raise DataError(f"{where}: json says mel_len {expect_len}, tensor has {x.shape[0]} frames")
    stored = x.untyped_storage().nbytes() // x.element_size()
    if any(st < 1 for st in x.stride()) or x.storage_offset() + x.numel() > stored:
        raise DataError(f"{where}: tensor of {x.shape[0]} frames is a view with only {stored} stored values "
                        "(overlapping or broadcast strides); save a contiguous tensor")


def load_tensor(path: str | Path, n_mels: int, expect_len: int | None = None) -> torch.Tensor:
    """Load one feature tensor ``(T, n_mels)`` as float16 (``weights_only=True``), checking it fully."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, refused pickle: all surface as one line
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else "empty or truncated"
        msg = f"corrupt, truncated or not a torch.save file ({type(e).__name__}: {first[:120]})"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            msg = "refused: file holds objects other than tensors (unsafe pickle)"
        raise DataError(f"{path}: cannot load tensor: {msg[:200]}") from None
    check_tensor(x, str(path), n_mels, expect_len)
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: contains NaN or Inf values")
    x = x.to(torch.float16)
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: values overflow float16")
    return x


def feature_file(root: Path, feature_path: str) -> Path:
    """``root / feature_path``, refused when it resolves (through symlinks) outside ``root``."""
    p = root / feature_path
    try:
        inside = p.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise DataError(f"{p}: resolves outside the data directory {root} (a symlink?); refusing to read it")
    return p


def load_features(root: str | Path, utts: list[Utterance], n_mels: int, *, workers: int = 8,
                  progress: bool = True, desc: str = "loading features") -> list[torch.Tensor]:
    """Load all tensors into memory (float16) in parallel threads; each ``(T_i, n_mels)``."""
    root = Path(root)
    from tqdm import tqdm
    with ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = pool.map(lambda u: load_tensor(feature_file(root, u.feature_path), n_mels, u.mel_len), utts)
        return list(tqdm(jobs, total=len(utts), desc=desc, disable=not progress, unit="utt",
                         mininterval=math.inf if not progress else 0.5))


# -- writing ------------------------------------------------------------------------------------------------------

def write_train_index(root: str | Path, n_mels: int, speakers: dict[str, list[tuple[str, int]]]) -> None:
    """``metadata.json`` and ``mapping.json`` for ``{speaker: [(feature_path, mel_len)]}`` (ids by sorted name)."""
    root, names = Path(root), sorted(speakers)
    _write_json(root / "metadata.json", {"n_mels": n_mels, "speakers": {
        s: [{"feature_path": fp, "mel_len": int(n)} for fp, n in speakers[s]] for s in names}})
    _write_json(root / "mapping.json", {"speaker2id": {s: i for i, s in enumerate(names)},
                                        "id2speaker": {str(i): s for i, s in enumerate(names)}})


def write_test_index(root: str | Path, n_mels: int, utterances: list[tuple[str, int]]) -> None:
    """``testdata.json`` for ``[(feature_path, mel_len)]``."""
    _write_json(Path(root) / "testdata.json", {"n_mels": n_mels, "utterances": [
        {"feature_path": fp, "mel_len": int(n)} for fp, n in utterances]})


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")), fsync=False)


def write_predictions(path: str | Path, ids, labels) -> None:
    """Kaggle CSV ``Id,Category``, written atomically."""
    write_csv(path, list(ANSWERS_HEADER), zip(ids, labels))


def read_answers_csv(path) -> dict[str, str]:
    """Read a Kaggle ``Id,Category`` CSV into ``{id: category}``; blank lines are skipped."""
    path = Path(path)
    try:
        # utf-8-sig: spreadsheets often prepend a byte-order mark to the header.
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read answers CSV ({e.strerror})") from None
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataError(f"{path}: line 1: missing header, expected 'Id,Category'")
            if tuple(h.strip() for h in header) != ANSWERS_HEADER:
                raise DataError(f"{path}: line 1: expected header 'Id,Category', found {','.join(header)!r}")
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2:
                    raise DataError(f"{path}: line {line}: expected 2 fields (Id,Category), found {len(row)}")
                key, cat = row[0].strip(), row[1].strip()
                if not key:
                    raise DataError(f"{path}: line {line}: empty Id")
                if not cat:
                    raise DataError(f"{path}: line {line}: empty Category for id {key!r}")
                if key in out:
                    raise DataError(f"{path}: line {line}: duplicate id {key!r} (first on line {first_line[key]})")
                out[key] = cat
                first_line[key] = line
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}: line {reader.line_num}: unreadable CSV ({e})") from None
    return out


