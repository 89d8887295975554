"""Models that ship inside the package: the name ``base`` works wherever a checkpoint path does.

``resolve("base")`` is the checkpoint file inside this folder (``base.ckpt``: float16 weights, the recipe and the
measurements in ``docs/model_card.md``); any other string is a path. A file of the same name in the working
directory wins over a shipped name, so an existing ``./base`` checkpoint keeps working. ``DEFAULT`` is the model
every command uses when none is given. ``FINGERPRINTS`` records each shipped file's ``model_fingerprint``: the test
suite checks the file against it, so a truncated or replaced file is caught.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

NAMES = ("base",)
DEFAULT = "base"
FINGERPRINTS = {"base": ""}      # filled in when the weights are shipped (spkid.pretrained.ship)


def shipped_path(name: str) -> Path:
    """The packaged file of shipped model ``name`` (it may be missing in a broken install)."""
    return Path(str(resources.files("spkid.pretrained").joinpath(f"{name}.ckpt")))


def resolve(spec: str | os.PathLike) -> Path:
    """A shipped name -> its packaged checkpoint; anything else -> ``Path(spec)`` unchanged."""
    text = os.fspath(spec)
    if text in NAMES and not Path(text).exists():
        return shipped_path(text)
    return Path(text)


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the packaged checkpoints (never write caches beside it)."""
    try:
        p = Path(path).resolve()
    except OSError:
        return False
    return any(p == shipped_path(n).resolve() for n in NAMES)


def display_name(spec: str | os.PathLike) -> str:
    """How a registry or a report names the model: the shipped name itself, else the path as given."""
    text = os.fspath(spec)
    for n in NAMES:
        if text == n or is_shipped(text):
            return n
    return text
