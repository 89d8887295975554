"""Shared fixtures: a tiny HW4-format dataset generated on the fly (no download, no ../shared needed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_HW4 = SHARED / "data" / "speechocean762"
needs_shared = pytest.mark.skipif(not SHARED_HW4.is_dir(), reason="../shared/data not present (fresh clone)")

torch.set_num_threads(int(os.environ.get("SPKID_TEST_THREADS", "1")))


def make_hw4(root: Path, *, n_speakers: int = 4, per_speaker: int = 6, n_test: int = 8, n_mels: int = 40,
             seed: int = 0, dtype=torch.float16, lengths=(30, 90), prefix: str = "spk") -> dict:
    """Write a learnable HW4-format dataset: each speaker has its own spectral envelope plus noise.

    Returns ``{"root": root, "answers": {test_id: speaker}}``.
    """
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{i:02d}" for i in range(n_speakers)]
    env = torch.randn(n_speakers, n_mels, generator=g) * 2

    def utt(i: int, tag: str) -> dict:
        t = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        x = env[i] + torch.randn(t, n_mels, generator=g) - 5.0
        name = f"uttr-{tag}.pt"
        torch.save(x.to(dtype), root / name)
        return {"feature_path": name, "mel_len": t}

    speakers = {n: [utt(i, f"{seed}{i:02d}{j:03d}") for j in range(per_speaker)] for i, n in enumerate(names)}
    (root / "metadata.json").write_text(json.dumps({"n_mels": n_mels, "speakers": speakers}))
    (root / "mapping.json").write_text(json.dumps({"speaker2id": {n: i for i, n in enumerate(names)},
                                                   "id2speaker": {str(i): n for i, n in enumerate(names)}}))
    answers, tests = {}, []
    for k in range(n_test):
        i = k % n_speakers
        u = utt(i, f"t{seed}{k:03d}")
        tests.append(u)
        answers[u["feature_path"]] = names[i]
    (root / "testdata.json").write_text(json.dumps({"n_mels": n_mels, "utterances": tests}))
    with open(root / "answers.csv", "w") as f:
        f.write("Id,Category\n" + "".join(f"{k},{v}\n" for k, v in answers.items()))
    return {"root": root, "answers": answers, "speakers": names}


@pytest.fixture
def hw4(tmp_path) -> dict:
    return make_hw4(tmp_path / "hw4")


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """A tiny model trained once per session on a 6-speaker generated dataset; plus 5 unseen speakers."""
    from spkid.config import apply_overrides, load_config
    from spkid.training.loop import train
    base = tmp_path_factory.mktemp("trained")
    seen = make_hw4(base / "seen", n_speakers=6, per_speaker=6, seed=3)
    unseen = make_hw4(base / "unseen", n_speakers=5, per_speaker=4, seed=4, prefix="new")
    cfg = apply_overrides(load_config("tiny"), ["train.steps=60", "train.lr=3e-3", "model.pooling=asp"])
    r = train(seen["root"], base / "run", cfg, progress=False)
    return {"seen": seen, "unseen": unseen, "ckpt": r.best, "run": base / "run"}


@pytest.fixture(autouse=True, scope="module")
def _forget_speechbrain():
    """SpeechBrain (the import parity tests' reference) registers lazy modules that import on any attribute access;
    Hypothesis reads ``__file__`` of every module in ``sys.modules`` when it collects constants, which would import
    ``speechbrain.inference`` (it needs packages spkid does not install). Unload SpeechBrain after each test module."""
    yield
    import sys
    for name in [n for n in sys.modules if n == "speechbrain" or n.startswith("speechbrain.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def bench(request):
    """The benchmark script named by the test module's ``BENCHMARK`` (``benchmarks/<name>.py``), imported with
    ``benchmarks/`` on ``sys.path`` (its own sibling imports) for the module's tests."""
    import importlib
    import sys
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module(request.module.BENCHMARK)
    finally:
        sys.path.remove(folder)
