"""Every bad request of issue 26 is a 4xx JSON error with a one-line message, and the server keeps serving;
tokens (hashed, roles, revocation), rate limits, CORS, loopback-only defaults."""
from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from serve_helpers import (ADMIN, READ, auth, files, model, tokens, voice_checkpoint,  # noqa: F401
                           voice_clips, wav_bytes)
from spkid.errors import ConfigError
from spkid.serve import ServeConfig, create_app
from spkid.serve.auth import RateLimiter, TokenStore, add_token, hash_token, parse_token_file
from spkid.serve.http import ApiError
from spkid.serve.uploads import wav_seconds

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def voices():
    return {k: voice_clips(k, 2, seed=9) for k in range(2)}


@pytest.fixture(scope="module")
def served(model, voices, tmp_path_factory):
    """One server for the whole list (it must survive each bad request); 1 MB body cap, 30 s clip cap."""
    cfg = ServeConfig(registry=str(tmp_path_factory.mktemp("sec") / "reg.db"), model="unused", rate=0,
                      max_upload_mb=1, max_clip_seconds=30)
    with TestClient(create_app(cfg, model=model, tokens=tokens())) as c:
        r = c.post("/v1/speakers", data={"name": "alice"}, files=files(voices[0][0]), headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        yield c


def ten_hour_wav() -> bytes:
    """A valid 16 kHz mono PCM header whose data chunk claims ten hours, followed by one second of samples."""
    n = 10 * 3600 * 16000 * 2
    head = (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16))
    return head + b"data" + struct.pack("<I", n) + b"\x01\x00" * 16000


def _multipart(boundary: str, body: bytes) -> dict:
    return {"content": body, "headers": {**auth(ADMIN), "content-type": f"multipart/form-data; boundary={boundary}"}}


def _stream(n_bytes: int):
    for _ in range(n_bytes // 65536):
        yield b"\0" * 65536


BAD = [
    # (what, method, path, request kwargs builder, status, words in the message)
    ("no token", "post", "/v1/identify", lambda v: {"files": files(v[0][1])}, 401, "missing"),
    ("a wrong token", "post", "/v1/identify", lambda v: {"files": files(v[0][1]), "headers": auth("nope")}, 401,
     "unknown token"),
    ("not a bearer header", "get", "/v1/speakers", lambda v: {"headers": {"Authorization": "Basic eDp5"}}, 401,
     "Bearer"),
    ("a read token on enroll", "post", "/v1/speakers",
     lambda v: {"data": {"name": "x"}, "files": files(v[1][0]), "headers": auth(READ)}, 403, "needs admin"),
    ("a read token on delete", "delete", "/v1/speakers/alice", lambda v: {"headers": auth(READ)}, 403, "admin"),
    ("a 1 GB body (declared)", "post", "/v1/speakers",
     lambda v: {"content": b"x" * 10, "headers": {**auth(ADMIN), "content-length": str(2**30),
                                                   "content-type": "multipart/form-data; boundary=b"}}, 413, "1 MB"),
    ("a body over the cap (chunked, undeclared)", "post", "/v1/speakers",
     lambda v: {"content": _stream(3 * 2**20), "headers": {**auth(ADMIN),
                                                           "content-type": "multipart/form-data; boundary=b"}},
     413, "1 MB"),
    ("a WAV header claiming ten hours", "post", "/v1/identify",
     lambda v: {"files": files(ten_hour_wav()), "headers": auth(READ)}, 413, "claims 36000 s"),
    ("a FLAC over the clip cap", "post", "/v1/identify",
     lambda v: {"files": files(wav_bytes(np.zeros(16000 * 40, np.float32), fmt="FLAC")), "headers": auth(READ)},
     413, "40 s of audio"),
    ("non-audio", "post", "/v1/identify",
     lambda v: {"files": [("audio", ("x.wav", b"%PDF-1.4 not audio at all" * 20, "audio/wav"))],
                "headers": auth(READ)}, 422, "not readable as audio"),
    ("0 bytes", "post", "/v1/speakers",
     lambda v: {"data": {"name": "x"}, "files": [("audio", ("empty.wav", b"", "audio/wav"))],
                "headers": auth(ADMIN)}, 400, "empty upload"),
    ("silence (no speech)", "post", "/v1/identify",
     lambda v: {"files": files(wav_bytes(np.zeros(16000 * 2, np.float32))), "headers": auth(READ)}, 422, "speech"),
    ("a name with quotes and newlines", "post", "/v1/speakers",
     lambda v: {"data": {"name": 'Robert"); DROP TABLE utterances;--\nx'}, "files": files(v[1][0]),
                "headers": auth(ADMIN)}, 422, "U+000A"),
    ("malformed multipart", "post", "/v1/speakers",
     lambda v: _multipart("zzz", b"--zzz\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbob\r\n--zz"),
     400, "request"),
    ("multipart without a boundary", "post", "/v1/identify",
     lambda v: {"content": b"abc", "headers": {**auth(READ), "content-type": "multipart/form-data"}}, 400, "request"),
    ("not multipart", "post", "/v1/identify",
     lambda v: {"json": {"audio": "x"}, "headers": auth(READ)}, 415, "multipart/form-data"),
    ("no audio field", "post", "/v1/speakers",
     lambda v: {"data": {"name": "x"}, "files": files(v[1][0], field="sound"), "headers": auth(ADMIN)}, 400,
     "audio: no audio file field"),
    ("a form instead of multipart", "post", "/v1/speakers", lambda v: {"data": {"name": "x"}, "headers": auth(ADMIN)},
     415, "multipart"),
    ("no name", "post", "/v1/speakers", lambda v: {"files": files(v[1][0]), "headers": auth(ADMIN)}, 400,
     "name: missing"),
    ("a bad top_k", "post", "/v1/identify",
     lambda v: {"files": files(v[0][1]), "data": {"top_k": "999"}, "headers": auth(READ)}, 422, "top_k"),
    ("an unknown speaker on delete", "delete", "/v1/speakers/nobody", lambda v: {"headers": auth(ADMIN)}, 404,
     "not enrolled"),
    ("rename without JSON", "patch", "/v1/speakers/alice",
     lambda v: {"content": b"{", "headers": {**auth(ADMIN), "content-type": "application/json"}}, 400, "JSON"),
    ("an unknown endpoint", "get", "/v2/everything", lambda v: {}, 404, "no such endpoint"),
    ("a wrong method", "put", "/v1/identify", lambda v: {}, 405, "not allowed"),
]


@pytest.mark.parametrize("what,method,path,build,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_request_is_a_one_line_json_error_and_the_server_keeps_serving(served, voices, what, method, path,
                                                                           build, status, needle):
    r = served.request(method.upper(), path, **build(voices))
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert needle in body["error"] and "\n" not in body["error"]
    assert "/tmp" not in body["error"] and "reg.db" not in body["error"]     # no server paths leak
    ok = served.post("/v1/identify", files=files(voices[0][1]), headers=auth(READ))
    assert ok.status_code == 200 and ok.json()["candidates"][0]["speaker"] == "alice"


def test_a_path_like_name_is_stored_as_data(served, voices, tmp_path):
    """'../../etc/passwd' is a legal (if odd) name: stored verbatim, listed, deleted; no file is made or read."""
    name = "../../etc/passwd"
    before = sorted(p.name for p in served.app.state.svc.tmp.parent.iterdir())
    r = served.post("/v1/speakers", data={"name": name}, files=files(voices[1][1]), headers=auth(ADMIN))
    assert r.status_code == 201 and r.json()["speaker"] == name
    names = [s["name"] for s in served.get("/v1/speakers", headers=auth(READ)).json()["speakers"]]
    assert name in names
    assert sorted(p.name for p in served.app.state.svc.tmp.parent.iterdir()) == before
    assert list(served.app.state.svc.tmp.iterdir()) == []                  # upload temp files are gone
    d = served.delete("/v1/speakers/..%2F..%2Fetc%2Fpasswd", headers=auth(ADMIN))
    assert d.status_code == 200 and d.json()["deleted"] == name


def test_token_file_is_hashed_private_and_reread(tmp_path):
    path = tmp_path / "tokens"
    admin = add_token(path, "admin", "ops")
    read = add_token(path, "read", "app")
    text = path.read_text()
    assert admin not in text and read not in text and hash_token(admin) in text
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [(r, lbl) for _, r, lbl in parse_token_file(path)] == [("admin", "ops"), ("read", "app")]
    store = TokenStore(path)
    assert store.authenticate(f"Bearer {admin}").role == "admin"
    assert store.authenticate(f"bearer {read}").may("read") and not store.authenticate(f"Bearer {read}").may("admin")
    path.write_text("".join(line + "\n" for line in text.splitlines() if " read " not in line))   # revoke
    import os
    os.utime(path, ns=(1, 10**18))
    with pytest.raises(ApiError, match="unknown token"):
        store.authenticate(f"Bearer {read}")
    (tmp_path / "bad").write_text("sha256:abc admin\n")
    with pytest.raises(ConfigError, match="line 1"):
        TokenStore(tmp_path / "bad")
    with pytest.raises(ConfigError, match="role"):
        add_token(path, "root")


def test_rate_limit_per_token(model, voices, tmp_path):
    limiter = RateLimiter(rate=1.0, burst=2)
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(ApiError) as e:
        limiter.take("a")
    assert e.value.status == 429 and int(e.value.headers["Retry-After"]) >= 1
    limiter.take("b")                                                     # another token has its own bucket
    cfg = ServeConfig(registry=str(tmp_path / "r.db"), model="unused", rate=0.5, burst=2)
    with TestClient(create_app(cfg, model=model, tokens=tokens())) as c:
        codes = [c.get("/v1/speakers", headers=auth(READ)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert c.get("/v1/speakers", headers=auth(ADMIN)).status_code == 200
        r = c.get("/v1/speakers", headers=auth(READ))
        assert r.status_code == 429 and "Retry-After" in r.headers and "rate limit" in r.json()["error"]


def test_cors_is_closed_unless_an_origin_is_configured(model, tmp_path):
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization"}
    with TestClient(create_app(ServeConfig(registry=str(tmp_path / "a.db"), model="unused"), model=model,
                               tokens=tokens())) as c:
        r = c.options("/v1/identify", headers=pre)
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/v1/speakers", headers={**auth(READ), "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    cfg = ServeConfig(registry=str(tmp_path / "b.db"), model="unused", cors_origins=["https://app.example"])
    with TestClient(create_app(cfg, model=model, tokens=tokens())) as c:
        ok = c.options("/v1/identify", headers={**pre, "Origin": "https://app.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in c.options("/v1/identify", headers=pre).headers


def test_config_refuses_unsafe_settings():
    with pytest.raises(ConfigError, match="needs --token-file"):
        ServeConfig(host="0.0.0.0")
    ServeConfig(host="::1")
    ServeConfig(host="localhost")
    with pytest.raises(ConfigError, match="origin"):
        ServeConfig(cors_origins=["*"])
    with pytest.raises(ConfigError, match="3600"):
        ServeConfig(max_clip_seconds=7200)


def test_wav_header_duration():
    assert wav_seconds(ten_hour_wav()[:100]) == pytest.approx(36000)
    assert wav_seconds(wav_bytes(np.zeros(8000, np.float32))) == pytest.approx(0.5)
    assert wav_seconds(b"fLaC" + b"\0" * 40) is None
    with pytest.raises(ApiError, match="fmt/data"):
        wav_seconds(b"RIFF\x10\0\0\0WAVEjunk\x04\0\0\0abcd")
