"""The offline demo end to end (synthetic voices -> prepare -> train -> predict), and predict on raw audio."""
import csv

from spkid.cli import main
from spkid.demo import run_demo


def test_demo_end_to_end_and_predict_on_audio(tmp_path, capsys):
    r = run_demo(tmp_path / "demo", minutes=1.0, steps=120, n_speakers=4, seed=1, progress=False)
    assert r.n_speakers == 4 and r.n_test == 16 and r.csv.is_file() and r.checkpoint.is_file()
    assert 0.0 <= r.test_acc <= 1.0 and 0.0 <= r.val_acc <= 1.0
    assert r.report is not None and r.report.is_file() and "data:image/png;base64," in r.report.read_text()
    rows = list(csv.reader(r.csv.open()))
    assert rows[0] == ["Id", "Category"] and len(rows) == 17
    # the same checkpoint predicts straight from the audio files (shared front end)
    test_dir = tmp_path / "demo" / "corpus" / "test"
    out = tmp_path / "audio_pred.csv"
    assert main(["predict", str(r.checkpoint), str(test_dir), "-o", str(out), "--quiet"]) == 0
    audio_rows = list(csv.reader(out.open()))[1:]
    assert sorted(a for a, _ in audio_rows) == sorted(p.name for p in test_dir.iterdir())
    # and agrees with the prediction made from the prepared features of the same files
    import csv as _csv
    key_to_feat = {row["audio"]: row["feature_path"] for row in _csv.DictReader(open(tmp_path / "demo" / "features" / "features.csv"))}
    by_feat = {a: b for a, b in rows[1:]}
    agree = sum(by_feat[key_to_feat[f"test/{a}"]] == b for a, b in audio_rows)
    assert agree == len(audio_rows)


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "demo" / "run"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--steps", "2", "--speakers", "2", "--quiet"])
    assert rc == 1 and "was not made by spkid" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"
