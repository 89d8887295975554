"""enroll / adapt / identify / verify / eval-verification through the CLI with a trained model (issue 16): the
threshold refresh and its warning, outlier and short-clip flags, domain adaptation, AS-norm, calibration output."""
import json

import numpy as np
import pytest
import torch

from conftest import make_hw4
from spkid.cli import main
from spkid.scoring.speaker_db import SpeakerDB


@pytest.fixture(scope="module")
def domain(trained, tmp_path_factory):
    """New speakers with clips over 1 s (``new``), and unlabelled clips of other speakers (``folder``)."""
    base = tmp_path_factory.mktemp("openset_cli")
    new = make_hw4(base / "new", n_speakers=5, per_speaker=8, n_test=0, seed=5, prefix="new", lengths=(110, 160))
    folder = make_hw4(base / "folder", n_speakers=5, per_speaker=4, n_test=0, seed=6, prefix="dom",
                      lengths=(110, 160))
    meta = json.loads((new["root"] / "metadata.json").read_text())["speakers"]
    files = {s: [str(new["root"] / u["feature_path"]) for u in utts] for s, utts in meta.items()}
    return {"files": files, "new": new["root"], "folder": folder["root"], "ckpt": str(trained["ckpt"])}


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _enroll_all(capsys, reg, d, n=5, extra=()):
    errs = []
    for k, (spk, files) in enumerate(d["files"].items()):
        rc, _, err = _run(capsys, "enroll", reg, spk, *files[:n], *(["--checkpoint", d["ckpt"]] if k == 0 else []),
                          *extra)
        assert rc == 0, err
        errs.append(err)
    return errs


def test_enroll_refreshes_threshold_warns_until_enough_clips_and_identify_names_it(domain, tmp_path, capsys):
    reg = tmp_path / "reg.db"
    errs = _enroll_all(capsys, reg, domain)
    assert "15 more enrollment clip(s) needed" in errs[0] and "(fallback: default 0.5" in errs[0]   # no val EER
    assert "5 more enrollment clip(s) needed" in errs[2]
    assert "needed" not in errs[3] and "estimated: enrollment (4 speakers, 20 clips" in errs[3]
    with SpeakerDB.open(reg) as g:
        first = g.threshold
        assert g.threshold_scale == "registry" and not g.threshold_locked and g.calibration is not None
    assert "(5 speakers, 25 clips" in errs[4]
    queries = [files[6] for files in domain["files"].values()]
    rc, out, err = _run(capsys, "identify", reg, *queries)
    assert rc == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("spkid: threshold")]
    assert len(lines) == 1 and f"threshold {first:.4f} (estimated: enrollment (5 speakers, 25 clips" in lines[0]
    assert [row.split(",")[1] for row in out.splitlines()[1:]] == list(domain["files"])


def test_too_few_clips_identify_says_fallback_and_how_many(domain, tmp_path, capsys):
    reg = tmp_path / "reg.db"
    spk, files = next(iter(domain["files"].items()))
    assert _run(capsys, "enroll", reg, spk, *files[:3], "--checkpoint", domain["ckpt"])[0] == 0
    rc, _, err = _run(capsys, "identify", reg, files[5])
    assert rc == 0 and "threshold 0.5000 (fallback: default 0.5; scores: top-3 mean, raw cosine)" in err
    assert "17 more enrollment clips needed for this registry's own threshold" in err


def test_outlier_and_short_clips_are_flagged_kept_or_refused(domain, tmp_path, capsys):
    reg = tmp_path / "reg.db"
    spk, files = next(iter(domain["files"].items()))
    odd = tmp_path / "odd.pt"
    torch.save(torch.randn(150, 40) * 4 + 3, odd)                 # nothing like the speaker's other clips
    short = tmp_path / "short.pt"
    torch.save(torch.load(files[7], weights_only=True)[:60], short)     # 0.6 s of the speaker's own voice
    rc, out, err = _run(capsys, "enroll", reg, spk, *files[:5], odd, short, "--checkpoint", domain["ckpt"])
    assert rc == 0 and f"{spk}: 7 utterance(s)" in out
    warn = [ln for ln in err.splitlines() if "warning" in ln and ("odd.pt" in ln or "short.pt" in ln)]
    assert len(warn) == 2
    odd_line = next(ln for ln in warn if "odd.pt" in ln)
    assert "far from the speaker's other clips (z = -" in odd_line and odd_line.endswith("kept")
    assert float(odd_line.split("z = ")[1].split(")")[0]) < -3.5
    assert "only 0.60 s of audio (under 1 s); kept" in next(ln for ln in warn if "short.pt" in ln)
    reg2 = tmp_path / "reg2.db"
    rc, out, err = _run(capsys, "enroll", reg2, spk, *files[:5], odd, short, "--checkpoint", domain["ckpt"],
                        "--on-outlier", "refuse")
    assert rc == 0 and f"{spk}: 5 utterance(s)" in out and err.count("; refused") == 2
    with SpeakerDB.open(reg2) as g:
        assert not any("odd.pt" in s or "short.pt" in s for _, srcs, _ in g.clips() for s in srcs)
    rc, _, err = _run(capsys, "enroll", reg2, spk, odd, "--on-outlier", "refuse")
    assert rc == 1 and "every clip was refused" in err and len(err.strip().splitlines()) == 1


def test_adapt_centres_and_asnorms_every_later_score(domain, tmp_path, capsys):
    reg = tmp_path / "reg.db"
    _enroll_all(capsys, reg, domain)
    queries = [files[6] for files in domain["files"].values()]
    _, raw_out, _ = _run(capsys, "identify", reg, *queries)
    rc, out, err = _run(capsys, "adapt", reg, domain["folder"])
    assert rc == 0 and "centred on 20 clips" in out and "AS-norm cohort: those 20 clips (top 50)" in out
    assert "centred, AS-norm (20 cohort, top 50)" in err
    with SpeakerDB.open(reg) as g:
        assert g.domain is not None and g.cohort_kind == "folder" and g.threshold_scale == "registry"
        backend = g.backend()
        clips = [c for _, _, c in g.clips()]
    rc, out, err = _run(capsys, "identify", reg, *queries)
    assert rc == 0 and "AS-norm" in err
    import spkid
    emb = spkid.load(domain["ckpt"], "cpu").embed(queries).numpy()
    expected = backend.scores(clips, emb).max(1)
    got = [float(row.split(",")[2]) for row in out.splitlines()[1:]]
    np.testing.assert_allclose(got, expected, atol=2e-4)
    assert got != [float(row.split(",")[2]) for row in raw_out.splitlines()[1:]]
    # the same in one step at enroll, and back to raw embeddings
    reg2 = tmp_path / "reg2.db"
    errs = _enroll_all(capsys, reg2, domain, extra=["--domain", domain["folder"], "--whiten"])
    assert "centred and whitened" in errs[-1]
    rc, out, _ = _run(capsys, "adapt", reg2)
    assert rc == 0 and "none (raw embeddings)" in out
    with SpeakerDB.open(reg2) as g:
        assert g.domain is None and g.cohort() is None
    rc, out, err = _run(capsys, "adapt", reg2, "--cohort", "checkpoint")
    assert rc == 0 and "training speakers of" in out and "AS-norm (6 cohort" in err


def test_verify_and_eval_verification_report_calibration(domain, tmp_path, capsys):
    reg = tmp_path / "reg.db"
    _enroll_all(capsys, reg, domain)
    a, b = domain["files"]["new00"][6], domain["files"]["new01"][6]
    rc, out, err = _run(capsys, "verify", domain["ckpt"], a, b, "--registry", reg, "--prior", "0.2")
    assert rc == 0 and "at prior 0.2 (calibrated on enrollment trials (5 speakers, 25 clips))" in out
    p = float(out.split("P(same) ")[1].split()[0])
    assert 0 <= p <= 1 and "threshold from registry: enrollment" in err
    rc, out, err = _run(capsys, "eval-verification", domain["ckpt"], domain["new"], "--registry", reg, "--quiet")
    assert rc == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("Cllr"))
    cllr, min_cllr = float(line.split()[1]), float(line.split("minCllr ")[1].split()[0])
    assert 0 <= min_cllr <= cllr + 1e-9 and "with the stored calibration (enrollment trials" in line
    assert "locked" in out
    with SpeakerDB.open(reg) as g:
        assert g.threshold_locked and g.threshold_source.startswith("eer on ")
        assert g.calibration.source.startswith("eval-verification trials")
    rc, out, _ = _run(capsys, "verify", domain["ckpt"], a, b, "--registry", reg)
    assert rc == 0 and "calibrated on eval-verification trials" in out
    # enroll keeps the locked threshold
    _run(capsys, "enroll", reg, "new00", domain["files"]["new00"][7])
    with SpeakerDB.open(reg) as g:
        assert g.threshold_locked and g.threshold_source.startswith("eer on ")
    rc, _, err = _run(capsys, "verify", domain["ckpt"], a, b, "--prior", "1.5")
    assert rc == 1 and "--prior 1.5: must be in (0, 1)" in err
