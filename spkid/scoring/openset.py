"""Open-set use of a trained model: embed files, enroll speakers in a registry, identify, verify, evaluate.

Inputs are files (HW4 ``.pt`` features or audio through the shared front end), folders of them, or an HW4
directory (its ``testdata.json`` utterances). The registry (``spkid.registry``, SQLite) remembers the model
fingerprint and refuses embeddings from another model.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spkid.audio.channel import telephone_copy
from spkid.audio.rooms import room_copy
from spkid.fileio import atomic_write, refuse_overwriting_inputs
from spkid.errors import DataError, SpkidError
from spkid.data.scan import gather, input_files
from spkid.scoring.backend import COHORT_KINDS, DEFAULT_COHORT_WITHOUT_FOLDER, DEFAULT_TOP_N
from spkid.pretrained import stored_name
from spkid.scoring.model import Model, load, none_readable

def embed_files(checkpoint: str | Path, sources, out: str | Path, *, device: str = "auto", runtime: str = "torch",
                threads: int = 0, quantize: bool = False, nproc: int = 0) -> int:
    """Write L2-normalised embeddings of ``sources`` to ``out`` (``.npz``: ids, embeddings; ``.pt``: same dict).

    ``runtime="onnx"``: through ONNX Runtime on the CPU (``threads`` intra-op threads, 0: the free cores);
    ``nproc > 1``: in ``nproc`` processes, resumable shard by shard after a crash (``spkid.scoring.shards``).
    """
    out = Path(out)
    if out.suffix not in (".npz", ".pt"):
        raise SpkidError(f"{out}: output must end in .npz or .pt")
    refuse_overwriting_inputs([out], [checkpoint, *input_files(sources)])
    model = load(checkpoint, "cpu" if nproc > 1 else device, runtime=runtime, threads=threads, quantize=quantize)
    ids, items = gather(sources)
    run = None
    if nproc > 1:
        from spkid.scoring.shards import item_lengths, run_sharded
        run = run_sharded("embed", [model], items, item_lengths(items, model.cfg.features.n_mels), out,
                          nproc=nproc, device=device, threads=threads)
        emb = run.values                                       # (N, E)
    failed: list[tuple[str, str]] = []                        # (id, why): unreadable files, listed in the output
    if nproc <= 1:
        fails: list = []
        feats = model.features(items, failures=fails)
        if len(fails) == len(items):
            raise none_readable(fails)
        failed = [(ids[k], why) for k, why in fails]
        ids = [i for i, f in zip(ids, feats) if f is not None]
        emb = F.normalize(model.embed_raw([f for f in feats if f is not None]), dim=-1)   # (N, E)

    def write(tmp):
        extra = {"failed_ids": [i for i, _ in failed], "failed_reasons": [w for _, w in failed]}
        if out.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.array(ids), embeddings=emb.numpy(), model_id=np.array(model.model_id),
                         **{k: np.array(v, dtype=str) for k, v in extra.items()})
        else:
            torch.save({"ids": ids, "embeddings": emb, "model_id": model.model_id, **extra}, tmp)
    atomic_write(out, write)
    if run is not None:
        from spkid.scoring.shards import remove_shards
        remove_shards(run)
    return len(ids)


def default_threshold(model: Model) -> tuple[float, str]:
    """The EER threshold measured on the run's validation utterances, if the checkpoint has one."""
    if model.val_eer_threshold is not None:
        return float(model.val_eer_threshold), "validation EER (training speakers)"
    return 0.5, "default 0.5"


MIN_CLIP_SECONDS = 1.0                # an enrollment clip with less audio than this is flagged


@dataclass(frozen=True)
class ClipFlag:
    """An enrollment clip flagged at enroll: ``reason`` ``outlier`` (``value`` = its robust z-score against the
    speaker's other clips) or ``short`` (``value`` = seconds of audio); ``refused``: left out of the registry."""

    source: str
    reason: str
    value: float
    refused: bool

    def describe(self) -> str:
        what = (f"far from the speaker's other clips (z = {self.value:.1f})" if self.reason == "outlier" else
                f"only {self.value:.2f} s of audio (under {MIN_CLIP_SECONDS:g} s)")
        return f"{self.source}: {what}; {'refused' if self.refused else 'kept'}"


@dataclass
class EnrollResult:
    """What ``enroll`` did: ``n_utterances`` now enrolled for ``name`` (``added`` by this call), clips flagged,
    the registry's operating point afterwards (``threshold.clips_needed > 0``: still the checkpoint's fallback),
    and the domain adaptation done in the same step (``adaptation``, or None)."""

    name: str
    n_utterances: int
    added: int
    checkpoint: str
    flags: list[ClipFlag]
    threshold: object                # speaker_db.ThresholdState
    adaptation: str | None = None


@dataclass
class AdaptResult:
    """What ``adapt`` stored: ``source`` (where the statistics and cohort came from), the registry's operating
    point afterwards, and ``replaced_locked`` (the source of a locked threshold that no longer applied)."""

    source: str
    threshold: object                # speaker_db.ThresholdState
    replaced_locked: str | None = None


def _item_sources(items) -> list[str]:
    return [str(Path(i).resolve()) if isinstance(i, Path) else i for i in items]


def _check_same_model(reg, model: Model) -> None:
    if model.model_id != reg.model_id:
        raise SpkidError(f"{reg.path}: registry holds embeddings of model {reg.model_id}, {model.path} is model "
                         f"{model.model_id} (use a registry per model, or re-enroll)")


def _registry_model(reg, checkpoint, device):
    """The model that embeds for an existing registry (``checkpoint`` or the registry's own), checked against it."""
    model = load(checkpoint or reg.checkpoint, device)
    _check_same_model(reg, model)
    return model


def domain_adaptation(model: Model, folder, *, whiten: bool = False, cohort: str | None = None,
                      top_n: int = DEFAULT_TOP_N):
    """``(DomainStats | None, cohort, source)`` for a folder of unlabelled clips of the target domain.

    ``folder`` None: no domain statistics. ``cohort``: ``folder`` (the folder's adapted embeddings, default when
    there is a folder), ``checkpoint`` (the training speakers stored in the checkpoint) or ``none`` (default
    without a folder: measured to hurt across domains, ``backend.DEFAULT_COHORT_WITHOUT_FOLDER``).
    """
    from spkid.scoring.norm import ASNorm, DomainStats
    cohort = cohort or ("folder" if folder is not None else DEFAULT_COHORT_WITHOUT_FOLDER)
    if cohort not in COHORT_KINDS:
        raise SpkidError(f"cohort {cohort!r} unknown; choose one of {', '.join(COHORT_KINDS)}")
    if cohort == "folder" and folder is None:
        raise SpkidError("a folder cohort needs a folder of the new domain's clips")
    if whiten and folder is None:
        raise SpkidError("--whiten needs a folder of the new domain's clips (its covariance)")
    if top_n < 2:
        raise SpkidError(f"AS-norm top-n {top_n}: must be >= 2")
    if folder is None:
        domain, parts = None, []
    else:
        _, items = gather(folder)
        if len(items) < 2:
            raise DataError(f"{folder}: domain statistics need at least 2 clips, found {len(items)}")
        emb = model.embed(items).numpy().astype(np.float64)
        domain = DomainStats.fit(emb, whiten=whiten)
        parts = [f"{'centred and whitened' if whiten else 'centred'} on {len(items)} clips of {folder}"]
    if cohort == "folder":
        norm = ASNorm(domain.apply(emb), top_n)
        parts.append(f"AS-norm cohort: those {len(items)} clips (top {top_n})")
    elif cohort == "checkpoint":
        from spkid.scoring.backend import checkpoint_extras
        if checkpoint_extras(model.path)[0] is None:
            raise SpkidError(f"{model.path}: has no training-speaker cohort (trained by an older spkid)")
        norm = "checkpoint"
        parts.append(f"AS-norm cohort: the training speakers of {model.path.name} (top {top_n})")
    else:
        norm = None
    return domain, norm, "; ".join(parts) or "none (raw embeddings)"


def enroll(registry: str | Path, name: str, files, *, checkpoint: str | Path | None = None, device: str = "auto",
           on_outlier: str = "keep", domain=None, whiten: bool = False, cohort: str | None = None,
           top_n: int = DEFAULT_TOP_N) -> EnrollResult:
    """Add ``files`` of speaker ``name``, then re-estimate the registry's operating point.

    Clips with under ``MIN_CLIP_SECONDS`` of audio, or far from the speaker's other clips (robust z below
    ``-EnrollConfig.outlier_z``, ``enrollment.flag_outliers``), are flagged; ``on_outlier="refuse"`` leaves
    them out. ``domain``: a folder of unlabelled clips of the target domain, adapted to in the same step
    (``adapt``). Returns the facts (``EnrollResult``); the caller decides what to print.
    """
    from spkid.scoring.speaker_db import SpeakerDB
    if on_outlier not in ("keep", "refuse"):
        raise SpkidError(f"--on-outlier {on_outlier!r}: choose keep or refuse")
    registry = Path(registry)
    refuse_overwriting_inputs([registry], [*([checkpoint] if checkpoint else []), *gather(files)[1],
                                           *(gather(domain)[1] if domain is not None else [])])
    reg_ctx = None
    try:
        if registry.exists():
            reg_ctx = SpeakerDB.open(registry)
            model = _registry_model(reg_ctx, checkpoint, device)
        else:
            if checkpoint is None:
                from spkid.pretrained import DEFAULT
                checkpoint = DEFAULT                   # a new registry without a model: the shipped one
            model = load(checkpoint, device)
        ids, items = gather(files)
        fails: list = []                # unreadable clips are left out with a warning; all unreadable: an error
        named = _item_sources(items)
        pairs = model.features(items, failures=fails, channel=enrollment_copies)
        if len(fails) == len(items):    # before creating a new registry: nothing readable leaves no registry
            raise none_readable(fails)
        kept = [(s, f, c) for s, (f, c) in zip(named, pairs) if f is not None]
        sources, feats = [s for s, _, _ in kept], [f for _, f, _ in kept]
        emb = F.normalize(model.embed_raw(feats), dim=-1).numpy()
        copies = channel_copies(model, [(s, c) for s, _, c in kept if c is not None])
        adaptation = None
        if domain is not None or cohort is not None or whiten:
            adaptation = domain_adaptation(model, domain, whiten=whiten, cohort=cohort, top_n=top_n)
    except BaseException:
        if reg_ctx is not None:
            reg_ctx.close()
        raise
    if reg_ctx is None:
        threshold, source = default_threshold(model)
        reg_ctx = SpeakerDB.create(registry, model_id=model.model_id, checkpoint=stored_name(checkpoint),
                                   embed_dim=model.net.embed_dim, threshold=threshold, threshold_source=source)
    with reg_ctx as reg:
        if adaptation is not None:
            reg.set_adaptation(*adaptation[:2], adaptation[2], top_n=top_n)
        r = add_clips(reg, name, sources, feats, emb, model=model, on_outlier=on_outlier, channels=copies)
        r.adaptation = adaptation[2] if adaptation is not None else None
        return r


# the simulated channels each enrolled audio clip is also stored through (SpeakerDB.CHANNELS, in its order), and
# how many renderings of it are averaged: what diarization names a telephone call, or a voice recorded across a
# room, against (names.Enrolled). One line or one room per clip made the names depend on the draw; the mean of four
# is the voice on the phone or across a room rather than on that line or in that room (four telephone lines instead
# of one: 54.1 -> 57.1 % of the full benchmark's calls named right, strangers on calls named 21.0 -> 14.7 %;
# docs/diarization.md)
COPIES = {"telephone": (telephone_copy, 4), "room": (room_copy, 4)}


def enrollment_copies(_k: int, wav: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """``Model.features``'s ``channel``: an item's speech ``(S,)`` through each channel of ``COPIES``,
    ``{channel: [(S,), ...]}`` (its renderings), drawn from the samples themselves (``content_key``), so the same
    audio gets the same copies whatever its file is called or wherever it lies, and enrolling it again too (the
    item's index ``_k`` plays no part)."""
    key = content_key(wav)
    return {ch: [copy(wav, channel_seed(key, ch, r)) for r in range(n)] for ch, (copy, n) in COPIES.items()}


def content_key(wav: torch.Tensor) -> str:
    """A name for a waveform ``(S,)`` from its float32 samples (SHA-256, 16 hex digits)."""
    data = torch.as_tensor(wav, dtype=torch.float32).detach().cpu().contiguous().numpy().tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def channel_seed(key: str, channel: str = "telephone", rendering: int = 0) -> int:
    """The seed of one rendering of a clip through a channel: from the clip's ``content_key``, the channel's name and
    the rendering's number."""
    return zlib.crc32(f"{channel}:{rendering}:{key}".encode("utf-8", "surrogatepass"))


def copy_rows(copies: list[tuple[str, dict[str, list[torch.Tensor]]]]) -> list[tuple[str, str, torch.Tensor]]:
    """``[(source, channel, features (T, F))]``, one row per rendering, of clips' copies ``[(source, {channel:
    [features of each rendering]})]`` (``Model.features(..., channel=enrollment_copies)``)."""
    return [(s, ch, f) for s, by in copies for ch, fs in by.items() for f in fs]


def mean_copies(rows: list[tuple[str, str, torch.Tensor]], emb: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """``{channel: {source: L2-normalised embedding (E,)}}``: the mean of each clip's renderings' embeddings ``emb``
    ``(len(rows), E)`` (L2-normalised, in ``copy_rows`` order)."""
    acc: dict[str, dict[str, np.ndarray]] = {}
    for (s, ch, _), e in zip(rows, np.asarray(emb, dtype=np.float64)):
        by = acc.setdefault(ch, {})
        by[s] = by[s] + e if s in by else e.copy()
    return {ch: {s: (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32) for s, v in by.items()}
            for ch, by in acc.items()}


def channel_copies(model: Model, copies: list[tuple[str, dict[str, list[torch.Tensor]]]]
                   ) -> dict[str, dict[str, np.ndarray]]:
    """``mean_copies`` of clips' copies ``[(source, {channel: [features (T, F)]})]``, embedded in one batch."""
    rows = copy_rows(copies)
    if not rows:
        return {}
    return mean_copies(rows, F.normalize(model.embed_raw([f for _, _, f in rows]), dim=-1).numpy())


def add_clips(reg, name: str, sources: list[str], feats, emb: np.ndarray, *, model: Model,
              on_outlier: str = "keep", channels: dict[str, dict[str, np.ndarray]] | None = None) -> EnrollResult:
    """Enroll clips already embedded into an open registry: flag short clips (features ``[(T_i, F)]``) and outliers
    among the speaker's clips, leave refused ones out, then one ``reg.enroll`` transaction (the clips and the new
    operating point land together or not at all). ``emb`` ``(N, E)`` L2-normalised, one row per ``sources`` entry;
    ``channels`` the clips' channel copies (``channel_copies``), stored for the clips that are enrolled."""
    from spkid.scoring.enrollment import flag_outliers
    hop_s = model.cfg.features.hop / model.cfg.features.sample_rate
    flags = [ClipFlag(src, "short", f.shape[0] * hop_s, on_outlier == "refuse")
             for src, f in zip(sources, feats) if f.shape[0] * hop_s < MIN_CLIP_SECONDS]
    kept = {src for src, _ in zip(sources, emb)} - {fl.source for fl in flags if fl.refused}
    old = [(s, e) for n, srcs, c in reg.clips() if n == name for s, e in zip(srcs, c) if s not in set(sources)]
    new = [(s, e) for s, e in zip(sources, emb) if s in kept]
    both = old + new
    if len(both) >= 3:
        adapted = reg.backend("registry").adapt(np.stack([e for _, e in both]))
        flagged, z = flag_outliers(adapted, reg.enroll_config)
        short = {fl.source for fl in flags}
        flags += [ClipFlag(s, "outlier", float(zk), on_outlier == "refuse")
                  for (s, _), f, zk in zip(both[len(old):], flagged[len(old):], z[len(old):])
                  if f and s not in short]
    refused = {fl.source for fl in flags if fl.refused}
    new = [(s, e) for s, e in new if s not in refused]
    if not new:
        raise DataError(f"{reg.path}: nothing enrolled for {name!r}: every clip was refused "
                        f"({'; '.join(fl.describe() for fl in flags)})")
    kept_sources = {s for s, _ in new}
    copies = {ch: {s: e for s, e in by.items() if s in kept_sources} for ch, by in (channels or {}).items()}
    n = reg.enroll(name, np.stack([e for _, e in new]), [s for s, _ in new], model_id=model.model_id,
                   channels=copies)
    return EnrollResult(name, n, len(new), reg.checkpoint, flags, reg.threshold_state())


def registry_threshold(registry: str | Path):
    """The threshold ``identify`` decides with, its source and the scores it is on (``speaker_db.ThresholdState``)."""
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(registry) as reg:
        return reg.threshold_state()


def adapt(registry: str | Path, folder=None, *, whiten: bool = False, cohort: str | None = None,
          top_n: int = DEFAULT_TOP_N, device: str = "auto") -> AdaptResult:
    """Adapt a registry to its target domain: ``DomainStats`` of ``folder`` (unlabelled clips; ``whiten``
    optional) and an AS-norm cohort (default: the folder's clips); every later score uses them. No folder and no
    cohort: back to raw embeddings. The operating point is re-estimated (a locked threshold is replaced)."""
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(registry) as reg:
        model = _registry_model(reg, None, device)
        domain, norm, source = domain_adaptation(model, folder, whiten=whiten, cohort=cohort, top_n=top_n)
        was = reg.threshold_source if reg.threshold_locked else None
        reg.set_adaptation(domain, norm, source, top_n=top_n)
        return AdaptResult(source, reg.refresh_threshold(), was)


def identify(registry: str | Path, files, *, top_k: int = 1, device: str = "auto", runtime: str = "torch",
             threads: int = 0) -> list[tuple]:
    """Rows ``(file, speaker | "unknown", score)``; with ``top_k > 1`` also the runners-up ``(file, spk, score)``.

    ``runtime="onnx"`` embeds through ONNX Runtime (the registry's embeddings may come from either runtime:
    they agree within 1e-4)."""
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(registry) as reg:
        model = load(reg.checkpoint, device, runtime=runtime, threads=threads)
        if model.model_id != reg.model_id:
            raise SpkidError(f"{registry}: checkpoint {reg.checkpoint} has changed since enrollment "
                             f"(model {model.model_id} != {reg.model_id}); re-enroll")
        if not reg.speakers():
            raise SpkidError(f"{registry}: no speakers enrolled yet")
        ids, items = gather(files)
        fails: list = []               # unreadable files: a row "error:<why>" with no score, a warning each
        feats = model.features(items, failures=fails)
        good = [k for k, f in enumerate(feats) if f is not None]
        if not good:
            raise none_readable(fails)
        emb = F.normalize(model.embed_raw([feats[k] for k in good]), dim=-1)
        decided = dict(zip(good, reg.decide(emb)))
        ranked = dict(zip(good, reg.identify(emb, top_k=top_k))) if top_k > 1 else {}
    why = dict(fails)
    rows = []
    for k, fid in enumerate(ids):
        if k in why:
            rows.append((fid, f"error:{why[k]}", ""))
            continue
        spk, score = decided[k]
        rows.append((fid, spk, round(score, 4)))
        for alt, s in (ranked[k][1:] if ranked else []):
            rows.append((fid, f"candidate:{alt}", round(s, 4)))
    return rows


@dataclass
class VerifyResult:
    """``score`` (cosine, or the registry's back-end score), ``same`` (score >= threshold), ``threshold`` and its
    ``threshold_source``; ``probability`` of "same speaker" under ``prior`` when a calibration on these scores
    exists (``calibration_source`` says which trials it was fitted on); ``scoring``: the back end in words."""

    score: float
    same: bool
    threshold: float
    threshold_source: str
    scoring: str
    probability: float | None = None
    prior: float = 0.5
    calibration_source: str | None = None


def _check_prior(prior: float) -> float:
    if not 0.0 < prior < 1.0:
        raise SpkidError(f"--prior {prior}: must be in (0, 1)")
    return float(prior)


def verify(checkpoint: str | Path, a, b, *, threshold: float | None = None, device: str = "auto",
           registry: str | Path | None = None, prior: float = 0.5) -> VerifyResult:
    """Score two files: cosine of their embeddings, or with ``registry`` its back end (domain statistics, AS-norm)
    and its threshold. A calibration (the registry's, else the checkpoint's for raw cosines) adds the probability
    of "same speaker" under ``prior``."""
    from spkid.scoring.backend import Backend, checkpoint_extras
    from spkid.scoring.speaker_db import SpeakerDB
    prior = _check_prior(prior)
    model = load(checkpoint, device)
    cal = None
    if registry is not None:
        with SpeakerDB.open(registry) as reg:
            _check_same_model(reg, model)
            backend = reg.backend()
            thr, source = reg.threshold, f"registry: {reg.threshold_source}"
            cal = reg.calibration if reg.threshold_scale == "registry" else None
    else:
        backend = Backend()
        thr, source = default_threshold(model)
    if cal is None and backend.raw:
        cal = checkpoint_extras(checkpoint)[1]
    if threshold is not None:
        thr, source = threshold, "--threshold"
    if not math.isfinite(thr):
        raise SpkidError(f"verify --threshold {thr}: must be a finite number")
    emb = model.embed([Path(a), Path(b)]).numpy().astype(np.float64)
    if not np.all(np.isfinite(emb)):
        raise SpkidError(f"{checkpoint}: the model embeds {a} or {b} as NaN/Inf; the checkpoint is corrupt or diverged")
    score = float(backend.pair_scores(emb[:1], emb[1:])[0, 0])
    if not math.isfinite(score):
        raise SpkidError(f"{checkpoint}: the model scores {a} against {b} as {score} (not finite); the checkpoint is "
                         "corrupt or diverged")
    prob = float(cal.calibration.probability(np.array([score]), prior)[0]) if cal is not None else None
    return VerifyResult(score, score >= thr, float(thr), source, backend.describe(pairs=True), prob, prior,
                        cal.source if cal is not None else None)


def eval_verification(checkpoint: str | Path, data_dir: str | Path, *, far: float | None = None,
                      max_nontarget: int = 200_000, device: str = "auto", progress: bool = True,
                      registry: str | Path | None = None, prior: float = 0.5) -> dict:
    """EER, minDCF (p_target 0.01), Cllr and minCllr on trials among speakers of ``data_dir`` the model never saw.

    ``data_dir`` is an HW4 directory (``metadata.json`` + ``mapping.json``); its speakers that are in the
    checkpoint's training list are left out. The threshold is the EER point, or the one at false-accept rate
    ``far``; a calibration (score -> LLR, ``prior``) is fitted on the trials: ``cllr`` is the Cllr of that fit
    (on the trials it was fitted on), ``min_cllr`` the best any monotone calibration reaches, ``cllr_stored`` the
    Cllr of the calibration already stored (checkpoint or registry) when there is one. With ``registry`` the
    scores go through its back end (domain statistics, AS-norm) and the threshold and calibration are stored in
    it, locked (enroll keeps them).
    """
    from spkid.data.features import load_train_features
    from spkid.scoring.backend import Backend, StoredCalibration, checkpoint_extras
    from spkid.scoring.calibration import Calibration, cllr, min_cllr
    from spkid.scoring.metrics import eer, make_trials, min_dcf, threshold_at_far
    from spkid.scoring.speaker_db import SpeakerDB
    prior = _check_prior(prior)
    model = load(checkpoint, device)
    reg = SpeakerDB.open(registry) if registry is not None else None
    try:
        if reg is not None:
            _check_same_model(reg, model)
        backend = reg.backend("registry") if reg is not None else Backend()
        data = load_train_features(data_dir, model.cfg.features.n_mels, progress=progress,
                                   definition=model.cfg.features)
        seen = set(model.speakers)
        keep = [i for i, u in enumerate(data.utts) if u.speaker not in seen]
        if not keep:
            raise DataError(f"{data_dir}: every speaker here was seen in training; verification needs unseen speakers")
        labels = [data.utts[i].speaker for i in keep]
        emb = model.embed([data.feats[i] for i in keep]).numpy()
        i_idx, j_idx, target = make_trials(labels, max_nontarget=max_nontarget)
        if not target.any() or target.all():
            raise DataError(f"{data_dir}: verification needs same-speaker and different-speaker pairs "
                            f"({int(target.sum())} target, {int((~target).sum())} non-target)")
        scores = backend.trial_scores(emb, i_idx, j_idx)
        e, t_eer = eer(scores, target)
        dcf, _ = min_dcf(scores, target, p_target=0.01)
        thr = threshold_at_far(scores, target, far) if far is not None else t_eer
        cal = StoredCalibration(Calibration.fit(scores, target, prior=prior),
                                f"eval-verification trials of {Path(data_dir).name} ({len(set(labels))} speakers)")
        stored = (reg.calibration if reg is not None and reg.threshold_scale == "registry"
                  else checkpoint_extras(checkpoint)[1] if backend.raw else None)
        source = f"far={far}" if far is not None else "eer"
        if reg is not None:
            reg.set_threshold(thr, f"{source} on {Path(data_dir).name}", locked=True, scale="registry")
            reg.set_calibration(cal)
    finally:
        if reg is not None:
            reg.close()
    return {"eer": e, "min_dcf": dcf, "threshold": thr, "threshold_source": source,
            "cllr": cllr(cal.calibration.llr(scores), target), "min_cllr": max(0.0, min_cllr(scores, target)),
            "cllr_stored": cllr(stored.calibration.llr(scores), target) if stored is not None else None,
            "stored_calibration_source": stored.source if stored is not None else None,
            "calibration": cal.to_dict(), "scoring": backend.describe(pairs=True), "registry": str(registry) if registry else None,
            "n_speakers": len(set(labels)), "n_utterances": len(keep), "n_target": int(target.sum()),
            "n_nontarget": int((~target).sum())}
