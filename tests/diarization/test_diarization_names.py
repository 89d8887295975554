"""Names from a registry: one-to-one (Hungarian), at the registry's threshold, with a margin over the second best."""
import numpy as np
import pytest

from spkid.diarization.names import Enrolled, assign_names
from spkid.errors import InputWarning, SpkidError
from spkid.scoring.speaker_db import SpeakerDB


def test_one_to_one_and_never_a_name_that_is_not_the_clusters_best():
    # both clusters sound most like "a": it goes to the closer one; the other is not given "b" (a is better for it)
    scores = np.array([[0.80, 0.75, 0.10],
                       [0.90, 0.20, 0.10]])
    out = assign_names(scores, ["a", "b", "c"], threshold=0.5, margin=0.0)
    assert [o.name for o in out] == [None, "a"] and out[0].why == "within margin"
    scores = np.array([[0.10, 0.85, 0.20],
                       [0.90, 0.20, 0.10],
                       [0.60, 0.10, 0.70]])
    out = assign_names(scores, ["a", "b", "c"], threshold=0.5, margin=0.05)
    assert [o.name for o in out] == ["b", "a", "c"]


def test_threshold_margin_and_more_clusters_than_speakers():
    scores = np.array([[0.90, 0.20], [0.40, 0.35], [0.70, 0.68], [0.1, 0.95]])
    out = assign_names(scores, ["a", "b"], threshold=0.5, margin=0.05)
    assert [o.name for o in out] == ["a", None, None, "b"]
    assert out[1].why in ("no speaker left", "below threshold") and out[2].why in ("no speaker left", "within margin")
    out = assign_names(np.array([[0.70, 0.68]]), ["a", "b"], threshold=0.5, margin=0.05)
    assert out[0].name is None and out[0].why == "within margin"
    out = assign_names(np.array([[0.45, 0.1]]), ["a", "b"], threshold=0.5, margin=0.05)
    assert out[0].name is None and out[0].why == "below threshold"


def _registry(path, model_id="m1"):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8))
    reg = SpeakerDB.create(path, model_id=model_id, checkpoint="x.ckpt", embed_dim=8, threshold=0.5,
                           threshold_source="test")
    with reg:
        for name, c in zip(("ann", "bob", "cy"), centres):
            clips = c + 0.1 * rng.standard_normal((3, 8))
            reg.enroll(name, clips, [f"{name}{i}" for i in range(3)], model_id=model_id)
    return centres


def test_names_through_a_registry(tmp_path):
    centres = _registry(tmp_path / "r.db")
    with SpeakerDB.open(tmp_path / "r.db") as reg:
        assert reg.threshold_scale == "raw"                       # too few clips for its own threshold: cosine margin
    clusters = np.stack([centres[2], centres[0], -centres[1]])     # cy, ann, a stranger
    out = Enrolled(tmp_path / "r.db", "m1").name(clusters)
    assert [o.name for o in out] == ["cy", "ann", None]
    with pytest.raises(SpkidError, match=r"r\.db: registry holds embeddings of model m1, the diarization model is m2"):
        Enrolled(tmp_path / "r.db", "m2")
    SpeakerDB.create(tmp_path / "empty.db", model_id="m1", checkpoint="x.ckpt", embed_dim=8, threshold=0.5,
                     threshold_source="test").close()
    with pytest.raises(SpkidError, match=r"empty\.db: no speakers enrolled"):
        Enrolled(tmp_path / "empty.db", "m1")


def test_a_lower_margin_names_a_cluster_close_to_a_second_speaker(tmp_path):
    """``margin_llr`` (diarize --name-margin) sets how far the best name must lead; on an uncalibrated registry
    0.05 cosine per unit. A cluster between ann and bob, nearer ann: anonymous at the default, ann at a lower
    margin; the threshold still holds a stranger back at any margin."""
    from spkid.diarization.pipeline import DiarizeConfig
    from spkid.errors import ConfigError
    centres = _registry(tmp_path / "r.db")
    u = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    mixes = np.stack([w * u[0] + (1 - w) * u[1] for w in np.linspace(0.5, 0.7, 41)])
    lead = np.diff(Enrolled(tmp_path / "r.db", "m1").scores(mixes)[0][:, [1, 0]], axis=1)[:, 0]
    between = mixes[np.flatnonzero((lead > 0.01) & (lead < 0.04))[0]]      # leads bob by less than 0.05
    sc = Enrolled(tmp_path / "r.db", "m1").scores(between[None])[0][0]
    assert 0.01 < sc[0] - sc[1] < 0.04 and sc[0] > 0.5 and sc.argmax() == 0
    clusters = np.stack([between, -centres[2]])
    assert [o.name for o in Enrolled(tmp_path / "r.db", "m1").name(clusters)] == [None, None]
    low = Enrolled(tmp_path / "r.db", "m1", margin_llr=(sc[0] - sc[1]) / 0.05 * 0.5)
    assert [o.name for o in low.name(clusters)] == ["ann", None]
    assert [o.name for o in Enrolled(tmp_path / "r.db", "m1", margin_llr=0.0).name(clusters)] == ["ann", None]
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="name_margin "):
            DiarizeConfig(name_margin=bad)
        with pytest.raises(ConfigError, match="name_margin_telephone"):
            DiarizeConfig(name_margin_telephone=bad)


def _phone_registry(path, rng):
    """ann, bob, cy: each voice as recorded (``wide``) and through a telephone (``narrow``), three clips each with
    their telephone copies."""
    wide, narrow = rng.standard_normal((3, 8)), rng.standard_normal((3, 8))
    with SpeakerDB.create(path, model_id="m1", checkpoint="x.ckpt", embed_dim=8, threshold=0.5,
                          threshold_source="test") as reg:
        for name, w, n in zip(("ann", "bob", "cy"), wide, narrow):
            src = [f"{name}{i}" for i in range(3)]
            reg.enroll(name, w + 0.1 * rng.standard_normal((3, 8)), src, model_id="m1",
                       channels={"telephone": {s: n + 0.1 * rng.standard_normal(8) for s in src}})
    return wide, narrow


def test_each_cluster_is_named_against_the_enrollment_it_sounds_like(tmp_path):
    rng = np.random.default_rng(3)
    wide, narrow = _phone_registry(tmp_path / "r.db", rng)
    calls = np.stack([narrow[1], narrow[0]])                                 # bob, then ann, on the phone
    out = Enrolled(tmp_path / "r.db", "m1").name(calls, narrowband=True)
    assert [(o.name, o.channel) for o in out] == [("bob", "telephone"), ("ann", "telephone")]
    # a narrowband file whose voices sound as recorded (audio merely sampled at 8 kHz): named against the clips
    out = Enrolled(tmp_path / "r.db", "m1").name(np.stack([wide[2], wide[0]]), narrowband=True)
    assert [(o.name, o.channel) for o in out] == [("cy", None), ("ann", None)]
    # a meeting with one participant on the phone: each cluster against its own enrollment, still one-to-one
    out = Enrolled(tmp_path / "r.db", "m1").name(np.stack([wide[0], narrow[1], wide[1] + 5 * narrow[1]]))
    assert [(o.name, o.channel) for o in out[:2]] == [("ann", None), ("bob", "telephone")] and out[2].name is None
    # a stranger stays anonymous against either enrollment
    out = Enrolled(tmp_path / "r.db", "m1").name(np.stack([-wide.sum(0) - narrow.sum(0)]))
    assert out[0].name is None and out[0].why == "below threshold"
    assert Enrolled(tmp_path / "r.db", "m1").name(np.zeros((0, 8))) == []    # no clusters, no names


def test_against_the_telephone_copies_the_margin_is_its_own(tmp_path):
    """``margin_llr_telephone`` (diarize --name-margin-telephone, default 0.5: half the clips' margin) holds a
    speaker named against the telephone copies: a call's voice between ann and bob, nearer ann, leads by less than
    the clips' margin and more than the telephone one."""
    from spkid.diarization.names import MARGIN_COSINE, MARGIN_LLR, MARGIN_LLR_TELEPHONE
    rng = np.random.default_rng(3)
    _, narrow = _phone_registry(tmp_path / "r.db", rng)
    u = narrow / np.linalg.norm(narrow, axis=1, keepdims=True)
    mixes = np.stack([w * u[0] + (1 - w) * u[1] for w in np.linspace(0.5, 0.8, 61)])
    tel = Enrolled(tmp_path / "r.db", "m1").scores(mixes)[1]                   # the telephone copies' scores
    lead = tel[:, 0] - tel[:, 1]
    low, high = MARGIN_COSINE * MARGIN_LLR_TELEPHONE / MARGIN_LLR, MARGIN_COSINE   # the registry is uncalibrated
    call = mixes[np.flatnonzero((lead > low + 0.003) & (lead < high - 0.003) & (tel.argmax(1) == 0))[0]]
    out = Enrolled(tmp_path / "r.db", "m1").name(call[None], narrowband=True)
    assert [(o.name, o.channel) for o in out] == [("ann", "telephone")]
    out = Enrolled(tmp_path / "r.db", "m1", margin_llr_telephone=MARGIN_LLR).name(call[None], narrowband=True)
    assert out[0].name is None and out[0].why == "within margin" and out[0].channel == "telephone"


def test_a_voice_across_a_room_is_named_against_the_room_copies(tmp_path):
    rng = np.random.default_rng(4)
    wide, narrow, room = (rng.standard_normal((3, 64)) for _ in range(3))
    with SpeakerDB.create(tmp_path / "r.db", model_id="m1", checkpoint="x.ckpt", embed_dim=64, threshold=0.5,
                          threshold_source="test") as reg:
        for name, w, n, r in zip(("ann", "bob", "cy"), wide, narrow, room):
            src = [f"{name}{i}" for i in range(3)]
            reg.enroll(name, w + 0.1 * rng.standard_normal((3, 64)), src, model_id="m1",
                       channels={"telephone": {s: n + 0.1 * rng.standard_normal(64) for s in src},
                                 "room": {s: r + 0.1 * rng.standard_normal(64) for s in src}})
    enrolled = Enrolled(tmp_path / "r.db", "m1")
    assert [ch for ch, *_ in enrolled.sets] == [None, "telephone", "room"]
    # bob across the room, ann as recorded, cy on the phone, in one meeting
    out = enrolled.name(np.stack([room[1], wide[0], narrow[2]]))
    assert [(o.name, o.channel) for o in out] == [("bob", "room"), ("ann", None), ("cy", "telephone")]
    # room copies that hold a stricter threshold (a few speakers' copies close together): a voice that scores higher
    # against them but clears the clips' own threshold by more is named against the clips; a voice on the phone
    # still goes to the telephone copies, whose best score it holds
    half = 0.65 * room[1] + 0.35 * wide[1]
    scores = [sc[0] for sc in enrolled.scores(half[None])]
    assert scores[2].max() > scores[0].max()
    enrolled.sets[0] = (*enrolled.sets[0][:3], float(scores[0].max()) - 0.05, enrolled.sets[0][4])
    enrolled.sets[2] = (*enrolled.sets[2][:3], float(scores[2].max()) - 0.01, enrolled.sets[2][4])
    out = enrolled.name(np.stack([half, narrow[2]]))
    assert [(o.name, o.channel) for o in out] == [("bob", None), ("cy", "telephone")]
    enrolled.sets[2] = (*enrolled.sets[2][:3], float(scores[2].max()) - 0.1, enrolled.sets[2][4])  # a lenient one
    assert [(o.name, o.channel) for o in enrolled.name(half[None])] == [("bob", "room")]
    # the room copies of one speaker missing (enrolled from features): that channel is not used, without a word
    with SpeakerDB.open(tmp_path / "r.db") as reg:
        reg.enroll("dan", rng.standard_normal((2, 64)), ["d0", "d1"], model_id="m1",
                   channels={"telephone": {"d0": rng.standard_normal(64)}})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enrolled = Enrolled(tmp_path / "r.db", "m1")
        assert [ch for ch, *_ in enrolled.sets] == [None, "telephone"]
        out = enrolled.name(np.stack([room[1], wide[0]]), narrowband=True)
    assert out[0].name is None and out[0].channel != "room" and (out[1].name, out[1].channel) == ("ann", None)


def test_without_copies_of_every_speaker_a_narrowband_recording_is_named_against_the_clips(tmp_path):
    rng = np.random.default_rng(3)
    wide, narrow = _phone_registry(tmp_path / "r.db", rng)
    calls = np.stack([narrow[1], narrow[0]])
    with SpeakerDB.open(tmp_path / "r.db") as reg:                          # dan enrolled from features: no copies
        reg.enroll("dan", rng.standard_normal((2, 8)), ["d0", "d1"], model_id="m1")
    with pytest.warns(InputWarning, match=r"call\.wav: narrowband, but .*r\.db holds no telephone copies of dan "):
        out = Enrolled(tmp_path / "r.db", "m1").name(calls, narrowband=True, recording="call.wav")
    assert len(out) == 2 and all(o.channel is None for o in out)           # named against the clips as recorded
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                      # a wideband recording: nothing to say
        out = Enrolled(tmp_path / "r.db", "m1").name(np.stack([wide[2]]))
    assert [o.name for o in out] == ["cy"]


def test_per_cluster_thresholds_and_margins():
    scores = np.array([[0.80, 0.30], [0.55, 0.20]])
    # the second cluster is on a scale whose threshold is 0.6: below it there, though above the first's 0.5
    out = assign_names(scores, ["a", "b"], threshold=np.array([0.5, 0.6]), margin=np.array([0.05, 0.05]))
    assert [o.name for o in out] == ["a", None]
    out = assign_names(np.array([[0.2, 0.80], [0.2, 0.75]]), ["a", "b"], threshold=np.array([0.5, 0.5]),
                       margin=np.array([0.05, 0.01]))
    # both want b; in margins the second gains 25 against the first's 6: b goes to the second
    assert [o.name for o in out] == [None, "b"]


def test_split_by_scores_parts_a_cluster_by_the_speaker_its_windows_score_best_against():
    from spkid.diarization.cluster import split_by_scores
    rng = np.random.default_rng(0)
    scores = 0.3 + 0.02 * rng.standard_normal((30, 4))
    scores[:12, 1] += 0.3                                   # cluster 0: speaker 1, then speaker 3
    scores[12:20, 3] += 0.3
    scores[20:, 2] += 0.3                                   # cluster 1: speaker 2 throughout ...
    scores[25, 0] += 0.5                                    # ... but for one window, smoothed away
    labels = np.array([0] * 20 + [1] * 10)
    out, parts = split_by_scores(scores, labels, 4)
    assert parts == {0: [0, 2]}
    assert (out[:12] == 0).all() and (out[12:20] == 2).all() and (out[20:] == 1).all()
    out, parts = split_by_scores(scores, labels, 10)        # speaker 3's 8 windows are too few for a part
    assert parts == {} and (out == labels).all()


def test_enrolled_split_separates_enrolled_voices_and_leaves_strangers_and_single_voices_whole(tmp_path):
    centres = _registry(tmp_path / "r.db")                  # ann, bob, cy
    rng = np.random.default_rng(5)
    stranger = -centres.sum(0)

    def windows(c, n):
        return c + 0.15 * rng.standard_normal((n, 8))
    emb = np.concatenate([windows(centres[0], 10), windows(centres[1], 10),     # cluster 0: ann, then bob
                          windows(centres[2], 12),                              # cluster 1: cy alone
                          windows(centres[0], 8), windows(stranger, 8)])        # cluster 2: ann's voice, a stranger
    labels = np.array([0] * 20 + [1] * 12 + [2] * 16)
    e = Enrolled(tmp_path / "r.db", "m1")
    out = e.split(emb, labels, 4)
    assert len(set(out[:10])) == 1 and len(set(out[10:20])) == 1 and out[0] != out[10]    # ann and bob apart
    assert len(set(out[20:32])) == 1 and len(set(out[32:])) == 1                          # the others stay whole
    assert len(set(out)) == 4
    assert [o.name for o in e.name(np.stack([emb[out == k].mean(0) for k in range(4)]))][:2] == ["ann", "bob"]
    assert (e.split(emb, labels, 4, max_speakers=3) == labels).all()      # a split past --max-speakers: none
    assert (e.split(emb, labels, 11) == labels).all()                     # parts under min_windows: none


def test_enrolled_scores_in_chunks_equal_the_back_ends_scores(tmp_path, monkeypatch):
    import spkid.diarization.names as names
    from spkid.scoring.speaker_db import SpeakerDB
    _registry(tmp_path / "r.db")
    x = np.random.default_rng(1).standard_normal((7, 8))
    with SpeakerDB.open(tmp_path / "r.db") as reg:
        want = reg.backend().scores([c for _, _, c in reg.clips()], x)
    e = Enrolled(tmp_path / "r.db", "m1")
    monkeypatch.setattr(names, "SCORE_ROWS", 3)                          # 3 + 3 + 1 rows
    assert np.allclose(e.scores(x)[0], want) and np.allclose(e.scores(x, only=0)[0], want)
    assert e.scores(x[:0])[0].shape == (0, 3)
