"""In-memory features -> training crops and length-bucketed evaluation batches.

Batches are ``(x (B, T, F) float32, lengths (B,) long, labels (B,) long)``; frames past ``lengths`` are 0 and
are ignored by every layer through the ``lengths`` mask, never through a magic pad value.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch

from spkid.data.hw4 import Utterance


def split_per_speaker(utts: Sequence[Utterance], per_speaker: int, seed: int) -> tuple[list[int], list[int]]:
    """Stratified, seeded hold-out: ``per_speaker`` whole utterances of each speaker go to validation.

    A speaker always keeps at least one training utterance. Returns ``(train indices, val indices)``.
    """
    by_spk: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utts):
        by_spk[u.speaker].append(i)
    rng = random.Random(seed)
    train, val = [], []
    for spk in sorted(by_spk):
        idx = sorted(by_spk[spk], key=lambda i: utts[i].feature_path)
        rng.shuffle(idx)
        k = min(per_speaker, len(idx) - 1)
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


def pad_batch(feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of ``(T_i, F)`` -> ``(B, T_max, F)`` float32 zero-padded, ``lengths`` ``(B,)``."""
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    x = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
    return x, lengths


class CropSampler:
    """Random training crops, reproducible per step: batch ``k`` depends only on ``(seed, rank, k)``.

    That makes resuming exact (no sampler state to save) and gives every DDP rank different crops.

    Args:
        feats: per-utterance tensors ``(T_i, F)``.
        labels: class id per utterance.
        batch_size (int): B.
        crop_frames (int): crop length; shorter utterances are used whole (padded in the batch).
        crop_min_frames (int): if > 0, each batch draws its crop length uniformly in ``[crop_min_frames, crop_frames]``.
        seed (int), rank (int): randomness stream.
    """

    def __init__(self, feats: Sequence[torch.Tensor], labels: Sequence[int], *, batch_size: int, crop_frames: int,
                 crop_min_frames: int = 0, seed: int = 0, rank: int = 0):
        if len(feats) != len(labels) or not feats:
            raise ValueError("feats and labels must be non-empty and of equal length")
        self.feats, self.labels = feats, torch.as_tensor(labels, dtype=torch.long)
        self.batch_size, self.crop_frames, self.crop_min_frames = batch_size, crop_frames, crop_min_frames
        self.seed, self.rank = seed, rank

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch number ``step`` -> ``(x (B, T, F), lengths (B,), labels (B,))``."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + step)
        idx = torch.randint(len(self.feats), (self.batch_size,), generator=g)
        crop = self.crop_frames
        if self.crop_min_frames > 0:
            crop = int(torch.randint(self.crop_min_frames, self.crop_frames + 1, (1,), generator=g))
        u = torch.rand(self.batch_size, generator=g)
        chunks = []
        for j, i in enumerate(idx.tolist()):
            f = self.feats[i]
            if f.shape[0] > crop:
                start = int(u[j] * (f.shape[0] - crop + 1))
                f = f[start: start + crop]
            chunks.append(f)
        x, lengths = pad_batch(chunks)
        return x, lengths, self.labels[idx]


def length_buckets(lengths: Sequence[int], max_frames: int) -> Iterator[list[int]]:
    """Indices grouped by similar length so ``len(batch) * longest <= max_frames`` (at least one per batch)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[i] > max_frames:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
