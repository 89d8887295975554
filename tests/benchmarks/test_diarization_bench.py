"""benchmarks/diarization.py's name score: right and wrong names on 10 ms frames, overlap counted for both voices,
anonymous labels neither. No ../shared needed (the benchmark's data paths are only read when it runs)."""
from __future__ import annotations

import pytest

BENCHMARK = "diarization"           # the `bench` fixture (tests/conftest.py) imports benchmarks/diarization.py


def test_named_shares_right_wrong_overlap_and_anonymous(bench):
    S = bench.Segment
    ref = [S("f", 0.0, 4.0, "ann"), S("f", 3.0, 6.0, "bob"), S("g", 0.0, 2.0, "cy")]       # 1 s of overlap: 9 s
    hyp = [S("f", 0.0, 3.5, "ann"), S("f", 3.0, 6.0, "bob"),                               # both voices in it
           S("f", 3.5, 4.0, "SPEAKER_00"),                                                 # anonymous: neither
           S("g", 0.0, 1.0, "ann"), S("g", 1.0, 2.0, "cy")]                                # ann where cy talks
    right, wrong = bench.named_shares(ref, hyp)
    assert right == pytest.approx((3.5 + 3.0 + 1.0) / 9.0, abs=0.003)
    assert wrong == pytest.approx(1.0 / 9.0, abs=0.003)
    assert bench.named_shares(ref, []) == (0.0, 0.0)


def test_enrolled_table_shows_every_registry_run(bench):
    row = {"condition": "clean", "system": "spkid base", "named": 0.751, "named_wrong": 0.06, "der_enrolled": 0.0785,
           "count_wrong_enrolled": 0.385, "der_enrolled_libri": 0.028, "count_wrong_enrolled_libri": 0.0,
           "half_named": 0.7, "half_wrong": 0.05}
    table = bench.enrolled_table([row, {"condition": "clean", "system": "Resemblyzer"}]).splitlines()
    assert len(table) == 3                                         # a system without a registry run has no row
    assert table[2] == ("| clean | spkid base | 75.1 / 6.0 % | 7.85 % | 38 % | 2.80 % / 0 % | 70.0 / 5.0 % |")


def test_speaker_levels_scale_each_speaker_by_a_gain_of_their_own(bench, tmp_path):
    """``--speaker-levels``: the same conversation, each speaker's turns scaled by one gain of their own (within the
    range asked, recorded in the rows), everything else (timing, turns, rooms) unchanged; ``--levels-seed`` another
    draw."""
    import numpy as np
    import soundfile as sf
    tone = lambda f: (0.1 * np.sin(2 * np.pi * f * np.arange(32000) / 16000)).astype(np.float32)     # noqa: E731
    pool = {"lo": [(tone(220.0), [(0, 32000)])], "hi": [(tone(330.0), [(0, 32000)])],
            "mid": [(tone(440.0), [(0, 32000)])]}
    plans = [("conv-00", pool, 30.0, 0.0)]
    flat = bench.write_condition(plans, "clean", tmp_path / "flat", 0)[0]
    lev = bench.write_condition(plans, "clean", tmp_path / "lev", 0, levels_db=10.0)[0]
    assert lev["reference"] == flat["reference"] and flat["levels_db"] is None
    a, _ = sf.read(flat["file"])
    b, _ = sf.read(lev["file"])
    ratios = {}
    for s in flat["reference"]:
        i, j = int(s["start"] * 16000) + 800, int(s["end"] * 16000) - 800
        ratios.setdefault(s["speaker"], []).append(np.sqrt(np.mean(b[i:j] ** 2) / np.mean(a[i:j] ** 2)))
    db = {k: 20 * np.log10(np.array(v)) for k, v in ratios.items()}
    for v in db.values():                                     # one gain per speaker, turn after turn
        assert v.max() - v.min() < 0.1
    drawn = lev["levels_db"]
    assert set(drawn) == set(pool) and all(-10.0 <= v <= 10.0 for v in drawn.values())
    for k, v in db.items():                                   # the gains recorded, up to one peak scale for the file
        assert abs((v.mean() - db["lo"].mean()) - (drawn[k] - drawn["lo"])) < 0.1
    other = bench.write_condition(plans, "clean", tmp_path / "other", 0, levels_db=10.0, levels_seed=3)[0]
    assert other["levels_db"] != drawn and other["reference"] == flat["reference"]
    # with rooms and noise too: the same rooms, noise and turns, the speakers at their levels
    room = bench.write_condition(plans, "room-noise", tmp_path / "room", 0)[0]
    room_lev = bench.write_condition(plans, "room-noise", tmp_path / "room-lev", 0, levels_db=10.0)[0]
    assert room_lev["reference"] == room["reference"] and room_lev["levels_db"] == drawn
    assert not np.array_equal(sf.read(room["file"])[0], sf.read(room_lev["file"])[0])


def test_stages_summary_counts_each_way_and_blames_one_step_per_file(tmp_path, bench):
    """benchmarks/diarization_stages.py's table cells on made-up analyses: DER and count wrong for the count found,
    given and given within one; one cause per file; the files found as one speaker, per source."""
    import diarization_stages as st      # beside diarization.py: on sys.path while `bench` is
    import numpy as np
    from spkid.diarization.pipeline import Analysis, DiarizeConfig
    rng = np.random.default_rng(0)
    voices = rng.standard_normal((2, 16))
    starts = np.arange(0, 16000 * 30 - 24000 + 1, 12000)                   # 1.5 s windows every 0.75 s over 30 s
    win = np.stack([starts, starts + 24000], 1)
    who = (starts >= 16000 * 15).astype(int)                               # a 0-15 s, b 15-30 s
    emb = (voices[who] + 0.2 * rng.standard_normal((len(starts), 16))).astype(np.float32)
    ref = [{"file": "libri-00", "start": 0.0, "end": 15.0, "speaker": "a", "score": None},
           {"file": "libri-00", "start": 15.0, "end": 30.0, "speaker": "b", "score": None}]
    two = ({"name": "libri-00", "speakers": ["a", "b"], "reference": ref},
           Analysis(tmp_path / "libri-00.wav", 30.0, [(0, 16000 * 30)], win, emb))
    one = ({"name": "synth-mono00", "speakers": ["a"], "reference": [dict(ref[0], file="synth-mono00", end=30.0)]},
           Analysis(tmp_path / "synth-mono00.wav", 30.0, [(0, 16000 * 30)], win, emb))   # two voices, said one
    cfg = DiarizeConfig(refine=False, overlap=False, method="ahc", threshold=1.0, resplit=0.0, merge_raw=0.0)
    cells, why, found_one = st.summarise([two, one], cfg)
    assert len(cells) == 3 and cells[1].endswith("/ 0 %")                 # the count given is never wrong
    assert cells[0].endswith("/ 50 %")                                     # found: 2 and 2, one of them wrong
    assert why["right"] == 1 and why["too many at the end"] == 1 and sum(why.values()) == 2
    assert found_one == {"libri": [0, 1], "synth": [0, 1]}


def test_stages_blame_a_wrong_count_on_the_step_that_made_it(bench):
    """benchmarks/diarization_stages.py: a count too low is the last step's that took it below the truth."""
    import diarization_stages as st
    assert st.cause(3, {"spectral": 3, "merge": 3, "resplit": 3, "raw_merge": 3, "hmm": 3}, 3) == "right"
    assert st.cause(3, {"spectral": 5, "merge": 4, "hmm": 4}, 4) == "too many at the end"
    assert st.cause(3, {"spectral": 2, "merge": 2, "raw_merge": 2, "hmm": 2}, 2) == st.CAUSES[2]
    assert st.cause(3, {"spectral": 4, "merge": 2, "resplit": 2, "raw_merge": 2}, 2) == "too few: the centred merge"
    # taken below by the centred merge, restored by the re-split, taken again by the raw merge: the raw merge's
    assert st.cause(3, {"spectral": 3, "merge": 2, "resplit": 3, "raw_merge": 2, "hmm": 2}, 2) == \
        "too few: the raw merge"
    assert st.cause(3, {"spectral": 2, "resplit": 3, "hmm": 2}, 2) == "too few: the HMM"
    assert st.cause(2, {"ahc": 1, "hmm": 1}, 1) == st.CAUSES[2]                 # AHC's cut: the first clustering


def test_merge_sweep_scores_each_pair_and_keeps_a_monologue_whole_only_where_its_cosine_allows(tmp_path, bench):
    """benchmarks/diarization_calibrate.py's ``sweep`` on made-up analyses: a monologue whose windows fall in two
    groups (uncentred means at cosine 0.85) is one speaker only with a raw merge below 0.85; a conversation of two
    unrelated voices stays two at every cosine; pooled DER per condition and their sum per pair."""
    import diarization_calibrate as cal
    import numpy as np
    from spkid.diarization.pipeline import Analysis, DiarizeConfig
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((16, 5)))[0].T                 # 5 orthonormal directions
    v, c1, c2, a, b = basis
    starts = np.arange(0, 16000 * 30 - 24000 + 1, 12000)                    # 1.5 s windows every 0.75 s over 30 s
    win = np.stack([starts, starts + 24000], 1)
    half = starts >= 16000 * 15
    k = np.sqrt(1 / 0.85 - 1)                                               # cos(v + k c1, v + k c2) = 0.85
    noise = lambda: 0.03 * rng.standard_normal((len(starts), 16))         # noqa: E731
    mono = (np.where(half[:, None], v + k * c2, v + k * c1) + noise()).astype(np.float32)
    conv = (np.where(half[:, None], b, a) + noise()).astype(np.float32)
    ref = lambda name, spk: [{"file": name, "start": 0.0, "end": 15.0, "speaker": spk[0], "score": None},  # noqa: E731
                             {"file": name, "start": 15.0, "end": 30.0, "speaker": spk[1], "score": None}]
    done = {("conversations", "clean"): [({"name": "c", "speakers": ["a", "b"], "reference": ref("c", "ab")},
                                          Analysis(tmp_path / "c.wav", 30.0, [(0, 480000)], win, conv))],
            ("monologues", "clean"): [({"name": "m", "speakers": ["v"], "reference": ref("m", "vv")},
                                       Analysis(tmp_path / "m.wav", 30.0, [(0, 480000)], win, mono))]}
    base = DiarizeConfig(refine=False, overlap=False, method="ahc", threshold=1.0, hmm=False)
    rows = cal.sweep(done, base, (0.0, 0.80, 0.88), (0.0, 0.75))
    assert [(r["merge_raw"], r["resplit"]) for r in rows] == [(m, s) for m in (0.0, 0.80, 0.88) for s in (0.0, 0.75)]
    by = {r["merge_raw"]: r for r in rows if r["resplit"] == 0.0}
    for r in rows:
        der, wrong = r["cells"]["conversations", "clean"]                  # two voices: right at every cosine
        assert wrong == 0.0 and der < 0.01                                 # (a window across the turn: 0.1 s)
        assert r["sum"] == r["pooled"]["clean"]                            # one condition
    assert by[0.80]["cells"]["monologues", "clean"] == (0.0, 0.0)            # merged at 0.80
    for m in (0.0, 0.88):                                                    # cut in two: half its time confused
        der, wrong = by[m]["cells"]["monologues", "clean"]
        assert wrong == 1.0 and der == pytest.approx(0.5, abs=0.05)
        assert by[m]["pooled"]["clean"] == pytest.approx(0.25, abs=0.03)      # 15 of 60 s of speech, both kinds
    assert min(rows, key=lambda r: r["sum"])["merge_raw"] == 0.80


def test_stages_naming_scores_right_and_wrong_names_at_each_margin(tmp_path, bench):
    """benchmarks/diarization_stages.py's ``naming`` on a made-up conversation of voices a and b, with registries
    already in ``--work``: a voice close to b (b2) is enrolled beside b, so b's speaker is named only at a low
    margin; with only a (and a far voice c) enrolled, the stranger b is never named. Wrong: the boundary's frames."""
    import argparse

    import diarization_stages as st
    import numpy as np
    from spkid.diarization.pipeline import Analysis, DiarizeConfig
    from spkid.scoring.speaker_db import SpeakerDB
    rng = np.random.default_rng(1)
    a, b, c = rng.standard_normal((3, 16))
    twin = b + 0.25 * rng.standard_normal(16)                     # a voice close to b, enrolled too
    starts = np.arange(0, 16000 * 30 - 24000 + 1, 12000)
    win = np.stack([starts, starts + 24000], 1)
    who = (starts >= 16000 * 15).astype(int)
    emb = (np.stack([a, b])[who] + 0.2 * rng.standard_normal((len(starts), 16))).astype(np.float32)
    ref = [{"file": "libri-00", "start": 0.0, "end": 15.0, "speaker": "a", "score": None},
           {"file": "libri-00", "start": 15.0, "end": 30.0, "speaker": "b", "score": None}]
    data = [({"name": "libri-00", "speakers": ["a", "b"], "reference": ref},
             Analysis(tmp_path / "libri-00.wav", 30.0, [(0, 16000 * 30)], win, emb))]
    for half, voices in ((False, {"a": a, "b": b, "b2": twin}), (True, {"a": a, "c": c})):
        with SpeakerDB.create(tmp_path / f"registry-libri-x{'-half' if half else ''}.db", model_id="m1",
                              checkpoint="x.ckpt", embed_dim=16, threshold=0.5, threshold_source="test") as reg:
            for name, v in voices.items():
                reg.enroll(name, v + 0.1 * rng.standard_normal((3, 16)), [f"{name}{i}" for i in range(3)],
                           model_id="m1")
    args = argparse.Namespace(work=str(tmp_path), checkpoint=str(tmp_path / "x.ckpt"))
    cfg = DiarizeConfig(refine=False, overlap=False, method="ahc", threshold=1.0, resplit=0.0, merge_raw=0.0)
    cells = st.naming(args, data, cfg, [1.0, 0.0], "m1")
    right = [float(c.split(" / ")[0]) for c in cells]
    wrong = [float(c.split(" / ")[1].rstrip(" %")) for c in cells]
    assert len(cells) == 4 and all(w < 3 for w in wrong)
    assert 45 < right[0] < 55 and right[2] > 95                  # margin 1: a only; margin 0: a and b
    assert 45 < right[1] < 55 and 45 < right[3] < 55             # a named, the stranger b at neither margin
    assert st.corpus_of("synth-dev-03") == "synth-dev" and st.corpus_of("libri-hour-00") == "libri"
