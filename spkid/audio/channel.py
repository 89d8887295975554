"""Batched channel simulation in torch: band limitation, telephone, mu-law/A-law companding, resampling.

Everything works on a padded batch ``wav (B, S)`` with ``lengths (B,)`` and draws its randomness from the
``torch.Generator`` it is given, so a batch is a pure function of the generator's seed. Filtering is done in
the frequency domain on an FFT of at least ``S + 1024`` points (zero padding keeps the filters' circular
wrap-around out of the signal); samples past ``lengths`` are zero on return.
"""
from __future__ import annotations

import math

import torch

SAMPLE_RATE = 16000
MU = 255.0
A_LAW = 87.6


def fast_len(n: int) -> int:
    """Smallest ``m >= n`` of the form ``2^a 3^b 5^c`` (sizes pocketfft transforms fastest)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def valid_mask(lengths: torch.Tensor, s: int) -> torch.Tensor:
    """``(B, S)`` bool: True for the real samples of each row."""
    return torch.arange(s, device=lengths.device)[None, :] < lengths[:, None]


def band_gains(freqs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, width: float = 100.0) -> torch.Tensor:
    """Band-pass magnitude ``(B, n_bins)`` that is 1 inside ``[lo, hi]`` Hz (per row, ``(B,)``), 0 outside,
    with raised-cosine transitions ``width`` Hz wide centred on each edge (a 0 Hz ``lo`` means no high-pass)."""
    f = freqs[None, :]
    rise = ((f - lo[:, None]) / width + 0.5).clamp(0.0, 1.0)
    fall = ((hi[:, None] - f) / width + 0.5).clamp(0.0, 1.0)
    rise = torch.where(lo[:, None] > 0, rise, torch.ones_like(rise))
    return (0.5 - 0.5 * torch.cos(math.pi * rise)) * (0.5 - 0.5 * torch.cos(math.pi * fall))


def filter_fft(wav: torch.Tensor, lengths: torch.Tensor, gains: torch.Tensor,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Apply zero-phase magnitude responses to each row: ``wav (B, S)``, ``gains`` a function of the bin
    frequencies ``(n_bins,) -> (B, n_bins)``; returns ``(B, S)`` with the padding zeroed."""
    b, s = wav.shape
    n = fast_len(s + 1024)
    spec = torch.fft.rfft(wav, n=n)                                                   # (B, n/2 + 1)
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate).to(wav.device)
    out = torch.fft.irfft(spec * gains(freqs), n=n)[:, :s]
    return out * valid_mask(lengths, s)


def band_limit(wav: torch.Tensor, lengths: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Keep ``[lo, hi]`` Hz of each row (``lo``, ``hi`` ``(B,)``): ``(B, S) -> (B, S)``."""
    return filter_fft(wav, lengths, lambda f: band_gains(f, lo, hi), sample_rate)


def mu_law(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """mu-law (G.711, mu = 255) encode, quantise to ``bits`` and decode; ``x`` in [-1, 1]."""
    y = torch.sign(x) * torch.log1p(MU * x.abs()) / math.log1p(MU)
    y = _quantise(y, bits)
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(MU)) / MU


def a_law(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """A-law (G.711, A = 87.6) encode, quantise to ``bits`` and decode; ``x`` in [-1, 1]."""
    ax = x.abs()
    k = 1.0 + math.log(A_LAW)
    y = torch.where(ax < 1.0 / A_LAW, A_LAW * ax / k, (1.0 + torch.log(torch.clamp(A_LAW * ax, min=1.0))) / k)
    y = _quantise(torch.sign(x) * y, bits)
    ay = y.abs()
    z = torch.where(ay < 1.0 / k, ay * k / A_LAW, torch.exp(ay * k - 1.0) / A_LAW)
    return torch.sign(y) * z


def _quantise(y: torch.Tensor, bits: int) -> torch.Tensor:
    """Uniform ``2^bits``-level quantiser on [-1, 1] (mid-rise, as an 8-bit codeword)."""
    levels = 2 ** bits
    q = torch.clamp(torch.floor((y + 1.0) * (levels / 2)), 0, levels - 1)
    return (q + 0.5) / (levels / 2) - 1.0


def telephone(wav: torch.Tensor, lengths: torch.Tensor, g: torch.Generator,
              sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A random narrowband telephone channel per row: ``(B, S) -> (B, S)`` at ``sample_rate``.

    Steps: band-pass with edges drawn in 200-400 Hz and 3000-3600 Hz, a random spectral tilt (+-4 dB per
    octave around 1 kHz, a handset's colouring), down-sampling to 8 kHz, a random gain (-8..+6 dB relative
    to a 0.5 peak, so loud calls clip), G.711 companding (mu-law or A-law, 8 bits, chosen per row), then
    back to ``sample_rate`` with nothing above 4 kHz. Down/up-sampling is exact in the frequency domain
    because the band-pass already removed everything above 3.6 kHz.
    """
    b, s = wav.shape
    if b == 0:
        return wav
    u = torch.rand(b, 5, generator=g).to(wav.device)
    lo, hi = 200.0 + 200.0 * u[:, 0], 3000.0 + 600.0 * u[:, 1]
    tilt = (u[:, 2] - 0.5) * 8.0                                                    # dB per octave

    def response(f: torch.Tensor) -> torch.Tensor:
        octaves = torch.log2(torch.clamp(f, min=50.0) / 1000.0)[None, :]
        return band_gains(f, lo, hi) * 10.0 ** (tilt[:, None] * octaves / 20.0)

    n = fast_len(s + 1024)
    n += n % 4                                                        # n/2 (the 8 kHz length) must be even
    spec = torch.fft.rfft(wav, n=n)                                                   # (B, n/2 + 1)
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate).to(wav.device)
    spec = spec * response(freqs)
    ratio = sample_rate // 8000
    m = n // ratio                                                                     # samples at 8 kHz
    narrow = torch.fft.irfft(spec[:, : m // 2 + 1], n=m) / ratio                      # (B, m) at 8 kHz
    keep = valid_mask(torch.div(lengths + ratio - 1, ratio, rounding_mode="floor"), m)
    peak = (narrow.abs() * keep).amax(dim=1, keepdim=True).clamp(min=1e-6)
    gain_db = -8.0 + 14.0 * u[:, 3:4]
    narrow = torch.clamp(narrow * (0.5 / peak) * 10.0 ** (gain_db / 20.0), -1.0, 1.0)
    use_mu = u[:, 4] < 0.5
    coded = torch.empty_like(narrow)
    coded[use_mu], coded[~use_mu] = mu_law(narrow[use_mu]), a_law(narrow[~use_mu])
    coded = coded * keep
    wide = torch.zeros(b, n // 2 + 1, dtype=spec.dtype, device=wav.device)
    nspec = torch.fft.rfft(coded, n=m)                                                # (B, m/2 + 1)
    wide[:, : m // 2 + 1] = nspec * ratio
    wide[:, m // 2] = 0                                               # the 8 kHz Nyquist bin: no energy at 4 kHz
    out = torch.fft.irfft(wide, n=n)[:, :s]
    return out * valid_mask(lengths, s)


def telephone_copy(wav: torch.Tensor, seed: int) -> torch.Tensor:
    """One clip through one ``telephone`` channel drawn from ``seed``: ``(S,) -> (S,)`` at 16 kHz. The narrowband
    copy an enrolled clip is stored with (``scoring.openset.add_clips``), so a telephone call is named against
    enrollment heard through a telephone (docs/diarization.md: the names on narrowband calls)."""
    x = torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1)
    g = torch.Generator().manual_seed(int(seed))
    return telephone(x, torch.tensor([x.shape[1]]), g)[0]


def random_band_limit(wav: torch.Tensor, lengths: torch.Tensor, g: torch.Generator, *, low_min: float,
                      low_max: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A random band limit per row: a cheap microphone, a lower original sample rate, a lossy recorder.
    ``(B, S) -> (B, S)``.

    Two independent parts, at least one per row: a low-pass (on 70 % of the rows; cutoff log-uniform in
    ``[low_min, low_max]`` Hz) and a high-pass (on 60 %; cutoff 50-400 Hz). A high-pass alone matters: a model
    that only ever lost its low bands together with its high ones (telephone) collapsed on small-microphone
    audio that keeps everything above 300 Hz.
    """
    b = wav.shape[0]
    u = torch.rand(b, 4, generator=g).to(wav.device)
    has_low = u[:, 1] < 0.7
    has_high = (u[:, 2] < 0.6) | ~has_low
    hi = torch.where(has_low, low_min * (low_max / low_min) ** u[:, 0], torch.full_like(u[:, 0], float(sample_rate)))
    lo = torch.where(has_high, 50.0 + 350.0 * u[:, 3], torch.zeros_like(hi))
    return band_limit(wav, lengths, lo, hi, sample_rate)


def sinc_kernel(orig: int, new: int, width: int = 6, rolloff: float = 0.95) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernels ``(new, 1, K)`` for resampling by ``new / orig`` (reduced ratio) and the
    one-sided padding they need (the torchaudio ``sinc_interp_hann`` construction)."""
    base = min(orig, new) * rolloff
    pad = math.ceil(width * orig / base)
    idx = torch.arange(-pad, pad + orig, dtype=torch.float64)[None, :] / orig          # (1, K)
    t = (-torch.arange(new, dtype=torch.float64)[:, None] / new + idx) * base         # (new, K)
    t = t.clamp(-width, width)
    window = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return (sinc * window * base / orig).float()[:, None, :], pad


def resample_batch(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Band-limited resampling of every row by ``new / orig``: ``(B, S) -> (B, ceil(S new / orig))``."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    if orig == new:
        return wav
    kernel, pad = sinc_kernel(orig, new)
    b, s = wav.shape
    x = torch.nn.functional.pad(wav[:, None, :], (pad, pad + orig))                   # (B, 1, S + 2 pad + orig)
    y = torch.nn.functional.conv1d(x, kernel.to(wav.device), stride=orig)             # (B, new, frames)
    y = y.transpose(1, 2).reshape(b, -1)                                              # (B, frames * new)
    return y[:, : math.ceil(new * s / orig)]


__all__ = ["telephone", "telephone_copy", "band_limit", "random_band_limit", "band_gains", "filter_fft", "mu_law",
           "a_law", "resample_batch", "sinc_kernel", "fast_len", "valid_mask"]
