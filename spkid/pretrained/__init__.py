"""Models that ship inside the package: the name ``base`` works wherever a checkpoint path does.

``resolve("base")`` is the checkpoint file inside this folder (``base.ckpt``: float16 weights, the recipe and the
measurements in ``docs/model_card.md``); any other string is a path. A file of the same name in the working
directory wins over a shipped name, so an existing ``./base`` checkpoint keeps working. ``DEFAULT`` is the model
every command uses when none is given. Beside each file, ``<name>.json`` records its ``model_fingerprint``, the run's
steps and hours, and the embedding of a fixed synthetic clip (``card(name)``); the test suite checks the file against
it, so a truncated or replaced file is caught. ``python -m spkid.pretrained.ship RUN/last.ckpt`` writes both.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

NAMES = ("base",)
DEFAULT = "base"


def shipped_path(name: str) -> Path:
    """The packaged file of shipped model ``name`` (it may be missing in a broken install)."""
    return Path(str(resources.files("spkid.pretrained").joinpath(f"{name}.ckpt")))


def card(name: str) -> dict:
    """The recorded facts of shipped model ``name`` (``<name>.json``: fingerprint, steps, hours, reference)."""
    import json
    return json.loads(shipped_path(name).with_suffix(".json").read_text())


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


def stored_name(spec: str | os.PathLike) -> str:
    """What a registry or a fine-tuning run records as its model: a shipped name as the name (it resolves in any
    install), any other checkpoint as its absolute path."""
    name = display_name(spec)
    return name if name in NAMES else str(Path(spec).resolve())
