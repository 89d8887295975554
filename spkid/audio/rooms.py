"""Room impulse responses: simulated shoebox rooms or a user folder, and batched FFT reverberation.

Simulation follows the hybrid of gpuRIR (Diaz-Guerra et al., 2021): the image-source method
(pyroomacoustics ``ShoeBox``, deterministic, walls absorbing by Sabine's formula for the drawn RT60) up to
reflection order 16, which is complete for the first ``16 * shortest side / c`` seconds (about 0.1-0.2 s),
then a diffuse tail of Gaussian noise decaying by 60 dB over RT60, its level matched to the last 10 ms of
the image-source part. Full image-source simulation of a 1 s RT60 room takes 1-7 s of CPU per response
(orders 100-150); the hybrid takes about 10 ms, so a bank of 200 rooms is built in seconds at start and
needs no cache. Every stored response has its direct-path peak at sample ``PRE`` and unit energy.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from spkid.audio.channel import fast_len, valid_mask
from spkid.audio.io import load_audio
from spkid.audio.noise import coloured_noise, mix_at_snr
from spkid.errors import DataError

SAMPLE_RATE = 16000
SPEED_OF_SOUND = 343.0
PRE = 32                # samples kept before the direct-path peak (the fractional-delay filter's pre-ringing)
MAX_ORDER = 16          # image-source order; later reflections come from the diffuse tail
MAX_SECONDS = 2.0       # responses are cut here (beyond -60 dB for any RT60 this bank draws)
ROOM_MIN = (3.0, 3.0, 2.4)      # shoebox sides in metres (length, width, height), drawn uniformly
ROOM_MAX = (10.0, 8.0, 4.0)
# room_copy: the far-field copy of an enrolled clip (a meeting room, a talker across the table, a quiet fan)
COPY_RT60 = (0.3, 0.8)          # seconds, drawn uniformly
COPY_DISTANCE = (1.0, 3.0)      # metres from the microphone, drawn uniformly
COPY_SNR_DB = 20.0              # white, pink or brown noise; 5, 10, 30 dB and none named fewer voices in rooms


def room_geometry(rng: np.random.Generator, distance: float, *, room_min=ROOM_MIN, room_max=ROOM_MAX,
                  margin: float = 0.4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random shoebox ``dims (3,)`` with a microphone and a source ``distance`` metres apart, both at least
    ``margin`` from every wall (redrawn until they fit; the distance shrinks if no room fits it)."""
    for attempt in range(2000):
        dims = rng.uniform(room_min, room_max)
        d = distance * (0.97 ** (attempt // 50))
        mic = rng.uniform(margin, dims - margin)
        az, el = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)
        src = mic + d * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        if np.all(src >= margin) and np.all(src <= dims - margin):
            return dims, mic, src
    raise RuntimeError(f"no room in {room_min}..{room_max} fits a source {distance} m from the microphone")


def simulate_rir(rt60: float, dims: np.ndarray, mic: np.ndarray, src: np.ndarray, rng: np.random.Generator, *,
                 max_order: int = MAX_ORDER, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Impulse response ``(L,)`` float32 of a shoebox room (image sources + diffuse tail, see the module doc).

    Raises ``ValueError`` when ``rt60`` is too short for the room (Sabine needs absorption above 1).
    """
    import pyroomacoustics as pra
    e_abs, full_order = pra.inverse_sabine(rt60, dims)
    order = min(full_order, max_order)
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(e_abs), max_order=order, air_absorption=False)
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float64)
    if order < full_order:
        peak = int(np.argmax(np.abs(h)))
        n_diff = min(len(h), peak + int(order * min(dims) / SPEED_OF_SOUND * sample_rate))
        win = sample_rate // 100
        level = np.sqrt(np.mean(h[max(peak + 1, n_diff - win): n_diff] ** 2))
        t = np.arange(int(1.1 * rt60 * sample_rate)) / sample_rate
        tail = rng.standard_normal(t.size) * level * 10.0 ** (-3.0 * t / rt60)      # -60 dB after rt60
        h = np.concatenate([h[:n_diff], tail])
    return h.astype(np.float32)


def normalise_rir(h: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Direct-path peak moved to sample ``PRE``, cut to ``MAX_SECONDS``, scaled to unit energy."""
    h = np.asarray(h, dtype=np.float64)
    peak = int(np.argmax(np.abs(h)))
    h = np.concatenate([np.zeros(max(0, PRE - peak)), h[max(0, peak - PRE):]])[: int(MAX_SECONDS * sample_rate)]
    return (h / max(np.sqrt(np.sum(h ** 2)), 1e-12)).astype(np.float32)


class RirBank:
    """Impulse responses ``rirs (R, L)`` (zero-padded, each normalised) with their ``lengths (R,)``."""

    def __init__(self, rirs: list[np.ndarray], info: list[str]):
        if not rirs:
            raise ValueError("an RirBank needs at least one impulse response")
        self.lengths = torch.tensor([len(h) for h in rirs])
        self.rirs = torch.zeros(len(rirs), int(self.lengths.max()))
        for i, h in enumerate(rirs):
            self.rirs[i, : len(h)] = torch.from_numpy(h)
        self.info = info

    def __len__(self) -> int:
        return self.rirs.shape[0]

    @classmethod
    def simulate(cls, n: int, *, rt60_min: float = 0.2, rt60_max: float = 1.0, distance_min: float = 0.5,
                 distance_max: float = 4.0, seed: int = 0, room_min=ROOM_MIN, room_max=ROOM_MAX,
                 progress: bool = False) -> "RirBank":
        """``n`` rooms, each with RT60 uniform in ``[rt60_min, rt60_max]`` s and source-microphone distance uniform
        in ``[distance_min, distance_max]`` m; the same ``seed`` gives the same bank."""
        rng = np.random.default_rng(seed)
        rirs, info = [], []
        for _ in tqdm(range(n), desc="rooms", unit="room", disable=not progress):
            while True:
                rt60 = rng.uniform(rt60_min, rt60_max)
                dims, mic, src = room_geometry(rng, rng.uniform(distance_min, distance_max),
                                               room_min=room_min, room_max=room_max)
                try:
                    h = simulate_rir(rt60, dims, mic, src, rng)
                    break
                except ValueError:          # RT60 too short for this room's volume: draw another room
                    continue
            rirs.append(normalise_rir(h))
            info.append(f"rt60={rt60:.2f} room={'x'.join(f'{d:.1f}' for d in dims)} "
                        f"distance={np.linalg.norm(src - mic):.2f}")
        return cls(rirs, info)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, max_files: int = 1000, seed: int = 0,
                    progress: bool = False) -> "RirBank":
        """Measured or simulated responses from audio files under ``folder`` (resampled to 16 kHz; at most
        ``max_files``, a seeded random choice). Raises ``DataError`` when none is usable."""
        from spkid.data.scan import sample
        files = sample(folder, max_files, seed, "impulse-response")
        rirs, info = [], []
        for f in tqdm(files, desc="rirs", unit="file", disable=not progress):
            try:
                h = load_audio(f).numpy()
            except DataError:
                continue
            if np.abs(h).max() > 0:
                rirs.append(normalise_rir(h))
                info.append(str(f))
        if not rirs:
            raise DataError(f"{folder}: none of its {len(files)} audio files is a usable impulse response")
        return cls(rirs, info)

    def draw(self, k: int, g: torch.Generator) -> torch.Tensor:
        """``k`` random responses ``(k, L)``, cut to the longest of those drawn."""
        idx = torch.randint(len(self), (k,), generator=g)
        return self.rirs[idx, : int(self.lengths[idx].max())] if k else self.rirs[:0]


def reverberate(wav: torch.Tensor, lengths: torch.Tensor, rirs: torch.Tensor) -> torch.Tensor:
    """Convolve each row with its response: ``wav (B, S)``, ``rirs (B, L)`` (direct path at ``PRE``) ->
    ``(B, S)``, aligned on the direct path (no delay), padding zero, each row rescaled to its input RMS."""
    b, s = wav.shape
    rirs = rirs[:, : s + PRE]                      # later taps only reach output past the kept S samples
    n = fast_len(s + rirs.shape[1])
    wet = torch.fft.irfft(torch.fft.rfft(wav, n=n) * torch.fft.rfft(rirs, n=n), n=n)[:, PRE: PRE + s]
    keep = valid_mask(lengths, s)
    wet = wet * keep
    gain = (wav.square().sum(dim=1) / wet.square().sum(dim=1).clamp(min=1e-20)).sqrt()
    return wet * gain[:, None]


def room_copy(wav: torch.Tensor, seed: int) -> torch.Tensor:
    """One clip as heard across a room drawn from ``seed``: ``(S,) -> (S,)`` at 16 kHz. A shoebox with RT60 in
    ``COPY_RT60``, the talker ``COPY_DISTANCE`` from the microphone (``simulate_rir``), then white, pink or brown
    noise at ``COPY_SNR_DB``. The far-field copy an enrolled clip is stored with (``scoring.openset``), so a voice
    recorded across a room is named against enrollment heard that way (docs/diarization.md)."""
    x = torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1)
    rng = np.random.default_rng(int(seed))
    while True:
        rt60 = rng.uniform(*COPY_RT60)
        dims, mic, src = room_geometry(rng, rng.uniform(*COPY_DISTANCE))
        try:
            h = normalise_rir(simulate_rir(rt60, dims, mic, src, rng))
            break
        except ValueError:                  # RT60 too short for this room's volume: draw another room
            continue
    lengths = torch.tensor([x.shape[1]])
    wet = reverberate(x, lengths, torch.from_numpy(h)[None])
    g = torch.Generator().manual_seed(int(seed))
    beta = torch.tensor([float(rng.integers(3))])                  # 0 white, 1 pink, 2 brown
    return mix_at_snr(wet, lengths, coloured_noise(1, x.shape[1], beta, g), torch.tensor([COPY_SNR_DB]))[0]


__all__ = ["RirBank", "reverberate", "simulate_rir", "room_geometry", "normalise_rir", "room_copy", "PRE"]
