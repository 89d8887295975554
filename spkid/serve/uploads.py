"""Uploaded audio -> features, refusing what the server should not decode.

Order of checks for each clip: not empty; a WAV header's claimed duration (``wav_seconds``: the ``data`` chunk's
size over the byte rate, before libsndfile, which trusts the file length instead of the header); the container's
duration and the CLI's audio limits (``soundfile.info`` reads headers only); only then decoding, speech detection
and log-mel (``Model.features``, the CLI's path). Clip bytes go to a temp file the server names (in a private
folder); the client's file name is shown in messages, never used as a path.
"""
from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from spkid.errors import SpkidError
from spkid.serve.http import ApiError

MAX_FILES = 32                        # clips in one request at most
MAX_FIELD_BYTES = 64 * 1024           # a non-file form field (name, top_k) at most
TAIL = 512                            # bytes kept to find the closing boundary (at most 70 + 4) and an epilogue
SUFFIXES = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff",
            "AU": ".au", "CAF": ".caf", "W64": ".w64", "RF64": ".rf64"}


@dataclass
class Clip:
    """One uploaded clip: ``label`` (form field and client file name, for messages), its ``data`` bytes."""

    label: str
    data: bytes


async def read_form(request) -> tuple[dict[str, str], dict[str, list[Clip]]]:
    """A ``multipart/form-data`` body -> (text fields, file fields as clips); malformed bodies are a 400."""
    from starlette.requests import Request
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(415, f"content-type {ctype[:60]!r}: send multipart/form-data")
    tail = bytearray()                          # the body's last bytes: the parser accepts a truncated body silently

    async def receive():
        message = await request.receive()
        if message["type"] == "http.request":
            tail[:] = (bytes(tail) + message.get("body", b""))[-TAIL:]
        return message
    form = await Request(request.scope, receive).form(max_files=MAX_FILES, max_fields=MAX_FILES,
                                                      max_part_size=MAX_FIELD_BYTES)
    boundary = ctype.split("boundary=", 1)[-1].split(";")[0].strip().strip('"').encode("latin-1", "replace")
    if b"--" + boundary + b"--" not in tail:
        await form.close()
        raise ApiError(400, "request: malformed multipart body (no closing boundary: truncated?)")
    fields: dict[str, str] = {}
    files: dict[str, list[Clip]] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, str):
                if key in fields:
                    raise ApiError(400, f"form field {key!r}: given twice")
                fields[key] = value
            else:
                shown = (value.filename or "")[:80]
                files.setdefault(key, []).append(Clip(f"{key} ({shown!r})" if shown else key, await value.read()))
    finally:
        await form.close()
    return fields, files


def wav_seconds(head: bytes) -> float | None:
    """Duration a RIFF/WAVE header claims (``data`` chunk bytes / byte rate), or None when ``head`` is not WAV.
    Raises ``ApiError`` 422 for a WAV header without a usable ``fmt`` or ``data`` chunk."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if cid == b"fmt " and size >= 16 and pos + 24 <= len(head):
            byte_rate = struct.unpack("<I", head[pos + 16:pos + 20])[0]
        elif cid == b"data":
            if not byte_rate:
                break
            return size / byte_rate
        pos += 8 + size + (size & 1)              # chunks are word-aligned
    raise ApiError(422, "audio: WAV header without a valid fmt/data chunk")


def _seconds(clip: Clip, tmp: Path) -> tuple[float, str]:
    """Duration and format from the header (no decoding); 422 when libsndfile does not know the bytes."""
    try:
        info = sf.info(str(tmp))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        raise ApiError(422, f"{clip.label}: not readable as audio (WAV, FLAC, OGG/Opus, MP3, AIFF...)") from None
    if info.samplerate <= 0:
        raise ApiError(422, f"{clip.label}: sample rate {info.samplerate} Hz")
    return info.frames / info.samplerate, info.format


def save_clip(clip: Clip, max_seconds: float, folder: str | Path) -> Path:
    """Check one clip's size and duration from its headers and write it to a temp file the server names (suffix by
    its format); the caller deletes it. ``ApiError`` 400 (empty), 413 (too long), 422 (not audio) names the clip."""
    if not clip.data:
        raise ApiError(400, f"{clip.label}: empty upload (0 bytes)")
    claimed = wav_seconds(clip.data[:65536])
    if claimed is not None and claimed > max_seconds:
        raise ApiError(413, f"{clip.label}: WAV header claims {claimed:.0f} s, over the {max_seconds:g} s limit")
    with tempfile.NamedTemporaryFile(dir=folder, prefix="clip-", suffix=".audio", delete=False) as f:
        f.write(clip.data)
        tmp = Path(f.name)
    try:
        seconds, fmt = _seconds(clip, tmp)
        if seconds > max_seconds:
            raise ApiError(413, f"{clip.label}: {seconds:.0f} s of audio, over the {max_seconds:g} s limit")
        named = tmp.with_suffix(SUFFIXES.get(fmt, ".audio"))    # a server-made name: diarize may go by suffix
        tmp.rename(named)
        return named
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clip_features(clip: Clip, model, max_seconds: float, folder: str | Path, channel=None):
    """Features ``(T, F)`` of one clip through the CLI's audio path (decode, resample, speech detection, log-mel)
    after ``save_clip``'s checks; its temp file is gone afterwards. ``channel`` (``Model.features``'s): the pair
    ``(features, features through the channel)``."""
    tmp = save_clip(clip, max_seconds, folder)
    try:
        return model.features([tmp], channel=channel)[0]
    except SpkidError as e:                                      # CLI limits, speech detection, decode errors
        raise ApiError(422, str(e).replace(str(tmp), clip.label)) from None
    finally:
        tmp.unlink(missing_ok=True)
