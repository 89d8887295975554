"""--runtime onnx: same embeddings (1e-4) and predictions as eager PyTorch, the export cache beside the checkpoint
(keyed by the weights' fingerprint, temp dir when the folder is read-only), int8, and the CLI options."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

import spkid
from spkid.cli import main
from spkid.config import InferConfig
from spkid.errors import SpkidError
from spkid.scoring import onnx_cache
from spkid.scoring.model import embed_features
from spkid.scoring.openset import enroll
from spkid.scoring.onnx_runtime import MODEL_ID_KEY, OrtEmbedder, stamp_of

pytest.importorskip("onnxruntime")


@pytest.fixture
def ckpt(trained, tmp_path):
    """A private copy of the session's checkpoint: the ONNX cache is written beside it."""
    path = tmp_path / "model" / "best.ckpt"
    path.parent.mkdir()
    shutil.copy(trained["ckpt"], path)
    return path


def test_onnx_embeddings_and_predictions_match_torch(ckpt):
    eager = spkid.load(ckpt, "cpu")
    ort = spkid.load(ckpt, runtime="onnx", threads=1)
    assert ort.runner is not None and ort.device.type == "cpu"
    g = torch.Generator().manual_seed(0)
    # short, medium, long; batched by length together; one longer than max_frames (windowed)
    feats = [torch.randn(t, 40, generator=g) - 5 for t in (7, 33, 90, 91, 250, 400, 1300)]
    cfg = InferConfig(max_frames=1000, batch_frames=600)
    a = embed_features(eager.net, feats, cfg)
    b = embed_features(eager.net, feats, cfg, runner=ort.runner)
    assert a.shape == b.shape and (a - b).abs().max() < 1e-4
    assert torch.equal(eager.scores(feats).argmax(-1), ort.scores(feats).argmax(-1))
    assert (eager.embed(feats) - ort.embed(feats)).abs().max() < 1e-4
    # windowed inference (InferConfig.window) takes the same windows in both runtimes
    eager.cfg.infer.window = ort.cfg.infer.window = 64
    assert (eager.embed(feats) - ort.embed(feats)).abs().max() < 1e-4


def test_export_is_cached_beside_the_checkpoint_and_keyed_by_its_weights(ckpt):
    m = spkid.load(ckpt, runtime="onnx", threads=1)
    onnx_file = ckpt.with_name("best.ckpt.onnx")
    assert m.runner.path == onnx_file and stamp_of(onnx_file)[MODEL_ID_KEY] == m.model_id
    before = onnx_file.stat().st_mtime_ns
    spkid.load(ckpt, runtime="onnx", threads=1)
    assert onnx_file.stat().st_mtime_ns == before                      # reused, not exported again
    # other weights under the same file name: the stale graph is replaced
    state = torch.load(ckpt, weights_only=True)
    for k, v in state["model"].items():
        if v.is_floating_point() and "weight" in k:
            v.mul_(1.5)
            break
    torch.save(state, ckpt)
    m2 = spkid.load(ckpt, runtime="onnx", threads=1)
    assert m2.model_id != m.model_id and stamp_of(onnx_file)[MODEL_ID_KEY] == m2.model_id
    x = [torch.randn(80, 40) - 5]
    assert (spkid.load(ckpt, "cpu").embed(x) - m2.embed(x)).abs().max() < 1e-4


def test_read_only_checkpoint_folder_caches_in_the_temp_dir(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_cache.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    real_access = onnx_cache.os.access
    monkeypatch.setattr(onnx_cache.os, "access",
                        lambda p, mode: False if str(p) == str(ckpt.parent) else real_access(p, mode))
    m = spkid.load(ckpt, runtime="onnx", threads=1)
    assert m.runner.path == tmp_path / "tmp" / "spkid-onnx" / f"{m.model_id}.onnx"
    assert not ckpt.with_name("best.ckpt.onnx").exists()


def test_int8_quantised_graph_is_separate_and_close(ckpt):
    fp32 = spkid.load(ckpt, runtime="onnx", threads=1)
    q = spkid.load(ckpt, runtime="onnx", threads=1, quantize=True)
    assert q.runner.path.name == "best.ckpt.int8.onnx" and stamp_of(q.runner.path)["spkid_quantized"] == "1"
    x = [torch.randn(t, 40) - 5 for t in (50, 120)]
    cos = (fp32.embed(x) * q.embed(x)).sum(-1)
    assert (cos > 0.95).all()
    with pytest.raises(SpkidError, match="needs runtime onnx"):
        spkid.load(ckpt, quantize=True)


def test_bad_runtime_and_device_are_one_line_errors(ckpt):
    with pytest.raises(SpkidError, match="runtime 'tvm'"):
        spkid.load(ckpt, runtime="tvm")
    with pytest.raises(SpkidError, match="runs on the CPU"):
        spkid.load(ckpt, "cuda", runtime="onnx")


def test_corrupt_cached_graph_is_exported_again(ckpt):
    ckpt.with_name("best.ckpt.onnx").write_bytes(b"not onnx")
    m = spkid.load(ckpt, runtime="onnx", threads=1)
    assert stamp_of(m.runner.path)[MODEL_ID_KEY] == m.model_id
    assert OrtEmbedder(m.runner.path, 1)(torch.zeros(1, 20, 40), torch.tensor([20])).shape == (1, m.net.embed_dim)


def test_cli_predict_embed_identify_with_onnx_runtime(ckpt, trained, tmp_path, capsys):
    root = trained["seen"]["root"]
    a, b = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    assert main(["predict", str(ckpt), str(root), "-o", str(a), "--quiet"]) == 0
    assert main(["predict", str(ckpt), str(root), "-o", str(b), "--quiet", "--runtime", "onnx", "--threads", "1"]) == 0
    assert list(csv.reader(a.open())) == list(csv.reader(b.open()))
    files = [str(p) for p in sorted(root.glob("uttr-t*.pt"))]
    assert main(["embed", str(ckpt), *files, "-o", str(tmp_path / "e1.npz")]) == 0
    assert main(["embed", str(ckpt), *files, "-o", str(tmp_path / "e2.npz"), "--runtime", "onnx"]) == 0
    e1, e2 = np.load(tmp_path / "e1.npz"), np.load(tmp_path / "e2.npz")
    assert list(e1["ids"]) == list(e2["ids"]) and np.abs(e1["embeddings"] - e2["embeddings"]).max() < 1e-4
    reg = tmp_path / "reg.db"
    enroll(reg, "x", files[:2], checkpoint=ckpt, device="cpu")
    capsys.readouterr()
    assert main(["identify", str(reg), *files[2:4]]) == 0
    by_torch = capsys.readouterr().out
    assert main(["identify", str(reg), *files[2:4], "--runtime", "onnx"]) == 0
    assert capsys.readouterr().out == by_torch
    assert main(["predict", str(ckpt), str(root), "-o", str(b), "--int8"]) == 1
    assert "--int8: needs --runtime onnx" in capsys.readouterr().err
    assert main(["embed", str(ckpt), *files, "-o", str(tmp_path / "e3.npz"), "--threads", "-1"]) == 1
    assert "--threads -1: must be >= 0" in capsys.readouterr().err
