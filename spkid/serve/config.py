"""``ServeConfig``: what ``spkid serve`` runs with, checked once (``__post_init__``)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from spkid.audio.io import MAX_SECONDS
from spkid.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) only reaches this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """Settings of one server.

    Args:
        registry (str): SQLite registry file (created with ``model`` when missing).
        model (str): checkpoint path or packaged model name, resolved by ``spkid.load``. (Default: ``"base"``)
        host (str), port (int): where to listen; loopback unless asked (a non-loopback host needs ``token_file``).
            ``port`` 0 picks a free port.
        workers (int): server processes, each with its own model and embedding queue.
        token_file (str | None): hashed tokens (``spkid token``); None: one admin token made at start and printed.
        max_upload_mb (float): request body cap, checked before anything is read.
        max_clip_seconds (float): audio length cap of enroll/identify/verify clips, from the header, before decoding.
        max_diarize_seconds (float): the same for diarize (the CLI's one-hour limit by default).
        rate (float), burst (int): per-token request rate limit (token bucket, requests per second); rate 0: none.
        cors_origins (list[str]): origins allowed to call the API from a browser (none: CORS closed).
        max_batch (int): embeddings computed together at most (concurrent requests are batched).
        drain_seconds (float): on SIGTERM, how long in-flight requests may take before the server exits anyway.
    """

    registry: str = "speakers.db"
    model: str = "base"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    token_file: str | None = None
    max_upload_mb: float = 64.0           # a 5-minute 44.1 kHz stereo WAV is 53 MB
    max_clip_seconds: float = 300.0
    max_diarize_seconds: float = float(MAX_SECONDS)
    rate: float = 20.0                    # about 4x what one client can get through a 2-core CPU
    burst: int = 40
    cors_origins: list[str] = field(default_factory=list)
    max_batch: int = 64
    drain_seconds: float = 30.0
    device: str = "auto"
    vad: bool = True

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve --port {self.port}: must be 0-65535")
        if self.workers < 1:
            raise ConfigError(f"serve --workers {self.workers}: must be >= 1")
        if not is_loopback(self.host) and self.token_file is None:
            raise ConfigError(f"serve --host {self.host}: beyond loopback the API needs --token-file (spkid token)")
        for name in ("max_upload_mb", "max_clip_seconds", "max_diarize_seconds", "drain_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve {name} {getattr(self, name)}: must be > 0")
        if self.max_clip_seconds > MAX_SECONDS or self.max_diarize_seconds > MAX_SECONDS:
            raise ConfigError(f"serve: audio caps cannot exceed the CLI's {MAX_SECONDS} s limit")
        if self.rate < 0 or self.burst < 1:
            raise ConfigError(f"serve --rate {self.rate} / --burst {self.burst}: need rate >= 0 and burst >= 1")
        if self.max_batch < 1:
            raise ConfigError(f"serve max_batch {self.max_batch}: must be >= 1")
        for origin in self.cors_origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ConfigError(f"serve --cors-origin {origin!r}: give a full origin such as https://app.example")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
