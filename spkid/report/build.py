"""``build_report``: run directories (+ optional test set, trial speakers, registry) -> one HTML page + PNGs.

Sections: run overview, training curves, closed-set identification, verification, embedding map. A section
whose inputs were not given says what to pass; only bad inputs (unreadable files) raise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from spkid.errors import ConfigError
from spkid.fileio import atomic_write
from spkid.report import sections as S
from spkid.report.diarization import diarization_section
from spkid.report.html import Image, render_page
from spkid.report.runs import read_run

FIGURE_NAMES = ("training_steps", "training_time", "per_speaker", "confusion", "duration", "scores", "det",
                "embeddings", "timeline")


@dataclass
class ReportResult:
    path: Path                                   # the HTML page
    figures: list[Path]                          # PNGs written beside it, in page order
    sections_missing: list[str]                  # ids of sections left empty for want of inputs
    timings: dict[str, float] = field(default_factory=dict)    # stage -> seconds


class _Clock:
    def __init__(self, bar):
        self.timings: dict[str, float] = {}
        self.bar = bar

    def run(self, name: str, fn, *args, **kwargs):
        self.bar.set_postfix_str(name)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        self.bar.update(1)
        return out


def figures_dir(out_html: Path) -> Path:
    """Where the PNGs go: ``report.html`` -> ``report_figures/`` beside it."""
    return out_html.with_name(out_html.stem + "_figures")


def build_report(run_dirs: list[Path], out_html: Path, *, test_dir: Path | None = None,
                 answers: Path | None = None, trials_dir: Path | None = None, registry: Path | None = None,
                 diarization: tuple[Path, Path] | None = None, progress: bool = True, device: str = "auto", tsne_cap: int = 2000,
                 max_nontarget: int = 200_000) -> ReportResult:
    """Write the report for ``run_dirs`` (several: curves overlaid; the first one's model is evaluated).

    ``test_dir``: HW4 test data (``testdata.json`` + ``uttr-*.pt``), with ``answers`` (``Id,Category`` CSV) for
    the closed-set section; ``trials_dir``: HW4 training-layout data of unseen speakers for verification;
    ``registry``: a ``spkid enroll`` registry whose stored threshold is drawn; ``diarization``: (reference RTTM,
    hypothesis RTTM) for the diarization section (DER per file, timelines).
    """
    from tqdm import tqdm

    from spkid.report.evaluate import evaluate_test, evaluate_trials, read_registry

    if not run_dirs:
        raise ConfigError("spkid report needs at least one RUN_DIR")
    out_html = Path(out_html)
    needs_model = test_dir is not None or trials_dir is not None
    bar = tqdm(total=8 + (diarization is not None) + needs_model + (test_dir is not None) + (trials_dir is not None) + (registry is not None),
               desc="report", unit="stage", disable=not progress, dynamic_ncols=True)
    clock = _Clock(bar)
    try:
        runs = clock.run("read runs", lambda: [read_run(d) for d in run_dirs])
        main_run = runs[0]
        model = test = trials = reg = None
        no_model = (f"{main_run.path} has no readable best.ckpt or last.ckpt: the model cannot be evaluated "
                    "(the Run section says why)."
                    if main_run.checkpoint is None else None)
        if needs_model and main_run.checkpoint is not None:
            from spkid.scoring.model import load
            model = clock.run("load model", load, main_run.checkpoint, device)
        if model is not None and test_dir is not None:
            test = clock.run("test set: features + embed", evaluate_test, model, test_dir, answers,
                             progress=progress)
        if model is not None and trials_dir is not None:
            trials = clock.run("trials: features + embed + score", evaluate_trials, model, trials_dir,
                               max_nontarget=max_nontarget, progress=progress)
        if registry is not None:
            reg = clock.run("read registry", read_registry, registry)

        closed_why = no_model if test_dir is not None else None
        if test_dir is not None and answers is None and model is not None:
            closed_why = (f"{test_dir} was embedded but not scored: pass --answers answers.csv (Id,Category) "
                          "with --test to see accuracy, per-speaker results and confusions.")
        if test_dir is None and answers is not None:
            closed_why = "--answers was given without --test DATA_DIR: pass both to score the test set."
        sections = [
            clock.run("section: run", S.overview_section, runs,
                      str(main_run.checkpoint) if model is not None else None),
            clock.run("section: training", S.training_section, runs),
            clock.run("section: closed set", S.closed_set_section, test, closed_why),
            clock.run("section: verification", S.verification_section, trials, reg,
                      model.model_id if model is not None else None,
                      no_model if trials_dir is not None else None),
            clock.run("section: embeddings", S.embedding_section, test, tsne_cap,
                      no_model if test_dir is not None else None),
        ]
        if diarization is not None:             # only on request: a training report needs no diarization note
            sections.append(clock.run("section: diarization", diarization_section, diarization))
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        subtitle = f"{', '.join(str(r.path) for r in runs)} — generated {stamp}"
        page = clock.run("render html", render_page, "spkid report", subtitle, sections)
        images = [b for s in sections for b in s.blocks if isinstance(b, Image)]
        paths = clock.run("write files", _write, out_html, page, images)
        clock.bar.update(bar.total - bar.n)
    finally:
        bar.close()
    return ReportResult(out_html, paths, [s.id for s in sections if s.missing], clock.timings)


def _write(out_html: Path, page: str, images: list[Image]) -> list[Path]:
    """The PNGs into ``figures_dir`` (stale ones of an earlier report removed), then the page."""
    fig_dir = figures_dir(out_html)
    paths = []
    for img in images:
        path = fig_dir / f"{img.name}.png"
        atomic_write(path, lambda tmp, data=img.png: Path(tmp).write_bytes(data), fsync=False)
        paths.append(path)
    for name in set(FIGURE_NAMES) - {img.name for img in images}:
        (fig_dir / f"{name}.png").unlink(missing_ok=True)
    atomic_write(out_html, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return paths
