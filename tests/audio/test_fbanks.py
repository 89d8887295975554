"""Other toolkits' front ends (``features.kind``): batching never changes an utterance's features, the definition is
validated like any setting, and a folder of tensors made with another kind is refused."""
from __future__ import annotations

import pytest
import torch

from spkid.audio.frontend import frontend_for
from spkid.config import FeatureConfig, RunConfig, apply_overrides
from spkid.data.definition import differences
from spkid.errors import ConfigError

KINDS = {"speechbrain": FeatureConfig(kind="speechbrain", n_mels=80, floor=1e-10),
         "kaldi": FeatureConfig(kind="kaldi", n_mels=80, f_min=20.0),
         "resemblyzer": FeatureConfig(kind="resemblyzer")}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_padded_batch_gives_the_lone_features(kind):
    fe = frontend_for(KINDS[kind])
    g = torch.Generator().manual_seed(0)
    wavs = [torch.randn(n, generator=g) * 0.05 for n in (3701, 16000, 9999)]
    batch = torch.zeros(3, 16000)
    for i, w in enumerate(wavs):
        batch[i, :w.shape[0]] = w
    batch[0, 3701:] = 1.0                                       # loud junk past the end must not leak in
    feats, frames = fe(batch, torch.tensor([w.shape[0] for w in wavs]))
    for i, w in enumerate(wavs):
        alone, n = fe(w[None], torch.tensor([w.shape[0]]))
        assert frames[i] == n[0] and torch.equal(feats[i, :frames[i]], alone[0])
        assert (feats[i, frames[i]:] == 0).all()
    assert feats.shape[2] == KINDS[kind].n_mels


def test_kind_is_validated_and_compared():
    with pytest.raises(ConfigError, match="features.kind='htk'"):
        apply_overrides(RunConfig(), ["features.kind=htk"])
    with pytest.raises(ConfigError, match="features.floor=0.001 would be ignored"):
        apply_overrides(RunConfig(), ["features.kind=kaldi", "features.floor=1e-3"])
    assert differences(FeatureConfig(), KINDS["resemblyzer"])[0] == "kind logmel (model: resemblyzer)"


def test_resemblyzer_volume_is_raised_only():
    fe = frontend_for(KINDS["resemblyzer"])
    w = torch.randn(8000, generator=torch.Generator().manual_seed(1))
    quiet, _ = fe((w * 0.001)[None], torch.tensor([8000]))
    louder, _ = fe((w * 0.002)[None], torch.tensor([8000]))
    assert torch.allclose(quiet, louder, rtol=1e-3)            # both raised to -30 dBFS
    loud, _ = fe((w * 0.5)[None], torch.tensor([8000]))
    assert loud.sum() > 100 * quiet.sum()                      # never lowered
