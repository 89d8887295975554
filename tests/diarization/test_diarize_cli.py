"""spkid diarize / eval-diarization / report --diarization through the CLI with the session's tiny checkpoint
(tests/conftest.py ``trained``): the files, the one-line errors, a batch that finishes around a bad file, the ONNX
Runtime path, the report's timeline."""
import numpy as np
import pytest
import soundfile as sf

from spkid.diarization.rttm import read_rttm

from diar_helpers import run_cli, write_conversation


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("diar_cli")
    write_conversation(d / "one.wav", seconds=20.0, seed=1)
    write_conversation(d / "two.flac", seconds=20.0, seed=2, sample_rate=8000)
    (d / "broken.wav").write_bytes(b"RIFF not really")
    sf.write(str(d / "silent.wav"), np.zeros(16000 * 4, np.float32), 16000)
    return d


def test_diarize_writes_one_rttm_and_csv_and_survives_a_bad_file(trained, audio, tmp_path, capsys):
    out, csv = tmp_path / "out.rttm", tmp_path / "out.csv"
    rc, stdout, err = run_cli(capsys, "diarize", audio / "one.wav", audio / "broken.wav", audio / "two.flac",
                           audio / "silent.wav", "-o", out, "--segments", csv, "--checkpoint", trained["ckpt"],
                           "--device", "cpu", "--quiet")
    assert rc == 2                                   # a complete output, something was off (as predict/embed)
    errors = [ln for ln in err.splitlines() if "broken.wav" in ln]
    assert len(errors) == 1 and errors[0].startswith("spkid: warning:") and "not readable as audio" in errors[0]
    assert not any(ln.startswith("spkid: error:") for ln in err.splitlines())
    assert "spkid: warning:" in err and "silent.wav: no speech found; empty result" in err
    assert "Traceback" not in err and "1 file(s) failed" in stdout
    lines = out.read_text().splitlines()
    assert lines and all(len(ln.split()) == 10 and ln.split()[0] == "SPEAKER" for ln in lines)
    assert {ln.split()[1] for ln in lines} == {"one", "two"}
    segs = read_rttm(out)
    assert all(s.speaker.startswith("SPEAKER_") and s.end > s.start for s in segs)
    rows = csv.read_text().splitlines()
    assert rows[0] == "file,start,end,speaker,score" and len(rows) == len(lines) + 1


def test_diarize_takes_folders_of_audio(trained, audio, tmp_path, capsys):
    calls = tmp_path / "calls"
    (calls / "monday").mkdir(parents=True)
    (calls / "monday" / "one.wav").write_bytes((audio / "one.wav").read_bytes())
    (calls / "two.flac").write_bytes((audio / "two.flac").read_bytes())
    (calls / "notes.txt").write_text("not audio")                       # not an audio file: not an input
    out = tmp_path / "folder.rttm"
    rc, stdout, err = run_cli(capsys, "diarize", calls, "-o", out, "--checkpoint", trained["ckpt"], "--device", "cpu",
                           "--quiet")
    assert rc == 0, err
    assert {s.file for s in read_rttm(out)} == {"one", "two"} and "of 2 file(s)" in stdout
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, "diarize", tmp_path / "empty", "-o", tmp_path / "e.rttm", "--checkpoint",
                      trained["ckpt"], "--device", "cpu", "--quiet")
    assert rc == 1 and err.strip() == f"spkid: error: {tmp_path / 'empty'}: no audio files in this folder"
    assert not (tmp_path / "e.rttm").exists()


def test_diarize_argument_errors_are_one_line(trained, audio, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "diarize", audio / "one.wav", "-o", tmp_path / "x.rttm", "--checkpoint",
                      trained["ckpt"], "--num-speakers", "2", "--max-speakers", "3")
    assert rc == 1
    assert err.strip() == "spkid: error: diarize: give --num-speakers or --min-speakers/--max-speakers, not both"
    rc, _, err = run_cli(capsys, "diarize", audio / "one.wav", "-o", audio / "one.wav", "--checkpoint", trained["ckpt"])
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "one.wav" in err
    rc, _, err = run_cli(capsys, "diarize", audio / "one.wav", "-o", tmp_path / "x.rttm", "--checkpoint",
                      tmp_path / "nope.ckpt")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "nope.ckpt" in err
    for counts, words in ((("--num-speakers", "0"), "--num-speakers 0: must be >= 1"),
                          (("--min-speakers", "3", "--max-speakers", "2"), "need 1 <= min <= max")):
        rc, _, err = run_cli(capsys, "diarize", audio / "one.wav", audio / "two.flac", "-o", tmp_path / "x.rttm",
                             "--checkpoint", trained["ckpt"], *counts)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and words in err     # refused once, before any file
        assert not (tmp_path / "x.rttm").exists()
    (tmp_path / "folder").mkdir()
    for outs in (("-o", tmp_path / "folder"), ("-o", tmp_path / "x.rttm", "--segments", tmp_path / "folder")):
        rc, out, err = run_cli(capsys, "diarize", audio / "one.wav", *outs, "--checkpoint", tmp_path / "nope.ckpt")
        assert rc == 1 and out == ""                    # refused before the model loads (nope.ckpt: never opened)
        assert err.strip().splitlines() == [f"spkid: error: {tmp_path / 'folder'}: cannot write: Is a directory "
                                            "(give the path of a file to write)"]
        assert not (tmp_path / "x.rttm").exists() and not any((tmp_path / "folder").iterdir())


def test_fewer_speakers_than_asked_prints_both_lines_and_exits_2(trained, audio, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "diarize", audio / "one.wav", "-o", tmp_path / "x.rttm", "--checkpoint",
                           trained["ckpt"], "--num-speakers", "50")
    assert rc == 2 and "speaker(s)," in out and (tmp_path / "x.rttm").stat().st_size > 0
    warned = [x for x in err.strip().splitlines() if "were asked" in x]
    assert len(warned) == 1 and warned[0].startswith("spkid: warning: ") and \
        "speaker(s) found where 50 were asked (from " in warned[0]


def test_onnx_runtime_gives_the_same_turns(trained, audio, tmp_path, capsys):
    pytest.importorskip("onnx")
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(trained["ckpt"].read_bytes())              # the ONNX cache goes beside the checkpoint
    outs = []
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.rttm"
        rc, _, err = run_cli(capsys, "diarize", audio / "one.wav", "-o", out, "--checkpoint", ckpt, "--runtime", runtime,
                          "--quiet")
        assert rc == 0, err
        outs.append(read_rttm(out))
    a, b = outs
    assert [s.speaker for s in a] == [s.speaker for s in b]
    assert all(abs(x.start - y.start) < 0.02 and abs(x.end - y.end) < 0.02 for x, y in zip(a, b))


def test_eval_diarization_and_report_timeline(trained, audio, tmp_path, capsys):
    pytest.importorskip("pyannote.metrics")
    pytest.importorskip("matplotlib")
    conv = write_conversation(tmp_path / "talk.wav", seconds=20.0, seed=1)
    ref = tmp_path / "ref.rttm"
    from spkid.diarization.rttm import write_rttm
    write_rttm(ref, conv.reference)
    hyp = tmp_path / "hyp.rttm"
    rc, _, err = run_cli(capsys, "diarize", tmp_path / "talk.wav", "-o", hyp, "--checkpoint", trained["ckpt"], "--quiet")
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "eval-diarization", ref, hyp)
    assert rc == 0, err
    assert "TOTAL" in out and out.splitlines()[-1].startswith("DER ") and "(±0.25 s collar, overlap scored)" in out
    rc, out, err = run_cli(capsys, "eval-diarization", ref, ref)
    assert rc == 0 and "DER 0.00% (±0.25 s collar, overlap scored), 0.00% (no collar)" in out
    (tmp_path / "bad.rttm").write_text("SPEAKER talk 1 x 1 <NA> <NA> A <NA> <NA>\n")
    rc, _, err = run_cli(capsys, "eval-diarization", tmp_path / "bad.rttm", hyp)
    assert rc == 1 and "bad.rttm: line 1: onset 'x' is not a number" in err
    rc, out, err = run_cli(capsys, "report", trained["run"], "-o", tmp_path / "r" / "report.html", "--diarization", ref,
                        hyp, "--quiet", "--device", "cpu")
    assert rc == 0, err
    page = (tmp_path / "r" / "report.html").read_text()
    assert '<section id="diarization">' in page and "DER ±0.25 s" in page
    assert (tmp_path / "r" / "report_figures" / "timeline.png").stat().st_size > 1000


def test_eval_diarization_uem_must_cover_the_reference(tmp_path, capsys):
    """A UEM without a line for a reference file is a one-line error naming the UEM file; with every file, it limits
    the scored time."""
    pytest.importorskip("pyannote.metrics")
    ref, hyp, uem = tmp_path / "ref.rttm", tmp_path / "hyp.rttm", tmp_path / "u.uem"
    ref.write_text("SPEAKER a 1 0 10 <NA> <NA> A <NA> <NA>\nSPEAKER b 1 0 5 <NA> <NA> B <NA> <NA>\n"
                   "SPEAKER c 1 0 5 <NA> <NA> C <NA> <NA>\n")
    hyp.write_text("SPEAKER a 1 0 10 <NA> <NA> x <NA> <NA>\nSPEAKER a 1 20 10 <NA> <NA> x <NA> <NA>\n"
                   "SPEAKER b 1 0 5 <NA> <NA> y <NA> <NA>\nSPEAKER c 1 0 5 <NA> <NA> z <NA> <NA>\n")
    uem.write_text("a 1 0 15\n")
    rc, out, err = run_cli(capsys, "eval-diarization", ref, hyp, "--uem", uem)
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == [f"spkid: error: {uem}: UEM has no line for file 'b' of the reference "
                                        "(and 1 more)"]
    uem.write_text("a 1 0 15\nb 1 0 5\nc 1 0 5\n")
    rc, out, err = run_cli(capsys, "eval-diarization", ref, hyp, "--uem", uem)
    assert rc == 0, err
    assert out.splitlines()[-1].startswith("DER 0.00% (±0.25 s collar, overlap scored)")   # a's false alarm lies outside
    rc, out, err = run_cli(capsys, "eval-diarization", ref, hyp)
    assert rc == 0 and not out.splitlines()[-1].startswith("DER 0.00%")                    # ... and counts without it


def test_diarize_flags_reach_the_pipeline(trained, audio, tmp_path, capsys, monkeypatch):
    """--no-settled, --merge-raw, --resplit, --threshold, --overlap-threshold, --no-overlap, --no-band-limit and
    --speech-threshold set DiarizeConfig; the defaults keep its own values; a speech threshold outside (0, 1) is a
    one-line error naming the flag."""
    import spkid.diarization.batch as batch
    from spkid.errors import SpkidError
    seen = []

    def fake(files, embedder, cfg, **kw):
        seen.append(cfg)
        raise SpkidError("stop here")
    monkeypatch.setattr(batch, "diarize_files", fake)
    base = ["diarize", audio / "one.wav", "-o", tmp_path / "x.rttm", "--checkpoint", trained["ckpt"], "--quiet"]
    assert run_cli(capsys, *base)[0] == 1
    assert run_cli(capsys, *base, "--no-settled", "--merge-raw", "0", "--resplit", "0", "--threshold", "0.9",
                "--overlap-threshold", "0.7", "--no-overlap", "--no-band-limit", "--speech-threshold", "0.45")[0] == 1
    default, given = seen
    assert default.settled_s == 15.0 and default.raw_settled_s == 45.0 and default.merge_raw == 0.88
    assert default.overlap and default.threshold == 1.0 and default.resplit == 0.75
    assert given.resplit == 0.0
    assert given.settled_s == 0.0 and given.raw_settled_s == 0.0 and given.merge_raw == 0.0
    assert given.threshold == 0.9 and given.overlap_threshold == given.overlap_threshold_narrowband == 0.7
    assert not given.overlap and not given.band_limit and default.band_limit
    assert (default.overlap_threshold, default.overlap_threshold_narrowband) == (0.8, 0.9)
    assert default.name_margin == 1.0 and default.name_margin_telephone == 0.5
    assert default.vad.threshold == 0.3 and given.vad.threshold == 0.45
    for bad in ("0", "1", "nan"):
        rc, _, err = run_cli(capsys, *base, "--speech-threshold", bad)
        assert rc == 1 and err.strip().splitlines() == [f"spkid: error: diarize --speech-threshold {float(bad)}: "
                                                        "a probability in (0, 1)"]
    assert len(seen) == 2                                      # refused before the pipeline


def test_name_margin_reaches_the_naming_and_needs_a_registry(trained, audio, tmp_path, capsys, monkeypatch):
    import spkid.diarization.batch as batch
    from spkid.errors import SpkidError
    seen = []

    def fake(files, embedder, cfg, **kw):
        seen.append((cfg, kw["registry"]))
        raise SpkidError("stop here")
    monkeypatch.setattr(batch, "diarize_files", fake)
    base = ["diarize", audio / "one.wav", "-o", tmp_path / "x.rttm", "--checkpoint", trained["ckpt"], "--quiet"]
    rc, _, err = run_cli(capsys, *base, "--name-margin", "0.5")
    assert rc == 1 and err.strip() == "spkid: error: diarize: --name-margin needs --registry (it is how sure a name " \
        "must be)" and not seen
    rc, _, err = run_cli(capsys, *base, "--name-margin-telephone", "0.5")
    assert rc == 1 and "--name-margin-telephone needs --registry" in err and not seen
    rc, _, err = run_cli(capsys, *base, "--registry", tmp_path / "r.db", "--name-margin", "-1")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "name_margin -1" in err
    assert run_cli(capsys, *base, "--registry", tmp_path / "r.db", "--name-margin", "0.7",
                "--name-margin-telephone", "0.2")[0] == 1
    assert (seen[-1][0].name_margin, seen[-1][0].name_margin_telephone) == (0.7, 0.2)


def test_each_files_line_says_how_many_speakers_the_registry_named(trained, audio, tmp_path, capsys, monkeypatch):
    import spkid.diarization.batch as batch
    from spkid.diarization.rttm import Segment

    def fake(files, embedder, cfg, on_file=None, **kw):
        o = batch.FileOutcome(files[0], [Segment("one", 0.0, 1.0, "ann", 0.9), Segment("one", 1.0, 2.0, "SPEAKER_00",
                              0.5)], 2, 2.0, 2.0, 0.1, names="1 of 2 speakers named; 1 anonymous: 1 below the "
                              "registry's threshold")
        on_file(o)
        return [o]
    monkeypatch.setattr(batch, "diarize_files", fake)
    rc, out, _ = run_cli(capsys, "diarize", audio / "one.wav", "-o", tmp_path / "x.rttm", "--checkpoint", trained["ckpt"],
                      "--quiet")
    assert rc == 0 and "2 speaker(s), 2 turns" in out
    assert "; 1 of 2 speakers named; 1 anonymous: 1 below the registry's threshold" in out


def test_diarize_leaves_an_existing_rttm_alone_when_no_file_can_be_diarized(trained, audio, tmp_path, capsys):
    out, csv = tmp_path / "kept.rttm", tmp_path / "kept.csv"
    out.write_text("SPEAKER earlier 1 0.000 1.000 <NA> <NA> alice <NA> <NA>\n")
    csv.write_text("file,start,end,speaker,score\n")
    rc, stdout, err = run_cli(capsys, "diarize", audio / "broken.wav", tmp_path / "missing.wav", "-o", out,
                           "--segments", csv, "--checkpoint", trained["ckpt"], "--device", "cpu", "--quiet")
    assert rc != 0 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("spkid: error:") and "no file could be diarized" in last and "not written" in last
    assert "broken.wav" in last and "wrote" not in stdout
    assert out.read_text() == "SPEAKER earlier 1 0.000 1.000 <NA> <NA> alice <NA> <NA>\n"
    assert csv.read_text() == "file,start,end,speaker,score\n"
