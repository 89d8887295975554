"""Run the report's model over its inputs once: the test set (embeddings, class scores) and the trial speakers.

Each utterance is embedded exactly once; class scores come from those embeddings through the model's head.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spkid.errors import DataError


@dataclass
class TestEval:
    """A model's view of an HW4 test set. ``N`` utterances, ``K`` model speakers, ``E`` embedding size."""
    ids: list[str]                   # (N,) feature paths (the Kaggle Id)
    speakers: list[str]              # (K,) the model's speaker names by class id
    frames: np.ndarray               # (N,) int utterance lengths in frames
    frame_seconds: float             # frame shift of the model's features (hop / sample_rate)
    emb: np.ndarray                  # (N, E) float32, L2-normalised
    probs: np.ndarray                # (N, K) float32 class probabilities
    true: np.ndarray | None          # (N,) int class ids from the answers, or None without answers

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class TrialsEval:
    """All-pairs cosine trials over utterances of speakers the model never saw."""
    scores: np.ndarray               # (P,) float32
    labels: np.ndarray               # (P,) bool, True = same speaker
    n_utts: int
    n_speakers: int
    nontarget_cap: int | None        # set when the non-target pairs were a random subset of this size


@dataclass
class RegistryInfo:
    path: Path
    threshold: float
    threshold_source: str
    model_id: str
    n_speakers: int
    on_cosines: bool = True          # False: the registry scores through domain statistics / AS-norm (other scale)
    scoring: str = "raw cosine"


def _embed(model, feats: list[torch.Tensor]) -> torch.Tensor:
    """Un-normalised embeddings ``(N, E)``."""
    from spkid.scoring.model import embed_features
    return embed_features(model.net, feats, model.cfg.infer, model.device)


def evaluate_test(model, test_dir: str | Path, answers: str | Path | None, *, progress: bool = True) -> TestEval:
    """Embed ``test_dir`` (``testdata.json`` + ``uttr-*.pt``) and, with an ``Id,Category`` CSV, map the answers."""
    from spkid.data.features import load_test_features
    from spkid.data.hw4 import read_answers_csv
    from spkid.scoring.model import class_scores

    fs = load_test_features(test_dir, model.cfg.features.n_mels, progress=progress, definition=model.cfg.features)
    ids = [u.feature_path for u in fs.utts]
    if not ids:
        raise DataError(f"{Path(test_dir) / 'testdata.json'}: lists no utterances")
    true = None
    if answers is not None:
        ans = read_answers_csv(answers)
        missing = [i for i in ids if i not in ans]
        if missing:
            raise DataError(f"{answers}: no answer for {len(missing)} of {len(ids)} test utterances "
                            f"(e.g. {missing[0]!r}); is it the answers of {test_dir}?")
        index = {s: k for k, s in enumerate(model.speakers)}
        unknown = sorted({ans[i] for i in ids} - index.keys())
        if unknown:
            raise DataError(f"{answers}: {len(unknown)} speakers the model was not trained on "
                            f"(e.g. {unknown[0]!r}); closed-set scoring needs training speakers")
        true = np.array([index[ans[i]] for i in ids], dtype=np.int64)
    emb = _embed(model, fs.feats)
    probs = class_scores(model.net, emb, model.device, len(model.speakers))
    fe = model.cfg.features
    return TestEval(ids, list(model.speakers), np.array([f.shape[0] for f in fs.feats], dtype=np.int64),
                    fe.hop / fe.sample_rate, F.normalize(emb, dim=-1).numpy(), probs.numpy(), true)


def evaluate_trials(model, trials_dir: str | Path, *, max_nontarget: int = 200_000,
                    progress: bool = True) -> TrialsEval:
    """Cosine scores of every same-speaker pair and (up to ``max_nontarget``) different-speaker pairs."""
    from spkid.data.features import load_train_features
    from spkid.scoring.metrics import make_trials, score_trials

    fs = load_train_features(trials_dir, model.cfg.features.n_mels, progress=progress,
                             definition=model.cfg.features)
    labels = [u.speaker for u in fs.utts]
    if len(set(labels)) < 2:
        raise DataError(f"{Path(trials_dir) / 'metadata.json'}: verification trials need at least 2 speakers")
    i, j, target = make_trials(labels, max_nontarget=max_nontarget)
    if not target.any():
        raise DataError(f"{Path(trials_dir) / 'metadata.json'}: every speaker has one utterance: "
                        "no same-speaker trials")
    emb = F.normalize(_embed(model, fs.feats), dim=-1).numpy()
    n = len(labels)
    n_non_all = n * (n - 1) // 2 - int(target.sum())
    return TrialsEval(score_trials(emb, i, j), target, n, len(set(labels)),
                      max_nontarget if n_non_all > max_nontarget else None)


def read_registry(path: str | Path) -> RegistryInfo:
    """The stored decision threshold (and which model it belongs to) of a ``spkid enroll`` registry."""
    from spkid.scoring.speaker_db import SpeakerDB

    with SpeakerDB.open(path) as reg:
        backend = reg.backend()
        return RegistryInfo(Path(path), reg.threshold, reg.threshold_source, reg.model_id, len(reg.speakers()),
                            backend.raw, backend.describe())
