"""Embeddings, registry enrollment/identification, verification, ONNX export, Python API, windowed inference."""
import numpy as np
import pytest
import torch

import spkid
from spkid.cli import main
from spkid.config import InferConfig
from spkid.errors import DataError, SpkidError
from spkid.scoring.model import _windows, embed_features


def test_python_api_predict_embed_verify(trained):
    m = spkid.load(trained["ckpt"], "cpu")
    root = trained["seen"]["root"]
    files = sorted(root.glob("uttr-t*.pt"))
    preds = m.predict(files)
    assert len(preds) == len(files) and set(preds) <= set(m.speakers)
    emb = m.embed(files)
    assert emb.shape == (len(files), m.net.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(files)), atol=1e-5)
    feats = [torch.load(f, weights_only=True).float() for f in files[:2]]
    assert torch.allclose(m.embed(feats), emb[:2], atol=1e-5)          # tensors and paths agree
    assert m.verify(files[0], files[0]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match="expected a 1-D waveform or"):
        m.embed([np.zeros((3, 3, 3))])


def test_windowed_inference_covers_utterance_and_matches_whole_when_window_large(trained):
    assert _windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert _windows(9, 4, 4) == [(0, 4), (4, 8), (5, 9)]
    m = spkid.load(trained["ckpt"], "cpu")
    x = [torch.randn(500, 40) - 5, torch.randn(40, 40) - 5]
    whole = embed_features(m.net, x, InferConfig())
    big = embed_features(m.net, x, InferConfig(window=1000))
    assert torch.allclose(whole, big, atol=1e-5)
    win = embed_features(m.net, x, InferConfig(window=100, hop=50))
    assert win.shape == whole.shape and not torch.allclose(win[0], whole[0], atol=1e-4)
    assert torch.allclose(win[1], whole[1], atol=1e-5)                   # short one: untouched


def test_embed_enroll_identify_verify_cli(trained, tmp_path, capsys):
    ckpt, root = str(trained["ckpt"]), trained["seen"]["root"]
    import json
    meta = json.loads((root / "metadata.json").read_text())["speakers"]
    out = tmp_path / "emb.npz"
    assert main(["embed", ckpt, str(root / meta["spk00"][0]["feature_path"]), "-o", str(out)]) == 0
    z = np.load(out)
    assert z["embeddings"].shape[0] == 1 and np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1, atol=1e-5)
    other = tmp_path / "other.db"                  # a new registry without --checkpoint: the shipped model base
    assert main(["enroll", str(other), "alice", *[str(root / u["feature_path"]) for u in meta["spk00"][:3]]]) == 0
    assert "(model base)" in capsys.readouterr().out
    reg = tmp_path / "reg.db"
    for spk in ("spk00", "spk01", "spk02"):
        assert main(["enroll", str(reg), spk, *[str(root / u["feature_path"]) for u in meta[spk][:4]],
                     "--checkpoint", ckpt]) == 0
    # re-enrolling adds utterances
    assert main(["enroll", str(reg), "spk00", str(root / meta["spk00"][4]["feature_path"])]) == 0
    assert "spk00: 5 utterance(s)" in capsys.readouterr().out
    queries = [str(root / meta[s][5]["feature_path"]) for s in ("spk00", "spk01", "spk02")]
    outcsv = tmp_path / "id.csv"
    assert main(["identify", str(reg), *queries, "-o", str(outcsv)]) == 0
    rows = [line.split(",") for line in outcsv.read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == ["spk00", "spk01", "spk02"]
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(reg) as g:
        g.set_threshold(1.01, "test")                          # nothing can reach it: all unknown
    assert main(["identify", str(reg), *queries, "-o", str(outcsv)]) == 0
    assert all(line.split(",")[1] == "unknown" for line in outcsv.read_text().splitlines()[1:])
    assert main(["verify", ckpt, queries[0], queries[0]]) == 0
    assert "same speaker" in capsys.readouterr().out
    assert main(["verify", ckpt, queries[0], queries[1], "--threshold", "0.999"]) == 0
    assert "different speakers" in capsys.readouterr().out


def test_registry_refuses_other_model(trained, tmp_path, hw4, capsys):
    from spkid.config import load_config
    from spkid.training.loop import train
    other = train(hw4["root"], tmp_path / "other", load_config("tiny"), progress=False).last
    reg = tmp_path / "reg.db"
    f = str(next(trained["seen"]["root"].glob("uttr-t*.pt")))
    assert main(["enroll", str(reg), "a", f, "--checkpoint", str(trained["ckpt"])]) == 0
    assert main(["enroll", str(reg), "b", f, "--checkpoint", str(other)]) == 1
    err = capsys.readouterr().err
    assert str(reg) in err and "model" in err


def test_eval_verification_on_unseen_speakers(trained, tmp_path, capsys):
    reg = tmp_path / "reg.db"
    f = str(next(trained["seen"]["root"].glob("uttr-t*.pt")))
    assert main(["enroll", str(reg), "a", f, "--checkpoint", str(trained["ckpt"])]) == 0
    assert main(["eval-verification", str(trained["ckpt"]), str(trained["unseen"]["root"]), "--registry", str(reg),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "5 unseen speakers" in out and "EER" in out
    eer = float(out.split("EER ")[1].split("%")[0])
    assert 0 <= eer < 50                                           # better than chance on unseen speakers
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(reg) as g:
        assert g.threshold_source.startswith("eer") and g.threshold_locked   # "eer on DATA", kept by enroll
    assert main(["eval-verification", str(trained["ckpt"]), str(trained["seen"]["root"]), "--quiet"]) == 1
    assert "every speaker here was seen in training" in capsys.readouterr().err


def test_onnx_export_matches_pytorch_for_several_lengths(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from spkid.scoring.export import export_onnx
    import onnxruntime as ort
    out = tmp_path / "m.onnx"
    worst = export_onnx(trained["ckpt"], out)
    assert worst < 1e-4 and out.is_file()
    m = spkid.load(trained["ckpt"], "cpu")
    sess = ort.InferenceSession(str(out))
    for t in (5, 77, 640):
        x = torch.randn(2, t, 40) - 5
        lens = torch.tensor([t, max(1, t // 3)])
        emb, logits = sess.run(None, {"feats": x.numpy(), "lengths": lens.numpy()})
        with torch.no_grad():
            ref, ref_logits = m.net(x, lens)
        assert np.abs(emb - ref.numpy()).max() < 1e-4
        assert np.abs(logits - ref_logits.numpy()).max() < 1e-4


def test_onnx_export_of_a_tdnn_model_matches_pytorch(hw4, tmp_path):
    pytest.importorskip("onnxruntime")
    from spkid.config import apply_overrides, load_config
    from spkid.scoring.export import export_onnx
    from spkid.training.loop import train
    cfg = apply_overrides(load_config("default"), ["model.d_model=32", "model.agg_dim=48", "train.steps=3",
                                                   "train.max_minutes=0", "train.amp=none", "data.batch_size=8"])
    r = train(hw4["root"], tmp_path / "run", cfg, progress=False)
    assert export_onnx(r.last, tmp_path / "m.onnx") < 1e-4     # BatchNorm (eval), padding masks and SE exported
