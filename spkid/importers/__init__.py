"""``spkid import``: models made elsewhere, read from local files as data, written as spkid checkpoints.

- ``speechbrain``: a SpeechBrain speaker-embedding folder (ECAPA-TDNN) -> spkid's own modules (``arch`` ``spkid``);
- ``onnx``: an ONNX speaker embedder with a declared front end, run by ONNX Runtime (``arch`` ``onnx``);
- ``resemblyzer``: the GE2E encoder inside the ``resemblyzer`` wheel (``arch`` ``ge2e``).

Nothing is fetched and nothing from the source is executed: YAML is parsed as data, weights are read with
``torch.load(weights_only=True)``. The written checkpoint carries a ``card`` (``spkid info MODEL`` shows it) and
loads through ``spkid.scoring.loader`` like any other. ``save_imported`` is the one writer.
"""
from __future__ import annotations

from pathlib import Path

import torch

from spkid.config import RunConfig
from spkid.errors import CheckpointError

SOURCES = ("speechbrain", "onnx", "resemblyzer")
NO_LICENCE = "not stated (give --licence)"


def save_imported(out: str | Path, cfg: RunConfig, state: dict, card: dict, *, onnx: bytes | None = None) -> str:
    """Write an imported model as a spkid checkpoint (no speakers: an embedder); returns its fingerprint.

    The checkpoint is read back through the loader before this returns, so a model that would not load is never
    left behind silently."""
    from spkid.scoring.loader import open_model
    from spkid.training.checkpoint import save_checkpoint
    entry = {"config": cfg.to_dict(), "speakers": [], "model": state, "n_classes": 0,
             "card": {k: str(v) for k, v in card.items()}}
    if onnx is not None:
        entry["onnx"] = torch.frombuffer(bytearray(onnx), dtype=torch.uint8).clone()
    out = Path(out)
    save_checkpoint(out, entry)
    try:
        return open_model(out).model_id
    except Exception:
        out.unlink(missing_ok=True)
        raise


def check_state(own: dict, state: dict, source: str) -> None:
    """One-line error naming ``source`` when ``state`` does not fit ``own`` (missing, unexpected, shape)."""
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shape:
        what = (f"no weight for {missing[0]!r}" if missing else f"weight {extra[0]!r} has no place in the model"
                if extra else f"{shape[0]!r} is {tuple(state[shape[0]].shape)}, the architecture needs "
                f"{tuple(own[shape[0]].shape)}")
        raise CheckpointError(f"{source}: weights do not match the architecture its configuration describes ({what})")


def read_weights(path: Path) -> dict:
    """A ``torch.save``d dict of tensors, read with ``weights_only=True``; one-line errors for the rest."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or ["empty or truncated"])[0][:120]
        raise CheckpointError(f"{path}: cannot read weights: corrupt, truncated or holding code ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(state).__name__}")
    return state
