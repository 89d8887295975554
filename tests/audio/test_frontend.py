"""spkid.frontend: shapes, padding invariance, the HW4 definition (against the shared tensors), resampling."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.audio.io import load_audio
from spkid.audio.frontend import LogMel, hz_to_mel, logmel, mel_filterbank, mel_to_hz

SHARED = Path(__file__).resolve().parents[3] / "shared"
AUDIO_DIR = SHARED / "data" / "speechocean762-audio"
FEATURE_DIR = SHARED / "data" / "speechocean762"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_logmel(wav: torch.Tensor) -> torch.Tensor:
    """Straight transcription of the definition with torch.stft's own centring: ``(S,) -> (T, 40)``."""
    spec = torch.stft(wav, 400, 160, 400, torch.hann_window(400), center=True, pad_mode="reflect",
                      return_complex=True)
    return torch.log(torch.clamp(spec.abs().T ** 2 @ mel_filterbank(201, 16000, 40, 0.0, 8000.0), min=1e-9))


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_and_frame_lengths(device):
    fe = LogMel().to(device)
    lengths = torch.tensor([1601, 37 * 160 - 1, 2999], device=device)
    feats, n = fe(torch.randn(3, 6000, device=device), lengths)
    assert feats.shape == (3, 6000 // 160 + 1, 40)                     # T from the padded width S
    assert n.tolist() == [11, 37, 19]
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("device", DEVICES)
def test_matches_stft_reference(device):
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(12345, generator=g) * 0.1
    got = logmel(wav.to(device)).cpu()
    torch.testing.assert_close(got, reference_logmel(wav), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_padding_does_not_change_real_frames(device):
    """Each utterance gives the same frames alone as padded in a batch, whatever sits in the padding."""
    g = torch.Generator().manual_seed(1)
    lens = [4000, 1234, 199, 3, 161]
    wavs = [torch.randn(n, generator=g) for n in lens]
    batch = torch.randn(len(lens), 4100, generator=g) * 100          # garbage past each length
    for i, w in enumerate(wavs):
        batch[i, :w.numel()] = w
    fe = LogMel().to(device)
    feats, n = fe(batch.to(device), torch.tensor(lens, device=device))
    for i, w in enumerate(wavs):
        alone, n1 = fe(w[None].to(device), torch.tensor([w.numel()], device=device))
        assert n[i] == n1[0] == w.numel() // 160 + 1
        torch.testing.assert_close(feats[i, :n[i]], alone[0], atol=1e-4, rtol=1e-5)
        assert (feats[i, n[i]:] == 0).all()                           # padded frames are zero, not stale
        if w.numel() > 200:                                            # where torch.stft can reflect
            torch.testing.assert_close(alone[0].cpu(), reference_logmel(w), atol=1e-3, rtol=1e-4)


def test_torch_export_matches_eager():
    """The module traces with ``torch.export`` (dynamic batch and length) and gives the eager results."""
    fe = LogMel()
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=400, max=10**7)
    program = torch.export.export(fe, (torch.randn(2, 4000), torch.tensor([4000, 1000])),
                                  dynamic_shapes=({0: batch, 1: samples}, {0: batch}))
    wav, lengths = torch.randn(3, 3000), torch.tensor([3000, 170, 2001])
    for got, want in zip(program.module()(wav, lengths), fe(wav, lengths)):
        torch.testing.assert_close(got, want)


def test_mel_filterbank_definition():
    fb = mel_filterbank(201, 16000, 40, 0.0, 8000.0)
    assert fb.shape == (201, 40) and (fb >= 0).all()
    bins = torch.linspace(0, 8000, 201)
    centres = bins[fb.argmax(0)]
    assert (centres[1:] >= centres[:-1]).all()                        # ordered along the mel scale
    expected = mel_to_hz(torch.linspace(0, hz_to_mel(8000.0).item(), 42))[1:-1].float()
    assert (centres - expected).abs().max() <= 40                      # peaks at the HTK centres (1 bin = 40 Hz)
    assert fb.max(0).values.min() > 0.5 and fb.max() <= 1.0            # unit-height triangles, not area-normalised
    assert hz_to_mel(700.0).item() == pytest.approx(2595 * np.log10(2))


def test_constructor_arguments_change_output():
    wav = torch.randn(1, 8000)
    n = torch.tensor([8000])
    base, _ = LogMel()(wav, n)
    assert LogMel(n_mels=64)(wav, n)[0].shape[-1] == 64
    assert LogMel(hop=80)(wav, n)[0].shape[1] == 8000 // 80 + 1
    assert not torch.allclose(LogMel(n_fft=512)(wav, n)[0], base)
    assert not torch.allclose(LogMel(f_max=4000.0)(wav, n)[0], base)
    assert not torch.allclose(LogMel(f_min=100.0)(wav, n)[0], base)
    silent, _ = LogMel(floor=1e-5)(torch.zeros(1, 800), torch.tensor([800]))
    assert torch.allclose(silent, torch.full_like(silent, float(np.log(1e-5))))


def test_bad_arguments():
    fe = LogMel()
    with pytest.raises(ValueError, match="expected wav"):
        fe(torch.randn(100), torch.tensor([100]))
    with pytest.raises(ValueError, match="lengths must lie"):
        fe(torch.randn(2, 100), torch.tensor([100, 101]))
    with pytest.raises(ValueError, match="lengths must lie"):
        fe(torch.randn(2, 100), torch.tensor([100, 0]))
    with pytest.raises(ValueError):
        LogMel(f_max=9000.0)
    with pytest.raises(ValueError, match="one waveform"):
        logmel(torch.randn(2, 100))


def _tone(freq: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_band(path: Path) -> int:
    return int(logmel(load_audio(path))[5:-5].mean(0).argmax())


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_resampled_tone_peaks_in_same_band(tmp_path, freq):
    sf.write(tmp_path / "ref.wav", _tone(freq, 16000), 16000, subtype="PCM_16")
    ref_band = _peak_band(tmp_path / "ref.wav")
    centres = mel_to_hz(torch.linspace(0, hz_to_mel(8000.0).item(), 42))[1:-1]
    assert abs(centres[ref_band].item() - freq) < 0.15 * freq          # the band that holds the tone
    ref = logmel(load_audio(tmp_path / "ref.wav"))
    for sr in [8000, 22050, 44100]:
        sf.write(tmp_path / f"t{sr}.wav", _tone(freq, sr), sr, subtype="PCM_16")
        assert _peak_band(tmp_path / f"t{sr}.wav") == ref_band, sr
    # float32 stereo (same tone on both channels, different gains) at 44.1 kHz: same spectrum up to level
    x = _tone(freq, 44100)
    sf.write(tmp_path / "st.wav", np.stack([x, 0.5 * x], axis=1), 44100, subtype="FLOAT")
    st = logmel(load_audio(tmp_path / "st.wav"))
    assert _peak_band(tmp_path / "st.wav") == ref_band
    level = float(np.log(0.75 ** 2))                                   # mean of gains 1 and 0.5, squared
    n = min(st.shape[0], ref.shape[0])
    torch.testing.assert_close(st[5:n - 5, ref_band], ref[5:n - 5, ref_band] + level, atol=0.05, rtol=0)


@pytest.mark.skipif(not (AUDIO_DIR / "features.csv").is_file(), reason="needs ../shared/data")
def test_reproduces_shared_features():
    """All 168 shared FLAC files -> the float16 tensors of speechocean762 within float16 rounding."""
    rows = list(csv.DictReader(open(AUDIO_DIR / "features.csv", newline="")))
    assert len(rows) == 168
    fe = LogMel()
    worst = 0.0
    for r in rows:
        feats = logmel(load_audio(AUDIO_DIR / r["audio"]))
        ref = torch.load(FEATURE_DIR / r["feature_path"], weights_only=True).float()
        assert feats.shape == ref.shape, r["audio"]
        worst = max(worst, (feats - ref).abs().max().item())
    assert worst < 0.01


@pytest.mark.skipif(not (AUDIO_DIR / "features.csv").is_file(), reason="needs ../shared/data")
def test_shared_features_batched():
    """The same files through one padded batch (the training-time path)."""
    rows = list(csv.DictReader(open(AUDIO_DIR / "features.csv", newline="")))[::12]
    wavs = [load_audio(AUDIO_DIR / r["audio"]) for r in rows]
    lengths = torch.tensor([w.numel() for w in wavs])
    feats, n = LogMel()(torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), lengths)
    for i, r in enumerate(rows):
        ref = torch.load(FEATURE_DIR / r["feature_path"], weights_only=True).float()
        assert n[i] == ref.shape[0]
        assert (feats[i, :n[i]] - ref).abs().max() < 0.01, r["audio"]
