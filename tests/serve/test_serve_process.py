"""``spkid serve`` as a real process: tokens from ``spkid token``, SIGTERM drains a request in flight and exits 0,
SIGKILL in the middle of enrolls leaves a registry holding every acknowledged enroll whole, ``--workers 2``."""
from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from serve_helpers import REPO, ServerProcess, env, files, voice_checkpoint, voice_clips  # noqa: F401


@pytest.fixture(scope="module")
def clips():
    return [c for k in range(3) for c in voice_clips(k, 2, seconds=2.0, seed=31)]


def _token(folder, role) -> str:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "spkid", "token", str(folder / "tokens"), "--role", role,
                        "--label", f"{role} for tests"], capture_output=True, text=True, cwd=REPO, env=env())
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _raw_request(url: str, req: httpx.Request) -> tuple[socket.socket, bytes, bytes]:
    """A connected socket plus the request head and body bytes, to send in pieces."""
    parts = urlsplit(url)
    body = req.read()
    head = f"{req.method} {req.url.raw_path.decode()} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host") + "\r\n"
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    return sock, head.encode(), body


def test_tokens_then_sigterm_finishes_the_request_in_flight_and_exits_0(voice_checkpoint, clips, tmp_path):
    admin, read = _token(tmp_path, "admin"), _token(tmp_path, "read")
    assert admin not in (tmp_path / "tokens").read_text()
    srv = ServerProcess("--model", voice_checkpoint, "--registry", tmp_path / "reg.db", "--token-file",
                        tmp_path / "tokens", cwd=tmp_path)
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        h = {"Authorization": f"Bearer {read}"}
        assert httpx.get(srv.url + "/v1/speakers", headers=h).status_code == 200
        assert httpx.post(srv.url + "/v1/speakers", data={"name": "a"}, files=files(clips[0]),
                          headers=h).status_code == 403
        req = httpx.Request("POST", srv.url + "/v1/speakers", data={"name": "late"}, files=files(*clips[2:4]),
                            headers={"Authorization": f"Bearer {admin}"})
        sock, head, body = _raw_request(srv.url, req)
        sock.sendall(head + body[:len(body) // 2])          # the request is in flight: half its body sent
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None                       # still draining
        sock.sendall(body[len(body) // 2:])
        reply = sock.makefile("rb").read()
        sock.close()
        assert reply.startswith(b"HTTP/1.1 201"), reply[:200]
        assert b'"speaker":"late"' in reply.replace(b" ", b"")
        assert srv.proc.wait(60) == 0
        out = srv.proc.stdout.read()
        assert "spkid serve: stopped" in out
    finally:
        if srv.proc.poll() is None:
            srv.kill()
    con = sqlite3.connect(tmp_path / "reg.db")
    assert con.execute("SELECT COUNT(*) FROM utterances WHERE speaker = 'late'").fetchone()[0] == 2
    con.close()


def test_sigkill_mid_enroll_keeps_every_acknowledged_enroll_whole(voice_checkpoint, clips, tmp_path):
    acked: dict[str, int] = {}
    for round_ in range(2):
        srv = ServerProcess("--model", voice_checkpoint, "--registry", tmp_path / "reg.db", "--rate", "0",
                            cwd=tmp_path)
        token = srv.proc.stdout.readline().split("#token=")[1].strip()
        stop, first = threading.Event(), threading.Event()

        def enroll_forever():
            k = 0
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
                while not stop.is_set():
                    name = f"r{round_}-{k}"
                    n = 2 + k % 3
                    try:
                        r = c.post(srv.url + "/v1/speakers", data={"name": name},
                                   files=files(*[clips[(k + j) % len(clips)] for j in range(n)]))
                    except httpx.HTTPError:
                        return
                    if r.status_code == 201:
                        acked[name] = n
                        first.set()
                    k += 1
        t = threading.Thread(target=enroll_forever)
        t.start()
        assert first.wait(120)
        time.sleep(0.3 + 0.4 * round_)                          # the client is posting the next enroll
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        stop.set()
        t.join()
        srv.kill()
    assert len(acked) >= 2
    srv = ServerProcess("--model", voice_checkpoint, "--registry", tmp_path / "reg.db", cwd=tmp_path)
    try:
        token = srv.proc.stdout.readline().split("#token=")[1].strip()
        listed = httpx.get(srv.url + "/v1/speakers", headers={"Authorization": f"Bearer {token}"}).json()
    finally:
        assert srv.stop() == 0
    have = {s["name"]: s["utterances"] for s in listed["speakers"]}
    for name, n in acked.items():
        assert have.get(name) == n, name                      # every acknowledged enroll, whole
    for name, n in have.items():
        assert n == 2 + int(name.split("-")[1]) % 3, name    # nothing half-written (an unacknowledged one may land)
    con = sqlite3.connect(tmp_path / "reg.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_two_workers_share_one_registry(voice_checkpoint, clips, tmp_path):
    srv = ServerProcess("--model", voice_checkpoint, "--registry", tmp_path / "reg.db", "--workers", "2",
                        "--rate", "0", cwd=tmp_path)
    try:
        token = srv.proc.stdout.readline().split("#token=")[1].strip()
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            for k in range(3):
                r = c.post(srv.url + "/v1/speakers", data={"name": f"s{k}"}, files=files(clips[2 * k]))
                assert r.status_code == 201, r.text
            # new connections land on either worker; each must see all three speakers
            for _ in range(6):
                with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as fresh:
                    names = [s["name"] for s in fresh.get(srv.url + "/v1/speakers").json()["speakers"]]
                    assert names == ["s0", "s1", "s2"]
            r = c.post(srv.url + "/v1/identify", files=files(clips[3]))
            assert r.status_code == 200 and r.json()["candidates"][0]["speaker"] == "s1"
    finally:
        assert srv.stop() == 0
