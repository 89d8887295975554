"""Each report section from its inputs: the numbers (``analysis``), the figures (``figures``), the words.

A builder gets ``None`` for inputs the user did not pass and then returns a section that says what to pass.
"""
from __future__ import annotations

import io
import json

import numpy as np

from spkid.report import analysis, figures
from spkid.report.evaluate import RegistryInfo, TestEval, TrialsEval
from spkid.report.html import Code, Image, Paragraph, Section, Table
from spkid.report.runs import RunInfo

HINT_TEST = "pass --test DATA_DIR --answers answers.csv"
HINT_TRIALS = "pass --trials DIR (an HW4 training-layout directory of speakers the model never saw)"
DASH = "—"


def render_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _image(fig, name: str, caption: str, alt: str) -> Image:
    return Image(name, render_png(fig), caption, alt)


def _minutes(seconds) -> str:
    return DASH if seconds is None else f"{float(seconds) / 60:.1f} min"


def _num(v, fmt: str = ".4f") -> str:
    return DASH if v is None else format(float(v), fmt)


# run ---------------------------------------------------------------------------------------------

def overview_section(runs: list[RunInfo], model_path: str | None) -> Section:
    """One row per run: its recipe, length, best result, device, precision and data fingerprint."""
    rows = []
    for r in runs:
        cfg, f = r.config or {}, r.facts
        model, train = cfg.get("model", {}), cfg.get("train", {})
        device = f.get("device") or (f"{train['device']} (config)" if "device" in train else DASH)
        amp = f.get("amp") or (f"{train['amp']} (config)" if "amp" in train else DASH)
        size = f"{f['n_values'] / 1e6:.2f} M" if "n_values" in f else DASH
        rows.append([r.label, cfg.get("name", DASH), model.get("encoder", DASH), f.get("step", DASH),
                     _minutes(f.get("elapsed")), _num(f.get("best_val")), _num(f.get("val_eer")), device, amp,
                     str(f.get("data_fingerprint", DASH)), f.get("n_speakers", DASH), size])
    blocks = [Table(["run", "preset", "encoder", "steps", "training time", "best val acc", "val EER", "device",
                     "precision", "data fingerprint", "speakers", "weights"], rows)]
    if model_path:
        blocks.append(Paragraph(f"Test-set and verification sections use {model_path}.", "note"))
    for r in runs:
        if r.notes:
            blocks.append(Paragraph(f"{r.label}: " + "; ".join(r.notes) + ".", "note"))
        if r.config is not None:
            blocks.append(Code(f"{r.label}: resolved config", json.dumps(r.config, indent=2)))
    return Section("run", "Run", blocks)


def training_section(runs: list[RunInfo]) -> Section:
    curves = [r.curves for r in runs if r.curves is not None and not r.curves.empty]
    sec = Section("training", "Training curves")
    if not curves:
        sec.missing = ("No training curves: RUN_DIR/metrics.jsonl is missing or empty (spkid train writes it "
                       "every 25 steps); pass the directory given to spkid train --out.")
        return sec
    what = ("Loss and accuracy are on training crops, smoothed; validation accuracy and EER are on whole held-out "
            "utterances of the training speakers. ")
    if len(curves) > 1:
        what += f"{len(curves)} runs overlaid, one colour each. "
    sec.blocks = [
        _image(figures.training_curves(curves, "step"), "training_steps", what + "Against training steps.",
               "training curves against steps"),
        _image(figures.training_curves(curves, "elapsed"), "training_time",
               "The same against wall-clock training time: compares runs of different speed fairly.",
               "training curves against wall time")]
    return sec


# closed set --------------------------------------------------------------------------------------

def closed_set_section(test: TestEval | None, why_missing: str | None = None) -> Section:
    sec = Section("closed-set", "Closed-set identification")
    if test is None or test.true is None:
        sec.missing = why_missing or (f"No test set scored: {HINT_TEST} to see accuracy with a confidence "
                                      "interval, per-speaker accuracy, the most-confused pairs, the confusion "
                                      "matrix and accuracy against duration.")
        return sec
    names, true, pred = test.speakers, test.true, test.pred
    n, k = true.size, int((pred == true).sum())
    lo, hi = analysis.wilson_interval(k, n)
    top5 = np.argsort(-test.probs, axis=1)[:, :5]
    k5 = int((top5 == true[:, None]).any(axis=1).sum())
    cm = analysis.confusion_matrix(true, pred, len(names))
    per = analysis.per_speaker_accuracy(cm, names)
    pairs = analysis.confused_pairs(cm, names, top=15)
    bins = analysis.duration_bins(test.frames * test.frame_seconds, pred == true)
    shown, which = analysis.heatmap_speakers(cm)
    sub = cm[np.ix_(shown, shown)]
    sub_names = [names[i] for i in shown]
    order = analysis.cluster_order(sub)
    worst = [p for p in per if p.correct < p.n][:15]
    sec.blocks = [
        Paragraph(f"Accuracy {k / n:.4f} ({k}/{n}) — 95% interval [{lo:.4f}, {hi:.4f}]", "big"),
        Paragraph(f"Top-5 accuracy {k5 / n:.4f}. {len({int(t) for t in true})} speakers in the test set, "
                  f"{len(names)} known to the model. The interval is the Wilson score interval of a binomial "
                  "proportion: with this many test utterances, differences inside it are noise.", "note"),
        _image(figures.per_speaker_accuracy([p.name for p in per], [p.accuracy for p in per], [p.n for p in per]),
               "per_speaker", "Accuracy of each test speaker, worst first. Few utterances per speaker make each "
               "bar coarse: read the shape (how many speakers fail, how badly), then the table below.",
               "per-speaker accuracy"),
        *_error_tables(per, worst, pairs),
        _image(figures.confusion_heatmap(sub, sub_names, order), "confusion",
               f"Confusion matrix of {which}, rows "
               "normalised (fraction of each true speaker's utterances), log colour scale, blank = 0. Rows and "
               "columns are in hierarchical-clustering order, so speakers confused with each other sit side by "
               "side: off-diagonal blocks are groups of similar voices.", "confusion matrix"),
        _image(figures.accuracy_by_duration([b.lo for b in bins], [b.hi for b in bins], [b.accuracy for b in bins],
                                            [b.interval[0] for b in bins], [b.interval[1] for b in bins],
                                            [b.n for b in bins]),
               "duration", "Accuracy in duration bins of about equal size, with 95% Wilson intervals: whether "
               "short utterances are where the errors are.", "accuracy against duration"),
    ]
    return sec


def _error_tables(per, worst, pairs) -> list:
    if not pairs:
        return [Paragraph("No errors: every test utterance was identified correctly.", "note")]
    n_err = sum(p.correct < p.n for p in per)
    return [Table(["speaker", "test utterances", "correct", "accuracy", "most often taken for"],
                  [[p.name, p.n, p.correct, round(p.accuracy, 4), p.top_wrong or DASH] for p in worst],
                  f"Speakers with errors ({n_err} of {len(per)}), worst first"
                  + (f" (first {len(worst)})" if len(worst) < n_err else "")),
            Table(["speaker A", "speaker B", "A taken for B", "B taken for A", "total"],
                  [[p.a, p.b, p.a_as_b, p.b_as_a, p.total] for p in pairs], "Most-confused speaker pairs")]


# verification ------------------------------------------------------------------------------------

def verification_section(trials: TrialsEval | None, registry: RegistryInfo | None, model_id: str | None,
                         why_missing: str | None = None) -> Section:
    sec = Section("verification", "Verification (unseen speakers)")
    if trials is None:
        sec.missing = why_missing or (f"No verification trials: {HINT_TRIALS} to see target/non-target score "
                                      "histograms, the DET curve, EER and minDCF; add --registry FILE to draw "
                                      "its stored threshold.")
        if registry is not None:
            sec.blocks.append(Paragraph(f"Registry {registry.path}: threshold {registry.threshold:.4f} "
                                        f"({registry.threshold_source}).", "note"))
        return sec
    s, y = trials.scores, trials.labels
    v = analysis.verification_summary(s, y)
    p_fa, p_miss = analysis.det_points(s, y)
    lines = {"EER threshold": v.eer_threshold, "minDCF threshold": v.dcf_threshold}
    points = {"EER": (v.eer, v.eer), f"minDCF (P_target={v.p_target:g})": v.dcf_point}
    rows = [["EER", round(v.eer, 4), round(v.eer_threshold, 4), round(v.eer, 4), round(v.eer, 4)],
            [f"minDCF (P_target={v.p_target:g})", round(v.min_dcf, 4), round(v.dcf_threshold, 4),
             round(v.dcf_point[0], 4), round(v.dcf_point[1], 4)]]
    notes = []
    if registry is not None and not registry.on_cosines:
        notes.append(f"{registry.path}: threshold {registry.threshold:.4f} ({registry.threshold_source}) is on the "
                     f"registry's own scores ({registry.scoring}), not on these cosines; not drawn.")
    elif registry is not None:
        fa, miss = analysis.operating_point(s, y, registry.threshold)
        lines["registry threshold"] = registry.threshold
        points["registry"] = (fa, miss)
        rows.append([f"registry ({registry.threshold_source})", DASH, round(registry.threshold, 4),
                     round(fa, 4), round(miss, 4)])
        if model_id and registry.model_id != model_id:
            notes.append(f"Warning: {registry.path} was enrolled with another model (model id "
                         f"{registry.model_id}, this one {model_id}); its threshold belongs to that model's scores.")
    sampled = (f", non-target pairs a random subset of {trials.nontarget_cap:,}" if trials.nontarget_cap else
               ", every pair")
    sec.blocks = [
        Paragraph(f"EER {v.eer:.2%} — minDCF {v.min_dcf:.4f} (P_target={v.p_target:g})", "big"),
        Paragraph(f"{v.n_target:,} target and {v.n_nontarget:,} non-target cosine trials over {trials.n_utts} "
                  f"utterances of {trials.n_speakers} speakers{sampled}. A trial is accepted when its score is at "
                  "or above the threshold.", "note"),
        *[Paragraph(t, "note") for t in notes],
        Table(["operating point", "value", "threshold", "false-accept rate", "miss rate"], rows),
        _image(figures.score_histograms(s[y], s[~y], lines), "scores",
               "Cosine scores of same-speaker (target) and different-speaker (non-target) pairs. The less the "
               "two overlap, the better; a threshold trades the orange area to its right (false accepts) "
               "against the green area to its left (misses).", "score histograms"),
        _image(figures.det_curve(p_fa, p_miss, points), "det",
               "DET curve: miss rate against false-accept rate over all thresholds, on normal-deviate axes "
               "(a straight line for Gaussian scores). Lower-left is better; the curve meets the dotted diagonal "
               "at the EER.", "DET curve"),
    ]
    return sec


# embeddings --------------------------------------------------------------------------------------

def embedding_section(test: TestEval | None, cap: int = 2000, why_missing: str | None = None) -> Section:
    from spkid.errors import ConfigError
    from spkid.report.projection import MIN_POINTS, tsne_2d

    sec = Section("embeddings", "Embedding map")
    if test is None:
        sec.missing = why_missing or ("No test set: pass --test DATA_DIR (and --answers answers.csv to mark "
                                      "misclassified utterances) to see a 2-D t-SNE map of the test embeddings.")
        return sec
    if len(test.ids) < MIN_POINTS:
        sec.missing = f"Only {len(test.ids)} test utterances: a map needs at least {MIN_POINTS}."
        return sec
    try:
        xy, rows = tsne_2d(test.emb, cap=cap)
    except ConfigError as e:
        sec.missing = str(e)
        return sec
    pred = test.pred[rows]
    if test.true is not None:
        colour, wrong = test.true[rows], pred != test.true[rows]
        how = "coloured by true speaker; x marks a misclassified utterance"
    else:
        colour, wrong = pred, np.zeros(rows.size, bool)
        how = "coloured by predicted speaker (pass --answers answers.csv to colour by true speaker and mark errors)"
    k = len(set(colour.tolist()))
    subset = (f" A random subset of {rows.size} of {len(test.ids)} utterances (fixed seed)."
              if rows.size < len(test.ids) else "")
    sec.blocks = [_image(
        figures.embedding_map(xy, colour, wrong), "embeddings",
        f"t-SNE of the L2-normalised test embeddings (cosine distance), {how}.{subset} "
        + (f"{k} speakers: colours repeat, so each point has a faint spoke to its speaker's centre; short "
           "spokes mean a speaker's utterances land together. " if k > 20 else "")
        + "Tight, separate clusters mean the embedding separates speakers; t-SNE distances between clusters "
          "mean little.", "t-SNE map of test embeddings")]
    return sec
