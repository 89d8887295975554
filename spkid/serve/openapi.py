"""The OpenAPI 3.1 description of the API, served at ``/openapi.json`` (a test checks it lists every route)."""
from __future__ import annotations


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict:
    words = {400: "malformed request", 401: "missing or unknown token", 403: "token lacks the role",
             404: "unknown speaker", 409: "conflict", 413: "body or audio over the limits",
             415: "not multipart/form-data", 422: "unusable input (not audio, no speech, bad name...)",
             429: "rate limit", 501: "not in this build", 503: "registry busy"}
    return {str(c): _json("Error", words[c]) for c in codes}


def _form(props: dict, required: list[str]) -> dict:
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": props, "required": required}}}}


_AUDIO = {"type": "string", "format": "binary", "description": "an audio file (WAV, FLAC, OGG/Opus, MP3...)"}
_NAME = {"type": "string", "maxLength": 200, "description": "any Unicode text on one line; stored as given"}
_TOKEN = [{"bearer": []}]            # the role each path needs is in its summary
_SPEAKER_PARAM = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "the speaker's name, percent-encoded"}]

_SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "status"],
              "properties": {"error": {"type": "string", "description": "one line"}, "status": {"type": "integer"}}},
    "Threshold": {"type": "object", "properties": {
        "value": {"type": "number"}, "source": {"type": "string"}, "scale": {"enum": ["registry", "raw"]},
        "locked": {"type": "boolean"}, "clips_needed": {"type": "integer"}, "scoring": {"type": "string"}}},
    "Candidate": {"type": "object", "properties": {"speaker": {"type": "string"}, "score": {"type": "number"}}},
    "Identified": {"type": "object", "properties": {
        "speaker": {"type": "string", "description": "the best speaker, or 'unknown' below the threshold"},
        "score": {"type": "number"}, "threshold": _ref("Threshold"),
        "candidates": {"type": "array", "items": _ref("Candidate")}}},
    "Verified": {"type": "object", "properties": {
        "score": {"type": "number"}, "same": {"type": "boolean"}, "threshold": _ref("Threshold"),
        "probability": {"type": ["number", "null"], "description": "calibrated P(same speaker) at prior 0.5"},
        "against": {"enum": ["clip", "speaker"]}}},
    "Enrolled": {"type": "object", "properties": {
        "speaker": {"type": "string"}, "utterances": {"type": "integer"}, "added": {"type": "integer"},
        "flags": {"type": "array", "items": {"type": "object"}}, "threshold": _ref("Threshold")}},
    "Speakers": {"type": "object", "properties": {
        "speakers": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "utterances": {"type": "integer"}}}},
        "threshold": _ref("Threshold")}},
    "Segments": {"type": "object", "properties": {
        "segments": {"type": "array", "items": {"type": "object", "properties": {
            "start": {"type": "number"}, "end": {"type": "number"}, "speaker": {"type": "string"},
            "score": {"type": ["number", "null"]}}}},
        "speakers": {"type": "array", "items": {"type": "string"}}}},
}


def schema() -> dict:
    from spkid import __version__
    return {
        "openapi": "3.1.0",
        "info": {"title": "spkid speaker recognition", "version": __version__,
                 "description": "Tokens: 'Authorization: Bearer <token>'; admin tokens enroll, rename and delete, "
                                "read tokens list, identify, verify and diarize. Every error is JSON "
                                "{error, status}."},
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/": {"get": {"summary": "the web page", "responses": {"200": {"description": "HTML"}}}},
            "/openapi.json": {"get": {"summary": "this schema", "responses": {"200": {"description": "JSON"}}}},
            "/v1/health": {"get": {"summary": "liveness", "responses": {"200": {"description": "ok"}}}},
            "/v1/metrics": {"get": {"summary": "request counts, latency percentiles, batching", "security": _TOKEN,
                                    "responses": {"200": {"description": "JSON"}, **_errors(401, 429)}}},
            "/v1/speakers": {
                "get": {"summary": "enrolled speakers and the threshold", "security": _TOKEN,
                        "responses": {"200": _json("Speakers", "the registry"), **_errors(401, 429)}},
                "post": {"summary": "enroll clips of a speaker (admin); adds to an enrolled speaker",
                         "security": _TOKEN,
                         "requestBody": _form({"name": _NAME, "audio": {"type": "array", "items": _AUDIO},
                                               "on_outlier": {"enum": ["keep", "refuse"]}}, ["name", "audio"]),
                         "responses": {"201": _json("Enrolled", "stored, with the new threshold"),
                                       **_errors(400, 401, 403, 413, 415, 422, 429, 503)}}},
            "/v1/speakers/{name}": {
                "patch": {"summary": "rename a speaker (admin)", "security": _TOKEN, "parameters": _SPEAKER_PARAM,
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "properties": {"name": _NAME}, "required": ["name"]}}}},
                          "responses": {"200": {"description": "renamed"},
                                        **_errors(400, 401, 403, 404, 409, 422, 429)}},
                "delete": {"summary": "delete a speaker and their clips (admin)", "security": _TOKEN,
                           "parameters": _SPEAKER_PARAM,
                           "responses": {"200": {"description": "deleted"}, **_errors(401, 403, 404, 429)}}},
            "/v1/identify": {"post": {
                "summary": "who is speaking: the top-k enrolled speakers, 'unknown' below the threshold",
                "security": _TOKEN,
                "requestBody": _form({"audio": _AUDIO, "top_k": {"type": "integer", "minimum": 1, "maximum": 50}},
                                     ["audio"]),
                "responses": {"200": _json("Identified", "decision and candidates"),
                              **_errors(400, 401, 409, 413, 415, 422, 429)}}},
            "/v1/verify": {"post": {
                "summary": "same speaker or not: two clips, or a clip against an enrolled speaker",
                "security": _TOKEN,
                "requestBody": _form({"audio": _AUDIO, "audio2": _AUDIO, "speaker": _NAME}, ["audio"]),
                "responses": {"200": _json("Verified", "score and decision"),
                              **_errors(400, 401, 404, 413, 415, 422, 429)}}},
            "/v1/diarize": {"post": {
                "summary": "who spoke when, named from the registry",
                "security": _TOKEN,
                "requestBody": _form({"audio": _AUDIO, "num_speakers": {"type": "integer"},
                                      "min_speakers": {"type": "integer"}, "max_speakers": {"type": "integer"}},
                                     ["audio"]),
                "responses": {"200": _json("Segments", "segments in time order"),
                              **_errors(400, 401, 413, 415, 422, 429, 501)}}},
        },
    }
