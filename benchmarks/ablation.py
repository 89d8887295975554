"""Ablation: train each configuration under the same wall-clock budget on speechocean762 and tabulate.

    python benchmarks/ablation.py --minutes 10 --variants default hw4-sample --seeds 0 1
    python benchmarks/ablation.py --table-only          # re-render docs/results.md from saved results

Each run is ``spkid train DATA --max-minutes M`` in its own process (``--threads`` torch threads), then:
validation accuracy (whole held-out utterances), public-test accuracy (``testdata.json`` vs ``answers.csv``),
accuracy on 1-second crops (the first 100 frames of each public-test utterance), steps reached, parameters.
Results are kept in ``runs/ablation/<variant>-s<seed>-<minutes>m<threads>t/result.json``; the table merges all
saved results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speechocean762"

CROPS_1_3S = ["data.crop_min_frames=100", "data.crop_frames=300"]     # the first TDNN default's crops

# name -> (preset, overrides, description)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "hw4-sample": ("hw4-sample", [], "HW4 sample recipe: 1 post-norm Transformer layer d80, mean pool, CE"),
    # the default recipe (ECAPA-style TDNN) and changes to it; rows with CROPS_1_3S ran with 1-3 s crops
    "default": ("default", [], "the default recipe: TDNN C128 x 3, 2x subsampling, ASP, CE + LS 0.1, 0.5-1.5 s crops"),
    "default-crops-1-2s": ("default", ["data.crop_min_frames=100", "data.crop_frames=200"],
                           "default with crops of 1-2 s (the second TDNN default)"),
    "default-crops-1-3s": ("default", CROPS_1_3S,
                           "default with crops of 1-3 s (the first TDNN default)"),
    "default-fp32": ("default", [*CROPS_1_3S, "train.amp=none"], "1-3 s crops, no bf16 autocast"),
    "default-aam": ("default", [*CROPS_1_3S, "model.head=aam", "model.margin=0.2", "model.scale=30",
                                "train.margin_warmup=0.2"], "1-3 s crops, AAM-softmax m0.2 s30 (margin warm-up 20%)"),
    "default-c192": ("default", [*CROPS_1_3S, "model.d_model=192", "model.agg_dim=576"],
                     "1-3 s crops, C192, aggregation 576"),
    "default-sub4": ("default", [*CROPS_1_3S, "model.subsample=4"], "1-3 s crops, 4x time subsampling"),
    "default-sub1": ("default", [*CROPS_1_3S, "model.subsample=1"], "1-3 s crops, no time subsampling"),
    "default-lr4e-3": ("default", [*CROPS_1_3S, "train.lr=4e-3"], "1-3 s crops, peak learning rate 4e-3"),
    # the Conformer preset (the default before the TDNN) and changes to it
    "conformer": ("conformer", [], "Conformer d128 x 3, FFN 256, 4x subsampling, ASP, AAM m0.2 s30"),
    "transformer": ("conformer", ["model.encoder=transformer"], "conformer preset with a pre-norm Transformer"),
    "pool-mean": ("conformer", ["model.pooling=mean"], "conformer with masked mean pooling"),
    "pool-sap": ("conformer", ["model.pooling=sap"], "conformer with self-attentive pooling"),
    "head-softmax": ("conformer", ["model.head=softmax", "model.label_smoothing=0.1", "train.margin_warmup=0"],
                     "CE + label smoothing 0.1"),
    "head-am": ("conformer", ["model.head=am"], "conformer with AM-softmax m0.2 s30"),
    "specaug": ("conformer", ["augment.spec_time_masks=2", "augment.spec_freq_masks=2"], "conformer plus SpecAugment (2+2)"),
    "crop-fixed": ("conformer", ["data.crop_min_frames=0", "data.crop_frames=200"], "fixed 200-frame crops"),
    "norm-cmn": ("conformer", ["model.norm=cmn"], "per-utterance mean normalisation instead of global mean/std"),
    "short-crops": ("conformer", ["data.crop_min_frames=60", "data.crop_frames=200"], "crops of 0.6-2 s"),
    "avg": ("conformer", ["train.average_last=0.3"], "final weights = mean of snapshots over the last 30%"),
    "wide": ("conformer", ["model.d_model=144", "model.ffn_dim=576", "model.n_layers=4"], "d144, 4 blocks, FFN 576"),
    "sub2": ("conformer", ["model.subsample=2"], "2x time subsampling instead of 4x"),
    "small-ce": ("conformer", ["model.d_model=96", "model.n_layers=2", "model.ffn_dim=192", "model.subsample=2",
                               "model.head=softmax", "model.label_smoothing=0.1", "train.margin_warmup=0"],
                 "d96 x 2 blocks, FFN 192, 2x subsampling, CE + label smoothing 0.1"),
    "small-ce-sub4": ("conformer", ["model.d_model=96", "model.n_layers=2", "model.ffn_dim=192",
                                    "model.head=softmax", "model.label_smoothing=0.1", "train.margin_warmup=0"],
                      "d96 x 2 blocks, FFN 192, 4x subsampling, CE + label smoothing 0.1"),
    "attn-linformer": ("conformer", ["model.attention=linformer"], "Linformer attention"),
    "attn-local": ("conformer", ["model.attention=local"], "local-window attention"),
    "attn-sparse": ("conformer", ["model.attention=sparse"], "local window + strided global positions"),
    "attn-adaptive": ("conformer", ["model.attention=adaptive"], "adaptive attention span"),
}


def _accuracy(pred: list[str], gold: list[str]) -> float:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def evaluate_run(ckpt: Path) -> dict:
    """Public-test and 1-second-crop accuracy of one checkpoint (same code path as ``spkid predict``)."""
    import torch
    from spkid.data.features import load_test_features
    from spkid.scoring.model import load
    from spkid.data.hw4 import read_answers_csv
    model = load(ckpt, "cpu")
    test = load_test_features(DATA, 40, progress=False)
    answers = read_answers_csv(DATA / "answers.csv")
    gold = [answers[u.feature_path] for u in test.utts]
    ids = [model.speakers[i] for i in model.scores(test.feats).argmax(-1).tolist()]
    crops = [f[:100] for f in test.feats]
    ids_1s = [model.speakers[i] for i in model.scores(crops).argmax(-1).tolist()]
    return {"test_acc": _accuracy(ids, gold), "test_1s_acc": _accuracy(ids_1s, gold),
            "params": sum(p.numel() for p in model.net.parameters())}


def run_one(name: str, seed: int, minutes: float, threads: int, out_root: Path, extra: list[str]) -> dict:
    preset, sets, desc = VARIANTS[name]
    out = out_root / f"{name}-s{seed}-{minutes:g}m{threads}t"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "spkid", "train", str(DATA), "--out", str(out), "--config", preset,
           "--max-minutes", str(minutes), "--seed", str(seed), "--quiet", "--set", f"train.threads={threads}"]
    for s in sets + extra:
        cmd += ["--set", s]
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    wall = time.time() - t0
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_acc"] for r in last if "val_acc" in r]
    steps = max(r.get("step", 0) for r in last)
    res = {"variant": name, "seed": seed, "minutes": minutes, "threads": threads, "desc": desc,
           "overrides": sets + extra, "val_acc": vals[-1] if vals else None, "steps": steps, "wall_s": round(wall, 1),
           **evaluate_run(out / "last.ckpt")}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def render_table(out_root: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out_root.glob("*/result.json"))]
    if not rows:
        return "(no results yet)\n"
    lines = ["| variant | seed | budget (min, threads) | val acc | public test acc | 1-s crop acc | steps | params |",
             "|---|---|---|---|---|---|---|---|"]
    order = {n: i for i, n in enumerate(VARIANTS)}
    for r in sorted(rows, key=lambda r: (order.get(r["variant"], 99), r["minutes"], r["seed"])):
        val = "-" if r["val_acc"] is None else f"{r['val_acc']:.4f}"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['minutes']:g}, {r['threads']} | {val} | "
                     f"{r['test_acc']:.4f} | {r['test_1s_acc']:.4f} | {r['steps']} | {r['params'] / 1e6:.2f}M |")
    shown = sorted({r["variant"] for r in rows}, key=lambda n: order.get(n, 99))
    lines += ["", "Variants (preset + overrides, as `benchmarks/ablation.py` runs them):", ""]
    lines += [f"- `{n}`: {VARIANTS[n][2]}" + (f" (`{VARIANTS[n][0]}` + `{' '.join(VARIANTS[n][1])}`)"
                                               if VARIANTS[n][1] else f" (`--config {VARIANTS[n][0]}`)")
              for n in shown if n in VARIANTS]
    by = {}
    for r in rows:
        by.setdefault((r["variant"], r["minutes"], r["threads"]), []).append(r)
    spread = [(k, [x["test_acc"] for x in v], [x["test_1s_acc"] for x in v]) for k, v in by.items() if len(v) > 1]
    if spread:
        lines += ["", "Seed spread (max - min over seeds of the same variant, budget and threads):", ""]
        for (name, minutes, threads), acc, acc1 in spread:
            lines.append(f"- {name} ({minutes:g} min, {threads} threads, {len(acc)} seeds): "
                         f"public test {max(acc) - min(acc):.4f}, "
                         f"1-s crops {max(acc1) - min(acc1):.4f} (mean {statistics.mean(acc):.4f} / "
                         f"{statistics.mean(acc1):.4f})")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=["hw4-sample", "default"], choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra override for every run")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "ablation"))
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--write", default=str(ROOT / "docs" / "results.md"),
                    help="markdown file whose ablation section (between markers) is replaced by the table")
    a = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs ../shared beside the checkout)")
        return
    out_root = Path(a.runs)
    if not a.table_only:
        for name in a.variants:
            for seed in a.seeds:
                run_one(name, seed, a.minutes, a.threads, out_root, a.set)
    table = render_table(out_root)
    print(table)
    if a.write:
        write_section(Path(a.write), table)


START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"


def write_section(path: Path, table: str) -> None:
    """Replace the text between the ablation markers in ``path`` (append the section if absent)."""
    text = path.read_text() if path.exists() else "# Results\n"
    block = f"{START}\n{table}{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
