"""Shared pieces of the diarization tests: distinct synthetic voices, conversations of them, and an embedder that
needs no training (mean and spread of the log-mel bands), so pipeline tests do not depend on a model's quality."""
from __future__ import annotations

import dataclasses

import numpy as np
import soundfile as sf
import torch

from spkid.audio.frontend import logmel
from spkid.audio.synth import make_voice, synth_utterance
from spkid.diarization.simulate import build_conversation, speech_span

def diar_config(**kw):
    """``DiarizeConfig`` that suits ``MeanLogMel``: AHC at 1.1, neither raw merge (its raw vectors share one large
    common part, so every raw cosine is near 1: the merges' premise, a speaker embedder's raw space, fails), and
    Silero's usual 0.5 for speech (a window's mean log-mel moves with the share of pause in it, so the few frames more
    that the pipeline's 0.3 takes split one synthetic voice in two under AHC at 1.1; the shipped model finds the
    same two voices at both; the threshold's own effect is measured by benchmarks/diarization.py)."""
    from spkid.audio.vad import VadConfig
    from spkid.diarization.pipeline import DiarizeConfig
    return DiarizeConfig(**{"threshold": 1.1, "method": "ahc", "same_speaker": 0.0, "merge_raw": 0.0,
                            "vad": VadConfig(threshold=0.5), **kw})


VOICES = ((3, 90.0, 0.85), (11, 240.0, 1.15), (5, 160.0, 1.0))     # (seed, F0 Hz, vocal-tract scale): far apart


class MeanLogMel:
    """``Embedder``: the mean and standard deviation of each log-mel band over the window ``(B, 80)``."""

    model_id = "mean-logmel"

    def __init__(self, offset: np.ndarray | None = None):
        self.calls: list[int] = []             # window lengths seen (samples), for tests that check the windows
        self.offset = offset                   # subtracted from every embedding (makes raw cosines meaningful)

    def __call__(self, wavs):
        self.calls += [w.size for w in wavs]
        out = []
        for w in wavs:
            f = logmel(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            out.append(torch.cat([f.mean(0), f.std(0)]).numpy())
        return np.stack(out) - (0.0 if self.offset is None else self.offset)


def voice_pools(n: int = 2, utterances: int = 4, seconds: float = 3.0) -> dict:
    pools = {}
    for i, (seed, f0, vtl) in enumerate(VOICES[:n]):
        v = dataclasses.replace(make_voice(np.random.default_rng([seed])), f0=f0, vtl=vtl)
        pools[f"spk{i}"] = [speech_span(synth_utterance(v, np.random.default_rng([seed, j]), 16000, seconds))
                            for j in range(utterances)]
    return pools


def write_conversation(path, n_speakers: int = 2, seconds: float = 40.0, seed: int = 0, sample_rate: int = 16000,
                       overlap: float = 0.0):
    """A conversation of ``n_speakers`` distinct voices written to ``path`` (its reference file field: the stem)."""
    from spkid.audio.io import resample
    conv = build_conversation(voice_pools(n_speakers), seconds, np.random.default_rng(seed), name=path.stem,
                              overlap=overlap)
    wav = conv.wav if sample_rate == 16000 else resample(conv.wav, 16000, sample_rate)
    sf.write(str(path), wav, sample_rate)
    return conv


def run_cli(capsys, *args):
    """``spkid ARGS`` in-process: (exit status, stdout, stderr)."""
    from spkid.cli import main
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err
