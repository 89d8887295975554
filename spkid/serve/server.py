"""Running the app under uvicorn: the listening socket, tokens, worker processes and a graceful SIGTERM.

``serve(cfg)`` binds the socket itself (so ``port=0`` works and the printed address is the real one), then runs
one uvicorn server in this process, or ``cfg.workers`` processes that share the socket (each loads the model and
has its own embedding queue; the registry's SQLite lock serialises their writes). SIGTERM or Ctrl-C: stop
accepting, finish the requests in flight (at most ``cfg.drain_seconds``), close the registry, exit 0.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import Callable

from spkid.errors import ConfigError
from spkid.serve.auth import TokenStore, hash_token, new_token
from spkid.serve.config import ServeConfig

ENV_CONFIG = "SPKID_SERVE_CONFIG"        # worker processes: the ServeConfig, as JSON
ENV_TOKENS = "SPKID_SERVE_TOKENS"        # worker processes: the start-up token's hash, when there is no token file


def bind(cfg: ServeConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host.strip("[]"), cfg.port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"serve --host {cfg.host} --port {cfg.port}: cannot listen ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def app_from_env():
    """The app of a worker process (uvicorn factory): config and tokens from the parent's environment."""
    from spkid.runtime import use_threads
    from spkid.serve.app import create_app
    use_threads(0)
    cfg = ServeConfig(**json.loads(os.environ[ENV_CONFIG]))
    entries = json.loads(os.environ.get(ENV_TOKENS, "[]"))
    return create_app(cfg, tokens=TokenStore(cfg.token_file) if cfg.token_file else TokenStore(
        entries=[tuple(e) for e in entries]))


def serve(cfg: ServeConfig, announce: Callable[[str], None] = print, *, model=None) -> None:
    """Serve until SIGTERM/SIGINT. ``announce`` gets the address line (and the start-up token's page link when
    there is no token file); ``model`` (single process only) skips loading ``cfg.model``."""
    import uvicorn
    import spkid
    from spkid.serve.app import create_app, open_registry
    # model and registry first: a wrong --model or --registry is a one-line error, not a failed start-up
    model = model if model is not None else spkid.load(cfg.model, cfg.device)
    open_registry(cfg, model)
    if cfg.workers > 1:
        model = None                                   # each worker loads its own
    entries = None
    if cfg.token_file:
        TokenStore(cfg.token_file)                     # a bad token file fails here, before anything starts
    else:
        token = new_token()
        entries = [(hash_token(token), "admin", "start-up token")]
    sock = bind(cfg)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    announce(f"spkid serve: listening on {url} ({cfg.workers} worker{'s' if cfg.workers > 1 else ''}, "
             f"registry {cfg.registry}, model {cfg.model})")
    if entries is not None:
        announce(f"spkid serve: admin token for this run (no --token-file): open {url}#token={token}")
    kw = dict(log_level="warning", access_log=False, timeout_graceful_shutdown=cfg.drain_seconds,
              lifespan="on", proxy_headers=False)
    if cfg.workers == 1:
        tokens = TokenStore(cfg.token_file) if cfg.token_file else TokenStore(entries=entries)
        server = uvicorn.Server(uvicorn.Config(create_app(cfg, model=model, tokens=tokens), **kw))
        with _quiet_after_shutdown():
            server.run(sockets=[sock])
        if not server.started:
            raise ConfigError(f"serve: could not start (model {cfg.model}, registry {cfg.registry}); see above")
        return
    from uvicorn.supervisors import Multiprocess
    os.environ[ENV_CONFIG] = json.dumps(dataclasses.asdict(cfg))
    os.environ[ENV_TOKENS] = json.dumps(entries or [])
    config = uvicorn.Config("spkid.serve.server:app_from_env", factory=True, workers=cfg.workers, **kw)
    Multiprocess(config, sockets=[sock]).run()


class _quiet_after_shutdown:
    """uvicorn re-raises the SIGTERM/SIGINT it handled once it has drained; catch that re-raise here, so the
    command ends with status 0 instead of the CLI's 'interrupted'."""

    def __enter__(self):
        self._old = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        sys.stdout.flush()
