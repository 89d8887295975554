"""``spkid demo``: a complete offline run on synthetic voices, minutes on a 2-core CPU.

synthesise a multi-speaker corpus (mixed sample rates and formats) -> ``prepare`` (the shared front end) ->
``train`` (a small Conformer) -> ``predict`` on held-out recordings -> accuracy and ``spkid report`` (report.html);
and, with no training at all, the shipped model ``base``: every voice enrolled from its training recordings in a
registry, the held-out recordings identified (or called "unknown") at the registry's own threshold.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from spkid.config import apply_overrides, load_config
from spkid.errors import SpkidError
from spkid.fileio import MARKER, is_run_dir, write_csv


@dataclass
class DemoResult:
    n_speakers: int
    n_train: int
    n_test: int
    val_acc: float
    test_acc: float
    csv: Path
    checkpoint: Path
    report: Path | None = None      # report.html (None when the report extra is not installed)
    base_acc: float | None = None   # held-out recordings identified by the shipped model through a registry
    base_unknown: int = 0           # ... of them answered "unknown"
    registry: Path | None = None


def demo_config(*, steps: int = 1200, seed: int = 0, minutes: float = 0.0):
    """The demo's training configuration: the ``demo`` preset made independent of the machine's load.

    The same steps give the same checkpoint on any load: no time budget (with one, the learning-rate schedule
    follows the clock, and a busy machine ends the run after fewer steps), validation by steps only (time-based
    validations add best-checkpoint candidates at load-dependent steps) and one torch thread (the thread count
    changes the floating-point summation order, so 1 vs 2 threads train different weights; an automatic count
    would follow the load). ``minutes > 0`` restores a time cap, and with it the dependence on speed.
    """
    return apply_overrides(load_config("demo"), [f"train.steps={steps}", f"train.seed={seed}",
                                                 f"train.max_minutes={minutes}", "train.val_minutes=0",
                                                 "train.threads=1"])


def run_demo(out: str | Path, *, minutes: float = 0.0, steps: int = 1200, n_speakers: int = 16, seed: int = 0,
             progress: bool = True) -> DemoResult:
    from spkid.data.hw4 import read_answers_csv
    from spkid.data.prepare import prepare
    from spkid.scoring.metrics import accuracy
    from spkid.scoring.predict import predict
    from spkid.audio.synth import synth_corpus
    from spkid.training.loop import train

    out = Path(out)
    corpus = synth_corpus(out / "corpus", n_speakers=n_speakers, n_train=12, n_test=4, seed=seed)
    feats = out / "features"
    rep = prepare(corpus.train_dir, feats, test_input=corpus.test_dir, progress=progress)
    run = out / "run"
    if run.exists():                     # the demo's own previous run: start over; never delete a folder spkid did not make
        if not is_run_dir(run):
            raise SpkidError(f"{run}: exists and was not made by spkid (no {MARKER}); move it away or choose another "
                             "--out")
        shutil.rmtree(run)
    cfg = demo_config(steps=steps, seed=seed, minutes=minutes)
    result = train(feats, run, cfg, progress=progress)
    pred_csv = out / "predictions.csv"
    predict([str(result.best or result.last)], feats, pred_csv, device="cpu", progress=progress)

    # test answers: source file -> speaker, mapped to feature ids through prepare's features.csv
    key_to_feat = {row["audio"]: row["feature_path"] for row in csv.DictReader(open(feats / "features.csv"))}
    answers = {key_to_feat[f"test/{name}"]: spk for name, spk in corpus.answers.items()
               if f"test/{name}" in key_to_feat}
    test_acc = accuracy(answers, read_answers_csv(pred_csv))
    write_csv(out / "answers.csv", ["Id", "Category"], sorted(answers.items()))
    report = None
    try:
        from spkid.report import build_report
    except ImportError:                  # matplotlib/scikit-learn absent: the demo still runs
        pass
    else:
        report = build_report([run], out / "report.html", test_dir=feats, answers=out / "answers.csv",
                              progress=progress, device="cpu").path
    base_acc, unknown, db = _with_base(corpus, out)
    return DemoResult(rep.n_speakers, rep.n_train, rep.n_test, result.best_val or 0.0, test_acc, pred_csv,
                      result.best or result.last, report, base_acc, unknown, db)


def _with_base(corpus, out: Path) -> tuple[float, int, Path]:
    """The shipped model, no training: enroll each voice's training recordings, identify the held-out ones."""
    import warnings
    from spkid.scoring.openset import enroll, identify
    db = out / "speakers.db"
    db.unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "n more clips needed" while the first speakers are enrolled
        for spk in corpus.speakers:
            enroll(db, spk, [corpus.train_dir / spk], checkpoint="base", device="cpu")
    rows = [r for r in identify(db, [corpus.test_dir], device="cpu") if not r[1].startswith("candidate:")]
    right = sum(corpus.answers.get(fid) == spk for fid, spk, _ in rows)
    return right / max(1, len(rows)), sum(spk == "unknown" for _, spk, _ in rows), db
