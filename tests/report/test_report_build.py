"""build_report end to end on the session's tiny trained run (tests/conftest.py ``trained``): every section,
every image decodes, nothing external, and each missing input degrades to a section that says what to pass."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil

import pytest
from PIL import Image as PILImage

from spkid.errors import DataError
from spkid.report import build_report
from spkid.report.build import figures_dir

SECTIONS = ("run", "training", "closed-set", "verification", "embeddings")
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _registry(trained, tmp_path, *, model_id=None, threshold=0.4):
    from spkid.scoring.model import load
    from spkid.scoring.speaker_db import SpeakerDB
    m = load(trained["ckpt"], "cpu")
    path = tmp_path / "reg.db"
    SpeakerDB.create(path, model_id=model_id or m.model_id, checkpoint=str(trained["ckpt"]),
                     embed_dim=m.net.embed_dim, threshold=threshold, threshold_source="far=0.01").close()
    return path


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b, validate=True) for b in DATA_URI.findall(page)]


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start:page.index("</section>", start)]


@pytest.fixture(scope="module")
def full(trained, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_full")
    reg = _registry(trained, tmp)
    seen = trained["seen"]["root"]
    r = build_report([trained["run"]], tmp / "out" / "report.html", test_dir=seen, answers=seen / "answers.csv",
                     trials_dir=trained["unseen"]["root"], registry=reg, progress=False, device="cpu")
    return r, r.path.read_text()


def test_full_report_has_every_section_and_figure(full):
    r, page = full
    assert r.sections_missing == []
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page and f'href="#{sid}"' in page
    assert 'class="missing-note"' not in page
    assert [p.stem for p in r.figures] == ["training_steps", "training_time", "per_speaker", "confusion",
                                           "duration", "scores", "det", "embeddings"]
    assert "Accuracy " in _section(page, "closed-set") and "95% interval" in _section(page, "closed-set")
    assert "EER " in _section(page, "verification") and "registry (far=0.01)" in _section(page, "verification")


def test_every_embedded_image_decodes_and_matches_the_file_beside_the_page(full):
    r, page = full
    blobs = _images(page)
    assert len(blobs) == len(r.figures) == 8
    for blob, path in zip(blobs, r.figures):
        im = PILImage.open(io.BytesIO(blob))
        im.load()
        assert im.format == "PNG" and im.width > 300 and im.height > 200
        assert path.parent == figures_dir(r.path) and path.read_bytes() == blob


def test_page_loads_nothing_from_outside(full):
    _, page = full
    assert "http://" not in page and "https://" not in page
    for attr, value in re.findall(r'\b(src|href)="([^"]*)"', page):
        assert value.startswith(("data:", "#")), f"{attr}={value[:60]!r} would load from outside the page"
    assert "<script" not in page and "<link rel=\"stylesheet\"" not in page and "@import" not in page
    assert "default-src 'none'" in page                       # the browser refuses any other load


def test_run_section_shows_checkpoint_facts_and_config(full, trained):
    _, page = full
    run = _section(page, "run")
    ckpt = __import__("torch").load(trained["ckpt"], weights_only=True)
    for key in ("device", "amp", "data_fingerprint"):
        if key in ckpt:                                       # the lead's loop writes them; show when present
            assert str(ckpt[key]) in run
    assert "resolved config" in run and "&quot;encoder&quot;" in run


def test_only_a_run_dir_says_what_to_pass_for_each_missing_section(trained, tmp_path):
    r = build_report([trained["run"]], tmp_path / "r.html", progress=False)
    assert r.sections_missing == ["closed-set", "verification", "embeddings"]
    page = r.path.read_text()
    assert "--test DATA_DIR --answers answers.csv" in _section(page, "closed-set")
    assert "--trials DIR" in _section(page, "verification")
    assert "--test DATA_DIR" in _section(page, "embeddings")
    assert len(_images(page)) == 2                            # the training curves still render


def test_test_without_answers_maps_embeddings_by_prediction_and_asks_for_answers(trained, tmp_path):
    r = build_report([trained["run"]], tmp_path / "r.html", test_dir=trained["seen"]["root"], progress=False,
                     device="cpu")
    assert r.sections_missing == ["closed-set", "verification"]
    page = r.path.read_text()
    assert "pass --answers answers.csv" in _section(page, "closed-set")
    assert "coloured by predicted speaker" in _section(page, "embeddings")


def test_answers_without_test_and_registry_without_trials_degrade(trained, tmp_path):
    reg = _registry(trained, tmp_path, threshold=0.3)
    r = build_report([trained["run"]], tmp_path / "r.html", answers=trained["seen"]["root"] / "answers.csv",
                     registry=reg, progress=False)
    page = r.path.read_text()
    assert "--answers was given without --test" in _section(page, "closed-set")
    ver = _section(page, "verification")
    assert "--trials DIR" in ver and "threshold 0.3000" in ver


def test_registry_of_another_model_is_flagged(trained, tmp_path):
    reg = _registry(trained, tmp_path, model_id="0123456789abcdef")
    r = build_report([trained["run"]], tmp_path / "r.html", trials_dir=trained["unseen"]["root"], registry=reg,
                     progress=False, device="cpu")
    assert "enrolled with another model" in _section(r.path.read_text(), "verification")


def test_run_without_metrics_or_checkpoint_still_renders(trained, tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    shutil.copy(trained["run"] / "config.json", run / "config.json")
    seen = trained["seen"]["root"]
    r = build_report([run], tmp_path / "r.html", test_dir=seen, answers=seen / "answers.csv", progress=False)
    assert r.sections_missing == ["training", "closed-set", "verification", "embeddings"]
    page = r.path.read_text()
    assert "metrics.jsonl is missing" in _section(page, "training")
    assert "no readable best.ckpt or last.ckpt" in _section(page, "closed-set")
    assert "no metrics.jsonl" in _section(page, "run")


def test_several_runs_are_overlaid_and_listed(trained, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(trained["run"], second)
    rows = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    with open(second / "metrics.jsonl", "w") as f:            # a visibly different second curve
        for row in rows:
            if "loss" in row:
                row["loss"] *= 2
            f.write(json.dumps(row) + "\n")
    r = build_report([trained["run"], second], tmp_path / "r.html", progress=False)
    run = _section(r.path.read_text(), "run")
    assert "<td>run</td>" in run and "<td>second</td>" in run
    one = build_report([trained["run"]], tmp_path / "one.html", progress=False)
    assert (figures_dir(r.path) / "training_steps.png").read_bytes() != \
        (figures_dir(one.path) / "training_steps.png").read_bytes()


def test_stale_figures_of_absent_sections_are_removed_and_others_kept(trained, tmp_path):
    out = tmp_path / "r.html"
    fig_dir = figures_dir(out)
    fig_dir.mkdir()
    (fig_dir / "det.png").write_bytes(b"old")
    (fig_dir / "notes.txt").write_text("mine")
    build_report([trained["run"]], out, progress=False)
    assert not (fig_dir / "det.png").exists() and (fig_dir / "notes.txt").read_text() == "mine"
    assert (fig_dir / "training_steps.png").is_file()


def test_bad_inputs_raise_one_line_errors_naming_the_file(trained, tmp_path):
    with pytest.raises(DataError, match="run directory not found"):
        build_report([tmp_path / "nope"], tmp_path / "r.html", progress=False)
    seen = trained["seen"]["root"]
    partial = tmp_path / "answers.csv"
    lines = (seen / "answers.csv").read_text().splitlines()
    partial.write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(DataError, match=r"answers\.csv: no answer for 2 of 8 test utterances"):
        build_report([trained["run"]], tmp_path / "r.html", test_dir=seen, answers=partial, progress=False,
                     device="cpu")
    strangers = tmp_path / "strangers.csv"
    strangers.write_text("Id,Category\n" + "".join(f"{ln.split(',')[0]},nobody\n" for ln in lines[1:]))
    with pytest.raises(DataError, match="speakers the model was not trained on"):
        build_report([trained["run"]], tmp_path / "r.html", test_dir=seen, answers=strangers, progress=False,
                     device="cpu")


def test_metrics_file_errors_name_the_line_but_a_truncated_last_line_is_dropped(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + '{"step": 99, "elapsed": 1.')     # killed mid-write
    r = build_report([run], tmp_path / "ok.html", progress=False)
    assert "training" not in r.sections_missing
    (run / "metrics.jsonl").write_text("garbage\n" + text)
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 1: not a metrics row"):
        build_report([run], tmp_path / "bad.html", progress=False)
