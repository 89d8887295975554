"""ONNX import: a graph built here (torch.onnx) runs through spkid as ONNX Runtime runs it directly, on Kaldi fbank
features that match an independent numpy re-implementation of Kaldi's compute-fbank."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import spkid
from spkid.cli import main
from spkid.config import FeatureConfig
from spkid.errors import CheckpointError
from spkid.importers.onnx import import_onnx

ort = pytest.importorskip("onnxruntime")


def kaldi_fbank_reference(wav: np.ndarray, sr=16000, n_mels=80, frame=400, shift=160, low=20.0) -> np.ndarray:
    """Kaldi compute-fbank (feature-window.cc, mel-computations.cc) in float64, frame by frame, as WeSpeaker calls
    it: int16 scale, dither 0, DC removed, pre-emphasis 0.97, Hamming window, FFT 512, power, log."""
    x = wav.astype(np.float64) * 32768
    n_frames = 1 + (len(x) - frame) // shift
    nfft = 512
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)   # noqa: E731
    lo, hi = mel(low), mel(sr / 2)
    delta = (hi - lo) / (n_mels + 1)
    banks = np.zeros((n_mels, nfft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(nfft // 2):
            v = mel(k * sr / nfft)
            if left < v < right:
                banks[m, k] = (v - left) / (centre - left) if v <= centre else (right - v) / (right - centre)
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(frame) / (frame - 1))
    out = np.zeros((n_frames, n_mels))
    for t in range(n_frames):
        w = x[t * shift: t * shift + frame].copy()
        w -= w.mean()
        w[1:] = w[1:] - 0.97 * w[:-1]
        w[0] -= 0.97 * w[0]
        spec = np.abs(np.fft.rfft(np.pad(w * window, (0, nfft - frame)))) ** 2
        out[t] = np.log(np.maximum(banks @ spec, np.finfo(np.float32).eps))
    return out


def test_kaldi_fbank_matches_the_reference():
    from spkid.audio.frontend import frontend_for
    fe = frontend_for(FeatureConfig(kind="kaldi", n_mels=80, f_min=20.0))
    g = np.random.default_rng(0)
    for n in (400, 16000, 23456):
        wav = (g.standard_normal(n) * 0.05).astype(np.float32)
        got, frames = fe(torch.from_numpy(wav)[None], torch.tensor([n]))
        ref = kaldi_fbank_reference(wav)
        assert got.shape[1] == frames[0] == ref.shape[0]
        assert np.abs(got[0].numpy() - ref).max() < 2e-3        # float32 FFT against float64, log domain


def test_kaldi_fbank_padding_invariant():
    from spkid.audio.frontend import frontend_for
    fe = frontend_for(FeatureConfig(kind="kaldi", n_mels=80, f_min=20.0))
    a, b = torch.randn(5000) * 0.1, torch.randn(12000) * 0.1
    alone, _ = fe(a[None], torch.tensor([5000]))
    both, frames = fe(torch.stack([torch.cat([a, torch.randn(7000)]), b]), torch.tensor([5000, 12000]))
    assert (both[0, :frames[0]] - alone[0]).abs().max() == 0 and (both[0, frames[0]:] == 0).all()


class _Embedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.proj = torch.nn.Conv1d(80, 32, 3), torch.nn.Linear(64, 24)

    def forward(self, x):                                   # (B, T, 80) -> (B, 24)
        h = torch.relu(self.conv(x.transpose(1, 2)))
        return self.proj(torch.cat([h.mean(-1), h.std(-1)], -1))


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Embedder().eval(), (torch.randn(1, 50, 80),), d / "emb.onnx", input_names=["feats"],
                          output_names=["embs"], dynamic_axes={"feats": {0: "B", 1: "T"}, "embs": {0: "B"}},
                          dynamo=False, opset_version=17)
    assert main(["import", "onnx", str(d / "emb.onnx"), "--frontend", "wespeaker", "-o", str(d / "emb.ckpt"),
                 "--licence", "CC-BY-4.0"]) == 0
    return d


def test_imported_graph_matches_onnx_runtime_run_directly(graph):
    model = spkid.load(graph / "emb.ckpt", "cpu")
    sess = ort.InferenceSession(str(graph / "emb.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(5)
    wavs = [torch.randn(n, generator=g) * 0.1 for n in (8000, 19000, 33333)]
    feats = model.features(wavs)
    got = model.embed_raw(feats)                            # one batch, padded: each runs on its own frames
    for f, e in zip(feats, got):
        ref = sess.run(None, {"feats": (f - f.mean(0)).numpy()[None]})[0][0]
        assert np.abs(e.numpy() - ref).max() < 1e-5
    assert model.card["licence"] == "CC-BY-4.0" and model.net.embed_dim == 24


def test_export_writes_the_graph_and_info_shows_the_card(graph, tmp_path, capsys):
    assert main(["export", str(graph / "emb.ckpt"), "--onnx", str(tmp_path / "out.onnx")]) == 0
    assert (tmp_path / "out.onnx").read_bytes() == (graph / "emb.onnx").read_bytes()
    assert main(["info", str(graph / "emb.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "architecture:  onnx" in out and "CC-BY-4.0" in out and "kaldi: 80 bands" in out


def test_bad_graphs_and_front_ends_are_one_line_errors(graph, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="junk.onnx: ONNX Runtime cannot load"):
        import_onnx(tmp_path / "junk.onnx", tmp_path / "x.ckpt", frontend="wespeaker")
    with pytest.raises(CheckpointError, match="front end 'kaldi-80' unknown"):
        import_onnx(graph / "emb.onnx", tmp_path / "x.ckpt", frontend="kaldi-80")
    with pytest.raises(CheckpointError, match="reads 80 bands, the front end gives 40"):
        import_onnx(graph / "emb.onnx", tmp_path / "x.ckpt", frontend="logmel")
    state = torch.load(graph / "emb.ckpt", weights_only=True)
    state["card"]["arch"] = "tdnn-x"
    torch.save(state, tmp_path / "arch.ckpt")
    with pytest.raises(spkid.errors.CheckpointError, match=r"arch.ckpt: unknown architecture 'tdnn-x'"):
        spkid.load(tmp_path / "arch.ckpt", "cpu")
    assert not (tmp_path / "x.ckpt").exists()
