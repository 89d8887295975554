"""One checkpoint dict per file, written atomically and read with ``weights_only=True``.

Keys: ``spkid`` (format version), ``config`` (resolved RunConfig as a dict, features included), ``speakers``
(names by class id), ``model`` (state dict), ``optimizer``, ``average`` (state of the weight average, or None),
``step``, ``elapsed`` (training seconds so far), ``rng`` (torch CPU/CUDA and Python generator states) and
``rng_ranks`` (one per DDP rank, when several), ``n_classes`` (head size: more than the speakers with speed
perturbation, whose extra classes inference ignores), ``best_val``, ``val_acc``, ``val_eer``, ``val_eer_threshold``
(after a validation), ``device``, ``amp`` (the precision that ran), ``data_fingerprint`` (speakers and index of
the training data), and in a finished run's checkpoints ``cohort`` (training speakers' mean embeddings with the
source ``DomainStats``) and ``calibration`` (score -> LLR on validation pairs; ``spkid.training.cohort``).
Inference needs only ``spkid``, ``config``, ``speakers`` and ``model``.

An imported model (``spkid import``, ``spkid.importers``) also has ``card``: where it came from, as plain strings
(``arch``, ``source``, ``origin``, ``licence``, ``frontend``, ...); ``arch`` says which network the weights are for
(``ARCHS``: ``spkid``, a ``SpeakerNet`` built from the config; ``ge2e``, Resemblyzer's LSTM; ``onnx``, a graph run by
ONNX Runtime, held as bytes in ``onnx``, with ``model`` empty). Its ``speakers`` list may be empty: an embedder
trained on other people has no classes to predict.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from spkid.config import RunConfig
from spkid.errors import CheckpointError, ConfigError
from spkid.fileio import atomic_write

FORMAT = 2                     # 2: config with features/augment sections and per-encoder settings
ARCHS = ("spkid", "ge2e", "onnx")   # card["arch"] of an imported model; a checkpoint without a card is "spkid"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (plus the format marker) to ``path`` atomically; non-finite weights are never saved."""
    bad = [k for k, v in state.get("model", {}).items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: not saved: weights {bad[0]!r} hold NaN/Inf (the run diverged); "
                              "the previous checkpoint is kept")
    atomic_write(path, lambda tmp: torch.save({"spkid": FORMAT, **state}, tmp))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_model_spec(arg: str) -> bool:
    """Whether a command-line argument names a model: a shipped name, a ``.ckpt`` file, or a ``.pt`` file holding a
    spkid checkpoint (HW4 feature tensors are ``.pt`` files too)."""
    from spkid.pretrained import NAMES
    p = Path(arg)
    if arg in NAMES or (p.suffix == ".ckpt" and p.is_file()):
        return True
    if p.suffix != ".pt" or not p.is_file():
        return False
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(obj, dict) and "spkid" in obj


def load_checkpoint(path: str | Path) -> dict:
    """Read and check a spkid checkpoint (tensors and plain data only); ``path`` may be a shipped name
    (``spkid.pretrained``: ``"base"``)."""
    from spkid.pretrained import NAMES, resolve
    name, path = str(path), resolve(path)
    if not path.is_file():
        if name in NAMES:
            raise CheckpointError(f"{name}: the shipped model's file {path} is missing (a broken install); "
                                  "reinstall spkid")
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else "empty or truncated"
        first = f"corrupt, truncated or not a torch.save file ({type(e).__name__}: {first[:120]})"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "refused: holds objects other than tensors and plain data (unsafe pickle)"
        raise CheckpointError(f"{path}: cannot read checkpoint: {first[:200]}") from None
    if not isinstance(ckpt, dict) or "spkid" not in ckpt:
        raise CheckpointError(f"{path}: not a spkid checkpoint (no \"spkid\" entry)")
    for key in ("config", "speakers", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: not a spkid checkpoint (no {key!r} entry)")
    for key, kind in (("spkid", int), ("config", dict), ("speakers", list), ("model", dict)):
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path}: {key!r} entry must be {kind.__name__}, found {type(ckpt[key]).__name__}")
    card = _check_card(ckpt, path)
    _check_diarization(ckpt, path)
    if (not ckpt["speakers"] and card is None) or not all(isinstance(s, str) for s in ckpt["speakers"]):
        raise CheckpointError(f"{path}: 'speakers' entry must be a non-empty list of names")
    for k, v in ckpt["model"].items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: 'model' entry must map parameter names to tensors ({k!r} is not)")
        kind = ("sparse" if v.layout != torch.strided else "meta" if v.is_meta else "nested" if v.is_nested
                else "quantised" if v.is_quantized else None)
        if kind or v.dtype not in (torch.float16, torch.float32, torch.bfloat16, torch.float64, torch.int64):
            raise CheckpointError(f"{path}: weight {k!r} is a {kind or v.dtype} tensor; spkid saves dense float tensors")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: weight {k!r} holds NaN/Inf (a diverged run); use an earlier checkpoint")
    if ckpt["spkid"] > FORMAT:
        raise CheckpointError(f"{path}: written by a newer spkid (format {ckpt['spkid']} > {FORMAT})")
    if ckpt["spkid"] < FORMAT:
        raise CheckpointError(f"{path}: written by an older spkid (format {ckpt['spkid']} < {FORMAT}, before the "
                              "configuration gained its features section); retrain with this version")
    return ckpt


def _check_card(ckpt: dict, path) -> dict | None:
    """The card of an imported model (None for a trained one), checked: plain strings, a known ``arch``, and for
    ``onnx`` the graph bytes."""
    card = ckpt.get("card")
    if card is None:
        return None
    if not isinstance(card, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in card.items()):
        raise CheckpointError(f"{path}: 'card' entry must map names to strings")
    arch = card.get("arch", "spkid")
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown architecture {arch!r} (this spkid knows {list(ARCHS)})")
    graph = ckpt.get("onnx")
    if arch == "onnx" and not (isinstance(graph, torch.Tensor) and graph.dtype == torch.uint8 and graph.dim() == 1
                               and graph.numel() > 0):
        raise CheckpointError(f"{path}: an imported ONNX model needs its graph as a 'onnx' uint8 tensor")
    return card


TUNED = ("merge_raw", "resplit")    # the diarize settings a model may carry (spkid tune-diarization)


def _check_diarization(ckpt: dict, path) -> None:
    """A model's own diarization cosines (``spkid tune-diarization``): ``{"merge_raw": c, "resplit": c,
    "tuned_on": text}``, each cosine in [0, 1)."""
    own = ckpt.get("diarization")
    if own is None:
        return
    if not isinstance(own, dict) or set(own) - {*TUNED, "tuned_on"} or not isinstance(own.get("tuned_on", ""), str):
        raise CheckpointError(f"{path}: 'diarization' entry must hold {' / '.join(TUNED)} cosines and a 'tuned_on' "
                              "note")
    for k in TUNED:
        if k in own and not (isinstance(own[k], float) and 0 <= own[k] < 1):
            raise CheckpointError(f"{path}: 'diarization' {k} {own[k]!r}: a cosine in [0, 1) (0: off)")


def model_card(ckpt: dict) -> dict:
    """The card of a checkpoint: an imported model's own, or a trained one's ``{"arch": "spkid", ...}``."""
    return dict(ckpt["card"]) if "card" in ckpt else {"arch": "spkid", "source": "trained with spkid"}


def checkpoint_config(ckpt: dict, path: str | Path) -> RunConfig:
    try:
        return RunConfig.from_dict(ckpt["config"], f"{path} (config)", stored=True)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def build_checked(cfg: RunConfig, n_speakers: int, state: dict, path: str | Path):
    """The model of ``cfg`` with the weights ``state``: shapes are compared on the ``meta`` device first, so a config
    asking for a huge model allocates nothing unless the checkpoint really holds those weights."""
    from spkid.models import build_model
    with torch.device("meta"):
        shell = build_model(cfg, n_speakers)
    _check_fit(shell.state_dict(), state, path)
    net = build_model(cfg, n_speakers)
    load_weights(net, state, path)
    return net


def _check_fit(own: dict, state: dict, path) -> None:
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shape:
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra
                  else f"shape of {shape[0]} is {tuple(state[shape[0]].shape)}, model has {tuple(own[shape[0]].shape)}")
        raise CheckpointError(f"{path}: weights do not fit this model configuration ({detail})")


def load_weights(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """``load_state_dict`` with a one-line error when the checkpoint belongs to another model configuration."""
    _check_fit(model.state_dict(), state, path)
    model.load_state_dict(state)


def checkpoint_fingerprint(ckpt: dict) -> str:
    """``model_fingerprint`` of the weights a checkpoint runs: its ``model`` state, and an ONNX graph's bytes."""
    return model_fingerprint({**ckpt["model"], **({"onnx": ckpt["onnx"]} if "onnx" in ckpt else {})})


def model_fingerprint(state: dict) -> str:
    """A short stable id of a model's weights (which model made an embedding)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(speakers: list[str], utts) -> str:
    """A short id of a training set: its speaker list and every utterance's (path, frames, speaker)."""
    h = hashlib.sha256("\n".join(speakers).encode())
    for u in utts:
        h.update(f"{u.feature_path}|{u.mel_len}|{u.speaker}\n".encode())
    return h.hexdigest()[:16]


def training_state(cfg: RunConfig, speakers: list[str], model, opt, avg, *, step: int, elapsed: float,
                   best_val: float | None, val: dict, rng_ranks: list | None, device, amp: str, data) -> dict:
    """The checkpoint dict of a training run at ``step`` (see the module docstring for the keys)."""
    return {"config": cfg.to_dict(), "speakers": list(speakers), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "average": avg.state_dict() if avg is not None else None,
            "step": step, "elapsed": elapsed, "rng": rng_state(), "best_val": best_val, **val,
            "device": str(device), "amp": amp, "data_fingerprint": data.fingerprint, "n_classes": data.n_classes,
            **({"rng_ranks": rng_ranks} if rng_ranks and len(rng_ranks) > 1 else {})}


def load_resume_state(path: Path, cfg: RunConfig) -> dict:
    """``last.ckpt`` of a run to continue with ``cfg``: complete (optimizer, step, RNG) and made with the same
    features, data, augmentation and model settings."""
    ckpt = load_checkpoint(path)
    saved = checkpoint_config(ckpt, path)
    missing = [k for k in ("optimizer", "step", "elapsed", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: cannot resume: no {missing[0]!r} entry "
                              "(a stripped or inference-only checkpoint)")
    for section in ("features", "data", "augment", "model"):
        if getattr(saved, section) != getattr(cfg, section):
            raise CheckpointError(f"{path}: the run was made with other {section} settings; resume with the run's "
                                  "own config (drop --config and overrides of that section)")
    return ckpt
