"""``benchmarks/diarization.py --calibrate``: which clustering, at which threshold, on DEVELOPMENT speakers;
``--calibrate-merges``: the raw-merge and re-split cosines of a model, on development speakers too.

Conversations from librispeech-sample train-clean-100 (251 speakers the test table never uses) and synthetic
voices of another seed, clean and with room + noise. Each is analysed once (speech, window embeddings); then
every clustering setting runs on the same embeddings (boundaries unrefined, so settings differ only in
clustering), and finally the best setting with and without the refined boundaries. Prints DER (±0.25 s
collar, overlap scored) and the share of conversations whose speaker count is wrong, per setting.

``--calibrate-merges``: the two cosines that live in a model's uncentred embedding space (``DiarizeConfig.merge_raw``
and ``resplit``) must be chosen again for every model. Development conversations (16 librispeech train-clean-100,
8 synthetic, 1-2 min) and development monologues (12 librispeech train-clean-100 voices, 16 synthetic, 60 s; a
train-clean-100 voice has one 12-s clip, a synthetic one six of 4 s, so a monologue says them again), each clean,
with room + noise and as a telephone call, analysed once (cached per model), then every pair of cosines on the
same analyses (current defaults otherwise, boundaries unrefined). The pair kept has the lowest DER of the
conversations and monologues scored together (by speech time), summed over the three conditions (a monologue cut
in two scores as confusion).
"""
from __future__ import annotations

import os
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from spkid.diarization import tune
from spkid.diarization.evaluate import score_diarization
from spkid.diarization.pipeline import DiarizeConfig, analyse, decide
from spkid.diarization.rttm import Segment
from spkid.diarization.stream import AudioStream

CENTRED = (0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.3)     # distances once the recording's mean is removed
RAW = (0.3, 0.4, 0.5, 0.6)
MERGE_RAW = (0.0, 0.70, 0.74, 0.78, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92)   # --calibrate-merges: uncentred cosines
RESPLIT = (0.0, 0.60, 0.65, 0.70, 0.75, 0.80)     # both reach lower than base needs: other models' cosines run lower


def _embedder(a):
    if a.resemblyzer:
        from diarization import ResemblyzerEmbedder
        return ResemblyzerEmbedder()
    from spkid.diarization.batch import load_embedder
    return load_embedder(a.checkpoint, device="cpu")


def clustered(data: list, cfg: DiarizeConfig) -> tuple[list[Segment], list[Segment], list[bool]]:
    """``data`` ``[(manifest row, Analysis)]`` clustered with ``cfg`` (no refined boundaries): the reference and
    hypothesis segments of all files, and per file whether its speaker count is wrong (``tune.clustered``)."""
    return tune.clustered([tune.Recording(r["name"], "", [Segment(**x) for x in r["reference"]], len(r["speakers"]),
                                          an) for r, an in data], cfg)


def calibrate(a, work: Path) -> int:
    from diarization import conversations, write_condition
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    emb = _embedder(a)
    if getattr(emb, "model", None) is not None and emb.model.val_eer_threshold is not None:
        print(f"checkpoint validation EER threshold {emb.model.val_eer_threshold:.3f} "
              f"(cosine distance {1 - emb.model.val_eer_threshold:.3f})")
    plans = conversations("libri-dev", 8, (1.0, 2.0), a.seed + 100) + conversations("synth-dev", 4, (1.0, 2.0),
                                                                                      a.seed + 100)
    base = DiarizeConfig(refine=False)
    tag = "resemblyzer" if a.resemblyzer else Path(a.checkpoint).stem
    cache = work / f"dev-analyses-{tag}.pkl"
    if cache.exists():                       # the speech and embedding passes of an earlier run with this model
        done = pickle.loads(cache.read_bytes())
    else:
        done = []
        for cond in ("clean", "room-noise"):
            rows = write_condition(plans, cond, work / f"dev-{cond}", a.seed + 100)
            for r in rows:
                with AudioStream(r["file"]) as s:
                    done.append((cond, r, analyse(s, emb, base)))
        cache.write_bytes(pickle.dumps(done))
    settings = [(f"ahc t={t:.2f}{' +hmm' if h else ''}", replace(base, method="ahc", threshold=t, hmm=h))
                for t in CENTRED for h in (False, True)]
    settings += [(f"ahc uncentred t={t:.2f} +hmm", replace(base, method="ahc", threshold=t, centre=False))
                 for t in RAW]
    settings += [(f"spectral merge<{t:.2f}{' +hmm' if h else ''}", replace(base, method="spectral", threshold=t, hmm=h))
                 for t in CENTRED for h in (False, True)]
    results = []
    for name, cfg in settings:
        line = [name]
        for cond in ("clean", "room-noise"):
            ref, hyp, wrong = clustered([(r, an) for c, r, an in done if c == cond], cfg)
            der = score_diarization(ref, hyp)[-1].der_collar
            line += [der, float(np.mean(wrong))]
        results.append(line)
        print(f"{name:<28} clean DER {100 * line[1]:5.2f} % count wrong {100 * line[2]:3.0f} %   room-noise DER "
              f"{100 * line[3]:5.2f} % count wrong {100 * line[4]:3.0f} %", flush=True)
    best = min(results, key=lambda r: r[1] + r[3])
    print(f"best on the dev conversations: {best[0]}")
    cfg = dict(settings)[best[0]]
    for refine in (False, True):
        ref, hyp, t0, audio = [], [], time.perf_counter(), 0.0
        for c, r, an in done:
            with AudioStream(r["file"]) as s:
                d = decide(an, s, emb, replace(cfg, refine=refine))
            ref += [Segment(f"{c}/{x['file']}", x["start"], x["end"], x["speaker"]) for x in r["reference"]]
            hyp += [Segment(f"{c}/{x.file}", x.start, x.end, x.speaker) for x in d.segments]
            audio += an.duration
        rows = score_diarization(ref, hyp)[-1]
        print(f"{best[0]} refine={refine}: DER ±0.25 {100 * rows.der_collar:.2f} %, no collar {100 * rows.der:.2f} % "
              f"(clustering + boundaries: {time.perf_counter() - t0:.1f} s for {audio / 60:.1f} min)")
    return 0


def dev_sets(seed: int) -> dict[str, list]:
    """The development plans of ``--calibrate-merges``: conversations and monologues (``diarization`` plans)."""
    from diarization import conversations, pools
    convs = conversations("libri-dev", 16, (1.0, 2.0), seed + 100) + conversations("synth-dev", 8, (1.0, 2.0),
                                                                                      seed + 100)
    rng = np.random.default_rng([seed, 101])
    mono = []
    for corpus, n in (("libri-dev", 12), ("synth-dev", 16)):
        pool = pools(corpus, seed=seed)[0]
        names = sorted(pool)
        mono += [(f"{corpus}-mono{i:02d}", {s: pool[s]}, 60.0, 0.0)
                 for i, s in enumerate(names[j] for j in sorted(rng.choice(len(names), n, replace=False)))]
    return {"conversations": convs, "monologues": mono}


def sweep(done: dict, base: DiarizeConfig, merge_raw, resplit) -> list[dict]:
    """Every pair of ``merge_raw`` x ``resplit`` (``base`` otherwise) on the analyses ``done``
    ``{(kind, condition): [(manifest row, Analysis)]}``: per pair ``cells`` ``{(kind, condition): (DER, share of
    count wrong)}``, ``pooled`` ``{condition: DER of every kind together}`` and their ``sum``."""
    rows = []
    for mr in merge_raw:
        for rs in resplit:
            cfg = replace(base, merge_raw=mr, resplit=rs)
            cells, pooled = {}, {}
            for (kind, cond), data in done.items():
                ref, hyp, wrong = clustered(data, cfg)
                cells[kind, cond] = (score_diarization(ref, hyp)[-1].der_collar, float(np.mean(wrong)))
                pr, ph = pooled.setdefault(cond, ([], []))
                pr += ref
                ph += hyp
            pooled = {c: score_diarization(*rh)[-1].der_collar for c, rh in pooled.items()}
            rows.append({"merge_raw": mr, "resplit": rs, "cells": cells, "pooled": pooled,
                         "sum": sum(pooled.values())})
    return rows


def calibrate_merges(a, work: Path) -> int:
    """Sweep ``merge_raw`` x ``resplit`` on the development sets; print the table and the pair kept."""
    from diarization import CONDITIONS, write_condition
    from spkid.diarization.batch import load_embedder
    emb = load_embedder(a.checkpoint, device="cpu")
    cache = work / f"dev-merges-{Path(a.checkpoint).stem}-seed{a.seed}.pkl"
    if cache.exists():
        done = pickle.loads(cache.read_bytes())
    else:
        done = {}
        for kind, plans in dev_sets(a.seed).items():
            for cond in CONDITIONS:
                rows = write_condition(plans, cond, work / f"dev-{kind}-{cond}", a.seed + 100)
                out = []
                for r in rows:
                    with AudioStream(r["file"]) as s:
                        out.append((r, analyse(s, emb, DiarizeConfig())))
                done[kind, cond] = out
                print(f"analysed {kind} / {cond}: {len(rows)} files", file=sys.stderr, flush=True)
        cache.write_bytes(pickle.dumps(done))
    rows = sweep(done, DiarizeConfig(refine=False), MERGE_RAW, RESPLIT)
    conds = sorted({c for _, c in done}, key=CONDITIONS.index)
    print("| merge_raw | resplit | " + " | ".join(f"{k[:4]} {c}" for k, c in done) + " | " +
          " | ".join(f"all {c}" for c in conds) + " | sum |\n|---|---|" + "---|" * (len(done) + len(conds) + 1))
    for r in rows:
        print(f"| {r['merge_raw']:.2f} | {r['resplit']:.2f} | " +
              " | ".join(f"{100 * d:.2f} ({100 * w:.0f})" for d, w in r["cells"].values()) + " | " +
              " | ".join(f"{100 * x:.2f}" for x in r["pooled"].values()) + f" | {100 * r['sum']:.2f} |")
    best = min(rows, key=lambda r: r["sum"])
    print(f"\nkept: merge_raw {best['merge_raw']:.2f}, resplit {best['resplit']:.2f} (summed DER "
          f"{100 * best['sum']:.2f}). Cells: DER ±0.25 s, overlap scored, % (count wrong %); 'all': conversations "
          "and monologues scored together")
    return 0


if __name__ == "__main__":
    sys.exit("run through benchmarks/diarization.py --calibrate")
