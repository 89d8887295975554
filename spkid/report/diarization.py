"""The report's diarization section: a DER table per file and a timeline, reference above hypothesis.

Hypothesis speakers are drawn in the colour of the reference speaker they are mapped to (the one-to-one mapping
of most shared time, as DER's), so a confusion shows as a change of colour between the two rows; a hypothesis
speaker with no reference partner is grey.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from spkid.diarization.rttm import Segment, read_rttm
from spkid.report.html import Image, Paragraph, Section, Table

MAX_FILES = 8           # timelines drawn (the files with the highest DER first)
PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4", "#b2df8a",
           "#fb9a99")


def speaker_mapping(ref: list[Segment], hyp: list[Segment]) -> dict[str, str]:
    """Hypothesis speaker -> reference speaker, one-to-one, maximising the time they share (one file)."""
    rs, hs = sorted({s.speaker for s in ref}), sorted({s.speaker for s in hyp})
    if not rs or not hs:
        return {}
    shared = np.zeros((len(hs), len(rs)))
    for h in hyp:
        for r in ref:
            shared[hs.index(h.speaker), rs.index(r.speaker)] += max(0.0, min(h.end, r.end) - max(h.start, r.start))
    rows, cols = linear_sum_assignment(-shared)
    return {hs[i]: rs[j] for i, j in zip(rows, cols) if shared[i, j] > 0}


def timeline(files: list[tuple[str, list[Segment], list[Segment], str]]):
    """One panel per file ``(name, reference, hypothesis, title)``: reference bars above hypothesis bars."""
    from spkid.report.figures import _figure
    fig = _figure(12, 1.45 * len(files) + 0.5)
    axes = np.atleast_1d(fig.subplots(len(files), 1, squeeze=False)[:, 0])
    for ax, (name, ref, hyp, title) in zip(axes, files):
        colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted({s.speaker for s in ref}))}
        mapping = speaker_mapping(ref, hyp)
        for row, segs, y in (("reference", ref, 1.0), ("hypothesis", hyp, 0.0)):
            for s in segs:
                c = colours[s.speaker] if row == "reference" else colours.get(mapping.get(s.speaker), "0.6")
                ax.broken_barh([(s.start, s.duration)], (y + 0.08, 0.84), facecolors=c, alpha=0.85, linewidth=0)
        ax.set_yticks([0.5, 1.5], ["hypothesis", "reference"], fontsize=8)
        ax.set_ylim(0, 2)
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    return fig


def diarization_section(pair: tuple[Path, Path] | None) -> Section:
    """DER per file and the timelines of ``(reference RTTM, hypothesis RTTM)``; a note when not given."""
    from spkid.errors import ConfigError
    from spkid.report.sections import render_png
    sec = Section("diarization", "Diarization")
    if pair is None:
        sec.missing = ("No diarization: pass --diarization REF.rttm HYP.rttm (spkid diarize -o HYP.rttm) to see DER "
                       "per file and a timeline of reference and hypothesis speakers.")
        return sec
    ref, hyp = read_rttm(pair[0]), read_rttm(pair[1])
    if not ref:
        sec.missing = f"{pair[0]} has no SPEAKER lines: nothing to draw or score."
        return sec
    try:
        from spkid.diarization.evaluate import score_diarization
        rows = score_diarization(ref, hyp)
    except ConfigError as e:
        rows, sec.blocks = None, [Paragraph(f"No DER: {e}.", "note")]
    files = sorted({s.file for s in ref})
    der = {r.file: r for r in rows} if rows else {}
    if rows:
        sec.blocks.append(Table(["file", "DER ±0.25 s", "DER no collar", "false alarm", "miss", "confusion", "JER",
                                 "ref speakers", "hyp speakers"],
                                [[r.file, f"{100 * r.der_collar:.2f} %", f"{100 * r.der:.2f} %",
                                  f"{100 * r.false_alarm:.2f} %", f"{100 * r.miss:.2f} %", f"{100 * r.confusion:.2f} %",
                                  f"{100 * r.jer:.2f} %", r.n_ref, r.n_hyp] for r in rows],
                                "pyannote.metrics; the ±0.25 s collar is md-eval's; overlapped speech scored."))
    files.sort(key=lambda f: -der[f].der_collar if f in der else 0.0)
    shown = files[:MAX_FILES]
    panels = [(f, [s for s in ref if s.file == f], [s for s in hyp if s.file == f],
               f + (f" — DER {100 * der[f].der_collar:.1f} % (±0.25 s)" if f in der else "")) for f in shown]
    more = f" The {len(shown)} files with the highest DER of {len(files)}." if len(files) > len(shown) else ""
    sec.blocks.append(Image("timeline", render_png(timeline(panels)),
                            "Who spoke when: reference speakers (top row of each file) and the hypothesis (bottom), "
                            "each hypothesis speaker in the colour of the reference speaker it maps to (grey: "
                            "none). A colour change between the rows is a confusion, a bar in one row only a miss "
                            "or a false alarm." + more, "diarization timeline"))
    return sec


__all__ = ["diarization_section", "timeline", "speaker_mapping"]
