"""``POST /v1/diarize``: who spoke when in one recording, named from the registry.

Calls ``spkid.diarize(path, checkpoint=..., registry=..., n_speakers=None, min_speakers=1, max_speakers=None)``
(segments with ``file, start, end, speaker, score``), imported when first asked for: a build without it answers
501. The recording goes to a temp file the server names; its duration is checked from the header first
(``ServeConfig.max_diarize_seconds``).
"""
from __future__ import annotations

import asyncio
import math

from starlette.responses import JSONResponse

from spkid.errors import SpkidError
from spkid.serve.http import ApiError
from spkid.serve.uploads import read_form, save_clip

MAX_SPEAKERS = 64


def diarize_function():
    """``spkid.diarize`` (a function, or a module holding one of that name), or None in a build without it."""
    import importlib
    try:
        found = getattr(importlib.import_module("spkid"), "diarize", None)
        if found is None:
            found = importlib.import_module("spkid.diarize")
    except ImportError:
        return None
    if not callable(found):
        found = getattr(found, "diarize", None)
    return found if callable(found) else None


def segment_json(seg) -> dict:
    """One segment (a dataclass, named tuple, dict or ``(file, start, end, speaker, score)`` tuple) as JSON."""
    if isinstance(seg, dict):
        get = seg.get
    elif hasattr(seg, "start"):
        def get(k):
            return getattr(seg, k, None)
    else:
        get = dict(zip(("file", "start", "end", "speaker", "score"), seg)).get
    score = get("score")
    return {"start": round(float(get("start")), 3), "end": round(float(get("end")), 3), "speaker": str(get("speaker")),
            "score": None if score is None or not math.isfinite(float(score)) else round(float(score), 4)}


def _count(fields: dict, key: str) -> int | None:
    raw = fields.get(key)
    if raw in (None, ""):
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_SPEAKERS:
        raise ApiError(422, f"{key}: expected a whole number 1-{MAX_SPEAKERS}, got {raw[:40]!r}")
    return int(raw)


async def diarize(request):
    svc = request.app.state.svc
    svc.allow(request, "read")
    fn = diarize_function()
    if fn is None:
        raise ApiError(501, "diarization not available in this build")
    fields, files = await read_form(request)
    clips = files.get("audio", [])
    if len(clips) != 1:
        raise ApiError(400, f"audio: expected one audio file field, got {len(clips)}")
    counts = {k: _count(fields, k) for k in ("num_speakers", "min_speakers", "max_speakers")}
    if counts["min_speakers"] and counts["max_speakers"] and counts["min_speakers"] > counts["max_speakers"]:
        raise ApiError(422, "min_speakers: greater than max_speakers")
    if counts["num_speakers"] and (counts["min_speakers"] or counts["max_speakers"]):
        raise ApiError(422, "num_speakers: give it or min_speakers / max_speakers, not both")
    tmp = await asyncio.to_thread(save_clip, clips[0], svc.cfg.max_diarize_seconds, svc.tmp)
    named = bool((await svc.registry.snapshot()).names)           # an empty registry has no names to give
    try:
        segments = await asyncio.to_thread(fn, str(tmp), checkpoint=svc.cfg.model,
                                           registry=str(svc.registry.path) if named else None,
                                           n_speakers=counts["num_speakers"], min_speakers=counts["min_speakers"] or 1,
                                           max_speakers=counts["max_speakers"])
    except SpkidError as e:                                      # too short, undecodable, a registry it cannot use
        raise ApiError(422, str(e).replace(str(tmp), clips[0].label)) from None
    finally:
        tmp.unlink(missing_ok=True)
    out = [segment_json(s) for s in segments]
    return JSONResponse({"segments": out, "speakers": sorted({s["speaker"] for s in out})})
