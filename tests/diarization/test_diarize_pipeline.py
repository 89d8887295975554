"""The diarization pipeline end to end with a training-free embedder (tests/diarization/diar_helpers.py): two
distinct voices found and timed, block size without effect, 8 kHz input, no speech, too short, counts, names."""
import dataclasses
import warnings

import numpy as np
import pytest
import soundfile as sf

from spkid.diarization.batch import diarize_files, named, naming_summary
from spkid.diarization.names import Enrolled
from spkid.diarization.pipeline import DiarizeConfig, analyse, diarize_file
from spkid.diarization.stream import AudioStream
from spkid.errors import ConfigError, DataError

from diar_helpers import MeanLogMel, diar_config, voice_pools, write_conversation


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    path = tmp_path_factory.mktemp("diar") / "talk.wav"
    return path, write_conversation(path, n_speakers=2, seconds=45.0, overlap=0.0)


def test_two_voices_found_and_timed(conv):
    pytest.importorskip("pyannote.metrics")
    from spkid.diarization.evaluate import score_diarization
    path, c = conv
    r = diarize_file(path, MeanLogMel(), diar_config())
    assert r.labels == ["SPEAKER_00", "SPEAKER_01"] and r.warning is None and not r.narrowband
    assert all(s.file == "talk" and 0 <= s.start < s.end <= r.duration + 1e-6 for s in r.segments)
    assert [s.start for s in r.segments] == sorted(s.start for s in r.segments)
    assert r.segments[0].speaker == "SPEAKER_00"
    row = score_diarization(c.reference, r.segments)[-1]
    assert row.der_collar < 0.05 and row.confusion < 0.03, row


def test_refined_boundaries_are_closer_than_window_midpoints(conv):
    pytest.importorskip("pyannote.metrics")
    from spkid.diarization.evaluate import score_diarization
    path, c = conv
    plain = diarize_file(path, MeanLogMel(), diar_config(refine=False))
    refined = diarize_file(path, MeanLogMel(), diar_config(refine=True))
    d0, d1 = (score_diarization(c.reference, r.segments)[-1].der for r in (plain, refined))
    assert d1 <= d0 + 0.002, (d0, d1)


def test_block_size_does_not_change_the_embeddings(conv):
    from spkid.diarization.pipeline import _embed_windows
    path, _ = conv
    with AudioStream(path) as s:
        a = analyse(s, MeanLogMel(), diar_config(block_s=300.0))
    assert len(a.win) > 20 and a.win.max() > 16000 * 15 * 2          # windows cross several 15 s blocks
    for block in (15.0, 16.5):
        emb = MeanLogMel()
        with AudioStream(path) as s:
            e = _embed_windows(s, a.win, emb, diar_config(block_s=block), None)
        assert max(emb.calls) <= 24000                                # nothing longer than one window is embedded
        assert np.allclose(e, a.emb, atol=1e-4)


def test_windows_past_the_end_of_the_audio_are_an_error_not_empty_rows(conv):
    from spkid.diarization.pipeline import _embed_windows
    path, _ = conv
    with AudioStream(path) as s:
        win = np.array([[0, 24000], [s.n_samples - 8000, s.n_samples + 16000]])   # the second ends past the file
        with pytest.raises(DataError, match=r"talk\.wav: the audio ended after 1 of 2 windows"):
            _embed_windows(s, win, MeanLogMel(), diar_config(block_s=15.0), None)


def test_8khz_input_and_forced_counts(tmp_path):
    path = tmp_path / "phone.flac"
    write_conversation(path, n_speakers=2, seconds=30.0, sample_rate=8000, seed=2)
    r = diarize_file(path, MeanLogMel(), diar_config())
    assert len(r.labels) == 2 and r.narrowband                # named against the registry's telephone copies
    assert len(diarize_file(path, MeanLogMel(), diar_config(), n_speakers=1).labels) == 1
    assert len(diarize_file(path, MeanLogMel(), diar_config(), min_speakers=3).labels) >= 2   # HMM: drops an empty one
    with pytest.raises(ConfigError, match="--min-speakers 3 / --max-speakers 2"):
        diarize_file(path, MeanLogMel(), diar_config(), min_speakers=3, max_speakers=2)


def test_no_speech_too_short_and_the_batch_goes_on(tmp_path, conv):
    quiet, short, bad = tmp_path / "quiet.wav", tmp_path / "short.wav", tmp_path / "bad.wav"
    sf.write(str(quiet), (np.random.default_rng(0).standard_normal(16000 * 5) * 1e-4).astype(np.float32), 16000)
    sf.write(str(short), np.zeros(16000, np.float32), 16000)
    bad.write_bytes(b"not audio at all")
    r = diarize_file(quiet, MeanLogMel(), diar_config())
    assert r.segments == [] and "quiet.wav: no speech found; empty result" in r.warning
    with pytest.raises(DataError, match=r"short\.wav: 1\.00 s of audio is shorter than one 1\.5 s window"):
        diarize_file(short, MeanLogMel(), diar_config())
    seen = []
    res = diarize_files([bad, quiet, conv[0], short], MeanLogMel(), diar_config(), progress=False, on_file=seen.append)
    assert [o.path.name for o in seen] == ["bad.wav", "quiet.wav", "talk.wav", "short.wav"]
    assert "bad.wav: not readable as audio" in res[0].error and res[1].warning and res[3].error
    assert res[2].error is None and res[2].n_speakers == 2 and res[2].segments and res[2].names is None


def test_diarize_files_with_a_registry_says_how_many_speakers_it_named(tmp_path, conv):
    from spkid.scoring.speaker_db import SpeakerDB
    path, _ = conv
    r = diarize_file(path, MeanLogMel(), diar_config())
    first = r.cluster_emb[0]                                     # enroll the first speaker only
    with SpeakerDB.create(tmp_path / "reg.db", model_id=MeanLogMel.model_id, checkpoint="none",
                          embed_dim=first.size, threshold=0.5, threshold_source="test") as reg:
        reg.enroll("ann", first + 0.01 * np.random.default_rng(0).standard_normal((3, first.size)),
                   ["a0", "a1", "a2"], model_id=MeanLogMel.model_id)
    (o,) = diarize_files([path], MeanLogMel(), diar_config(), registry=tmp_path / "reg.db", progress=False)
    assert o.error is None and "ann" in {s.speaker for s in o.segments}
    assert o.names.startswith("1 of 2 speakers named; 1 anonymous: 1 ")
    with pytest.raises(Exception, match="same file name stem"):
        diarize_files([tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"], MeanLogMel(), progress=False)


def test_spkid_diarize_warns_on_no_speech(tmp_path, monkeypatch):
    import spkid
    from spkid.diarization import batch
    quiet = tmp_path / "quiet.wav"
    sf.write(str(quiet), np.zeros(16000 * 3, np.float32), 16000)
    monkeypatch.setattr(batch, "load_embedder", lambda *a, **k: MeanLogMel())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert spkid.diarize(quiet) == []
    assert any("no speech found" in str(x.message) for x in w)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_speakers": 2.5}, "--num-speakers 2.5: a whole number of speakers"),
    ({"n_speakers": True}, "--num-speakers True: a whole number of speakers"),
    ({"max_speakers": "3"}, "--max-speakers '3': a whole number of speakers"),
    ({"min_speakers": 0}, "--min-speakers 0 / --max-speakers None: need 1 <= min <= max"),
    ({"n_speakers": 2, "max_speakers": 3}, "diarize: give --num-speakers or --min-speakers/--max-speakers, not both"),
    ({"config": {"window_s": 2.0}}, "config: a spkid.diarization.pipeline.DiarizeConfig, got dict"),
])
def test_spkid_diarize_refuses_bad_arguments_before_loading(conv, monkeypatch, kwargs, message):
    """Wrong types and impossible counts are one ConfigError naming the argument, before any model loads."""
    import spkid
    from spkid.diarization import batch
    monkeypatch.setattr(batch, "load_embedder", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError) as e:
        spkid.diarize(conv[0], **kwargs)
    assert str(e.value) == message


def test_spkid_diarize_takes_one_file_and_numpy_counts(conv, monkeypatch):
    import spkid
    from spkid.diarization import batch
    monkeypatch.setattr(batch, "load_embedder", lambda *a, **k: MeanLogMel())
    with pytest.raises(ConfigError, match="spkid.diarize takes one audio file, got list; for several"):
        spkid.diarize([conv[0], conv[0]])
    segs = spkid.diarize(str(conv[0]), n_speakers=np.int64(2), config=diar_config())
    assert {s.speaker for s in segs} == {"SPEAKER_00", "SPEAKER_01"}


def test_diarize_files_takes_one_path_as_one_input(conv):
    """A single path (str or Path) is one input: not its characters ("/" would be the whole file system)."""
    from spkid.diarization.batch import audio_inputs
    assert audio_inputs(str(conv[0])) == audio_inputs(conv[0]) == [conv[0]]
    (o,) = diarize_files(str(conv[0]), MeanLogMel(), diar_config(), progress=False)
    assert o.error is None and o.n_speakers == 2


def test_fewer_speakers_than_asked_is_a_warning(tmp_path, monkeypatch):
    """A count the speech cannot hold (more speakers than windows): the speakers there are, and a warning that says
    so (the API warns; diarize_files keeps it; the command prints it and exits 2)."""
    import spkid
    from spkid.diarization import batch
    path = tmp_path / "short.wav"
    write_conversation(path, n_speakers=2, seconds=6.0)
    r = diarize_file(path, MeanLogMel(), diar_config(), n_speakers=20)
    assert 1 < len(r.labels) < 20 and r.segments
    assert r.warning == (f"{path}: {len(r.labels)} speaker(s) found where 20 were asked (from {r.n_windows} "
                         f"window(s) of speech, {r.speech:.1f} s)")
    assert "at least 20 were asked" in diarize_file(path, MeanLogMel(), diar_config(), min_speakers=20).warning
    assert diarize_file(path, MeanLogMel(), diar_config(), n_speakers=2).warning is None
    monkeypatch.setattr(batch, "load_embedder", lambda *a, **k: MeanLogMel())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert spkid.diarize(path, n_speakers=20, config=diar_config())
    assert any("were asked" in str(x.message) for x in w)
    (o,) = diarize_files([path], MeanLogMel(), diar_config(), n_speakers=20, progress=False)
    assert o.segments and o.error is None and "20 were asked" in o.warning


def test_model_refuses_negative_or_fractional_threads(tmp_path):
    from spkid.errors import SpkidError
    from spkid.scoring.model import Model
    for bad in (-1, 1.5, True):
        with pytest.raises(SpkidError, match=r"threads must be (a whole number )?>= 0 \(0 = auto\), got "):
            Model(tmp_path / "none.ckpt", threads=bad)


def test_default_checkpoint_is_the_pretrained_base(monkeypatch):
    from spkid.diarization import batch
    from spkid.scoring import model
    asked = []

    class Fake:
        cfg = type("C", (), {"features": type("F", (), {"sample_rate": 16000})()})()
        path, model_id = "base", "fake"

    monkeypatch.setattr(model, "load", lambda ckpt, *a, **k: asked.append(ckpt) or Fake())
    monkeypatch.setattr(batch, "SpkidEmbedder", lambda m: m)
    batch.load_embedder(None)
    batch.load_embedder("runs/a/best.ckpt")
    assert asked == ["base", "runs/a/best.ckpt"]


def test_registry_names_replace_cluster_labels_and_strangers_are_renumbered(tmp_path):
    from spkid.diarization.pipeline import FileDiarization
    from spkid.diarization.rttm import Segment
    from spkid.scoring.speaker_db import SpeakerDB
    rng = np.random.default_rng(1)
    voices = rng.standard_normal((4, 16))                        # ann, bob (enrolled); two strangers
    with SpeakerDB.create(tmp_path / "reg.db", model_id="m", checkpoint="none", embed_dim=16, threshold=0.5,
                          threshold_source="test") as reg:
        for name, v in (("ann", voices[0]), ("bob", voices[1])):
            reg.enroll(name, v + 0.2 * rng.standard_normal((3, 16)), [f"{name}{i}" for i in range(3)], model_id="m")
    labels = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02", "SPEAKER_03"]
    order = [2, 1, 3, 0]                                         # cluster k is voice order[k]
    segs = [Segment("f", float(t), t + 1.0, labels[k], 0.8) for t, k in enumerate([0, 1, 2, 3, 0, 2])]
    r = FileDiarization(segs, 10.0, 6.0, 12, voices[order] + 0.1, labels)
    enrolled = Enrolled(tmp_path / "reg.db", "m")
    out = named(r, enrolled, "this recording")
    assert [s.speaker for s in out] == ["SPEAKER_00", "bob", "SPEAKER_01", "ann", "SPEAKER_00", "SPEAKER_01"]
    assert out[1].score > 0.5 and out[0].score == 0.8           # a named turn carries the registry score
    r.narrowband = True                                          # a call: the registry has no telephone copies
    with pytest.warns(UserWarning, match=r"call\.wav: narrowband, but .*reg\.db holds no telephone copies of ann, bob"):
        assert named(r, enrolled, "call.wav") == out
    r.narrowband = False
    assert naming_summary(enrolled.name(r.cluster_emb)) == \
        "2 of 4 speakers named; 2 anonymous: 2 no enrolled name left for them"


def test_naming_summary_says_why_each_anonymous_speaker_stayed_so():
    from spkid.diarization.names import ClusterName
    answers = [ClusterName("ann", 0.9, "named"), ClusterName(None, 0.7, "within margin"),
               ClusterName(None, 0.2, "below threshold"), ClusterName(None, 0.75, "within margin")]
    assert naming_summary(answers) == ("1 of 4 speakers named; 3 anonymous: 2 within the margin of a second "
                                             "name (--name-margin), 1 below the registry's threshold")
    assert naming_summary(answers[:1]) == "1 of 1 speakers named"


def test_a_quiet_recording_is_levelled_once_for_the_whole_file(tmp_path):
    """A conversation 40 dB below its level is embedded with one gain for the file that brings its speech to
    LEVEL_DBFS (both speakers keep their relative level); an embedder with its own front end gets it as it is."""
    from spkid.audio.frontend import LEVEL_DBFS, active_level, frame_power

    class Levelled(MeanLogMel):
        conditions_audio = True

        def __init__(self):
            super().__init__()
            self.levels = []

        def __call__(self, wavs):
            self.levels += [active_level(frame_power(w)) for w in wavs]
            return super().__call__(wavs)

    loud, quiet = tmp_path / "loud.wav", tmp_path / "quiet.wav"
    write_conversation(loud, n_speakers=2, seconds=30.0, seed=4)
    x, sr = sf.read(str(loud), dtype="float32")
    x = x * 10 ** ((LEVEL_DBFS - active_level(frame_power(x))) / 20)             # the speech at about LEVEL_DBFS
    sf.write(str(loud), x, sr, subtype="FLOAT")
    sf.write(str(quiet), x * 0.01, sr, subtype="FLOAT")
    cfg = diar_config()
    got = {}
    for p in (loud, quiet):
        emb = Levelled()
        with AudioStream(p) as s:
            got[p.stem] = (analyse(s, emb, cfg), np.median(emb.levels))
    (a_loud, lv_loud), (a_quiet, lv_quiet) = got["loud"], got["quiet"]
    assert a_loud.gain == 1.0 and 80 < a_quiet.gain < 125                      # 40 dB, as measured on its speech
    assert lv_quiet == pytest.approx(lv_loud, abs=1.0)                        # the windows as loud as the loud file's
    assert len(diarize_file(quiet, Levelled(), cfg).labels) == len(diarize_file(loud, Levelled(), cfg).labels) == 2
    with AudioStream(quiet) as s:
        assert analyse(s, MeanLogMel(), cfg).gain == 1.0                        # no conditions_audio: as it is


def test_a_cluster_holding_two_enrolled_voices_is_split_into_them(tmp_path):
    """Clustering left ann and bob together (AHC cut where everything joins); their enrollment parts them,
    and each part is named. Without the registry, or with the count given, the cluster stays whole."""
    from spkid.diarization.pipeline import Analysis, DiarizeConfig, decide
    from spkid.scoring.speaker_db import SpeakerDB
    rng = np.random.default_rng(2)
    voices = rng.standard_normal((2, 16))
    with SpeakerDB.create(tmp_path / "reg.db", model_id="m", checkpoint="none", embed_dim=16, threshold=0.5,
                          threshold_source="test") as reg:
        for name, v in zip(("ann", "bob"), voices):
            reg.enroll(name, v + 0.2 * rng.standard_normal((3, 16)), [f"{name}{i}" for i in range(3)], model_id="m")
    starts = np.arange(0, 16000 * 30 - 24000 + 1, 12000)                   # 1.5 s windows every 0.75 s over 30 s
    win = np.stack([starts, starts + 24000], 1)
    who = (starts // (16000 * 10)) % 2                                     # ann 0-10 s, bob 10-20 s, ann 20-30 s
    emb = (voices[who] + 0.3 * rng.standard_normal((len(starts), 16))).astype(np.float32)
    an = Analysis(tmp_path / "f.wav", 30.0, [(0, 16000 * 30)], win, emb)
    cfg = DiarizeConfig(refine=False, overlap=False, method="ahc", threshold=1.99, resplit=0.0, merge_raw=0.0)
    enrolled = Enrolled(tmp_path / "reg.db", "m")
    assert len(decide(an, None, None, cfg).labels) == 1
    r = decide(an, None, None, cfg, enrolled=enrolled)
    assert len(r.labels) == 2
    stages: dict[str, int] = {}                                            # the count after each step, on request
    assert decide(an, None, None, cfg, enrolled=enrolled, stages=stages).segments == r.segments
    assert stages == {"ahc": 1, "hmm": 1, "name_split": 2}
    turns = named(r, enrolled, "f.wav")
    assert [s.speaker for s in turns] == ["ann", "bob", "ann"]
    assert abs(turns[1].start - 10.0) < 1.0 and abs(turns[1].end - 20.0) < 1.0
    assert len(decide(an, None, None, cfg, enrolled=enrolled, n_speakers=1).labels) == 1
    off = dataclasses.replace(cfg, name_split_s=0.0)
    assert len(decide(an, None, None, off, enrolled=enrolled).labels) == 1
    with pytest.raises(ConfigError, match="name_split_s"):
        DiarizeConfig(name_split_s=float("nan"))


@pytest.mark.parametrize("bad, message", [
    ({"window_s": "1.5"}, "diarize window_s '1.5': must be a finite number"),
    ({"block_s": float("nan")}, "diarize block_s nan: must be a finite number"),
    ({"batch": 2.5}, "diarize batch 2.5: must be a whole number"),
    ({"hmm": "yes"}, "diarize hmm 'yes': must be True or False"),
    ({"refine": 1}, "diarize refine 1: must be True or False"),
    ({"resplit": True}, "diarize resplit True: must be a finite number"),
    ({"vad": None}, "diarize vad None: must be a VadConfig"),
    ({"hmm_loop": 1.0}, "diarize hmm_scale 12.0, hmm_loop 1.0: need a scale > 0 and a loop probability in (0, 1)"),
    ({"hmm_scale": 0.0}, "diarize hmm_scale 0.0, hmm_loop 0.9: need a scale > 0 and a loop probability in (0, 1)"),
    ({"refine_step_s": 0.0}, "diarize refine_step_s 0.0, refine_window_s 1.0: both seconds > 0"),
    ({"short_merge_drop": 1.0}, "diarize short_merge_drop 1.0, short_speech_s 20.0: need a cosine in [0, 1) (0: off) "
                                "and finite seconds >= 0"),
    ({"short_speech_s": float("nan")}, "diarize short_merge_drop 0.04, short_speech_s nan: need a cosine in [0, 1) "
                                       "(0: off) and finite seconds >= 0"),
])
def test_diarize_config_rejects_each_wrong_setting_by_name(bad, message):
    with pytest.raises(ConfigError) as e:
        DiarizeConfig(**bad)
    assert str(e.value) == message


def test_diarize_config_takes_numpy_numbers_and_settled_off_at_infinity():
    cfg = DiarizeConfig(batch=np.int64(8), merge_raw=np.float32(0.9), window_s=2, settled_s=float("inf"))
    assert cfg.batch == 8 and cfg.window_s == 2 and cfg.settled_s == float("inf")


def test_a_short_recording_merges_its_parts_from_a_lower_cosine(tmp_path):
    """Two halves of a recording whose mean embeddings (uncentred) score a cosine of 0.86: one speaker in 10 s of
    speech (under short_speech_s, the raw merge from 0.88 - 0.04), two in 25 s, and two in 10 s without the drop."""
    from spkid.diarization.pipeline import Analysis, decide
    rng = np.random.default_rng(3)
    base, side = np.eye(16)[0], np.eye(16)[1]
    a = np.sqrt(0.14 / 1.86)                                  # cos(base + a side, base - a side) = 0.86
    cfg = DiarizeConfig(refine=False, overlap=False)

    def analysis(seconds: float) -> Analysis:
        starts = np.arange(0, 16000 * seconds - 24000 + 1, 12000)
        win = np.stack([starts, starts + 24000], 1)
        sign = np.where(np.arange(len(starts)) < len(starts) // 2, 1.0, -1.0)[:, None]
        emb = base + a * sign * side + 0.01 * rng.standard_normal((len(starts), 16))
        return Analysis(tmp_path / "f.wav", seconds, [(0, int(16000 * seconds))], win, emb.astype(np.float32))

    short, long = analysis(10.0), analysis(25.0)
    assert short.speech_s < cfg.short_speech_s <= long.speech_s
    assert len(decide(short, None, None, cfg).labels) == 1
    assert len(decide(long, None, None, cfg).labels) == 2
    assert len(decide(short, None, None, dataclasses.replace(cfg, short_merge_drop=0.0)).labels) == 2
    assert len(decide(short, None, None, dataclasses.replace(cfg, merge_raw=0.03)).labels) == 1   # 0.03 - 0.04: 0


@pytest.mark.parametrize("band_limit", [True, False])
def test_diarization_hears_the_noisy_8k_voice_low_passed(tmp_path, band_limit):
    """A conversation recorded at 8 kHz, upsampled, then white noise added: the analysis cuts at the voices' edge
    (4 kHz or below) and hears the file so from then on (speech detection in both of Silero's modes: narrowband);
    with ``band_limit`` off, as recorded."""
    from spkid.audio.io import resample
    path = tmp_path / "call.wav"
    conv = write_conversation(path, n_speakers=2, seconds=30.0)
    wav = resample(resample(conv.wav, 16000, 8000), 8000, 16000)
    wav = wav + 0.02 * np.random.default_rng(3).standard_normal(wav.size).astype(np.float32)
    sf.write(str(path), wav, 16000)
    with AudioStream(path) as s:
        a = analyse(s, MeanLogMel(), diar_config(band_limit=band_limit, overlap=False))
        assert s.band_hz == a.band_hz
    if band_limit:           # the synthetic voices hold little at 3.5-4 kHz: the noise covers that band too
        assert a.band_hz in (3500.0, 4000.0) and a.narrowband
    else:
        assert a.band_hz is None and not a.narrowband
    assert len(a.win) > 10
