"""benchmarks/diarization_short.py: the clips it cuts (kinds, true counts, lengths, the voices' order) and its
table; a folder of fewer than three voices is a one-line error. No ../shared and no model needed."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

BENCHMARK = "diarization_short"


def test_clips_cut_each_kind_from_the_voices_that_reach_its_length(bench):
    sr = bench.SR
    wavs = {n: np.full(int(s * sr), v, dtype=np.float32) for n, s, v in (("a", 10, 1.0), ("b", 10, 2.0),
                                                                       ("c", 6, 3.0))}
    got = bench.clips(wavs)
    kinds = {}
    for kind, k, x in got:
        kinds.setdefault(kind, []).append((k, x))
    assert [len(kinds[f"one {s} s"]) for s in (3, 5, 8)] == [3, 3, 2]      # c has 5 s after its first second
    assert "one 12 s" not in kinds and "two 8 s each" in kinds
    assert all(k == 1 for k, _ in kinds["one 5 s"]) and len(kinds["one 5 s"][0][1]) == 5 * sr
    (k, x), = kinds["two 8 s each"]                                         # a-b only: c is too short for 8 s
    assert k == 2 and len(x) == 16 * sr + len(bench.GAP) and x[0] == 1.0 and x[-1] == 2.0
    assert len(kinds["two 3 s each"]) == 3 and kinds["two 3 s each"][2][1][-1] == 1.0    # c, then a again
    assert [(k, x[0], x[-1]) for k, x in kinds["A-B-A 4 s turns"]] == [(2, 1.0, 1.0), (2, 2.0, 2.0)]
    assert [k for k, _ in kinds["three 3 s each"]] == [3, 3, 3]


def test_table_and_too_few_voices(bench, tmp_path):
    res = {("clean", "one 5 s"): [10, 2, 6], ("telephone", "two 2 s each"): [10, 10, 9]}
    assert bench.table(res, [0.0, 0.04]).splitlines() == [
        "| condition | clips | count right, drop 0 | 0.04 |", "|---|---|---|---|",
        "| clean | one 5 s (10) | 2 | 6 |", "| telephone | two 2 s each (10) | 10 | 9 |"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / "x.wav", np.zeros(16000, np.float32), 16000)
    assert bench.main(["--voices", str(tmp_path)]) == 2
    with pytest.raises(bench.SpkidError, match="need sub-folders of at least 3 speakers' audio, found 2"):
        bench.voices(tmp_path, None)
