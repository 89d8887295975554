"""``spkid demo``: a complete offline run on synthetic voices, minutes on a 2-core CPU.

synthesise a multi-speaker corpus (mixed sample rates and formats) -> ``prepare`` (the shared front end) ->
``train`` (a small Conformer, time budget) -> ``predict`` on held-out recordings -> accuracy and plots.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from spkid.config import apply_overrides, load_config


@dataclass
class DemoResult:
    n_speakers: int
    n_train: int
    n_test: int
    val_acc: float
    test_acc: float
    csv: Path
    checkpoint: Path
    plots: list[Path] = field(default_factory=list)


def run_demo(out: str | Path, *, minutes: float = 3.0, steps: int = 1200, n_speakers: int = 16, seed: int = 0,
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
    if run.exists():                     # the demo's own previous run: start over
        shutil.rmtree(run)
    cfg = apply_overrides(load_config("demo"), [f"train.max_minutes={minutes}", f"train.steps={steps}",
                                                f"train.seed={seed}"])
    result = train(feats, run, cfg, progress=progress)
    pred_csv = out / "predictions.csv"
    predict([str(result.best or result.last)], feats, pred_csv, device="cpu", progress=progress)

    # test answers: source file -> speaker, mapped to feature ids through prepare's features.csv
    key_to_feat = {row["audio"]: row["feature_path"] for row in csv.DictReader(open(feats / "features.csv"))}
    answers = {key_to_feat[f"test/{name}"]: spk for name, spk in corpus.answers.items()
               if f"test/{name}" in key_to_feat}
    test_acc = accuracy(answers, read_answers_csv(pred_csv))
    plots = _plots(run, out)
    return DemoResult(rep.n_speakers, rep.n_train, rep.n_test, result.best_val or 0.0, test_acc, pred_csv,
                      result.best or result.last, plots)


def _plots(run: Path, out: Path) -> list[Path]:
    """Training curves from ``metrics.jsonl`` (skipped when matplotlib is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in rows if "loss" in r]
    va = [r for r in rows if "val_acc" in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot([r["step"] for r in tr], [r["loss"] for r in tr])
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    a2.plot([r["step"] for r in tr], [r["acc"] for r in tr], label="train (crops)")
    a2.plot([r["step"] for r in va], [r["val_acc"] for r in va], "o-", label="validation (whole utterances)")
    a2.set_xlabel("step")
    a2.set_ylabel("accuracy")
    a2.set_ylim(0, 1.02)
    a2.legend(loc="lower right")
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
