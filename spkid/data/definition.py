"""Which log-mel definition a folder of ``.pt`` features was made with, and refusing a model that reads another.

``spkid prepare`` writes ``features.json`` (the ``FeatureConfig`` fields, plus ``vad``) beside its tensors; a folder
without one holds HW4 tensors, made with the HW4 definition (``FeatureConfig()``). A model trained on one definition
reads another's tensors without any error — same shape, other numbers — so both training and inference compare.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from spkid.config import FeatureConfig
from spkid.errors import DataError

DEFINITION_FILE = "features.json"
_NAMES = ("sample_rate", "n_fft", "hop", "n_mels", "f_min", "f_max", "floor")


def _key(f: FeatureConfig) -> tuple:
    """The ``_NAMES`` fields as numbers (they change the tensors), ``f_max`` 0 spelled out as the Nyquist frequency."""
    return tuple(float(f.f_max or f.sample_rate / 2) if n == "f_max" else float(getattr(f, n)) for n in _NAMES)


def feature_definition(folder: Path) -> FeatureConfig:
    """The ``FeatureConfig`` the tensors of ``folder`` were made with (HW4's when it has no ``features.json``).

    Read on every call (a small file, beside a ``torch.load`` of each tensor): a folder prepared again is seen at once.
    """
    path = Path(folder) / DEFINITION_FILE
    if not path.is_file():
        return FeatureConfig()
    try:
        d = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(FeatureConfig)}
        f = FeatureConfig(**{k: v for k, v in d.items() if k in names})
        _key(f)                                        # numbers, or a ValueError / TypeError here
        return f
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: unreadable feature definition ({e})") from None


def differences(have: FeatureConfig, want: FeatureConfig, whose: str = "model") -> list[str]:
    """``["f_max 4000 (model: 8000)", ...]``: the fields where ``have`` makes other numbers than ``want``."""
    kind = [f"kind {have.kind} ({whose}: {want.kind})"] if have.kind != want.kind else []
    return kind + [f"{n} {a:g} ({whose}: {b:g})" for n, a, b in zip(_NAMES, _key(have), _key(want)) if a != b]


def check_definition(folder: Path, model_features: FeatureConfig, what: str) -> None:
    """Raise ``DataError`` naming ``what`` when ``folder``'s tensors were made with another log-mel definition."""
    diff = differences(feature_definition(Path(folder)), model_features)
    if diff:
        raise DataError(f"{what}: its features were made with another log-mel definition than the model's "
                        f"({', '.join(diff)}); give the model the audio, or prepare the features with its definition")


def check_training_definition(data_dir: Path, run_features: FeatureConfig) -> None:
    """Training on ``data_dir``'s tensors stores ``run_features`` as the checkpoint's front end: they must agree."""
    have = feature_definition(Path(data_dir))
    diff = differences(have, run_features, "run")
    if diff:
        sets = " ".join(([f"--set features.kind={have.kind}"] if have.kind != run_features.kind else [])
                        + [f"--set features.{n}={a:g}" for n, a, b in zip(_NAMES, _key(have), _key(run_features))
                           if a != b])
        raise DataError(f"{Path(data_dir) / DEFINITION_FILE}: the features were prepared with another log-mel "
                        f"definition than the run's ({', '.join(diff)}); train with {sets}")
