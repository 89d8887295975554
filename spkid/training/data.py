"""What the training loop trains on, from either source: ``load_train_data(DATA, cfg) -> TrainData``.

- ``data.source = "features"``: an HW4 directory of log-mel ``.pt`` tensors (``spkid.data.features``), random
  feature crops (``CropSampler``).
- ``data.source = "audio"``: speaker folders or a ``path,speaker`` list, decoded once into memory with speech
  detection (``spkid.data.audio_corpus``), random waveform crops augmented on the fly (noise, rooms, channels,
  codecs) and turned into features by the shared front end (``AudioCropSampler``).

Either way the loop sees ``sampler.batch(step) -> (x (B, T, F), lengths (B,), labels (B,))``, whole clean validation
utterances ``(T_i, F)``, and the input statistics for ``model.norm = "global"``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from spkid.errors import ConfigError


@dataclass
class TrainData:
    speakers: list[str]              # class names by id (the first len(speakers) classes)
    n_classes: int                   # head size: len(speakers), times the speeds with speed perturbation
    sampler: object                  # .batch(step) -> (x (B, T, F), lengths (B,), labels (B,))
    val_feats: list[torch.Tensor]    # whole clean utterances (T_i, F)
    val_labels: list[int]
    stats: tuple[torch.Tensor, torch.Tensor]   # per-band mean, std (F,)
    fingerprint: str                 # speakers and utterance list: resume refuses other data
    # (per_speaker, limit) -> (feats [(T_i, F)], labels): a capped subset of whole clean training utterances (the
    # checkpoint cohort, spkid.training.cohort); None: not available
    train_utterances: object = None


def looks_like_audio(path: str | Path) -> bool:
    """A list file, or a folder holding none of the HW4 index files, is audio input."""
    p = Path(path)
    hw4 = ("metadata.json", "mapping.json", "testdata.json")
    return p.is_file() or (p.is_dir() and not any((p / n).exists() for n in hw4))


def load_train_data(data_dir, cfg, *, rank: int = 0, progress: bool = True, cache_dir=None,
                    vad: bool = True) -> TrainData:
    """``data_dir``: one input, or a list of audio inputs trained on as one corpus (``data.weights``)."""
    inputs = [Path(p) for p in data_dir] if isinstance(data_dir, (list, tuple)) else [Path(data_dir)]
    if len(inputs) > 1:
        if cfg.data.source == "features":
            raise ConfigError(f"{len(inputs)} training inputs: only audio trains from several at once (data.source="
                              "'audio'); merge HW4 feature directories with spkid prepare")
        for p in inputs:
            if p.is_dir() and (p / "metadata.json").exists():
                raise ConfigError(f"{p}: an HW4 feature directory among several audio inputs")
        return _audio(inputs, cfg, rank, progress, vad)
    data_dir = inputs[0]
    if cfg.data.weights:
        raise ConfigError(f"data.weights={cfg.data.weights!r}: weights share crops between several training "
                          f"inputs; {data_dir} is one")
    if cfg.data.source == "features":
        if looks_like_audio(data_dir) and data_dir.exists():
            raise ConfigError(f"{data_dir}: holds no metadata.json (audio?); train on audio with --config audio or "
                              "--set data.source=audio, or run spkid prepare first")
        return _features(data_dir, cfg, rank, progress, cache_dir)
    if data_dir.is_dir() and (data_dir / "metadata.json").exists():
        raise ConfigError(f"{data_dir}: an HW4 feature directory, but data.source='audio'; use a features preset "
                          "(e.g. --config default)")
    return _audio([data_dir], cfg, rank, progress, vad)


def _features(data_dir: Path, cfg, rank: int, progress: bool, cache_dir) -> TrainData:
    from spkid.data.features import load_train_features
    from spkid.data.sampler import CropSampler, split_per_speaker
    from spkid.training.checkpoint import data_fingerprint
    from spkid.data.definition import check_training_definition
    check_training_definition(data_dir, cfg.features)      # the checkpoint's front end must be the tensors' own
    data = load_train_features(data_dir, cfg.features.n_mels, progress=progress, cache_dir=cache_dir)
    train_idx, val_idx = split_per_speaker(data.utts, cfg.data.val_per_speaker, cfg.train.seed)
    spk_id = {s: i for i, s in enumerate(data.speakers)}
    labels = [spk_id[u.speaker] for u in data.utts]
    train_feats = [data.feats[i] for i in train_idx]
    d = cfg.data
    sampler = CropSampler(train_feats, [labels[i] for i in train_idx], batch_size=d.batch_size,
                          crop_frames=d.crop_frames, crop_min_frames=d.crop_min_frames, seed=cfg.train.seed, rank=rank)

    def train_utterances(per_speaker: int, limit: int):
        from spkid.training.cohort import cohort_subset
        pick = [train_idx[k] for k in cohort_subset([labels[i] for i in train_idx], per_speaker, limit)]
        return [data.feats[i] for i in pick], [labels[i] for i in pick]
    return TrainData(data.speakers, len(data.speakers), sampler, [data.feats[i] for i in val_idx],
                     [labels[i] for i in val_idx], feature_stats(train_feats),
                     data_fingerprint(data.speakers, data.utts), train_utterances)


def _audio(inputs: list[Path], cfg, rank: int, progress: bool, vad: bool) -> TrainData:
    from spkid.audio.frontend import frontend_for
    from spkid.audio.vad import VadConfig
    from spkid.data.audio_corpus import AudioCorpus, AudioCropSampler
    from spkid.config import weights_list
    corpus = AudioCorpus.load_many(inputs, vad=VadConfig() if vad else None, min_seconds=cfg.data.min_seconds,
                                   progress=progress)
    train_idx, val_idx = corpus.split(cfg.data.val_per_speaker, cfg.train.seed)
    fe, d = cfg.features, cfg.data
    # crop lengths in seconds that give crop_min_frames..crop_frames frames (T = S // hop + 1)
    lo = max(1, (d.crop_min_frames or d.crop_frames) - 1) * fe.hop / fe.sample_rate
    hi = max(1, d.crop_frames - 1) * fe.hop / fe.sample_rate
    sampler = AudioCropSampler(corpus, batch_size=d.batch_size, crop_seconds=(lo, hi), indices=train_idx,
                               augment=cfg.augment, frontend=frontend_for(fe), seed=cfg.train.seed, rank=rank,
                               progress=progress, weights=weights_list(d.weights) or None,
                               crop_grid=d.crop_grid * fe.hop)
    # input statistics from augmented training batches (what the network will see); a fixed, reproducible draw
    stats = feature_stats([x[:n] for k in range(8) for x, n in zip(*sampler.batch(10**9 + k)[:2])])
    h = hashlib.sha256("\n".join(corpus.speakers).encode())
    for u, n in zip(corpus.utts, corpus.lengths.tolist()):
        h.update(f"{u.key}|{n}|{u.speaker}\n".encode())
    labels = corpus.labels.tolist()

    def train_utterances(per_speaker: int, limit: int):
        from spkid.training.cohort import cohort_subset
        pick = [train_idx[k] for k in cohort_subset([labels[i] for i in train_idx], per_speaker, limit)]
        return [sampler.features_of(i) for i in pick], [labels[i] for i in pick]
    return TrainData(corpus.speakers, sampler.n_classes, sampler, [sampler.features_of(i) for i in val_idx],
                     [labels[i] for i in val_idx], stats, h.hexdigest()[:16], train_utterances)


def feature_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std over all training frames ``[(T_i, F)]`` -> ``(F,)``, ``(F,)``, in float64."""
    n, s, ss = 0, 0.0, 0.0
    for f in feats:
        f = f.double()
        n += f.shape[0]
        s = s + f.sum(0)
        ss = ss + (f * f).sum(0)
    mean = s / n
    return mean.float(), (ss / n - mean * mean).clamp(min=0).sqrt().float()
