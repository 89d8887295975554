"""The REST API in process (Starlette's test client): enroll, list, identify, verify, rename, delete, metrics,
the schema and the page, diarize wiring, and the registry seen by another writer."""
from __future__ import annotations

import re

import warnings

import pytest

with warnings.catch_warnings():                  # starlette 1.x prefers httpx2; httpx 0.28 works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serve_helpers import ADMIN, READ, auth, files, model, tokens, voice_checkpoint, voice_clips  # noqa: F401
from spkid.serve import ServeConfig, create_app
from spkid.scoring.openset import COPIES
from spkid.serve.app import check_name
from spkid.serve.http import ApiError


@pytest.fixture(scope="module")
def voices():
    return {k: voice_clips(k, 3) for k in range(3)}


@pytest.fixture
def client(model, tmp_path):
    cfg = ServeConfig(registry=str(tmp_path / "reg.db"), model="unused", rate=0)
    with TestClient(create_app(cfg, model=model, tokens=tokens())) as c:
        yield c


def _enroll(client, name, clips, token=ADMIN):
    return client.post("/v1/speakers", data={"name": name}, files=files(*clips), headers=auth(token))


def test_enroll_list_identify_top_k(client, voices):
    r = _enroll(client, "Zoë “Z” O'Brien", voices[0][:2])
    assert r.status_code == 201, r.text
    assert r.json()["speaker"] == "Zoë “Z” O'Brien" and r.json()["utterances"] == 2 and r.json()["added"] == 2
    assert _enroll(client, "bob", voices[1][:2]).status_code == 201
    again = _enroll(client, "bob", voices[1][:2])                  # the same clips again: replaced, not added
    assert again.json()["utterances"] == 2
    listed = client.get("/v1/speakers", headers=auth(READ)).json()
    assert [(s["name"], s["utterances"]) for s in listed["speakers"]] == [("Zoë “Z” O'Brien", 2), ("bob", 2)]
    assert listed["threshold"]["clips_needed"] > 0                 # 4 clips: still the checkpoint's fallback
    for spk, name in ((0, "Zoë “Z” O'Brien"), (1, "bob")):
        r = client.post("/v1/identify", files=files(voices[spk][2]), data={"top_k": "2"}, headers=auth(READ))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["candidates"][0]["speaker"] == name
        assert {c["speaker"] for c in body["candidates"]} == {"bob", "Zoë “Z” O'Brien"}
        assert body["candidates"][0]["score"] >= body["candidates"][1]["score"]
        assert body["speaker"] in (name, "unknown")
        assert body["speaker"] == (name if body["score"] >= body["threshold"]["value"] else "unknown")


def test_identify_matches_the_library_scores(client, voices, model):
    """The server's score is the registry back end's score of the library's embedding of the same file."""
    from spkid.scoring.speaker_db import SpeakerDB
    _enroll(client, "a", voices[0][:2])
    _enroll(client, "b", voices[1][:2])
    r = client.post("/v1/identify", files=files(voices[2][0]), data={"top_k": "2"}, headers=auth(READ)).json()
    path = client.app.state.svc.tmp / "q.wav"
    path.write_bytes(voices[2][0])
    emb = model.embed([path])
    with SpeakerDB.open(client.app.state.svc.cfg.registry) as reg:
        expected = reg.identify(emb, top_k=2)[0]
    assert [(c["speaker"], c["score"]) for c in r["candidates"]] == [(s, round(v, 4)) for s, v in expected]


def test_verify_two_clips_and_against_a_speaker(client, voices):
    _enroll(client, "a", voices[0][:2])
    same = client.post("/v1/verify", files=files(voices[0][0]) + files(voices[0][1], field="audio2"),
                       headers=auth(READ)).json()
    diff = client.post("/v1/verify", files=files(voices[0][0]) + files(voices[1][0], field="audio2"),
                       headers=auth(READ)).json()
    assert same["against"] == "clip" and same["score"] > diff["score"]
    assert same["same"] == (same["score"] >= same["threshold"]["value"])
    spk = client.post("/v1/verify", files=files(voices[0][2]), data={"speaker": "a"}, headers=auth(READ))
    assert spk.status_code == 200 and spk.json()["against"] == "speaker"
    assert client.post("/v1/verify", files=files(voices[0][2]), data={"speaker": "nobody"},
                       headers=auth(READ)).status_code == 404
    both = client.post("/v1/verify", files=files(voices[0][0]) + files(voices[1][0], field="audio2"),
                       data={"speaker": "a"}, headers=auth(READ))
    assert both.status_code == 400 and "not both" in both.json()["error"]


def test_rename_and_delete(client, voices):
    _enroll(client, "a", voices[0][:1])
    _enroll(client, "b", voices[1][:1])
    assert client.patch("/v1/speakers/a", json={"name": "b"}, headers=auth(ADMIN)).status_code == 409
    r = client.patch("/v1/speakers/a", json={"name": "Ärger/../x"}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json() == {"speaker": "Ärger/../x", "was": "a", "utterances": 1}
    assert client.patch("/v1/speakers/a", json={"name": "c"}, headers=auth(ADMIN)).status_code == 404
    assert client.patch("/v1/speakers/b", json={"name": "x\ny"}, headers=auth(ADMIN)).status_code == 422
    d = client.delete("/v1/speakers/" + "%C3%84rger%2F..%2Fx", headers=auth(ADMIN))
    assert d.status_code == 200 and d.json() == {"deleted": "Ärger/../x", "utterances": 1}
    names = [s["name"] for s in client.get("/v1/speakers", headers=auth(READ)).json()["speakers"]]
    assert names == ["b"]


def test_name_rules():
    for ok in ("../../etc/passwd", "名前", 'say "hi"', "a b", "😀"):
        assert check_name(ok) == ok
    for bad, needle in (("a\nb", "U+000A"), ("a\x00", "U+0000"), (" a", "spaces"), ("unknown", "reserved"),
                        ("x" * 201, "at most"), ("", "non-empty"), ("a\u2028b", "U+2028")):
        with pytest.raises(ApiError, match=re.escape(needle)):
            check_name(bad)


def test_identify_on_an_empty_registry_is_a_409(client, voices):
    r = client.post("/v1/identify", files=files(voices[0][0]), headers=auth(READ))
    assert r.status_code == 409 and r.json() == {"error": "registry: no speakers enrolled yet", "status": 409}


def test_a_write_by_another_process_is_seen_at_once(client, voices, model):
    """The cached gallery follows the file: an enroll through the library (another connection) shows up."""
    from spkid.scoring.openset import add_clips
    from spkid.scoring.speaker_db import SpeakerDB
    _enroll(client, "a", voices[0][:1])
    assert len(client.get("/v1/speakers", headers=auth(READ)).json()["speakers"]) == 1
    path = client.app.state.svc.tmp / "c.wav"
    path.write_bytes(voices[1][0])
    feats = model.features([path])
    emb = model.embed([path]).numpy()
    with SpeakerDB.open(client.app.state.svc.cfg.registry) as reg:
        add_clips(reg, "cli-side", ["c.wav"], feats, emb, model=model)
    names = [s["name"] for s in client.get("/v1/speakers", headers=auth(READ)).json()["speakers"]]
    assert names == ["a", "cli-side"]


def test_service_and_cli_store_the_same_copies_of_a_clip(client, voices, voice_checkpoint, tmp_path):
    """A clip's telephone and room copies are drawn from its audio: uploaded, or enrolled from a file of any name,
    the same clip gets the same copies."""
    import numpy as np
    from spkid.scoring.openset import enroll
    from spkid.scoring.speaker_db import CHANNELS, SpeakerDB
    assert _enroll(client, "a", voices[0][:1]).status_code == 201
    clip = tmp_path / "any name at all.wav"
    clip.write_bytes(voices[0][0])
    enroll(tmp_path / "cli.db", "a", [clip], checkpoint=voice_checkpoint, device="cpu")
    with SpeakerDB.open(client.app.state.svc.cfg.registry) as served, SpeakerDB.open(tmp_path / "cli.db") as cli:
        for ch in CHANNELS:
            (_, _, a), = served.clips(ch)
            (_, _, b), = cli.clips(ch)
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_metrics_count_requests_and_batches(client, voices):
    _enroll(client, "a", voices[0][:2])
    client.post("/v1/identify", files=files(voices[0][2]), headers=auth(READ))
    m = client.get("/v1/metrics", headers=auth(READ)).json()
    assert m["routes"]["POST /v1/speakers"]["status"] == {"201": 1}
    assert m["routes"]["POST /v1/identify"]["status"] == {"200": 1}
    assert m["routes"]["POST /v1/identify"]["p50_ms"] > 0
    copies = sum(n for _, n in COPIES.values())                           # a telephone, rooms
    assert m["embedding"]["clips"] == 2 + 2 * copies + 1 and m["speakers"] == 1  # enrolled, their copies, asked


def test_schema_lists_every_route_and_the_page_loads_nothing_from_outside(client):
    spec = client.get("/openapi.json").json()
    app_paths = {re.sub(r"\{(\w+):path\}", r"{\1}", r.path) for r in client.app.routes if r.path != "/static"}
    assert set(spec["paths"]) == app_paths
    for path, ops in spec["paths"].items():
        route_methods = {m.lower() for r in client.app.routes
                         if re.sub(r"\{(\w+):path\}", r"{\1}", r.path) == path for m in r.methods - {"HEAD"}}
        assert set(ops) == route_methods, path
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert set(assets) >= {"/static/app.js", "/static/style.css"}
    for text in [page.text] + [client.get(a).text for a in assets if a.startswith("/static/")]:
        assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text), "external URL in the page"


def test_diarize_is_501_without_spkid_diarize_and_wired_when_present(client, voices, monkeypatch):
    import spkid
    from spkid.serve import diarize as route
    monkeypatch.setattr(route, "diarize_function", lambda: None)
    r = client.post("/v1/diarize", files=files(voices[0][0]), headers=auth(READ))
    assert r.status_code == 501 and r.json() == {"error": "diarization not available in this build", "status": 501}
    seen = {}

    def fake(path, checkpoint=None, *, registry=None, n_speakers=None, min_speakers=1, max_speakers=None):
        seen.update(path=path, checkpoint=checkpoint, registry=registry, num_speakers=n_speakers, lo=min_speakers)
        return [(path, 0.0, 1.25, "a", 0.81), (path, 1.25, 2.5, "unknown", float("nan"))]
    monkeypatch.setattr(spkid, "diarize", fake, raising=False)
    monkeypatch.undo()                                             # back to the real lookup, then find the fake
    monkeypatch.setattr(spkid, "diarize", fake, raising=False)
    assert route.diarize_function() is fake
    r = client.post("/v1/diarize", files=files(voices[0][0]), data={"num_speakers": "2"}, headers=auth(READ))
    assert r.status_code == 200, r.text
    assert r.json() == {"segments": [{"start": 0.0, "end": 1.25, "speaker": "a", "score": 0.81},
                                     {"start": 1.25, "end": 2.5, "speaker": "unknown", "score": None}],
                        "speakers": ["a", "unknown"]}
    assert seen["num_speakers"] == 2 and seen["checkpoint"] == "unused" and seen["path"].endswith(".wav")
    assert seen["lo"] == 1                                          # spkid.diarize's own signature
    assert seen["registry"] is None                                 # nobody enrolled yet: no names to give
    _enroll(client, "a", voices[0][:2])
    assert client.post("/v1/diarize", files=files(voices[0][0]), headers=auth(READ)).status_code == 200
    assert seen["registry"] == str(client.app.state.svc.registry.path)
    assert not __import__("os").path.exists(seen["path"])         # the server's temp copy is gone
    assert client.post("/v1/diarize", files=files(voices[0][0]), data={"num_speakers": "0"},
                       headers=auth(READ)).status_code == 422
    both = client.post("/v1/diarize", files=files(voices[0][0]), data={"num_speakers": "2", "max_speakers": "3"},
                       headers=auth(READ))
    assert both.status_code == 422 and both.json()["error"] == \
        "num_speakers: give it or min_speakers / max_speakers, not both"


def test_diarize_runs_the_real_pipeline_with_the_shipped_model(tmp_path, voices):
    """No stand-in: spkid.diarize with the server's model name (base) on a recording of two voices in turn."""
    import numpy as np
    import soundfile as sf
    import io

    def wav(b):
        x, sr = sf.read(io.BytesIO(b), dtype="float32")
        assert sr == 16000
        return x if x.ndim == 1 else x.mean(1)
    parts = [wav(b) for b in (voices[0][0], voices[1][0], voices[0][1], voices[1][1])]
    conv = np.concatenate([np.concatenate([p, np.zeros(4000, np.float32)]) for p in parts])
    sf.write(tmp_path / "conv.wav", conv, 16000)
    cfg = ServeConfig(registry=str(tmp_path / "reg.db"), model="base", rate=0)
    with TestClient(create_app(cfg, tokens=tokens())) as c:
        r = c.post("/v1/diarize", files={"audio": ("conv.wav", (tmp_path / "conv.wav").read_bytes(), "audio/wav")},
                   headers=auth(READ))
    assert r.status_code == 200, r.text
    segs = r.json()["segments"]
    assert segs and all(0 <= s["start"] < s["end"] <= len(conv) / 16000 + 0.01 for s in segs)
