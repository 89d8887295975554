"""``spkid prepare``: raw audio -> HW4-format features (``metadata.json``, ``mapping.json``, ``uttr-*.pt``).

Inputs:
- training audio: a folder with one sub-folder per speaker (``SPEAKER/**/*.wav|flac|ogg|...``), or a
  CSV/TSV of ``path,speaker`` rows (header optional; relative paths are relative to the CSV's folder).
- test audio (optional): a folder of unlabelled files (recursive), or a CSV/TSV whose first column is a path.

Every source file gets a *key*: its path relative to its input root in POSIX form (``spk/a.wav``; for a CSV,
the path as written, normalised), with ``test/`` prepended for test files (``test/b.wav``; an absolute path
in a test list loses its leading ``/``: ``test/home/me/b.wav``). Its features go to
``uttr-<md5(key)>.pt``, so a re-run finds them again, and ``features.csv`` (``audio,feature_path``) maps each
key to its tensor, as ``shared/data/speechocean762-audio/features.csv`` does.

Files that cannot be used (unreadable, not audio, empty, NaN/Inf, shorter than ``min_seconds``) are skipped
and listed with their reason in ``prepare_report.txt``; a speaker left with no files is dropped. Every output
is written to a temporary file in ``out_dir`` and renamed into place, so a killed run leaves no partial file,
and a re-run reuses every ``.pt`` that loads, has the requested dtype and is not older than its source.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from spkid.audio.io import AUDIO_EXTENSIONS, load_audio
from spkid.data.scan import scan
from spkid.errors import DataError
from spkid.fileio import DirLock, atomic_write, refuse_overwriting_inputs, write_csv
from spkid.audio.frontend import logmel
from spkid.data.hw4 import write_test_index, write_train_index

REPORT_NAME = "prepare_report.txt"
OUTPUT_NAMES = ("metadata.json", "mapping.json", "testdata.json", "features.csv", "features.json", REPORT_NAME)
_PATH_HEADERS = {"path", "audio", "file", "filename", "wav"}


@dataclass
class PrepareReport:
    """What ``prepare`` did. ``skipped`` holds ``(file, reason)`` pairs, ``file`` as its key."""

    out_dir: Path
    report_path: Path
    n_processed: int = 0          # features computed in this run
    n_reused: int = 0             # features already on disk from an earlier run
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_speakers: int = 0
    n_train: int = 0              # training utterances written to metadata.json
    n_test: int = 0               # test utterances written to testdata.json

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        return (f"{self.n_train} training utterances of {self.n_speakers} speakers, {self.n_test} test utterances; "
                f"{self.n_processed} computed, {self.n_reused} reused, {self.n_skipped} skipped")


@dataclass(frozen=True)
class _Item:
    key: str              # path relative to its input root, "test/" prefixed for test files
    path: Path            # file to read
    speaker: str | None   # None for test files

    @property
    def feature_path(self) -> str:
        return f"uttr-{hashlib.md5(self.key.encode('utf-8')).hexdigest()}.pt"


def prepare(input: str | os.PathLike, out_dir: str | os.PathLike, *, test_input: str | os.PathLike | None = None,
            workers: int = 0, dtype: torch.dtype = torch.float32, min_seconds: float = 0.1, features=None, vad: bool = True,
            progress: bool = True) -> PrepareReport:
    """Compute log-mel features for every usable file of ``input`` (and ``test_input``) into ``out_dir``.

    Args:
        input: speaker folders or a ``path,speaker`` CSV/TSV.
        out_dir: output folder (created); HW4 layout plus ``features.csv`` and ``prepare_report.txt``.
        test_input: optional unlabelled files: a folder or a CSV/TSV of paths.
        workers: processes computing features; 0 means one per CPU core, 1 runs in this process.
        dtype: dtype of the saved tensors (``torch.float32`` or ``torch.float16``).
        min_seconds: files shorter than this are skipped.
        features: the log-mel definition (a ``FeatureConfig``; the HW4 one when None). ``features.json`` in
            ``out_dir`` records it (and ``vad``); a re-run with another definition recomputes every file.
        vad: keep only the speech Silero VAD detects; a file with less than ``min_seconds`` of speech is skipped.
        progress: show a tqdm bar on stderr.
    Raises ``DataError`` naming the file for a missing input, an input without speaker folders or audio,
    a malformed CSV line, or when no training file at all is usable.
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = all cores), got {workers}")
    out_dir = Path(out_dir)
    skipped: list[tuple[str, str]] = []
    items = _collect(Path(input), None, skipped)
    test_items = _collect(Path(test_input), "test/", skipped) if test_input is not None else []
    _check_disjoint(items, test_items)
    sources = [it.path for it in items + test_items] + [Path(input)] + ([Path(test_input)] if test_input else [])
    outputs = [out_dir / n for n in OUTPUT_NAMES] + [out_dir / it.feature_path for it in items + test_items]
    refuse_overwriting_inputs(outputs, sources)
    with DirLock(out_dir):
        return _prepare(input, out_dir, items, test_items, test_input, skipped, workers, dtype, min_seconds, features,
                        progress, vad)


def _prepare(input, out_dir: Path, items, test_items, test_input, skipped, workers, dtype, min_seconds, features,
             progress, vad) -> PrepareReport:
    if features is None:
        from spkid.config import FeatureConfig
        features = FeatureConfig()
    definition = json.dumps({**dataclasses.asdict(features), "vad": vad}, sort_keys=True)
    def_path = out_dir / "features.json"
    reuse = def_path.is_file() and def_path.read_text().strip() == definition
    _write_text(def_path, definition + "\n")

    results = _run(items + test_items, out_dir, dtype, min_seconds, workers, progress, features, reuse, vad)
    report = PrepareReport(out_dir=out_dir, report_path=out_dir / REPORT_NAME, skipped=skipped)
    speakers: dict[str, list[tuple[str, int]]] = {}
    test_utts: list[tuple[str, int]] = []
    rows: list[tuple[str, str]] = []
    for item, (status, value) in zip(items + test_items, results):
        if status == "skipped":
            report.skipped.append((item.key, value))
            continue
        report.n_processed += status == "computed"
        report.n_reused += status == "reused"
        entry = (item.feature_path, value)
        (speakers.setdefault(item.speaker, []) if item.speaker is not None else test_utts).append(entry)
        rows.append((item.key, item.feature_path))
    report.skipped.sort()
    report.n_speakers, report.n_test = len(speakers), len(test_utts)
    report.n_train = sum(len(v) for v in speakers.values())
    _write_text(report.report_path, _report_text(report))
    if not speakers:
        raise DataError(f"{input}: no usable training audio (all {len(items)} files skipped; "
                                     f"see {report.report_path})")

    write_train_index(out_dir, features.n_mels, speakers)
    if test_input is not None:
        write_test_index(out_dir, features.n_mels, test_utts)
    write_csv(out_dir / "features.csv", ["audio", "feature_path"], sorted(rows))
    return report


# ---------------------------------------------------------------- inputs

def _collect(root: Path, prefix: str | None, skipped: list[tuple[str, str]]) -> list[_Item]:
    """Items of a training (``prefix`` None) or test input; duplicates go to ``skipped``."""
    if not root.exists():
        raise DataError(f"{root}: input not found")
    if root.is_file():
        rows = _read_table(root, labelled=prefix is None)
        items = [_Item(_csv_key(p, prefix), _resolve(root.parent, p), spk) for p, spk in rows]
    elif prefix is None:
        items = _collect_speaker_folders(root, skipped)
    else:
        items = [_Item(prefix + f.relative_to(root).as_posix(), f, None) for f in scan(root)]
        if not items:
            raise DataError(f"{root}: no audio files found")
    unique: dict[str, _Item] = {}
    for it in items:
        if it.key in unique:
            skipped.append((it.key, "listed more than once (kept the first entry)"))
        else:
            unique[it.key] = it
    return sorted(unique.values(), key=lambda it: it.key)


def _check_disjoint(items: list[_Item], test_items: list[_Item]) -> None:
    """A file may not be both training and test audio, and two files may not share a key (one ``.pt``)."""
    train_paths = {it.path.resolve() for it in items}
    train_keys = {it.key for it in items}
    for it in test_items:
        if it.path.resolve() in train_paths:
            raise DataError(f"{it.path}: listed as both training and test audio "
                                           "(is the test folder inside the training folder?)")
        if it.key in train_keys:
            raise DataError(f"{it.path}: test key {it.key!r} equals a training file's key; "
                                           "rename the training speaker folder 'test'")


def _collect_speaker_folders(root: Path, skipped: list[tuple[str, str]]) -> list[_Item]:
    speaker_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not speaker_dirs:
        raise DataError(f"{root}: no speaker folders (expected SPEAKER/<audio files>)")
    for f in root.iterdir():  # audio lying next to the speaker folders has no speaker: report it
        if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
            skipped.append((f.name, "not inside a speaker folder"))
    items = [_Item(f.relative_to(root).as_posix(), f, d.name) for d in speaker_dirs for f in scan(d)]
    if not items:
        raise DataError(f"{root}: no audio files in its {len(speaker_dirs)} speaker folders")
    return items


def _read_table(path: Path, labelled: bool) -> list[tuple[str, str | None]]:
    """Rows of a CSV/TSV: ``path,speaker`` (labelled) or ``path[,...]``; header optional.

    A header is recognised by its first field (``path``, ``audio``, ``file``...); with a header, the
    ``speaker`` column may sit anywhere. Blank lines are ignored.
    """
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(enumerate(csv.reader(f, delimiter=delim), start=1))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text CSV/TSV file ({e.reason})") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    lines = [(n, [c.strip() for c in row]) for n, row in lines if any(c.strip() for c in row)]
    if not lines:
        raise DataError(f"{path}: " + ("empty list (expected path,speaker rows)" if labelled else "empty list of paths"))
    path_col, spk_col, n_cols = 0, 1, 2
    first = [c.lower() for c in lines[0][1]]
    if first[0] in _PATH_HEADERS:
        n_hdr, lines = lines[0][0], lines[1:]
        if labelled:
            if "speaker" not in first:
                raise DataError(f"{path}: line {n_hdr}: header has no 'speaker' column (found {','.join(first)})")
            spk_col, n_cols = first.index("speaker"), len(first)
    rows = []
    for n, row in lines:
        if labelled and (len(row) != n_cols or not row[path_col] or not row[spk_col]):
            raise DataError(f"{path}: line {n}: expected {n_cols} non-empty fields "
                                        f"(path,speaker), found {len(row)}: {delim.join(row)!r}")
        if not row[path_col]:
            raise DataError(f"{path}: line {n}: empty path")
        if "\x00" in row[path_col]:        # the OS cannot open such a name (Path.resolve raises ValueError)
            raise DataError(f"{path}: line {n}: path contains a NUL byte")
        rows.append((row[path_col], row[spk_col] if labelled else None))
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


def _csv_key(p: str, prefix: str | None) -> str:
    key = Path(os.path.normpath(p)).as_posix()
    return prefix + key.lstrip("/") if prefix else key


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


# ---------------------------------------------------------------- work

def _init_worker() -> None:
    # Each worker is one process working on one file at a time: more torch threads would only fight.
    torch.set_num_threads(1)
    # The parent decides: on its Ctrl-C/SIGTERM it terminates us (default action: die quietly) and, holding the
    # folder's lock, removes the temp file a worker was writing.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _process(path: Path, out: Path, dtype: torch.dtype, min_seconds: float, features,
             reuse: bool, vad: bool) -> tuple[str, int | str]:
    """One file -> ``("computed"|"reused", mel_len)`` or ``("skipped", reason)``."""
    existing = _load_existing(out, path, dtype, features.n_mels) if reuse else None
    if existing is not None:
        return "reused", existing
    sr = features.sample_rate
    try:
        wav = load_audio(path, sr)
    except DataError as e:
        return "skipped", str(e).removeprefix(f"{path}: ")
    except MemoryError:
        return "skipped", "too large to decode in memory"
    if wav.shape[0] < min_seconds * sr:
        return "skipped", f"too short ({wav.shape[0] / sr:.3f} s < {min_seconds:g} s)"
    if vad and sr == 16000:                                                   # Silero runs at 16 kHz
        from spkid.audio.vad import keep_speech
        speech, seconds = keep_speech(wav)
        if seconds < max(min_seconds, 0.1):
            return "skipped", f"only {seconds:.2f} s of speech found (--no-vad keeps whole files)"
        wav = speech
    feats = logmel(wav, features).to(dtype).clone()                          # (S,) -> (T, F), own storage
    atomic_write(out, lambda tmp: torch.save(feats, tmp), fsync=False)
    return "computed", int(feats.shape[0])


def _load_existing(out: Path, src: Path, dtype: torch.dtype, n_mels: int) -> int | None:
    """Frames of a usable earlier result at ``out`` (loads, right shape and dtype, not older than
    its source file), else None."""
    try:
        if out.stat().st_mtime < src.stat().st_mtime:
            return None
    except OSError:  # no result yet, or the source is gone (then it is reported as missing)
        return None
    try:
        t = torch.load(out, weights_only=True, map_location="cpu")
    except Exception:  # any unreadable leftover is simply recomputed  # noqa: BLE001
        return None
    ok = isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] == n_mels and t.shape[0] > 0 and t.dtype == dtype
    return int(t.shape[0]) if ok else None


def _run(items: list[_Item], out_dir: Path, dtype: torch.dtype, min_seconds: float, workers: int,
         progress: bool, features, reuse: bool, vad: bool) -> list[tuple[str, int | str]]:
    n_workers = min(workers or os.cpu_count() or 1, max(len(items), 1))
    results: list[tuple[str, int | str]] = [("skipped", "not processed")] * len(items)
    if n_workers <= 1:
        for i, it in enumerate(tqdm(items, desc="prepare", unit="file", disable=not progress)):
            results[i] = _process(it.path, out_dir / it.feature_path, dtype, min_seconds, features, reuse, vad)
        return results
    # fork (where it exists) starts workers without re-importing torch, which costs seconds per worker;
    # as in torch's DataLoader, the forked workers run torch single-threaded, so the parent's thread
    # pools are never needed in them. The bar (and its monitor thread) is created after the fork.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    pool = cf.ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker)
    try:
        futures = {pool.submit(_process, it.path, out_dir / it.feature_path, dtype, min_seconds, features, reuse, vad): i
                   for i, it in enumerate(items)}
        with tqdm(total=len(items), desc="prepare", unit="file", disable=not progress) as bar:
            for fut in cf.as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    except BaseException:               # Ctrl-C, SIGTERM, an error: stop the workers now; they remove their temp files
        workers_ = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for w in workers_:
            w.terminate()
        for w in workers_:
            w.join(10)
        for tmp in out_dir.glob(".uttr-*.tmp"):      # ours (the folder is locked): a worker stopped mid-write
            tmp.unlink(missing_ok=True)
        raise
    pool.shutdown()
    return results


# ---------------------------------------------------------------- outputs

def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")), fsync=False)


def _report_text(r: PrepareReport) -> str:
    lines = [f"# spkid prepare: {r.summary()}", f"# skipped {r.n_skipped} files (file<TAB>reason)"]
    lines += [f"{f}\t{reason}" for f, reason in r.skipped]
    return "\n".join(lines) + "\n"
