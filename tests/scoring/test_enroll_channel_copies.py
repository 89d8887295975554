"""Enrolling audio stores each clip's telephone and room copies (what diarization names a narrowband call, or a
voice recorded across a room, against)."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import spkid
from spkid.audio.channel import telephone_copy
from spkid.audio.synth import make_voice, synth_utterance
from spkid.audio.rooms import room_copy
from spkid.scoring.openset import COPIES, channel_seed, content_key, enroll, enrollment_copies
from spkid.scoring.speaker_db import CHANNELS
from spkid.scoring.speaker_db import SpeakerDB


def _wavs(tmp_path, n=3):
    voice = make_voice(np.random.default_rng(5))
    out = []
    for j in range(n):
        p = tmp_path / f"clip{j}.wav"
        sf.write(str(p), synth_utterance(voice, np.random.default_rng([5, j]), 16000, 3.0), 16000)
        out.append(p)
    return out


def test_features_with_a_channel_give_pairs_and_none_for_features(trained):
    m = spkid.load(trained["ckpt"], device="cpu")
    wav = torch.from_numpy(synth_utterance(make_voice(np.random.default_rng(1)), np.random.default_rng(2), 16000, 2.0))
    feats = torch.randn(50, m.cfg.features.n_mels)
    seen = []
    copies = lambda k, x: seen.append(k) or {"neg": [-x], "same": [x, x]}      # noqa: E731
    (w_plain, w_chan), (f_plain, f_chan) = m.features([wav, feats], channel=copies)
    assert seen == [0] and f_chan is None and torch.equal(f_plain, feats)
    assert torch.equal(w_plain, m.features([wav])[0])
    assert sorted(w_chan) == ["neg", "same"] and len(w_chan["neg"]) == 1 and len(w_chan["same"]) == 2
    assert all(torch.equal(f, w_plain) for f in w_chan["same"])
    assert torch.allclose(w_chan["neg"][0], m.features([-wav])[0])           # each copy ran on the waveform


def test_every_copy_the_registry_knows_is_made():
    assert tuple(COPIES) == CHANNELS and all(n >= 1 for _, n in COPIES.values())


def test_a_copy_is_the_mean_of_its_renderings():
    from spkid.scoring.openset import mean_copies
    e = np.eye(3, dtype=np.float32)
    rows = [("a", "room", None), ("a", "room", None), ("b", "room", None), ("a", "telephone", None)]
    out = mean_copies(rows, np.stack([e[0], e[1], e[2], e[2]]))
    np.testing.assert_allclose(out["room"]["a"], [2 ** -0.5, 2 ** -0.5, 0], atol=1e-6)
    np.testing.assert_allclose(out["room"]["b"], e[2]) and np.testing.assert_allclose(out["telephone"]["a"], e[2])


@pytest.mark.parametrize("channel, copy", [("telephone", telephone_copy), ("room", room_copy)])
def test_enroll_stores_a_deterministic_copy_of_each_audio_clip(trained, tmp_path, channel, copy):
    wavs = _wavs(tmp_path)
    pt = sorted(trained["seen"]["root"].glob("uttr-*.pt"))[0]
    moved = tmp_path / "elsewhere"                  # the same audio under other names in another folder
    moved.mkdir()
    renamed = [moved / f"renamed-{j}.wav" for j in range(len(wavs))]
    for src, dst in zip(wavs, renamed):
        dst.write_bytes(src.read_bytes())
    enroll(tmp_path / "a.db", "x", [*wavs, pt], checkpoint=trained["ckpt"], device="cpu")
    enroll(tmp_path / "b.db", "x", [*renamed, pt], checkpoint=trained["ckpt"], device="cpu")
    with SpeakerDB.open(tmp_path / "a.db") as a, SpeakerDB.open(tmp_path / "b.db") as b:
        (_, src, clips), = a.clips()
        (_, tsrc, copies), = a.clips(channel)
        assert len(src) == 4 and len(tsrc) == 3 and str(pt) not in " ".join(tsrc)    # no copy of features
        (_, bsrc, bcopies), = b.clips(channel)
        assert [Path(s).name for s in bsrc] == [f"renamed-{j}.wav" for j in range(3)]
        np.testing.assert_array_equal(copies, bcopies)                               # the same audio, same copies
        plain = {s: c for s, c in zip(src, clips)}
        assert all(float(plain[s] @ c) < 0.999 for s, c in zip(tsrc, copies))        # a channel was applied
        other = [c for ch in CHANNELS if ch != channel for c in a.clips(ch)[0][2]]
        assert all(float(c @ o) < 0.999 for c in copies for o in other)             # each channel its own copy
    # the copy is the mean of the model's embeddings of the clip's speech through the channel's renderings, each
    # seeded by the clip's samples
    m = spkid.load(trained["ckpt"], device="cpu")
    k = [str(w) for w in wavs].index(tsrc[0]) if tsrc[0] in map(str, wavs) else None
    assert k is not None
    n = COPIES[channel][1]
    _, chan = m.features([wavs[k]], channel=lambda i, x: {channel: [copy(x, channel_seed(content_key(x), channel, r))
                                                                    for r in range(n)]})[0]
    e = torch.nn.functional.normalize(m.embed_raw(chan[channel]), dim=-1).mean(0)
    np.testing.assert_allclose((e / e.norm()).numpy(), copies[0], atol=1e-5)


def test_copies_are_drawn_from_the_samples_the_channel_and_the_rendering():
    a = torch.from_numpy(synth_utterance(make_voice(np.random.default_rng(3)), np.random.default_rng(4), 16000, 1.0))
    b = a.clone()
    b[100] += 1e-3
    assert content_key(a) == content_key(a.clone()) == content_key(a.double()) != content_key(b)
    seeds = {channel_seed(content_key(a), ch, r) for ch in CHANNELS for r in range(4)}
    assert len(seeds) == 4 * len(CHANNELS)                         # every rendering of every channel its own draw
    made = enrollment_copies(0, a)
    assert {ch: len(v) for ch, v in made.items()} == {ch: n for ch, (_, n) in COPIES.items()}
    again = enrollment_copies(7, a.clone())                     # the item's index plays no part
    assert all(torch.equal(u, v) for ch in made for u, v in zip(made[ch], again[ch]))
    for ch, copies in made.items():                                  # four telephone lines, four rooms: all differ
        assert len(copies) > 1 and all(not torch.equal(copies[0], c) for c in copies[1:]), ch
