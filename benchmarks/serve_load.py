"""Load, fault and bad-request check of ``spkid serve`` on loopback (issue 26). Every loop has a fixed size.

    python benchmarks/serve_load.py --model runs/base/last.ckpt --work /tmp/serve_bench -o serve_results.json \
        --screenshot docs/serve_screenshot.png

1. Data (cached in ``--work``): 1,000 "speakers" for the registry, each 2 clips of the shared speechocean762 Opus
   training audio (its 250 speakers' clips split 4 ways: a gallery this size needs more speakers than the shared
   data has, and the scoring cost depends on the count, not on who they are); ``--queries`` 5-s WAV queries cut from
   LibriSpeech train-clean-100 (other speakers: most answers are "unknown", as for callers not enrolled).
2. The CLI's batched embedding rate: ``Model.embed`` of the queries in this process (what ``spkid embed`` runs:
   decode, speech detection, log-mel, length-bucketed batches), clips/s.
3. Identify at 1, 8 and 50 concurrent clients (each a loop over a fixed number of requests): throughput,
   p50/p95/p99 latency, errors; then 8 identify clients beside 1 enroll client.
4. Faults: ``--kills`` times, SIGKILL the server while a client enrolls without pause, restart; at the end the
   registry must open, hold every acknowledged enroll with all its clips and no partial one.
5. The bad requests of the issue, each answered 4xx JSON while identify keeps working.
6. ``--screenshot``: the page in Debian's Chromium (Playwright) after enrolling four speakers and identifying a clip.
Targets (2-core CPU): p95 <= 250 ms at 8 clients; at 50 clients throughput >= 80 % of the CLI rate, 0 errors.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


# data ---------------------------------------------------------------------------------------------------------

def make_queries(work: Path, n: int, seconds: float = 5.0) -> list[Path]:
    """``n`` 5-s 16 kHz WAVs, one per LibriSpeech train-clean-100 speaker long enough (from 2 s in, or the end)."""
    from spkid.audio.io import load_audio
    out = work / "queries"
    out.mkdir(parents=True, exist_ok=True)
    size = int(seconds * 16000)
    paths = []
    for f in sorted((SHARED / "librispeech-sample" / "train-clean-100").glob("*/*.opus")):
        if len(paths) == n:
            break
        p = out / (f.stem + ".wav")
        if not p.exists():
            wav = load_audio(f).numpy()
            if len(wav) < size:
                continue
            start = min(32000, len(wav) - size)
            sf.write(p, wav[start:start + size], 16000, subtype="PCM_16")
        paths.append(p)
    return paths


def gallery_embeddings(model, work: Path, n_speakers: int = 1000, per: int = 2):
    """``(names, (n_speakers * per, E) embeddings, sources)`` of the pseudo-speakers, cached per model."""
    cache = work / f"gallery-{model.model_id}.npz"
    if cache.exists():
        z = np.load(cache)
        return list(z["names"]), z["emb"], list(z["sources"])
    import torch.nn.functional as F
    from spkid.errors import DataError
    root = SHARED / "speechocean762-opus" / "train"
    speakers = sorted(p for p in root.iterdir() if p.is_dir())
    groups = -(-n_speakers // len(speakers))
    t = time.time()
    usable = {}                                      # speaker -> features of its clips with speech, in name order
    for spk in speakers:
        feats = []
        for clip in sorted(spk.glob("*.opus")):
            try:
                feats.append((clip, model.features([clip])[0]))
            except DataError:
                continue                             # a clip without speech: skipped, as prepare does
        usable[spk] = feats
    names, items, feats = [], [], []
    for g in range(groups):
        for spk in speakers:
            chosen = usable[spk][g * per:(g + 1) * per]
            if len(chosen) == per and len(names) < n_speakers:
                names.append(f"{spk.name}-{g}")
                items += [c for c, _ in chosen]
                feats += [f for _, f in chosen]
    emb = F.normalize(model.embed_raw(feats), dim=-1).numpy()
    print(f"embedded {len(items)} gallery clips in {time.time() - t:.0f} s", flush=True)
    np.savez(cache, names=np.array(names), emb=emb, sources=np.array([str(i) for i in items]))
    return names, emb, [str(i) for i in items]


def build_registry(model, path: Path, names, emb, sources, per: int = 2) -> float:
    """A registry of the pseudo-speakers (threshold held while filling, then estimated once); seconds taken."""
    from spkid.scoring.openset import default_threshold
    from spkid.scoring.speaker_db import SpeakerDB
    t = time.time()
    thr, src = default_threshold(model)
    with SpeakerDB.create(path, model_id=model.model_id, checkpoint=str(model.path.resolve()),
                          embed_dim=model.net.embed_dim, threshold=thr, threshold_source=src) as reg:
        reg.set_threshold(thr, src, locked=True, scale="raw")          # no re-estimate per speaker while filling
        for k, name in enumerate(names):
            reg.enroll(name, emb[k * per:(k + 1) * per], sources[k * per:(k + 1) * per], model_id=model.model_id)
        reg.unlock_threshold()
        reg.refresh_threshold()
    return time.time() - t


# the server ---------------------------------------------------------------------------------------------------

class Server:
    """``spkid serve`` on a free loopback port; ``token``: the start-up admin token, or ``admin`` with a token file."""

    def __init__(self, model: str, registry: Path, *extra: str, token_file: Path | None = None, admin: str = ""):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        tf = ["--token-file", str(token_file)] if token_file else []
        self.proc = subprocess.Popen([sys.executable, "-m", "spkid", "serve", "--model", model, "--registry",
                                      str(registry), "--port", "0", "--host", "127.0.0.1", *tf, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        first = self.proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", first)
        if not m:
            raise RuntimeError(f"server did not start: {first!r} {self.proc.stderr.read()[-1500:]}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = admin if token_file else self.proc.stdout.readline().split("#token=")[1].strip()
        self.headers = {"Authorization": f"Bearer {self.token}"}
        import httpx
        for _ in range(600):
            try:
                if httpx.get(self.url + "/v1/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server not ready")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(120)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _files(paths, field="audio"):
    return [(field, (Path(p).name, Path(p).read_bytes(), "audio/wav")) for p in paths]


async def _client_loop(client, url, make_request, n, lat, errors):
    for i in range(n):
        t = time.perf_counter()
        try:
            r = await make_request(client, url, i)
            ok = r.status_code in (200, 201)
        except Exception as e:                                         # noqa: BLE001  counted, reported
            ok, r = False, e
        lat.append(time.perf_counter() - t)
        if not ok:
            errors.append(str(getattr(r, "status_code", r))[:80])


def run_clients(srv: Server, clients: int, per_client: int, make_request) -> dict:
    """``clients`` concurrent loops of ``per_client`` requests each; latencies, throughput, errors."""
    import httpx

    async def main():
        lat, errors = [], []
        limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
        async with httpx.AsyncClient(headers=srv.headers, timeout=300, limits=limits) as client:
            t = time.perf_counter()
            await asyncio.gather(*[_client_loop(client, srv.url, make_request, per_client, lat, errors)
                                   for _ in range(clients)])
            wall = time.perf_counter() - t
        return lat, errors, wall
    lat, errors, wall = asyncio.run(main())
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "requests": len(lat), "seconds": round(wall, 2),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "throughput_rps": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": len(errors), "error_kinds": sorted(set(errors))[:5]}


def identify_request(queries):
    async def req(client, url, i):
        q = queries[random.randrange(len(queries))]
        return await client.post(url + "/v1/identify", files=_files([q]), data={"top_k": "3"})
    return req


# measurements -------------------------------------------------------------------------------------------------

def cli_rate(model, queries, repeats: int = 2) -> float:
    """Clips/s of ``Model.embed`` over the queries (the ``spkid embed`` path), best of ``repeats``."""
    model.embed(queries[:4])
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        model.embed(queries)
        best = max(best, len(queries) / (time.perf_counter() - t))
    return best


def load_phases(args, reg: Path, queries, model) -> dict:
    """Identify at 1, 8, 50 clients, then mixed; the CLI rate measured again right after the 50-client phase (the
    machine's other load varies: the ratio uses the mean of both CLI measurements)."""
    srv = Server(args.model, reg, "--rate", "0")
    try:
        run_clients(srv, 2, 5, identify_request(queries))                      # warm-up
        out = {}
        for clients, per in ((1, args.n1), (8, args.n8 // 8), (50, args.n50 // 50)):
            out[str(clients)] = run_clients(srv, clients, per, identify_request(queries))
            print(f"identify, {clients:2d} clients: {out[str(clients)]}", flush=True)
        out["cli_rate_after_clips_per_s"] = round(cli_rate(model, queries), 2)
        enroll_names = iter(range(10**6))

        async def enroll(client, url, i):
            k = next(enroll_names)
            clips = [queries[(2 * k) % len(queries)], queries[(2 * k + 1) % len(queries)]]
            return await client.post(url + "/v1/speakers", data={"name": f"mixed-{k}"}, files=_files(clips))
        mixed: dict = {}
        t = threading.Thread(target=lambda: mixed.update(enroll=run_clients(srv, 1, args.mixed_enrolls, enroll)))
        t.start()
        mixed["identify"] = run_clients(srv, 8, args.n8 // 8, identify_request(queries))
        t.join()
        print(f"mixed: {mixed}", flush=True)
        out["mixed"] = mixed
        import httpx
        out["server_metrics"] = httpx.get(srv.url + "/v1/metrics", headers=srv.headers).json()["embedding"]
    finally:
        out["sigterm_exit"] = srv.stop()
    return out


def kill_rounds(args, reg: Path, queries) -> dict:
    """``args.kills`` rounds: an enroll client runs without pause; SIGKILL the server 0.5-3 s after its first
    acknowledged enroll of the round; restart. Then check the registry."""
    import httpx
    acked: dict[str, int] = {}
    in_flight_at_kill = 0
    rng = random.Random(0)
    for rnd in range(args.kills):
        srv = Server(args.model, reg, "--rate", "0")
        first = threading.Event()
        busy = threading.Event()

        def loop():
            k = 0
            with httpx.Client(headers=srv.headers, timeout=120) as c:
                while True:
                    name, n = f"kill{rnd}-{k}", 2 + k % 3
                    clips = [queries[(rnd * 7 + k + j) % len(queries)] for j in range(n)]
                    busy.set()
                    try:
                        r = c.post(srv.url + "/v1/speakers", data={"name": name}, files=_files(clips))
                    except httpx.HTTPError:
                        return
                    busy.clear()
                    if r.status_code == 201:
                        acked[name] = n
                        first.set()
                    k += 1
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        first.wait(120)
        time.sleep(rng.uniform(0.5, 3.0))
        in_flight_at_kill += busy.is_set()
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        t.join(60)
        srv.kill()
        print(f"kill {rnd + 1}/{args.kills}: {len(acked)} enrolls acknowledged so far", flush=True)
    srv = Server(args.model, reg)
    try:
        listed = httpx.get(srv.url + "/v1/speakers", headers=srv.headers, timeout=60).json()["speakers"]
    finally:
        srv.stop()
    have = {s["name"]: s["utterances"] for s in listed if s["name"].startswith("kill")}
    con = sqlite3.connect(reg)
    integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.close()
    return {"kills": args.kills, "request_in_flight_at_kill": in_flight_at_kill, "acknowledged": len(acked),
            "acknowledged_missing": sum(have.get(n) != c for n, c in acked.items()),
            "landed_unacknowledged": len(set(have) - set(acked)),
            "partial": sum(c != 2 + int(n.split("-")[1]) % 3 for n, c in have.items()),
            "integrity_check": integrity}


def raw_http(port: int, head: bytes, body_chunks, read_timeout: float = 30) -> str:
    """Send a request by hand (bodies larger than anything we allocate); the status line and JSON reply."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break                                          # the server answered and closed: read the answer
        data = b""
        while True:
            try:
                part = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not part:
                break
            data += part
    finally:
        sock.close()
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return status + " " + data.split(b"\r\n\r\n", 1)[-1][:160].decode(errors="replace")


def bad_requests(args, reg: Path, queries) -> list[dict]:
    """The issue's bad requests against a server with a token file (one admin, one read token)."""
    import httpx
    from spkid.serve.auth import add_token
    tokens = Path(args.work) / "tokens"
    tokens.unlink(missing_ok=True)
    admin, read = add_token(tokens, "admin", "bench"), add_token(tokens, "read", "bench")
    srv = Server(args.model, reg, "--rate", "0", token_file=tokens, admin=admin)
    out = []
    try:
        h = srv.headers
        n = 10 * 3600 * 16000 * 2
        ten_h = (b"RIFF" + (36 + n).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
                 + bytes.fromhex("0100 0100 803e0000 007d0000 0200 1000") + b"data" + n.to_bytes(4, "little")
                 + b"\0\1" * 16000)
        q = _files([queries[0]])
        enroll = {"data": {"name": "x"}, "files": q}
        cases = [
            ("no token", "POST", "/v1/identify", {"files": q, "headers": {}}),
            ("a wrong token", "POST", "/v1/identify", {"files": q, "headers": {"Authorization": "Bearer wrong"}}),
            ("a read token on enroll", "POST", "/v1/speakers",
             {**enroll, "headers": {"Authorization": f"Bearer {read}"}}),
            ("a WAV header claiming ten hours", "POST", "/v1/identify", {"files": [("audio", ("long.wav", ten_h))]}),
            ("non-audio", "POST", "/v1/identify", {"files": [("audio", ("a.wav", b"<html>not audio</html>" * 50))]}),
            ("0 bytes", "POST", "/v1/identify", {"files": [("audio", ("empty.wav", b""))]}),
            ("name ../../etc/passwd", "POST", "/v1/speakers", {"data": {"name": "../../etc/passwd"}, "files": q}),
            ("name with quotes and newlines", "POST", "/v1/speakers",
             {"data": {"name": 'a "quoted"\nname'}, "files": q}),
            ("malformed multipart", "POST", "/v1/speakers",
             {"content": b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--b",
              "headers": {**h, "content-type": "multipart/form-data; boundary=b"}}),
            ("unknown speaker on delete", "DELETE", "/v1/speakers/nobody-at-all", {}),
        ]
        with httpx.Client(headers=h, timeout=60) as c:
            for what, method, path, kw in cases:
                if "headers" in kw and "content-type" not in kw["headers"]:      # replace the client's token
                    r = httpx.request(method, srv.url + path, timeout=60, **kw)
                else:
                    r = c.request(method, srv.url + path, **kw)
                still = c.post(srv.url + "/v1/identify", files=q).status_code
                out.append({"request": what, "status": r.status_code, "reply": r.text[:160], "identify_after": still})
            head = (f"POST /v1/speakers HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {srv.token}\r\n"
                    "Content-Type: multipart/form-data; boundary=b\r\n").encode()
            gib = 2**30
            big = raw_http(srv.port, head + f"Content-Length: {gib}\r\n\r\n".encode(),
                           (b"\0" * 2**20 for _ in range(1024)))
            out.append({"request": "a 1 GB body (Content-Length)", "status": int(big.split()[1]), "reply": big,
                        "identify_after": c.post(srv.url + "/v1/identify", files=q).status_code})
            part = b'--b\r\nContent-Disposition: form-data; name="audio"; filename="big.wav"\r\n\r\n'
            chunks = [f"{len(part):x}\r\n".encode() + part + b"\r\n"]          # a valid start, then 1 GiB of data
            chunked = raw_http(srv.port, head + b"Transfer-Encoding: chunked\r\n\r\n",
                               (x for x in [*chunks] + [b"100000\r\n" + b"\0" * 2**20 + b"\r\n"] * 1024))
            out.append({"request": "a 1 GB body (chunked, no length)", "status": int(chunked.split()[1]),
                        "reply": chunked, "identify_after": c.post(srv.url + "/v1/identify", files=q).status_code})
    finally:
        srv.stop()
    for row in out:
        print(f"{row['request']:36s} {row['status']}  {row['reply'][:100]}", flush=True)
    return out


def screenshot(args, queries, path: Path) -> list[str]:
    """The page after enrolling four speakers (by upload, through the page) and identifying a clip."""
    from playwright.sync_api import expect, sync_playwright
    work = Path(args.work) / "page"
    work.mkdir(parents=True, exist_ok=True)
    reg = work / "page.db"
    reg.unlink(missing_ok=True)
    srv = Server(args.model, reg)
    problems: list[str] = []
    try:
        root = SHARED / "speechocean762-opus" / "train"
        speakers = sorted(p for p in root.iterdir() if p.is_dir())[:4]
        shown = ["Amira Haddad", "Chen Wei", "José Álvarez", "Olga Petrova"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("request", lambda r: problems.append(f"outside request {r.url}")
                    if not r.url.startswith(srv.url) and not r.url.startswith("data:") else None)
            page.goto(f"{srv.url}/#token={srv.token}")
            for name, spk in zip(shown, speakers):
                page.fill("#enroll-name", name)
                page.set_input_files("#enroll-files", [str(p) for p in sorted(spk.glob("*.opus"))[:3]])
                page.click("#enroll-submit")
                expect(page.locator("#enroll-result")).to_contain_text(f"enrolled {name}", timeout=120000)
            page.set_input_files("#identify-file", str(sorted(speakers[2].glob("*.opus"))[5]))
            page.click("#identify-submit")
            expect(page.locator("#identify-candidates")).to_be_visible(timeout=120000)
            page.set_input_files("#diarize-file", str(queries[0]))
            page.click("#diarize-submit")
            expect(page.locator("#diarize-result")).not_to_contain_text("diarizing", timeout=300000)
            page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        srv.stop()
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint the server and the CLI rate use")
    p.add_argument("--work", default="/tmp/spkid_serve_bench", help="data and registries (outside the repo)")
    p.add_argument("-o", "--output", help="JSON results")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--n1", type=int, default=60, help="identify requests with 1 client")
    p.add_argument("--n8", type=int, default=240, help="identify requests with 8 clients (and in the mixed phase)")
    p.add_argument("--n50", type=int, default=500, help="identify requests with 50 clients")
    p.add_argument("--mixed-enrolls", type=int, default=8)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--skip", default="", help="comma list of phases to skip: load,kills,bad,page")
    p.add_argument("--screenshot", type=Path)
    args = p.parse_args(argv)
    import spkid
    from spkid.runtime import use_threads
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    use_threads(0)
    model = spkid.load(args.model, "cpu")
    queries = make_queries(work, args.queries)
    names, emb, sources = gallery_embeddings(model, work)
    results: dict = {"model": args.model, "cores": os.cpu_count(), "speakers": len(names),
                     "gallery_clips": len(sources), "queries": len(queries), "query_seconds": 5.0}
    results["cli_rate_clips_per_s"] = round(cli_rate(model, queries), 2)
    print(f"CLI batched embedding rate: {results['cli_rate_clips_per_s']} clips/s", flush=True)
    base = work / "registry-1000.db"
    if not base.exists():
        results["registry_build_s"] = round(build_registry(model, base, names, emb, sources), 1)

    def fresh(name: str) -> Path:
        import shutil
        dst = work / name
        for suffix in ("", "-wal", "-shm"):
            Path(str(dst) + suffix).unlink(missing_ok=True)
        shutil.copy(base, dst)
        return dst
    if "load" not in skip:
        results["load"] = load = load_phases(args, fresh("load.db"), queries, model)
        cli = (results["cli_rate_clips_per_s"] + load["cli_rate_after_clips_per_s"]) / 2
        results["ratio_50_clients_to_cli"] = round(load["50"]["throughput_rps"] / cli, 3)
        print(f"50 clients / CLI rate: {results['ratio_50_clients_to_cli']}", flush=True)
    if "kills" not in skip:
        results["faults"] = kill_rounds(args, fresh("kills.db"), queries)
        print(f"faults: {results['faults']}", flush=True)
    if "bad" not in skip:
        results["bad_requests"] = bad_requests(args, fresh("bad.db"), queries)
    if args.screenshot and "page" not in skip:
        results["page_problems"] = screenshot(args, queries, args.screenshot)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
