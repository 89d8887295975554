"""benchmarks/degrade.py: every test condition runs, is seeded, keeps or changes the length as documented,
hits its SNR, band-limits where it says so; the CLI lists the conditions. No ../shared needed."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spkid.audio.synth import make_voice, synth_utterance

ROOT = Path(__file__).resolve().parents[2]
SR = 16000


def _load_bench():
    spec = importlib.util.spec_from_file_location("degrade_bench", ROOT / "benchmarks" / "degrade.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


@pytest.fixture(scope="module")
def speech():
    """A 2.5 s target utterance and a babble pool of three other voices."""
    rng = np.random.default_rng(0)
    wavs = [synth_utterance(make_voice(rng), rng, SR, 2.5).astype(np.float32) for _ in range(4)]
    bench._ROOMS["room-sim"] = bench._sim_rooms(n=2)          # the full bank of 8 takes ~10 s to simulate
    return wavs[0], wavs[1:]


def _band_power(x: np.ndarray, lo: float) -> float:
    p = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    return float(p[np.fft.rfftfreq(x.size, 1 / SR) >= lo].sum() / p.sum())


def test_conditions_cover_the_brief():
    required = ["clean", "telephone", "opus-8k", "gsm", "mulaw-8k", "silence-pad", "room-babble-telephone", "crop-1s",
                "room-sim", "room-materials", "room-synthetic"]
    required += [f"{n}-{s}" for n in ("white", "pink", "brown", "babble", "machine") for s in (0, 5, 10)]
    assert sorted(required) == sorted(bench.CONDITIONS)


def test_every_condition_runs_seeded_with_documented_length(speech):
    x, pool = speech
    for c in bench.CONDITIONS:
        y = bench.degrade(x, c, np.random.default_rng(1), babble=pool)
        assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and torch.isfinite(y).all(), c
        expected = {"silence-pad": x.size + 5 * SR, "crop-1s": SR}.get(c, x.size)
        assert y.shape == (expected,), c
        again = bench.degrade(torch.from_numpy(x), c, np.random.default_rng(1), babble=pool)
        assert torch.equal(y, again), c                                   # numpy or torch input, same result
        if c not in ("clean", "crop-1s"):
            assert not np.allclose(y.numpy()[: x.size], x, atol=1e-3), c


def test_noise_conditions_hit_their_snr(speech):
    x, pool = speech
    for c in bench.CONDITIONS:
        name, _, level = c.rpartition("-")
        if name not in bench.NOISES:
            continue
        for seed in (0, 1):
            noise = bench.degrade(x, c, np.random.default_rng(seed), babble=pool).numpy().astype(np.float64) - x
            snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(noise ** 2))
            assert snr == pytest.approx(float(level), abs=0.5), c


def test_noise_colours_and_narrowband_channels(speech):
    x, _ = speech
    rng = np.random.default_rng(0)
    white, pink, brown = (bench._noise(k, 4 * SR, rng, None) for k in ("white", "pink", "brown"))

    def octave_tilt(n):                      # dB from the 500-1000 Hz octave pair to 2000-4000 Hz
        p = np.abs(np.fft.rfft(n)) ** 2
        f = np.fft.rfftfreq(n.size, 1 / SR)
        return 10 * np.log10(p[(f >= 2000) & (f < 4000)].sum() / p[(f >= 500) & (f < 1000)].sum())
    assert octave_tilt(white) == pytest.approx(6.0, abs=1.0)
    assert octave_tilt(pink) == pytest.approx(0.0, abs=1.0)
    assert octave_tilt(brown) == pytest.approx(-6.0, abs=1.5)
    for c in ("telephone", "gsm", "mulaw-8k", "opus-8k"):
        y = bench.degrade(x, c, np.random.default_rng(0)).numpy()
        assert _band_power(y, 4200) < 1e-3, c
    assert _band_power(x, 4200) > 1e-3


def test_room_banks_decay_like_rooms():
    import pyroomacoustics as pra
    for family in ("room-materials", "room-synthetic"):
        rooms = bench._ROOMS.get(family) or {"room-materials": bench._material_rooms,
                                              "room-synthetic": bench._synthetic_rooms}[family]()
        rt = [pra.experimental.measure_rt60(h, SR) for h in rooms]
        assert len(rooms) >= 4 and all(0.2 < r < 2.5 for r in rt), (family, rt)


def test_errors_and_cli(speech, capsys):
    x, _ = speech
    with pytest.raises(ValueError, match="unknown condition"):
        bench.degrade(x, "underwater", np.random.default_rng(0))
    with pytest.raises(ValueError, match="babble"):
        bench.degrade(x, "babble-5", np.random.default_rng(0))
    with pytest.raises(ValueError):
        bench.degrade(np.zeros(0), "clean", np.random.default_rng(0))
    assert bench.main(["--list"]) == 0
    listed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == bench.CONDITIONS
