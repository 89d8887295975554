import sqlite3

import numpy as np
import pytest
import torch

import spkid.scoring.speaker_db as registry_mod
from spkid.errors import DataError
from spkid.scoring.enrollment import EnrollConfig
from spkid.scoring.speaker_db import SpeakerDB


E = 6
MODEL = "sha256:aaaa1111"


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _create(tmp_path, threshold=0.5, name="reg.sqlite", scoring="centroid"):
    return SpeakerDB.create(tmp_path / name, model_id=MODEL, checkpoint="runs/a/best.pt",
                           embed_dim=E, threshold=threshold, threshold_source="eer",
                           enroll_config=EnrollConfig(scoring=scoring))


def _speaker(seed, n, spread=0.05):
    """``n`` utterance embeddings around a random direction (unnormalised, varied scale)."""
    rng = np.random.default_rng(seed)
    centre = _unit(rng.normal(size=E))
    x = centre + spread * rng.normal(size=(n, E))
    return (x * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32), centre


def _centroid(rows):
    return _unit(_unit(np.asarray(rows, dtype=np.float64)).mean(0))


# create / open -------------------------------------------------------------------------------

def test_create_open_round_trip(tmp_path):
    x, _ = _speaker(0, 3)
    with _create(tmp_path, threshold=0.123456789012345) as reg:
        assert reg.enroll("alice", x, ["a1.flac", "a2.flac", "a3.flac"], model_id=MODEL) == 3
        names, cents = reg.centroids()
    with SpeakerDB.open(tmp_path / "reg.sqlite") as reg:
        assert (reg.model_id, reg.checkpoint, reg.embed_dim) == (MODEL, "runs/a/best.pt", E)
        assert reg.threshold == 0.123456789012345          # exact round trip
        assert reg.threshold_source == "eer"
        assert reg.speakers() == [("alice", 3)]
        names2, cents2 = reg.centroids()
    assert names2 == names == ["alice"]
    np.testing.assert_array_equal(cents2, cents)
    np.testing.assert_allclose(cents[0], _centroid(x), atol=1e-6)
    assert cents.dtype == np.float32 and cents.shape == (1, E)


def test_create_refuses_existing_file(tmp_path):
    _create(tmp_path).close()
    with pytest.raises(DataError, match="reg.sqlite: already exists"):
        _create(tmp_path)


def test_create_in_missing_directory(tmp_path):
    with pytest.raises(DataError, match="no directory"):
        SpeakerDB.create(tmp_path / "no" / "reg.sqlite", model_id=MODEL, checkpoint="c", embed_dim=E, threshold=0.5)


def test_open_or_create(tmp_path):
    p = tmp_path / "r.sqlite"
    with SpeakerDB.open_or_create(p, model_id=MODEL, checkpoint="c", embed_dim=E, threshold=0.3) as reg:
        assert reg.threshold == 0.3 and reg.threshold_source == "manual"
        reg.enroll("bob", _speaker(1, 2)[0], ["b1", "b2"], model_id=MODEL)
    # an existing file keeps its own meta
    with SpeakerDB.open_or_create(p, model_id="other", checkpoint="d", embed_dim=E + 1, threshold=0.9) as reg:
        assert (reg.model_id, reg.embed_dim, reg.threshold) == (MODEL, E, 0.3)
        assert reg.speakers() == [("bob", 2)]


def test_open_missing_file(tmp_path):
    p = tmp_path / "missing.sqlite"
    with pytest.raises(DataError) as e:
        SpeakerDB.open(p)
    assert str(e.value) == f"{p}: no such registry file"
    assert not p.exists()                                   # open never creates


def test_open_text_file_is_not_a_registry(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("Id,Category\nu1,S1\n" * 50)
    with pytest.raises(DataError) as e:
        SpeakerDB.open(p)
    assert str(e.value).startswith(f"{p}: not a spkid registry")


def test_open_other_sqlite_database(tmp_path):
    p = tmp_path / "other.db"
    with sqlite3.connect(p) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(DataError, match=r"other.db: not a spkid registry \(no meta table\)"):
        SpeakerDB.open(p)


@pytest.mark.parametrize("key, value, needle", [
    ("schema_version", "3", "registry schema version 3, this spkid reads version 2"),
    ("schema_version", "1", "registry schema version 1 (made by an older spkid, without domain statistics or its "
                            "own threshold); re-enroll its speakers into a new registry"),
    ("format", "something-else", "not a spkid registry (meta format is 'something-else')"),
])
def test_open_wrong_meta(tmp_path, key, value, needle):
    _create(tmp_path).close()
    p = tmp_path / "reg.sqlite"
    conn = sqlite3.connect(p)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.close()
    with pytest.raises(DataError) as e:
        SpeakerDB.open(p)
    assert str(e.value) == f"{p}: {needle}"


def test_close_releases_connection(tmp_path):
    reg = _create(tmp_path)
    reg.close()
    with pytest.raises(sqlite3.ProgrammingError):
        reg.speakers()


# enroll --------------------------------------------------------------------------------------

def test_enroll_refuses_other_model(tmp_path):
    x, _ = _speaker(0, 2)
    with _create(tmp_path) as reg:
        reg.enroll("alice", x, ["a1", "a2"], model_id=MODEL)
        with pytest.raises(DataError) as e:
            reg.enroll("alice", x, ["a3", "a4"], model_id="sha256:bbbb2222")
        msg = str(e.value)
        assert msg.startswith(str(tmp_path / "reg.sqlite") + ": ")
        assert MODEL in msg and "sha256:bbbb2222" in msg
        assert reg.speakers() == [("alice", 2)]


def test_reenroll_adds_and_replaces(tmp_path):
    x, _ = _speaker(0, 4)
    y, _ = _speaker(5, 1)
    with _create(tmp_path) as reg:
        reg.enroll("alice", x[:2], ["a1", "a2"], model_id=MODEL)
        first = reg.centroids()[1][0]
        np.testing.assert_allclose(first, _centroid(x[:2]), atol=1e-6)
        # a2 replaced by a different vector, a3 added
        n = reg.enroll("alice", np.stack([y[0], x[2]]), ["a2", "a3"], model_id=MODEL)
        assert n == 3 and reg.speakers() == [("alice", 3)]
        np.testing.assert_allclose(reg.centroids()[1][0], _centroid([x[0], y[0], x[2]]), atol=1e-6)


def test_enroll_accepts_torch_and_checks_input(tmp_path):
    x, _ = _speaker(0, 2)
    with _create(tmp_path) as reg:
        reg.enroll("carol", torch.from_numpy(x), ["c1", "c2"], model_id=MODEL)
        assert reg.speakers() == [("carol", 2)]
        with pytest.raises(DataError, match="registry holds 6-dim embeddings, got 5-dim"):
            reg.enroll("dave", x[:, :5], ["d1", "d2"], model_id=MODEL)
        with pytest.raises(DataError, match="'d1' given twice"):
            reg.enroll("dave", x, ["d1", "d1"], model_id=MODEL)
        with pytest.raises(DataError, match="embedding of 'd2' is zero or not finite"):
            reg.enroll("dave", np.stack([x[0], np.zeros(E, np.float32)]), ["d1", "d2"], model_id=MODEL)
        with pytest.raises(DataError, match="'unknown' is reserved"):
            reg.enroll("unknown", x, ["u1", "u2"], model_id=MODEL)
        with pytest.raises(ValueError, match="2 embeddings but 1 sources"):
            reg.enroll("dave", x, ["d1"], model_id=MODEL)
        assert reg.speakers() == [("carol", 2)]


def test_enroll_is_atomic(tmp_path, monkeypatch):
    x, _ = _speaker(0, 3)
    with _create(tmp_path) as reg:
        reg.enroll("alice", x[:2], ["a1", "a2"], model_id=MODEL)
        before = reg.centroids()
        calls = []
        real = registry_mod._to_blob

        def failing(vec):                          # crash after the first row is written
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("disk on fire")
            return real(vec)
        monkeypatch.setattr(registry_mod, "_to_blob", failing)
        new, _ = _speaker(9, 3)
        with pytest.raises(RuntimeError, match="disk on fire"):
            reg.enroll("alice", new, ["a1", "a3", "a4"], model_id=MODEL)
        assert len(calls) == 2                     # the first row really was written before the crash
        monkeypatch.setattr(registry_mod, "_to_blob", real)
        assert reg.speakers() == [("alice", 2)]
        after = reg.centroids()
        assert after[0] == before[0]
        np.testing.assert_array_equal(after[1], before[1])
        reg.enroll("bob", x[2:], ["b1"], model_id=MODEL)   # the registry is still writable
    with SpeakerDB.open(tmp_path / "reg.sqlite") as reg:  # and a fresh reader sees the same
        assert reg.speakers() == [("alice", 2), ("bob", 1)]


def test_remove(tmp_path):
    with _create(tmp_path) as reg:
        reg.enroll("alice", _speaker(0, 2)[0], ["a1", "a2"], model_id=MODEL)
        reg.enroll("bob", _speaker(1, 1)[0], ["b1"], model_id=MODEL)
        assert reg.remove("alice") == 2
        assert reg.speakers() == [("bob", 1)]
        with pytest.raises(DataError, match="no enrolled speaker 'alice'"):
            reg.remove("alice")


# identify / decide ---------------------------------------------------------------------------

def _three_speakers(reg):
    centres = {}
    for seed, name in enumerate(["alice", "bob", "carol"]):
        x, c = _speaker(seed, 4)
        reg.enroll(name, x, [f"{name}{k}" for k in range(4)], model_id=MODEL)
        centres[name] = c
    return centres


def test_identify_top_k_order_and_scores(tmp_path):
    with _create(tmp_path) as reg:
        centres = _three_speakers(reg)
        names, cents = reg.centroids()
        rng = np.random.default_rng(42)
        q = np.stack([centres["bob"], centres["carol"]]) * 2 + 0.05 * rng.normal(size=(2, E))
        res = reg.identify(q, top_k=3)
        assert [r[0][0] for r in res] == ["bob", "carol"]
        expected = _unit(q) @ cents.astype(np.float64).T
        for row, exp in zip(res, expected):
            assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
            assert len(row) == 3 and {n for n, _ in row} == set(names)
            for n, s in row:
                assert s == pytest.approx(exp[names.index(n)], abs=1e-6)
        assert [len(r) for r in reg.identify(q)] == [1, 1]
        assert reg.identify(q, top_k=10)[0] == res[0]        # clipped to the 3 speakers
        assert reg.identify(torch.from_numpy(q.astype(np.float32)), top_k=2)[1] == pytest.approx(res[1][:2])
        with pytest.raises(ValueError):
            reg.identify(q, top_k=0)
        with pytest.raises(DataError, match="registry holds 6-dim"):
            reg.identify(q[:, :4])


def test_decide_unknown_below_threshold(tmp_path):
    with _create(tmp_path, threshold=0.8) as reg:
        centres = _three_speakers(reg)
        names, cents = reg.centroids()
        # a query orthogonal-ish to every centroid, built by removing their span
        rng = np.random.default_rng(7)
        v = rng.normal(size=E)
        basis, _ = np.linalg.qr(cents.astype(np.float64).T)    # (E, 3)
        stranger = v - basis @ (basis.T @ v)
        out = reg.decide(np.stack([centres["alice"], stranger]))
        assert out[0][0] == "alice" and out[0][1] > 0.8
        assert out[1][0] == "unknown" and abs(out[1][1]) < 1e-6
        # the threshold decides: lowering it below the stranger's score names a speaker
        reg.set_threshold(-0.5, "manual")
        assert reg.decide(stranger[None])[0][0] in names


def test_set_threshold_persists(tmp_path):
    with _create(tmp_path) as reg:
        reg.set_threshold(0.3141, "far=0.01")
        assert (reg.threshold, reg.threshold_source) == (0.3141, "far=0.01")
        with pytest.raises(ValueError):
            reg.set_threshold(float("nan"), "eer")
    with SpeakerDB.open(tmp_path / "reg.sqlite") as reg:
        assert (reg.threshold, reg.threshold_source) == (0.3141, "far=0.01")


def test_identify_empty_registry(tmp_path):
    with _create(tmp_path) as reg:
        assert reg.centroids()[1].shape == (0, E)
        with pytest.raises(DataError, match="no speakers enrolled"):
            reg.identify(np.ones((1, E)))


def test_embeddings_stored_as_float32_blobs(tmp_path):
    x, _ = _speaker(0, 1)
    with _create(tmp_path) as reg:
        reg.enroll("alice", x, ["a1"], model_id=MODEL)
    conn = sqlite3.connect(tmp_path / "reg.sqlite")
    (blob,) = conn.execute("SELECT embedding FROM utterances").fetchone()
    conn.close()
    assert isinstance(blob, bytes) and len(blob) == 4 * E
    np.testing.assert_array_equal(np.frombuffer(blob, "<f4"), x[0])


def test_write_failure_from_sqlite_is_a_data_error(tmp_path):
    x, _ = _speaker(0, 2)
    p = tmp_path / "reg.sqlite"
    with _create(tmp_path) as reg:
        reg.enroll("alice", x, ["a1", "a2"], model_id=MODEL)
    with SpeakerDB.open(p) as reg:
        # a read-only connection stands in for a write-protected file (root ignores chmod)
        reg._conn.close()
        reg._conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        assert reg.identify(x)[0][0][0] == "alice"
        with pytest.raises(DataError, match=r"reg.sqlite: cannot write registry \(.*readonly"):
            reg.enroll("bob", x, ["b1", "b2"], model_id=MODEL)
        assert reg.speakers() == [("alice", 2)]


# channel copies --------------------------------------------------------------------------------------------

def test_channel_copies_follow_their_clips(tmp_path):
    a, _ = _speaker(1, 3)
    b, _ = _speaker(2, 2)
    tel_a, _ = _speaker(11, 3)
    with _create(tmp_path) as reg:
        assert reg.clips("telephone") == [] and reg.channel_scoring("telephone") is None
        reg.enroll("a", a, ["a0", "a1", "a2"], model_id=MODEL,
                   channels={"telephone": {"a0": tel_a[0], "a1": tel_a[1], "a2": tel_a[2]}})
        reg.enroll("b", b, ["b0", "b1"], model_id=MODEL)                       # from features: no copies
        (name, sources, vecs), = reg.clips("telephone")
        assert name == "a" and sources == ["a0", "a1", "a2"]
        np.testing.assert_allclose(vecs, _unit(tel_a), atol=1e-6)
        assert reg.channel_scoring("telephone") is None                       # b has none: no channel scoring
        reg.enroll("a", a[:1], ["a0"], model_id=MODEL)                        # a0 again, without a copy
        assert reg.clips("telephone")[0][1] == ["a1", "a2"]                   # its old copy went with it
        reg.rename("a", "ann")
        assert [n for n, _, _ in reg.clips("telephone")] == ["ann"]
        reg.remove("ann")
        assert reg.clips("telephone") == []
        with pytest.raises(ValueError, match="not among the sources"):
            reg.enroll("c", a[:1], ["c0"], model_id=MODEL, channels={"telephone": {"other": tel_a[0]}})
        with pytest.raises(ValueError, match="channel 'radio' unknown"):
            reg.enroll("c", a[:1], ["c0"], model_id=MODEL, channels={"radio": {"c0": tel_a[0]}})
        with pytest.raises(DataError, match="telephone embedding of 'c0' is zero"):
            reg.enroll("c", a[:1], ["c0"], model_id=MODEL, channels={"telephone": {"c0": np.zeros(E)}})
        assert [n for n, _ in reg.speakers()] == ["b"]                         # refused enrolls left nothing


def test_channel_scoring_estimates_its_own_operating_point(tmp_path):
    with _create(tmp_path, scoring="topk_mean") as reg:
        for k in range(8):
            clips, _ = _speaker(100 + k, 4)
            copies, _ = _speaker(100 + k, 4, spread=0.3)                      # the same voices, blurred by a channel
            reg.enroll(f"s{k}", clips, [f"s{k}_{i}" for i in range(4)], model_id=MODEL,
                       channels={"telephone": {f"s{k}_{i}": c for i, c in enumerate(copies)}})
        sc = reg.channel_scoring("telephone")
        assert reg.threshold_scale == "registry" and sc.calibration is not None
        assert sc.threshold != pytest.approx(reg.threshold)                   # estimated on the copies, not reused
        assert [n for n, _, _ in sc.clips] == [f"s{k}" for k in range(8)]
        reg.set_threshold(0.99, "manual")                                      # a locked threshold: the clips' only
        assert reg.channel_scoring("telephone").threshold == pytest.approx(sc.threshold)


def test_registry_made_before_channel_copies_opens_and_gains_the_table(tmp_path):
    a, _ = _speaker(1, 2)
    with _create(tmp_path) as reg:
        reg.enroll("a", a, ["a0", "a1"], model_id=MODEL)
    con = sqlite3.connect(tmp_path / "reg.sqlite")
    con.execute("DROP TABLE channel_utterances")                              # as an older spkid made it
    con.commit()
    con.close()
    with SpeakerDB.open(tmp_path / "reg.sqlite") as reg:
        assert reg.clips("telephone") == [] and reg.channel_scoring("telephone") is None
        reg.rename("a", "b")
        reg.enroll("c", a, ["c0", "c1"], model_id=MODEL, channels={"telephone": {"c0": a[0]}})
        assert [(n, s) for n, s, _ in reg.clips("telephone")] == [("c", ["c0"])]
        reg.remove("b")
