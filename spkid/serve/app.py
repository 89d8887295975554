"""The ASGI app: ``create_app(cfg)`` -> a Starlette app with the versioned API, the page and its schema.

Routes (``spkid/serve/openapi.py`` documents each): ``GET /`` (the page), ``GET /openapi.json``,
``GET /v1/health``; with a read token ``GET /v1/speakers``, ``POST /v1/identify``, ``POST /v1/verify``,
``POST /v1/diarize``, ``GET /v1/metrics``; with the admin token ``POST /v1/speakers`` (enroll),
``PATCH /v1/speakers/{name}`` (rename), ``DELETE /v1/speakers/{name}``.

A request goes: body cap (``http.BodyLimit``) -> token and rate limit (``Service.allow``) -> form parsing
(``uploads.read_form``) -> header checks and decoding in a worker thread (``uploads.clip_features``) -> the shared
embedding queue (``batching.EmbedBatcher``) -> the registry (``registry.RegistryService``).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from spkid.errors import SpkidError
from spkid.serve import diarize as diarize_route
from spkid.serve.auth import RateLimiter, TokenStore
from spkid.serve.batching import EmbedBatcher
from spkid.serve.config import ServeConfig
from spkid.serve.http import ApiError, BodyLimit, Observe, error_body
from spkid.serve.metrics import Metrics
from spkid.serve.openapi import schema
from spkid.serve.registry import RegistryService
from spkid.serve.uploads import clip_features, read_form

STATIC = Path(__file__).parent / "static"
MAX_NAME = 200                        # characters in a speaker name
MAX_TOP_K = 50
log = logging.getLogger("spkid.serve")


class Service:
    """What the routes share: config, model, embedding queue, registry, tokens, rate limiter, metrics."""

    def __init__(self, cfg: ServeConfig, model, tokens: TokenStore, metrics: Metrics):
        from spkid.scoring.backend import checkpoint_extras
        self.cfg, self.model, self.tokens, self.metrics = cfg, model, tokens, metrics
        self.limiter = RateLimiter(cfg.rate, cfg.burst)
        reg_path = open_registry(cfg, model)
        try:
            self.checkpoint_calibration = checkpoint_extras(model.path)[1]
        except SpkidError:
            self.checkpoint_calibration = None
        self.registry = RegistryService(reg_path)
        self.batcher = EmbedBatcher(lambda feats: F.normalize(model.embed_raw(feats), dim=-1), cfg.max_batch)
        # decoding, speech detection and log-mel: one thread per core (more only fight over the cores and the GIL)
        self.decoders = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="spkid-decode")
        self.tmp = Path(tempfile.mkdtemp(prefix="spkid-serve-"))       # uploads live here, named by the server

    def allow(self, request, need: str):
        """The caller's ``Principal`` when its token has role ``need`` (admin has every role) and its rate allows."""
        who = self.tokens.authenticate(request.headers.get("authorization"))
        if not who.may(need):
            raise ApiError(403, f"authorization: a {who.role} token cannot do this (needs {need})")
        self.limiter.take(who.key)
        return who

    async def features(self, clips, max_seconds: float | None = None, channel=None) -> list:
        """Features of each clip, decoded in worker threads (concurrently); with ``channel`` (``Model.features``'s,
        e.g. ``openset.enrollment_copies``), ``(features, features through it)`` pairs."""
        cap = max_seconds or self.cfg.max_clip_seconds
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*[loop.run_in_executor(self.decoders, clip_features, c, self.model, cap,
                                                                self.tmp, channel) for c in clips]))

    async def embed(self, clips) -> np.ndarray:
        """``(N, E)`` L2-normalised embeddings of uploaded clips, through the shared queue."""
        return (await self.batcher.embed(await self.features(clips))).numpy()

    def close(self) -> None:
        self.decoders.shutdown(wait=True)
        self.batcher.close()
        self.registry.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# helpers ---------------------------------------------------------------------------------------------------

def open_registry(cfg: ServeConfig, model) -> Path:
    """Create ``cfg.registry`` for ``model`` when missing, else check that it holds this model's embeddings."""
    from spkid.scoring.openset import default_threshold
    from spkid.scoring.speaker_db import SpeakerDB
    path = Path(cfg.registry)
    if not path.exists():
        thr, source = default_threshold(model)
        ckpt = str(model.path.resolve()) if model.path.is_file() else cfg.model
        SpeakerDB.create(path, model_id=model.model_id, checkpoint=ckpt, embed_dim=model.net.embed_dim,
                         threshold=thr, threshold_source=source).close()
    with SpeakerDB.open(path) as reg:
        if reg.model_id != model.model_id:
            raise SpkidError(f"{path}: registry holds embeddings of model {reg.model_id}, --model {cfg.model} is "
                             f"model {model.model_id} (use a registry per model)")
    return path


def check_name(value, what: str = "name") -> str:
    """A speaker name: any Unicode text, stored as given, but one line (no control or line-separator characters),
    no surrounding spaces, at most ``MAX_NAME`` characters, not the reserved ``unknown``."""
    if value is None:
        raise ApiError(400, f"{what}: missing")
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, f"{what}: must be a non-empty string")
    if len(value) > MAX_NAME:
        raise ApiError(422, f"{what}: {len(value)} characters, at most {MAX_NAME}")
    bad = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
    if bad:
        raise ApiError(422, f"{what}: control characters ({', '.join(bad[:4])}) are not allowed in a name")
    if value != value.strip():
        raise ApiError(422, f"{what}: leading or trailing spaces")
    if value == "unknown":
        raise ApiError(422, f"{what}: 'unknown' is reserved for rejected identifications")
    return value


def int_field(fields: dict, key: str, default, lo: int, hi: int):
    raw = fields.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{key}: expected an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise ApiError(422, f"{key}: {value} is outside {lo}-{hi}")
    return value


def one_clip(files: dict, key: str = "audio"):
    clips = files.get(key, [])
    if len(clips) != 1:
        raise ApiError(400, f"{key}: expected one audio file field, got {len(clips)}")
    return clips[0]


def _threshold(state) -> dict:
    return {"value": round(state.threshold, 4), "source": state.source, "scale": state.scale,
            "locked": state.locked, "clips_needed": state.clips_needed, "scoring": state.scoring}


# routes ----------------------------------------------------------------------------------------------------

async def index(request):
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def openapi(request):
    return JSONResponse(schema())


async def health(request):
    from spkid import __version__
    return JSONResponse({"status": "ok", "version": __version__})


async def metrics(request):
    svc: Service = request.app.state.svc
    svc.allow(request, "read")
    snap = await svc.registry.snapshot()
    return JSONResponse({**svc.metrics.summary(), "embedding": svc.batcher.stats(), "speakers": len(snap.names)})


async def list_speakers(request):
    svc: Service = request.app.state.svc
    svc.allow(request, "read")
    snap = await svc.registry.snapshot()
    return JSONResponse({"speakers": [{"name": n, "utterances": c} for n, c in zip(snap.names, snap.counts)],
                         "threshold": _threshold(snap.threshold)})


async def enroll(request):
    from spkid.scoring.openset import add_clips, copy_rows, enrollment_copies, mean_copies
    svc: Service = request.app.state.svc
    svc.allow(request, "admin")
    fields, files = await read_form(request)
    name = check_name(fields.get("name"))
    on_outlier = fields.get("on_outlier", "keep")
    if on_outlier not in ("keep", "refuse"):
        raise ApiError(422, f"on_outlier: {on_outlier[:40]!r}; choose keep or refuse")
    clips = files.get("audio", [])
    if not clips:
        raise ApiError(400, "audio: no audio file field")
    # sources: the clip's content hash (uploading the same clip again replaces it), never a client path
    sources = [f"upload sha256:{hashlib.sha256(c.data).hexdigest()[:16]}" for c in clips]
    if len(set(sources)) != len(sources):
        raise ApiError(422, "audio: the same clip was uploaded twice in one request")
    # each clip and its telephone and room copies (what a voice on the phone or across a room is named against:
    # spkid enroll stores the same)
    pairs = await svc.features(clips, channel=enrollment_copies)
    feats = [f for f, _ in pairs]
    rows = copy_rows([(s, c) for s, (_, c) in zip(sources, pairs) if c is not None])
    emb = (await svc.batcher.embed(feats + [f for _, _, f in rows])).numpy()      # one queue for every embedding
    copies = mean_copies(rows, emb[len(feats):])
    emb = emb[: len(feats)]
    r = await svc.registry.write(lambda reg: add_clips(reg, name, sources, feats, emb, model=svc.model,
                                                       on_outlier=on_outlier, channels=copies))
    return JSONResponse({"speaker": name, "utterances": r.n_utterances, "added": r.added,
                         "flags": [{"clip": clips[sources.index(f.source)].label, "reason": f.reason,
                                    "value": round(f.value, 2), "refused": f.refused} for f in r.flags],
                         "threshold": _threshold(r.threshold)}, status_code=201)


def _rename(reg, old: str, new: str) -> int:
    names = dict(reg.speakers())
    if old not in names:
        raise ApiError(404, f"speaker {old!r}: not enrolled")
    if new in names:
        raise ApiError(409, f"speaker {new!r}: already enrolled")
    return reg.rename(old, new)


def _remove(reg, name: str) -> int:
    if name not in dict(reg.speakers()):
        raise ApiError(404, f"speaker {name!r}: not enrolled")
    return reg.remove(name)


async def rename_speaker(request):
    svc: Service = request.app.state.svc
    svc.allow(request, "admin")
    old = request.path_params["name"]
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "body: expected JSON {\"name\": \"new name\"}") from None
    new = check_name(body.get("name") if isinstance(body, dict) else None)
    n = await svc.registry.write(_rename, old, new)
    return JSONResponse({"speaker": new, "was": old, "utterances": n})


async def delete_speaker(request):
    svc: Service = request.app.state.svc
    svc.allow(request, "admin")
    name = request.path_params["name"]
    n = await svc.registry.write(_remove, name)
    return JSONResponse({"deleted": name, "utterances": n})


async def identify(request):
    svc: Service = request.app.state.svc
    svc.allow(request, "read")
    fields, files = await read_form(request)
    top_k = int_field(fields, "top_k", 1, 1, MAX_TOP_K)
    emb = await svc.embed([one_clip(files)])
    snap = await svc.registry.snapshot()
    if snap.gallery is None:
        raise ApiError(409, "registry: no speakers enrolled yet")
    ranked = snap.ranked(emb, top_k)[0]                  # (1, K) scores: well under a millisecond for K = 1,000
    best, score = ranked[0]
    return JSONResponse({"speaker": snap.decide(score, best), "score": round(score, 4),
                         "threshold": _threshold(snap.threshold),
                         "candidates": [{"speaker": s, "score": round(v, 4)} for s, v in ranked]})


async def verify(request):
    svc: Service = request.app.state.svc
    svc.allow(request, "read")
    fields, files = await read_form(request)
    clip = one_clip(files)
    speaker = fields.get("speaker")
    if (speaker is None) == ("audio2" not in files):
        raise ApiError(400, "verify: give a second clip (audio2) or an enrolled speaker (speaker), not both")
    snap = await svc.registry.snapshot()
    if speaker is not None:
        if speaker not in snap.names:
            raise ApiError(404, f"speaker {speaker[:MAX_NAME]!r}: not enrolled")
        emb = await svc.embed([clip])
        score = float(snap.scores(emb)[0, snap.names.index(speaker)])
    else:
        emb = await svc.embed([clip, one_clip(files, "audio2")])
        score = float(snap.backend.pair_scores(emb[:1].astype(np.float64), emb[1:].astype(np.float64))[0, 0])
    cal = snap.calibration or (svc.checkpoint_calibration if snap.backend.raw else None)
    prob = float(cal.calibration.probability(np.array([score]), 0.5)[0]) if cal is not None else None
    thr = snap.threshold.threshold
    return JSONResponse({"score": round(score, 4), "same": score >= thr, "threshold": _threshold(snap.threshold),
                         "probability": None if prob is None else round(prob, 4),
                         "against": "speaker" if speaker is not None else "clip"})


# errors ----------------------------------------------------------------------------------------------------

def _json_error(status: int, message: str, headers=None) -> Response:
    return Response(error_body(status, message), status_code=status, headers=headers, media_type="application/json")


async def _api_error(request, exc: ApiError):
    return _json_error(exc.status, exc.message, exc.headers)


async def _http_error(request, exc: HTTPException):
    message = {404: f"{request.url.path[:120]}: no such endpoint",
               405: f"{request.method} {request.url.path[:120]}: method not allowed"}.get(exc.status_code, exc.detail)
    return _json_error(exc.status_code, f"request: {message}" if exc.status_code == 400 else message,
                       getattr(exc, "headers", None))


async def _spkid_error(request, exc: SpkidError):
    svc: Service = request.app.state.svc
    message = str(exc).replace(str(Path(svc.cfg.registry).resolve()), "registry").replace(svc.cfg.registry,
                                                                                          "registry")
    message = message.replace(str(svc.tmp), "upload")               # a diarizer's message about its temp copy
    return _json_error(503 if "locked by another process" in message else 422, message)


async def _internal_error(request, exc: Exception):
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _json_error(500, f"internal error ({type(exc).__name__}); see the server log")


# the app ---------------------------------------------------------------------------------------------------

def create_app(cfg: ServeConfig, *, model=None, tokens: TokenStore | None = None) -> Starlette:
    """The app for ``cfg``; ``model`` (a loaded ``spkid.Model``) skips loading ``cfg.model``; ``tokens`` defaults
    to ``cfg.token_file``."""
    metrics_ = Metrics()
    store = tokens or TokenStore(cfg.token_file)

    @asynccontextmanager
    async def lifespan(app):
        import spkid
        m = model
        if m is None:
            m = await asyncio.to_thread(spkid.load, cfg.model, cfg.device)
        m.vad = cfg.vad
        m.speech_fallback = False      # one clip a request: no speech is the client's 422, not a guess on noise
        app.state.svc = await asyncio.to_thread(Service, cfg, m, store, metrics_)
        try:
            yield
        finally:
            app.state.svc.close()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/metrics", metrics, methods=["GET"]),
        Route("/v1/speakers", list_speakers, methods=["GET"]),
        Route("/v1/speakers", enroll, methods=["POST"]),
        Route("/v1/speakers/{name:path}", rename_speaker, methods=["PATCH"]),
        Route("/v1/speakers/{name:path}", delete_speaker, methods=["DELETE"]),
        Route("/v1/identify", identify, methods=["POST"]),
        Route("/v1/verify", verify, methods=["POST"]),
        Route("/v1/diarize", diarize_route.diarize, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(Observe, metrics=metrics_), Middleware(BodyLimit, max_bytes=cfg.max_upload_bytes)]
    if cfg.cors_origins:
        middleware.insert(1, Middleware(CORSMiddleware, allow_origins=cfg.cors_origins,
                                        allow_methods=["GET", "POST", "PATCH", "DELETE"],
                                        allow_headers=["authorization", "content-type"]))
    handlers = {ApiError: _api_error, HTTPException: _http_error, SpkidError: _spkid_error,
                Exception: _internal_error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
