"""Scoring a diarization against a reference with pyannote.metrics (the field's scorer; extra ``diarization``).

DER = (false alarm + missed speech + speaker confusion) / reference speech, after the optimal one-to-one mapping
of hypothesis to reference speakers. ``collar`` is pyannote's total width: ``collar=0.5`` forgives 0.25 s on each
side of every reference boundary, md-eval's ``-c 0.25``. Overlapped reference speech is either scored (each
speaker of an overlap must be found) or skipped (left out of the scored time). JER (Jaccard error rate, DIHARD
III) averages each reference speaker's error, so a rare speaker counts as much as a frequent one.

Without a UEM the whole timeline is scored (time where neither reference nor hypothesis has speech adds
nothing either way).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from spkid.diarization.rttm import Segment
from spkid.errors import ConfigError

MD_EVAL_COLLAR = 0.5        # pyannote's total collar width for md-eval's 0.25 s on each side


@dataclass
class DerRow:
    """One file (or ``file == "TOTAL"``): DER with the ±0.25 s collar and with none, each with overlap scored and
    skipped; the collar DER's false alarm / miss / confusion shares; JER; speaker counts; speech seconds."""

    file: str
    der_collar: float
    der: float
    der_collar_skip: float
    der_skip: float
    false_alarm: float
    miss: float
    confusion: float
    jer: float
    n_ref: int
    n_hyp: int
    speech: float
    details: dict = field(default_factory=dict, repr=False)


def _pyannote():
    try:
        from pyannote.core import Annotation, Segment as PSegment, Timeline
        from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate
    except ImportError:
        raise ConfigError("eval-diarization needs pyannote.metrics: pip install 'spkid[diarization]' "
                          "(pyannote.metrics==4.2.0)") from None
    return Annotation, PSegment, Timeline, DiarizationErrorRate, JaccardErrorRate


def _annotation(segs: list[Segment], uri: str):
    Annotation, PSegment, *_ = _pyannote()
    a = Annotation(uri=uri)
    for k, s in enumerate(segs):
        if s.end > s.start:
            a[PSegment(s.start, s.end), k] = s.speaker
    return a


def score_diarization(reference: list[Segment], hypothesis: list[Segment],
                      uem: dict[str, list[tuple[float, float]]] | None = None) -> list[DerRow]:
    """Per-file rows (files of the reference, then ``TOTAL``, the metrics accumulated over all files).

    A reference file the hypothesis lacks scores as all missed; a hypothesis file without a reference is ignored
    (nothing to score it against), as md-eval does."""
    _, PSegment, Timeline, DER, JER = _pyannote()
    metrics = {"der_collar": DER(collar=MD_EVAL_COLLAR), "der": DER(collar=0.0),
               "der_collar_skip": DER(collar=MD_EVAL_COLLAR, skip_overlap=True),
               "der_skip": DER(collar=0.0, skip_overlap=True),
               "jer": JER(collar=0.0)}
    files = sorted({s.file for s in reference})
    rows = []
    for f in files:
        ref = [s for s in reference if s.file == f]
        hyp = [s for s in hypothesis if s.file == f]
        r, h = _annotation(ref, f), _annotation(hyp, f)
        end = max([s.end for s in ref] + [s.end for s in hyp])
        spans = uem.get(f) if uem is not None else None
        if uem is not None and spans is None:
            raise ConfigError(f"UEM has no line for file {f!r} of the reference")
        u = Timeline([PSegment(a, b) for a, b in (spans or [(0.0, end + 1.0)])], uri=f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")               # pyannote's notes on empty annotations
            d = {k: m(r, h, uem=u, detailed=True) for k, m in metrics.items()}
        rows.append(_row(f, d, len(set(s.speaker for s in ref)), len(set(s.speaker for s in hyp))))
    total = {k: _totals(m) for k, m in metrics.items()}
    rows.append(_row("TOTAL", total, sum(r.n_ref for r in rows), sum(r.n_hyp for r in rows)))
    return rows


def _totals(metric) -> dict:
    d = {k: metric.accumulated_[k] for k in metric.components_}
    d[metric.metric_name_] = abs(metric)
    return d


def _row(name: str, d: dict, n_ref: int, n_hyp: int) -> DerRow:
    c = d["der_collar"]
    total = c["total"] or float("nan")
    return DerRow(name, d["der_collar"]["diarization error rate"], d["der"]["diarization error rate"],
                  d["der_collar_skip"]["diarization error rate"], d["der_skip"]["diarization error rate"],
                  c["false alarm"] / total, c["missed detection"] / total, c["confusion"] / total,
                  d["jer"]["jaccard error rate"], n_ref, n_hyp, d["der"]["total"], d)


def format_table(rows: list[DerRow]) -> str:
    """The rows as a fixed-width text table (percentages)."""
    head = (f"{'file':<24} {'DER±.25':>8} {'DER':>7} {'DERskip±.25':>11} {'DERskip':>8} {'FA':>6} {'miss':>6} "
            f"{'conf':>6} {'JER':>7} {'ref':>4} {'hyp':>4} {'speech s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.file[:24]:<24} {100 * r.der_collar:>7.2f}% {100 * r.der:>6.2f}% "
                     f"{100 * r.der_collar_skip:>10.2f}% {100 * r.der_skip:>7.2f}% {100 * r.false_alarm:>5.2f}% "
                     f"{100 * r.miss:>5.2f}% {100 * r.confusion:>5.2f}% {100 * r.jer:>6.2f}% {r.n_ref:>4} {r.n_hyp:>4} {r.speech:>9.1f}")
    return "\n".join(lines)


__all__ = ["DerRow", "score_diarization", "format_table", "MD_EVAL_COLLAR"]
