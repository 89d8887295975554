"""Name -> builder tables, one per kind of part (encoders, attention, pooling, heads), as timm's ``register_model``.

Each entry also lists the ``model.*`` settings it reads (``uses``), so ``spkid.config`` can reject a setting the
chosen part would ignore. Nothing here knows the config classes: builders receive the ``model`` section duck-typed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spkid.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    build: Callable
    uses: frozenset[str]          # model.* settings this part reads (beyond the shared ones)


class Registry:
    """``REG.register("name", uses=(...))`` decorates a builder; ``REG.build("name", *args)`` calls it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, uses: tuple[str, ...] = ()):
        def deco(fn):
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(fn, frozenset(uses))
            return fn
        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self):
        return iter(self.names())

    def items(self) -> list[tuple[str, Callable]]:
        return [(n, self._entries[n].build) for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._entries[name]

    def uses(self, name: str) -> frozenset[str]:
        return self.entry(name).uses

    def all_uses(self) -> frozenset[str]:
        """Every setting some entry of this kind reads: the kind-specific settings."""
        return frozenset().union(*(e.uses for e in self._entries.values()))

    def build(self, name: str, *args, **kwargs):
        return self.entry(name).build(*args, **kwargs)


ENCODERS = Registry("encoder")       # build(model_cfg) -> module (B, T, D), valid (B, T) -> (B, T, out_dim)
ATTENTION = Registry("attention")    # build(d_model=, n_heads=, dropout=, rope=, **params) -> module
POOLING = Registry("pooling")        # build(in_dim) -> module (B, T, D), valid -> (B, out_dim)
HEADS = Registry("head")             # build(model_cfg, embed_dim, n_speakers) -> module (B, E) -> (B, N)
