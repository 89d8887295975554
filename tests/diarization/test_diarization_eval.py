"""DER / JER through pyannote.metrics on cases worked out by hand: collar, overlap scored and skipped, UEM."""
import pytest

pytest.importorskip("pyannote.metrics")

from spkid.diarization.evaluate import format_table, score_diarization  # noqa: E402
from spkid.diarization.rttm import Segment  # noqa: E402
from spkid.errors import ConfigError  # noqa: E402


def S(f, a, b, spk):
    return Segment(f, a, b, spk)


def test_collar_forgives_a_quarter_second_each_side():
    ref = [S("a", 0, 10, "A"), S("a", 10, 20, "B")]
    hyp = [S("a", 0, 11, "x"), S("a", 11, 20, "y")]                 # the change 1 s late
    r = score_diarization(ref, hyp)[0]
    assert r.der == pytest.approx(1 / 20)
    assert r.der_collar == pytest.approx(0.75 / 19)                # 0.25 s each side of 0, 10, 20 not scored
    assert r.confusion == pytest.approx(r.der_collar) and r.false_alarm == 0 and r.miss == 0
    assert (r.n_ref, r.n_hyp) == (2, 2)


def test_overlap_scored_or_skipped_and_missing_files():
    ref = [S("a", 0, 10, "A"), S("a", 8, 12, "B"), S("b", 0, 5, "C")]
    hyp = [S("a", 0, 8, "x"), S("a", 8, 12, "y")]                   # finds one speaker in the overlap; no file b
    rows = score_diarization(ref, hyp)
    a, b, total = rows
    assert a.file == "a" and total.file == "TOTAL"
    assert a.der == pytest.approx(2 / 14)                          # 2 s of A missed in the overlap, of 14 s
    assert a.der_skip == pytest.approx(0.0)                        # overlap left out: the rest is right
    assert b.der == pytest.approx(1.0) and b.miss == pytest.approx(1.0)
    assert total.der == pytest.approx((2 + 5) / 19)
    assert "TOTAL" in format_table(rows)


def test_uem_limits_the_scored_time():
    ref = [S("a", 0, 10, "A")]
    hyp = [S("a", 0, 10, "x"), S("a", 20, 30, "x")]
    assert score_diarization(ref, hyp)[0].der == pytest.approx(1.0)       # 10 s false alarm of 10 s speech
    assert score_diarization(ref, hyp, {"a": [(0.0, 15.0)]})[0].der == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="UEM has no line for file 'a'"):
        score_diarization(ref, hyp, {"b": [(0.0, 1.0)]})
