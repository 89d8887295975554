"""Who may call the API, and how often: hashed bearer tokens with two roles, and a per-token rate limit.

Token file (``spkid token FILE --role admin|read``), one token a line, never the token itself::

    sha256:<64 hex digits> <role> <label>

- ``admin`` may enroll, rename and delete speakers, and do everything ``read`` may;
- ``read`` may list speakers, identify, verify, diarize and read the metrics.

A presented token is hashed (SHA-256: tokens are 256 random bits, so a slow hash adds nothing) and compared with
every stored hash by ``hmac.compare_digest``: the time taken does not depend on where the strings differ nor on
which line matched. The file is re-read when it changes (revoke a token by deleting its line).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from spkid.errors import ConfigError
from spkid.fileio import atomic_write
from spkid.serve.http import ApiError

ROLES = ("admin", "read")
PREFIX = "sha256:"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``role`` and the ``label`` given when the token was made; ``key`` names its
    rate-limit bucket (a prefix of the hash, never the token)."""

    role: str
    label: str
    key: str

    def may(self, need: str) -> bool:
        return self.role == "admin" or self.role == need


def hash_token(token: str) -> str:
    return PREFIX + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return "spkid_" + secrets.token_urlsafe(32)


def parse_token_file(path: Path) -> list[tuple[str, str, str]]:
    """``[(hash, role, label)]`` of a token file; a malformed line is a ``ConfigError`` naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read token file ({getattr(e, 'strerror', None) or e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(" ", 2)
        if (len(parts) < 2 or not parts[0].startswith(PREFIX) or len(parts[0]) != len(PREFIX) + 64
                or parts[1] not in ROLES):
            raise ConfigError(f"{path}: line {n}: expected 'sha256:<64 hex> admin|read [label]'")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return out


def add_token(path: str | Path, role: str, label: str = "") -> str:
    """Append a new token of ``role`` to the token file (created 0600 when missing); returns the token, which is
    not stored anywhere."""
    path = Path(path)
    if role not in ROLES:
        raise ConfigError(f"token role {role!r}: choose one of {', '.join(ROLES)}")
    if not label.isprintable():
        raise ConfigError(f"token label {label!r}: must be printable, one line")
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old:
        parse_token_file(path)                          # refuse to extend a file that is not a token file
    token = new_token()
    line = f"{hash_token(token)} {role} {label}".rstrip() + "\n"
    text = old + ("\n" if old and not old.endswith("\n") else "") + line

    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o600)
    atomic_write(path, write)
    os.chmod(path, 0o600)
    return token


class TokenStore:
    """The tokens the server accepts: a token file (re-read when its mtime changes) or a fixed list of hashes."""

    def __init__(self, path: str | Path | None = None, entries: list[tuple[str, str, str]] | None = None):
        self.path = Path(path) if path is not None else None
        self._entries = list(entries or [])
        self._mtime = None
        self._lock = threading.Lock()
        if self.path is not None:
            self._reload()
            if not self._entries:
                raise ConfigError(f"{self.path}: no tokens; add one with spkid token {self.path} --role admin")

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot read token file ({e.strerror})") from None
        if mtime != self._mtime:
            self._entries, self._mtime = parse_token_file(self.path), mtime

    def authenticate(self, header: str | None) -> Principal:
        """The caller of an ``Authorization: Bearer <token>`` header; ``ApiError`` 401 without a valid one."""
        if not header:
            raise ApiError(401, "authorization: missing; send 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "authorization: expected 'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        digest = hash_token(token.strip()).encode()
        with self._lock:
            if self.path is not None:
                try:
                    self._reload()
                except ConfigError:
                    pass                                # keep the last good list while the file is being edited
            entries = self._entries
        match = None
        for stored, role, label in entries:             # every entry compared: no early exit on a match
            if hmac.compare_digest(stored.encode(), digest) and match is None:
                match = Principal(role, label, stored[len(PREFIX):len(PREFIX) + 16])
        if match is None:
            raise ApiError(401, "authorization: unknown token", {"WWW-Authenticate": "Bearer"})
        return match


class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second on average, bursts of ``burst``; rate 0: unlimited."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}   # key -> (tokens left, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one request of ``key``'s bucket; ``ApiError`` 429 (with Retry-After) when it is empty."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise ApiError(429, f"rate limit: over {self.rate:g} requests/s for this token; retry in {wait:.2f} s",
                               {"Retry-After": str(max(1, round(wait + 0.5)))})
            self._buckets[key] = (tokens - 1.0, now)
