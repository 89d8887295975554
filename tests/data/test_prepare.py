"""spkid.data.prepare: raw audio -> HW4 layout, skips, resume, CSV input, dtypes, atomic outputs."""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.audio.io import load_audio
from spkid.data import prepare as prepare_mod
from spkid.data.prepare import PrepareReport
from spkid.data.prepare import prepare as prepare_with_vad

# These tests are about formats, keys, reuse and atomicity: whole files (speech detection has its own test below).
prepare = functools.partial(prepare_with_vad, vad=False)
from spkid.errors import DataError
from spkid.audio.frontend import logmel
from spkid.audio.synth import synth_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synth_corpus(tmp_path_factory.mktemp("synth"), n_speakers=3, n_train=3, n_test=1, seed=7,
                        seconds=(0.6, 1.0))


def copy_train(corpus, dst: Path) -> Path:
    shutil.copytree(corpus.train_dir, dst)
    return dst


def read_json(path: Path):
    return json.loads(path.read_text())


def test_hw4_layout(corpus, tmp_path):
    out = tmp_path / "out"
    rep = prepare(corpus.train_dir, out, test_input=corpus.test_dir, workers=1, progress=False)
    assert isinstance(rep, PrepareReport)
    assert (rep.n_processed, rep.n_reused, rep.n_skipped, rep.n_speakers, rep.n_train, rep.n_test) == (12, 0, 0, 3, 9, 3)
    meta, mapping, test = (read_json(out / n) for n in ("metadata.json", "mapping.json", "testdata.json"))
    assert meta["n_mels"] == 40 and sorted(meta["speakers"]) == ["spk00", "spk01", "spk02"]
    assert mapping == {"speaker2id": {"spk00": 0, "spk01": 1, "spk02": 2},
                       "id2speaker": {"0": "spk00", "1": "spk01", "2": "spk02"}}
    assert test["n_mels"] == 40 and len(test["utterances"]) == 3
    rows = list(csv.DictReader(open(out / "features.csv", newline="")))
    assert len(rows) == 12
    by_audio = {r["audio"]: r["feature_path"] for r in rows}
    for spk, utts in meta["speakers"].items():
        for u in utts:
            assert set(u) == {"feature_path", "mel_len"}
    for audio, fp in by_audio.items():
        assert fp == f"uttr-{hashlib.md5(audio.encode()).hexdigest()}.pt"
        src = (corpus.test_dir / audio.removeprefix("test/")) if audio.startswith("test/") else corpus.train_dir / audio
        t = torch.load(out / fp, weights_only=True)
        assert t.dtype == torch.float32 and t.shape[1] == 40
        torch.testing.assert_close(t, logmel(load_audio(src)))
    entries = {u["feature_path"]: u["mel_len"] for utts in meta["speakers"].values() for u in utts}
    entries.update({u["feature_path"]: u["mel_len"] for u in test["utterances"]})
    assert entries == {fp: torch.load(out / fp, weights_only=True).shape[0] for fp in by_audio.values()}
    assert sorted(a for a in by_audio if a.startswith("test/")) == sorted(f"test/{n}" for n in corpus.answers)
    assert (out / "prepare_report.txt").read_text().startswith("# spkid prepare: 9 training utterances")


def test_float16_and_dtype_change_recomputes(corpus, tmp_path):
    out = tmp_path / "out"
    prepare(corpus.train_dir, out, workers=1, dtype=torch.float16, progress=False)
    meta = read_json(out / "metadata.json")
    fp = meta["speakers"]["spk01"][0]["feature_path"]
    t16 = torch.load(out / fp, weights_only=True)
    assert t16.dtype == torch.float16
    rep = prepare(corpus.train_dir, out, workers=1, dtype=torch.float32, progress=False)
    assert rep.n_processed == 9 and rep.n_reused == 0                 # a float16 file is not a float32 result
    t32 = torch.load(out / fp, weights_only=True)
    assert t32.dtype == torch.float32
    assert (t32 - t16.float()).abs().max() < 0.01
    assert not (out / "testdata.json").exists()


def test_resume_reuses_and_repairs(corpus, tmp_path):
    out = tmp_path / "out"
    first = prepare(corpus.train_dir, out, workers=1, progress=False)
    assert first.n_processed == 9
    second = prepare(corpus.train_dir, out, workers=1, progress=False)
    assert (second.n_processed, second.n_reused) == (0, 9)
    fp = read_json(out / "metadata.json")["speakers"]["spk00"][1]["feature_path"]
    (out / fp).write_bytes(b"half a tensor")                           # a damaged leftover
    third = prepare(corpus.train_dir, out, workers=1, progress=False)
    assert (third.n_processed, third.n_reused) == (1, 8)
    assert torch.load(out / fp, weights_only=True).shape[1] == 40
    src = sorted((corpus.train_dir / "spk02").iterdir())[0]            # a source edited after its .pt
    fp2 = f"uttr-{hashlib.md5(f'spk02/{src.name}'.encode()).hexdigest()}.pt"
    os.utime(out / fp2, (src.stat().st_mtime - 10, src.stat().st_mtime - 10))
    fourth = prepare(corpus.train_dir, out, workers=1, progress=False)
    assert (fourth.n_processed, fourth.n_reused) == (1, 8)
    assert (out / fp2).stat().st_mtime >= src.stat().st_mtime


def test_parallel_workers_match_serial(corpus, tmp_path):
    prepare(corpus.train_dir, tmp_path / "a", test_input=corpus.test_dir, workers=1, progress=False)
    rep = prepare(corpus.train_dir, tmp_path / "b", test_input=corpus.test_dir, workers=2, progress=True)
    assert rep.n_processed == 12
    for name in ("metadata.json", "mapping.json", "testdata.json", "features.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_skips_bad_files_with_reasons(corpus, tmp_path):
    train = copy_train(corpus, tmp_path / "train")
    good = next((train / "spk00").iterdir())
    (train / "spk00" / "broken.wav").write_bytes(good.read_bytes()[:30])
    sf.write(train / "spk01" / "empty.wav", np.zeros(0, np.float32), 16000)
    (train / "spk01" / "notes.wav").write_text("not audio at all\n")
    sf.write(train / "spk02" / "short.flac", np.zeros(800, np.float32), 16000)          # 0.05 s
    nan = np.zeros(4000, np.float32)
    nan[7] = np.nan
    sf.write(train / "spk02" / "nan.wav", nan, 16000, subtype="FLOAT")
    (train / "spk02" / "readme.txt").write_text("ignored: not an audio suffix")
    (train / "ghost").mkdir()                                          # a speaker with only bad files
    (train / "ghost" / "x.wav").write_text("nope")
    sf.write(train / "loose.wav", np.zeros(4000, np.float32), 16000)  # audio outside any speaker folder
    out = tmp_path / "out"
    rep = prepare(train, out, workers=1, progress=False)
    reasons = dict(rep.skipped)
    assert set(reasons) == {"spk00/broken.wav", "spk01/empty.wav", "spk01/notes.wav", "spk02/short.flac",
                            "spk02/nan.wav", "ghost/x.wav", "loose.wav"}
    assert reasons["spk00/broken.wav"].startswith("not readable as audio")
    assert reasons["spk01/notes.wav"].startswith("not readable as audio")
    assert reasons["spk01/empty.wav"].startswith("empty audio")
    assert reasons["spk02/short.flac"] == "too short (0.050 s < 0.1 s)"
    assert "NaN" in reasons["spk02/nan.wav"]
    assert reasons["loose.wav"] == "not inside a speaker folder"
    assert rep.n_processed == 9
    assert "ghost" not in read_json(out / "mapping.json")["speaker2id"]
    report = (out / "prepare_report.txt").read_text().splitlines()
    assert "7 skipped" in report[0]
    assert "spk02/short.flac\ttoo short (0.050 s < 0.1 s)" in report
    # a lower threshold keeps the short file
    rep2 = prepare(train, tmp_path / "out2", workers=1, min_seconds=0.01, progress=False)
    assert "spk02/short.flac" not in dict(rep2.skipped)


def test_csv_input(corpus, tmp_path):
    lst = tmp_path / "lists" / "train.csv"
    lst.parent.mkdir()
    rows = [(f"../corpus/{p.relative_to(corpus.train_dir).as_posix()}", p.parent.name)
            for p in sorted(corpus.train_dir.rglob("*.*"))]
    shutil.copytree(corpus.train_dir, tmp_path / "corpus")
    lst.write_text("path,speaker\n" + "".join(f"{p},{s}\n" for p, s in rows) + "\n../corpus/missing.wav,spk00\n"
                   + f"../corpus/./{rows[0][0].removeprefix('../corpus/')},spk01\n")   # the same file again
    test_lst = tmp_path / "lists" / "test.tsv"
    test_lst.write_text("".join(f"{corpus.test_dir / n}\n" for n in corpus.answers))   # absolute, no header
    rep = prepare(lst, tmp_path / "out", test_input=test_lst, workers=1, progress=False)
    assert (rep.n_train, rep.n_test, rep.n_speakers) == (9, 3, 3)
    assert dict(rep.skipped) == {"../corpus/missing.wav": "file not found",
                                 rows[0][0]: "listed more than once (kept the first entry)"}
    audio = {r["audio"] for r in csv.DictReader(open(tmp_path / "out" / "features.csv", newline=""))}
    assert audio == {p for p, _ in rows} | {f"test{(corpus.test_dir / n).as_posix()}" for n in corpus.answers}
    # headerless TSV with other speaker names
    tsv = tmp_path / "lists" / "train.tsv"
    tsv.write_text("".join(f"{p}\tperson_{s}\n" for p, s in rows))
    rep = prepare(tsv, tmp_path / "out2", workers=1, progress=False)
    assert sorted(read_json(tmp_path / "out2" / "mapping.json")["speaker2id"]) == [
        "person_spk00", "person_spk01", "person_spk02"]


@pytest.mark.parametrize("text,line", [
    ("path,speaker\na.wav,s1\nb.wav\n", 3),
    ("a.wav,s1\n,s2\n", 2),
    ("a.wav,s1,extra\n", 1),
])
def test_malformed_csv_names_line(tmp_path, text, line):
    lst = tmp_path / "bad.csv"
    lst.write_text(text)
    with pytest.raises(DataError, match=rf"^{lst}: line {line}: expected 2 non-empty fields"):
        prepare(lst, tmp_path / "out", workers=1, progress=False)


def test_csv_header_without_speaker(tmp_path):
    lst = tmp_path / "bad.csv"
    lst.write_text("path,label\na.wav,s1\n")
    with pytest.raises(DataError, match=rf"^{lst}: line 1: header has no 'speaker' column"):
        prepare(lst, tmp_path / "out", workers=1, progress=False)


def test_input_errors(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nope'}: input not found"):
        prepare(tmp_path / "nope", tmp_path / "out", progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "a.wav", np.zeros(4000, np.float32), 16000)
    with pytest.raises(DataError, match=rf"^{flat}: no speaker folders"):
        prepare(flat, tmp_path / "out", progress=False)
    silent = tmp_path / "silent"
    (silent / "spk").mkdir(parents=True)
    (silent / "spk" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=rf"^{silent}: no audio files"):
        prepare(silent, tmp_path / "out", progress=False)
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("\n")
    with pytest.raises(DataError, match=rf"^{empty_csv}: empty list"):
        prepare(empty_csv, tmp_path / "out", progress=False)


def test_all_files_unusable(tmp_path):
    root = tmp_path / "in"
    (root / "spk").mkdir(parents=True)
    (root / "spk" / "a.wav").write_text("junk")
    with pytest.raises(DataError, match=rf"^{root}: no usable training audio \(all 1 files skipped"):
        prepare(root, tmp_path / "out", workers=1, progress=False)
    assert "spk/a.wav\tnot readable as audio" in (tmp_path / "out" / "prepare_report.txt").read_text()


def test_test_folder_inside_training_folder(corpus, tmp_path):
    train = copy_train(corpus, tmp_path / "train")
    shutil.copytree(corpus.test_dir, train / "test")
    with pytest.raises(DataError, match=r"listed as both training and test audio"):
        prepare(train, tmp_path / "out", test_input=train / "test", progress=False)
    other = tmp_path / "elsewhere"
    shutil.copytree(corpus.test_dir, other)                            # same names, other files: keys collide
    with pytest.raises(DataError, match=r"test key 'test/t000\d\.\w+' equals a training file's key"):
        prepare(train, tmp_path / "out", test_input=other, progress=False)


def test_test_input_errors(corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"^{empty}: no audio files found"):
        prepare(corpus.train_dir, tmp_path / "out", test_input=empty, progress=False)


def test_outputs_are_atomic(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare(corpus.train_dir, out, workers=1, progress=False)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".spkid-lock"]   # no temporary files left behind
    before = (out / "metadata.json").read_text()

    def dying_dump(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    import spkid.data.hw4 as hw4_mod
    real_atomic = hw4_mod.atomic_write

    def write_then_die(path, write, **kw):
        if Path(path).name == "metadata.json":
            return real_atomic(path, lambda tmp: (write(tmp), dying_dump()), **kw)
        return real_atomic(path, write, **kw)

    monkeypatch.setattr(hw4_mod, "atomic_write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus.train_dir, out, workers=1, progress=False)
    assert (out / "metadata.json").read_text() == before               # the old file is intact
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".spkid-lock"]

    monkeypatch.undo()
    monkeypatch.setattr(prepare_mod.torch, "save", lambda obj, f: (Path(f).write_bytes(b"partial"), dying_dump()))
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus.train_dir, fresh, workers=1, progress=False)
    assert not list(fresh.glob("uttr-*.pt")) and not [p for p in fresh.iterdir() if p.name.startswith(".") and p.name != ".spkid-lock"]


def test_speech_detection_trims_silence_and_skips_files_without_speech(tmp_path):
    from spkid.audio.synth import make_voice, synth_utterance
    rng = np.random.default_rng(0)
    src = tmp_path / "in" / "spk"
    src.mkdir(parents=True)
    speech = synth_utterance(make_voice(rng), rng, 16000, 1.5)
    sf.write(src / "padded.wav", np.concatenate([np.zeros(32000), speech, np.zeros(32000)]), 16000)
    sf.write(src / "silence.wav", np.zeros(32000), 16000)
    r = prepare_with_vad(tmp_path / "in", tmp_path / "out", workers=1, progress=False)
    assert [k for k, _ in r.skipped] == ["spk/silence.wav"] and "s of speech found" in r.skipped[0][1]
    (only,) = json.loads((tmp_path / "out" / "metadata.json").read_text())["speakers"]["spk"]
    assert only["mel_len"] < 1.5 * 100 + 60            # 4 s of silence padding mostly gone (1.5 s of speech)
