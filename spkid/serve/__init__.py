"""``spkid serve``: speaker recognition as an HTTP service, with a web page (issue 26).

    from spkid.serve import ServeConfig, create_app, serve
    serve(ServeConfig(registry="speakers.db", model="base"))         # uvicorn on 127.0.0.1:8000

Modules: ``config`` (``ServeConfig``), ``app`` (routes, ``create_app``), ``auth`` (hashed tokens, rate limits),
``uploads`` (multipart, size and duration caps before decoding), ``batching`` (concurrent requests share the
embedder), ``registry`` (serialised writes, cached gallery), ``diarize`` (the diarization endpoint),
``metrics``, ``openapi``, ``http`` (errors, middleware), ``server`` (uvicorn, workers, SIGTERM), ``static/`` (the page).
Needs the ``serve`` extra: ``pip install 'spkid[serve]'``.
"""
from spkid.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]


def create_app(*args, **kwargs):
    from spkid.serve.app import create_app as make
    return make(*args, **kwargs)


def serve(*args, **kwargs):
    from spkid.serve.server import serve as run
    return run(*args, **kwargs)
