"""Training audio in memory and the audio training sampler.

``AudioCorpus.load(input)`` decodes every file of a training input (speaker folders or a ``path,speaker``
CSV/TSV, exactly as ``spkid prepare`` reads them) once, in a process pool, keeps only its speech (Silero VAD;
optional), and stores all utterances back to back as int16: speechocean762's 258 minutes of training audio
become 193 minutes of speech, 0.37 GB, decoded in about a minute on 2 cores. ``AudioCropSampler.batch(step)``
then returns what the training loop's sampler seam expects, like ``spkid.data.sampler.CropSampler``: random
waveform crops (one length per batch, drawn in a range of seconds), augmentation, and the log-mel front end
on the whole batch: ``(feats (B, T, F) float32, frame_lengths (B,) long, labels (B,) long)``, a pure function
of ``(seed, rank, step)``.
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spkid.audio.augment import WaveAugmentConfig, Augmenter, speed_label, speed_perturb
from spkid.audio.channel import valid_mask
from spkid.audio.codecs import CodecBank
from spkid.audio.frontend import LogMel
from spkid.audio.io import SAMPLE_RATE, load_audio
from spkid.audio.noise import take_segments
from spkid.audio.vad import VadConfig, keep_speech
from spkid.errors import ConfigError, DataError

INT16_SCALE = 32767.0


@dataclass(frozen=True)
class AudioUtt:
    """One utterance's record (``feature_path`` is its key, so ``split_per_speaker`` can sort by it)."""
    key: str
    speaker: str

    @property
    def feature_path(self) -> str:
        return self.key


@dataclass
class AudioCorpus:
    """Utterances ``i`` = ``audio[offsets[i]:offsets[i + 1]]`` (int16 at 16 kHz), speaker ``labels[i]``.

    ``speakers`` are sorted names (label = index); ``skipped`` lists ``(key, reason)`` for every file not used;
    ``seconds_before_vad`` the decoded duration of the kept files before speech detection.
    """

    audio: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor
    speakers: list[str]
    utts: list[AudioUtt]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds_before_vad: float = 0.0
    groups: torch.Tensor | None = None      # (N,) the input each utterance came from (``load_many``); None: one

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def lengths(self) -> torch.Tensor:
        """Samples per utterance ``(N,)``."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def seconds(self) -> float:
        return float(self.offsets[-1]) / SAMPLE_RATE

    def utterance(self, i: int) -> torch.Tensor:
        """Utterance ``i`` as float32 ``(S,)`` in [-1, 1]."""
        return self.stored(i).float() / INT16_SCALE

    def stored(self, i: int) -> torch.Tensor:
        """Utterance ``i`` as stored: an int16 view ``(S,)`` (full scale 32767)."""
        return self.audio[int(self.offsets[i]): int(self.offsets[i + 1])]

    @classmethod
    def load(cls, input: str | os.PathLike, *, vad: VadConfig | None = VadConfig(), min_seconds: float = 0.5,
             workers: int = 0, progress: bool = True) -> "AudioCorpus":
        """Decode the training input ``input`` into memory.

        Args:
            input: a folder of speaker sub-folders, or a ``path,speaker`` CSV/TSV (as ``spkid prepare``).
            vad: keep only the detected speech (the default); ``None`` keeps everything.
            min_seconds: files with less audio (after speech detection) are skipped with the seconds found.
            workers: decoding processes; 0 = one per CPU core, 1 = in this process.
            progress: a tqdm bar on stderr.
        Raises ``DataError`` for a missing or malformed input, or when no file is usable.
        """
        from spkid.data.prepare import _collect      # the one reader of prepare's input formats
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {workers}")
        skipped: list[tuple[str, str]] = []
        items = _collect(Path(input), None, skipped)
        results = _decode_all([it.path for it in items], vad, min_seconds, workers, progress)
        chunks, utts, seconds = [], [], 0.0
        for it, (status, value, before) in zip(items, results):
            if status == "skipped":
                skipped.append((it.key, value))
                continue
            chunks.append(torch.from_numpy(value))
            utts.append(AudioUtt(it.key, it.speaker))
            seconds += before
        if not utts:
            raise DataError(f"{input}: no usable training audio (all {len(items)} files skipped; first: "
                            f"{skipped[0][0]}: {skipped[0][1]})" if skipped else f"{input}: no training audio")
        speakers = sorted({u.speaker for u in utts})
        ids = {s: i for i, s in enumerate(speakers)}
        offsets = torch.tensor([0] + [c.shape[0] for c in chunks], dtype=torch.long).cumsum(0)
        return cls(torch.cat(chunks), offsets, torch.tensor([ids[u.speaker] for u in utts]), speakers, utts,
                   sorted(skipped), seconds)

    @classmethod
    def load_many(cls, inputs, *, vad: VadConfig | None = VadConfig(), min_seconds: float = 0.5, workers: int = 0,
                  progress: bool = True) -> "AudioCorpus":
        """Several training inputs as one corpus: one input is ``load`` itself; with more, every speaker name and
        utterance key is prefixed with its input's tag (the folder or list name, ``#2``... on a clash), so two
        corpora never share a speaker, and ``groups`` says which input each utterance came from."""
        inputs = [Path(p) for p in inputs]
        if len(inputs) == 1:
            return cls.load(inputs[0], vad=vad, min_seconds=min_seconds, workers=workers, progress=progress)
        tags: list[str] = []
        for p in inputs:
            tag = p.resolve().name or "input"
            tags.append(tag if tag not in tags else f"{tag}#{len(tags) + 1}")
        parts = [cls.load(p, vad=vad, min_seconds=min_seconds, workers=workers, progress=progress) for p in inputs]
        speakers = sorted(f"{t}/{s}" for t, c in zip(tags, parts) for s in c.speakers)
        ids = {s: i for i, s in enumerate(speakers)}
        utts, labels, groups, skipped, before = [], [], [], [], 0.0
        for g, (t, c) in enumerate(zip(tags, parts)):
            for u in c.utts:
                utts.append(AudioUtt(f"{t}/{u.key}", f"{t}/{u.speaker}"))
                labels.append(ids[f"{t}/{u.speaker}"])
                groups.append(g)
            skipped += [(f"{t}/{k}", why) for k, why in c.skipped]
            before += c.seconds_before_vad
        shift = torch.tensor([0] + [int(c.offsets[-1]) for c in parts[:-1]]).cumsum(0)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long)] +
                            [c.offsets[1:] + s for c, s in zip(parts, shift.tolist())])
        return cls(torch.cat([c.audio for c in parts]), offsets, torch.tensor(labels), speakers, utts, sorted(skipped),
                   before, torch.tensor(groups))

    def split(self, per_speaker: int, seed: int) -> tuple[list[int], list[int]]:
        """Stratified hold-out as for features: ``(train indices, validation indices)``."""
        from spkid.data.sampler import split_per_speaker
        return split_per_speaker(self.utts, per_speaker, seed)


def _decode(path: Path, vad: VadConfig | None, min_seconds: float) -> tuple[str, np.ndarray | str, float]:
    """One file -> ``("ok", int16 (S,), seconds before VAD)`` or ``("skipped", reason, 0)``."""
    try:
        wav = load_audio(path, SAMPLE_RATE)
    except DataError as e:
        return "skipped", str(e).removeprefix(f"{path}: "), 0.0
    before = wav.shape[0] / SAMPLE_RATE
    if vad is not None:
        wav, speech = keep_speech(wav, vad)
        if speech < min_seconds:
            return "skipped", f"too little speech ({speech:.2f} s of {before:.2f} s; need {min_seconds:g} s)", 0.0
    elif before < min_seconds:
        return "skipped", f"too short ({before:.3f} s < {min_seconds:g} s)", 0.0
    peak = float(wav.abs().max())
    if peak > 1.0:                  # float files may exceed full scale: scale down rather than clip
        wav = wav / peak
    return "ok", np.round(wav.numpy() * INT16_SCALE).astype(np.int16), before


def _init_worker() -> None:
    torch.set_num_threads(1)


def _decode_all(paths: list[Path], vad: VadConfig | None, min_seconds: float, workers: int,
                progress: bool) -> list[tuple[str, np.ndarray | str, float]]:
    n_workers = min(workers or os.cpu_count() or 1, max(len(paths), 1))
    if n_workers <= 1:
        return [_decode(p, vad, min_seconds) for p in tqdm(paths, desc="decode", unit="file", disable=not progress)]
    # fork (where it exists) starts workers without re-importing torch; each builds its own VAD session
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    out: list = [None] * len(paths)
    with cf.ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context(method),
                                initializer=_init_worker) as pool:
        futures = {pool.submit(_decode, p, vad, min_seconds): i for i, p in enumerate(paths)}
        with tqdm(total=len(paths), desc="decode", unit="file", disable=not progress) as bar:
            for fut in cf.as_completed(futures):
                out[futures[fut]] = fut.result()
                bar.update()
    return out




class AudioCropSampler:
    """Augmented random crops of an ``AudioCorpus``, reproducible per step: batch ``k`` depends only on
    ``(seed, rank, k)`` (no state to save for an exact resume; every DDP rank gets its own crops).

    Args:
        corpus: the decoded training audio.
        batch_size (int): B.
        crop_seconds (tuple[float, float]): each batch draws one crop length uniformly in this range;
            shorter utterances are used whole (padded in the batch).
        indices: the utterances to draw from (e.g. the training side of ``corpus.split``); default all.
        augment: ``WaveAugmentConfig`` (None: clean crops). Speed perturbation multiplies the classes:
            ``n_classes = n_speakers * len(augment.speeds())``; label ``l + n_speakers * k`` is speaker ``l``
            at speed ``augment.speeds()[k]`` (``speed_label``).
        crop_grid (int): crop lengths ``crop_seconds[0] + k * crop_grid`` samples only (0: any length).
        weights: one share per input of a ``load_many`` corpus (its ``groups``): a crop comes from input ``c`` with
            probability ``weights[c] / sum(weights)``, any of that input's utterances equally likely; None: every
            utterance equally likely.
        frontend: a ``LogMel`` (default: the HW4 definition).
        seed (int), rank (int): the randomness stream.
        workers (int): processes that code the codec bank at start (augment.p_codec > 0).
        progress (bool): tqdm bars while banks are built.
    """

    def __init__(self, corpus: AudioCorpus, *, batch_size: int, crop_seconds: tuple[float, float] = (2.0, 2.0),
                 indices=None, augment: WaveAugmentConfig | None = None, frontend: LogMel | None = None, seed: int = 0,
                 rank: int = 0, workers: int = 1, progress: bool = False, weights: list[float] | None = None,
                 crop_grid: int = 0):
        lo, hi = crop_seconds
        if batch_size < 1 or not 0 < lo <= hi:
            raise ValueError(f"need batch_size >= 1 and 0 < crop_seconds[0] <= crop_seconds[1], got {batch_size}, "
                             f"{crop_seconds}")
        self.corpus, self.batch_size, self.seed, self.rank = corpus, batch_size, seed, rank
        self.crop = (int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE))
        self.crop_grid = crop_grid              # samples: crop lengths on this grid (0: any)
        self.indices = torch.as_tensor(range(len(corpus)) if indices is None else list(indices), dtype=torch.long)
        if len(self.indices) == 0:
            raise ValueError("the sampler needs at least one utterance")
        self.probs = None if not weights else self._utterance_probs(weights)
        self.cfg = augment
        self.augmenter = Augmenter(augment, progress=progress) if augment is not None else None
        self.speeds = augment.speeds() if augment is not None else (1.0,)
        self.n_speakers = len(corpus.speakers)
        self.n_classes = self.n_speakers * len(self.speeds)
        self.frontend = frontend if frontend is not None else LogMel()
        self._lengths = corpus.lengths
        self.codec_bank: CodecBank | None = None
        if augment is not None and augment.p_codec > 0:
            self.codec_bank = CodecBank.build(
                [corpus.stored(i) for i in self.indices.tolist()],
                corpus.labels[self.indices].tolist(), per_speaker=augment.codec_per_speaker,
                codecs=augment.codec_list(), seed=seed, workers=workers, progress=progress)

    def _utterance_probs(self, weights: list[float]) -> torch.Tensor:
        """Drawing probability ``(len(indices),)`` of each training utterance under the inputs' ``weights``."""
        groups = self.corpus.groups
        n_groups = 1 if groups is None else int(groups.max()) + 1
        if len(weights) != n_groups:
            raise ConfigError(f"data.weights has {len(weights)} weight(s) for {n_groups} training input(s)")
        g = torch.zeros(len(self.indices), dtype=torch.long) if groups is None else groups[self.indices]
        count = torch.bincount(g, minlength=n_groups).double()
        w = torch.tensor(weights, dtype=torch.float64)
        w = torch.where(count > 0, w, torch.zeros_like(w))
        return (w[g] / count[g] / w.sum()).float()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch number ``step`` -> ``(feats (B, T, F) float32, frame_lengths (B,) long, labels (B,) long)``;
        frames past ``frame_lengths`` are 0."""
        wav, lengths, labels = self.waveforms(step)
        with torch.no_grad():
            feats, frames = self.frontend(wav, lengths)                               # (B, S) -> (B, T, F)
        return feats, frames, labels

    def waveforms(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The augmented crops of batch ``step`` before the front end: ``(wav (B, S), lengths (B,), labels (B,))``."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + step)
        b = self.batch_size
        if self.probs is None:
            idx = self.indices[torch.randint(len(self.indices), (b,), generator=g)]
        else:
            idx = self.indices[torch.multinomial(self.probs, b, replacement=True, generator=g)]
        if self.crop_grid:
            crop = self.crop[0] + self.crop_grid * int(torch.randint((self.crop[1] - self.crop[0]) // self.crop_grid + 1,
                                                                     (1,), generator=g))
        else:
            crop = self.crop[0] + int(torch.randint(self.crop[1] - self.crop[0] + 1, (1,), generator=g))
        u = torch.rand(b, 4, generator=g)
        speakers = self.corpus.labels[idx]
        speed = torch.zeros(b, dtype=torch.long)
        if len(self.speeds) > 1:
            speed = torch.where(u[:, 2] < self.cfg.p_speed, 1 + (u[:, 3] >= 0.5).long(), speed)
        offsets, lengths = self.corpus.offsets[idx], self._lengths[idx]
        coded = torch.zeros(b, dtype=torch.bool)
        if self.codec_bank is not None:           # codec items: a coded copy of the same speaker's speech instead
            bank = self.codec_bank
            pick = torch.randint(1 << 30, (b,), generator=g)
            for j in torch.nonzero(u[:, 1] < self.cfg.p_codec).flatten().tolist():
                copies = bank.by_label.get(int(speakers[j]), [])
                if copies:
                    c = copies[int(pick[j]) % len(copies)]
                    coded[j] = True
                    offsets[j], lengths[j] = bank.offsets[c], bank.offsets[c + 1] - bank.offsets[c]
        wav, lengths = self._crops(coded, offsets, lengths, crop, speed, u[:, 0])
        if self.augmenter is not None:
            wav = self.augmenter(wav, lengths, speakers, g, babble=self._babble)
        return wav, lengths, speed_label(speakers, speed, self.n_speakers)

    def _crops(self, coded: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, crop: int,
               speed: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops that play as ``crop`` samples after speed perturbation, of the recordings at ``offsets``
        (``lengths`` samples) in the corpus, or in the codec bank where ``coded``: ``(wav (B, S), lengths (B,))``."""
        b = coded.shape[0]
        out = torch.zeros(b, crop)
        out_len = torch.zeros(b, dtype=torch.long)
        for k, factor in enumerate(self.speeds):
            rows = torch.nonzero(speed == k).flatten()
            if not len(rows):
                continue
            need = math.ceil(crop * factor)                     # source samples that play as `crop` samples
            rec_len = lengths[rows]
            seg_len = rec_len.clamp(max=need)
            first = (start[rows] * (rec_len - seg_len + 1)).long()
            seg = torch.zeros(len(rows), need)
            bank_audio = self.codec_bank.audio if self.codec_bank is not None else None
            for flat, mask in ((self.corpus.audio, ~coded[rows]), (bank_audio, coded[rows])):
                r = torch.nonzero(mask).flatten()
                if len(r):
                    seg[r] = take_segments(flat, offsets[rows][r], rec_len[r], first[r], need, loop=False)
            if factor != 1.0:
                seg = speed_perturb(seg, factor)                                      # (n, need) -> (n, ~crop)
                seg_len = torch.ceil(seg_len / factor).long()
            n = min(crop, seg.shape[1])
            seg_len = seg_len.clamp(max=n)
            out[rows, :n] = seg[:, :n] * valid_mask(seg_len, n)
            out_len[rows] = seg_len
        s = int(out_len.max())
        return out[:, :s].contiguous(), out_len

    def _babble(self, labels: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
        """Babble ``(k, S)``: for each row, ``babble_min..babble_max`` crops of utterances of OTHER speakers than
        its ``labels`` (4 draws per talker; a talker with none is left out), each at unit RMS, summed; utterances
        shorter than ``S`` are looped."""
        k = labels.shape[0]
        lo, hi = self.cfg.babble_min, self.cfg.babble_max
        n_talkers = torch.randint(lo, hi + 1, (k,), generator=g)
        cand = self.indices[torch.randint(len(self.indices), (k, hi, 4), generator=g)]   # (k, talkers, tries)
        u = torch.rand(k, hi, generator=g)
        ok = self.corpus.labels[cand] != labels[:, None, None]
        chosen = cand.gather(2, ok.long().argmax(dim=2, keepdim=True))[..., 0]           # first other speaker
        rows, talker = torch.nonzero(ok.any(dim=2) & (torch.arange(hi)[None, :] < n_talkers[:, None]), as_tuple=True)
        utt = chosen[rows, talker]
        rec_len = self._lengths[utt]
        first = (u[rows, talker] * torch.where(rec_len >= s, rec_len - s + 1, rec_len)).long()
        segs = take_segments(self.corpus.audio, self.corpus.offsets[utt], rec_len, first, s, loop=True)
        segs = segs / segs.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-6)   # (M, S), unit RMS each
        return torch.zeros(k, s).index_add_(0, rows, segs)

    def features_of(self, i: int) -> torch.Tensor:
        """Log-mel features ``(T, F)`` of the whole clean utterance ``i`` of the corpus (for validation)."""
        wav = self.corpus.utterance(i)
        with torch.no_grad():
            feats, _ = self.frontend(wav[None, :], torch.tensor([wav.shape[0]]))     # (1, S) -> (1, T, F)
        return feats[0]


__all__ = ["AudioCorpus", "AudioUtt", "AudioCropSampler"]
