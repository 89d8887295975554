"""The open-set back end in one place: embeddings -> domain adaptation -> (AS-normed) scores (issue 16).

``Backend(cfg, domain, asnorm)`` is what a registry, ``verify``, ``eval-verification`` and the cross-domain
benchmark all score with, so the CLI and the measurements cannot drift apart:

- ``adapt(emb)``: ``DomainStats.apply`` (centring, optional whitening) when the registry has domain statistics,
  else L2 normalisation;
- ``gallery(clips)``: a ``Gallery`` of adapted clips, scored by ``cfg.scoring`` (centroid / best / top-k mean),
  AS-normed when there is a cohort;
- ``pair_scores(a, b)``: clip-vs-clip scores for verification, through the same adaptation and AS-norm.

The checkpoint cohort (``checkpoint_cohort``) is the training speakers' per-speaker mean embeddings that
``spkid train`` stores in its checkpoints (key ``"cohort"``, with the source domain's ``DomainStats``), and
``checkpoint_calibration`` the score calibration fitted on the run's validation trials (key ``"calibration"``).

Shapes: embeddings ``(N, E)``; clips of speaker k ``(n_k, E)``; scores ``(M, K)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkid.errors import CheckpointError, DataError
from spkid.scoring.calibration import Calibration
from spkid.scoring.enrollment import EnrollConfig, Gallery
from spkid.scoring.norm import ASNorm, DomainStats

# Registry defaults, from the study in docs/backend_transfer.md: top-3 mean beats the centroid once the domain is
# centred, and an in-domain cohort's top 50 scores are as good as 100 and better than 10-25.
DEFAULT_SCORING = "topk_mean"
DEFAULT_TOP_N = 50
# AS-norm against the training speakers when the user gives no folder of the new domain: measured to hurt on every
# cross-domain protocol (docs/openset.md), so a registry uses no cohort unless asked (``spkid adapt --cohort
# checkpoint``).
DEFAULT_COHORT_WITHOUT_FOLDER = "none"
COHORT_KINDS = ("folder", "checkpoint", "none")


def default_enroll_config() -> EnrollConfig:
    return EnrollConfig(scoring=DEFAULT_SCORING)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n == 0) or not np.all(np.isfinite(x)):
        raise DataError("embeddings: zero or non-finite rows cannot be scored")
    return x / n


def _matrix(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"embeddings: expected (N, E), got shape {x.shape}")
    return x


@dataclass
class Backend:
    """Scoring pipeline: ``cfg`` (how a speaker's clips are scored), optional ``domain`` and ``asnorm``."""

    cfg: EnrollConfig = field(default_factory=default_enroll_config)
    domain: DomainStats | None = None
    asnorm: ASNorm | None = None

    @property
    def raw(self) -> bool:
        """True when scores are plain cosines (no adaptation, no AS-norm)."""
        return self.domain is None and self.asnorm is None

    def describe(self, pairs: bool = False) -> str:
        """The pipeline in words; ``pairs``: for clip-vs-clip scores (no speaker scoring mode)."""
        parts = [] if pairs else [self.cfg.scoring if self.cfg.scoring != "topk_mean" else f"top-{self.cfg.top_k} mean"]
        if self.domain is not None:
            parts.append("centred and whitened" if self.domain.whiten is not None else "centred")
        if self.asnorm is not None:
            parts.append(f"AS-norm ({self.asnorm.cohort.shape[0]} cohort, top {self.asnorm.top_n})")
        return ", ".join(parts + ([] if self.domain or self.asnorm else ["raw cosine"]))

    def adapt(self, emb) -> np.ndarray:
        """``(N, E)`` -> ``(N, E)`` L2-normalised, centred/whitened by the domain statistics when there are some."""
        x = _matrix(emb)
        return self.domain.apply(x) if self.domain is not None else _unit(x)

    def gallery(self, clips) -> Gallery:
        """A ``Gallery`` of K speakers' clips ``[(n_k, E)]`` (raw embeddings; adapted here)."""
        return Gallery([self.adapt(c) for c in clips], self.cfg, self.asnorm)

    def scores(self, clips, test) -> np.ndarray:
        """``(M, K)`` scores of test embeddings ``(M, E)`` against K speakers' clips."""
        return self.gallery(clips).scores(self.adapt(test))

    def pair_scores(self, a, b) -> np.ndarray:
        """``(N, M)`` clip-vs-clip scores of ``a`` ``(N, E)`` against ``b`` ``(M, E)`` (verification)."""
        x, y = self.adapt(a), self.adapt(b)
        s = x @ y.T
        if self.asnorm is None:
            return s
        return self.asnorm.normalise(s, self.asnorm.stats(x), self.asnorm.stats(y))

    def trial_scores(self, emb, i_idx, j_idx) -> np.ndarray:
        """Scores ``(P,)`` of trials ``(emb[i], emb[j])``; each embedding's cohort statistics computed once."""
        x = self.adapt(emb)
        i_idx, j_idx = np.asarray(i_idx), np.asarray(j_idx)
        s = (x[i_idx] * x[j_idx]).sum(1)
        if self.asnorm is None:
            return s
        mu, sd = self.asnorm.stats(x)
        return 0.5 * ((s - mu[i_idx]) / sd[i_idx] + (s - mu[j_idx]) / sd[j_idx])


def operating_point(backend: Backend, clips) -> tuple[object, "StoredCalibration | None", int]:
    """What a registry stores after every enroll: ``(OperatingPoint | None, calibration | None, clips needed)``.

    ``estimate_threshold`` on the gallery of K speakers' clips ``[(n_k, E)]`` through ``backend``, and a
    calibration fitted on the same enrollment trials (each clip against its own speaker without it vs. every
    other speaker); ``(None, None, n)`` while ``n`` more clips are needed.
    """
    from spkid.scoring.enrollment import clips_needed, estimate_threshold
    clips = list(clips)
    if len(clips) < 2:
        return None, None, clips_needed([len(c) for c in clips], backend.cfg)
    gallery = backend.gallery(clips)
    op, needed = estimate_threshold(gallery)
    if op is None:
        return None, None, needed
    target, stranger, _ = gallery.enrollment_scores()
    target = target[np.isfinite(target)]
    cal = Calibration.fit(np.r_[target, stranger.ravel()], np.r_[np.ones(target.size), np.zeros(stranger.size)])
    return op, StoredCalibration(cal, f"enrollment trials ({op.n_speakers} speakers, {op.n_clips} clips)"), 0


# the checkpoint's cohort and calibration -----------------------------------------------------------------------

@dataclass
class CheckpointCohort:
    """Training speakers' mean embeddings: ``means`` ``(S, E)`` of raw embeddings, ``centred`` ``(S, E)`` of
    embeddings centred by the source domain's ``domain`` statistics; ``n_utterances`` embedded."""

    means: np.ndarray
    centred: np.ndarray
    domain: DomainStats
    n_utterances: int
    source: str

    def asnorm(self, *, centred: bool, top_n: int = DEFAULT_TOP_N) -> ASNorm:
        """The cohort for scores of raw (``centred=False``) or domain-centred embeddings."""
        return ASNorm(self.centred if centred else self.means, top_n)

    def to_state(self) -> dict:
        import torch
        return {"means": torch.from_numpy(self.means.astype(np.float32)),
                "centred": torch.from_numpy(self.centred.astype(np.float32)),
                "domain": self.domain.to_dict(), "n_utterances": int(self.n_utterances), "source": self.source}

    @classmethod
    def from_state(cls, d: dict, where: str = "checkpoint") -> "CheckpointCohort":
        try:
            means = np.asarray(d["means"].numpy() if hasattr(d["means"], "numpy") else d["means"], np.float64)
            centred = np.asarray(d["centred"].numpy() if hasattr(d["centred"], "numpy") else d["centred"], np.float64)
            out = cls(means, centred, DomainStats.from_dict(d["domain"]), int(d["n_utterances"]), str(d["source"]))
        except (KeyError, TypeError, ValueError, AttributeError, DataError) as e:
            raise CheckpointError(f"{where}: malformed 'cohort' entry ({e})") from None
        if means.ndim != 2 or means.shape != centred.shape or means.shape[0] < 2:
            raise CheckpointError(f"{where}: 'cohort' entry must hold two (S >= 2, E) matrices, got {means.shape}")
        return out

    @classmethod
    def build(cls, emb, labels, source: str) -> "CheckpointCohort":
        """From labelled training embeddings ``(N, E)``, ``labels`` ``(N,)`` (at least 2 speakers)."""
        from spkid.scoring.norm import CohortConfig, build_cohort
        x = _unit(_matrix(emb))
        domain = DomainStats.fit(x)
        cfg = CohortConfig(top_n=DEFAULT_TOP_N, unit="speaker")
        return cls(build_cohort(x, labels, cfg), build_cohort(domain.apply(x), labels, cfg), domain,
                   int(x.shape[0]), source)


def checkpoint_extras(path: str | Path) -> tuple[CheckpointCohort | None, "StoredCalibration | None"]:
    """The cohort and calibration a checkpoint carries (None for each it lacks: trained before they existed)."""
    from spkid.training.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    cohort = ckpt.get("cohort")
    cal = ckpt.get("calibration")
    return (CheckpointCohort.from_state(cohort, str(path)) if cohort is not None else None,
            StoredCalibration.from_dict(cal, str(path)) if cal is not None else None)


@dataclass(frozen=True)
class StoredCalibration:
    """A ``Calibration`` and the trials it was fitted on (``source``, shown beside every probability)."""

    calibration: Calibration
    source: str

    def to_dict(self) -> dict:
        return {**self.calibration.to_dict(), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict, where: str = "calibration") -> "StoredCalibration":
        try:
            return cls(Calibration.from_dict(d), str(d.get("source", "unknown trials")))
        except (DataError, AttributeError, TypeError) as e:
            raise DataError(f"{where}: malformed calibration ({e})") from None
