"""Open set: train on 200 speakers of speechocean762, then verify, enroll and identify the 50 never seen.

    python benchmarks/openset.py --minutes 10 --threads 2 --seed 0 --write docs/results.md
    python benchmarks/openset.py --checkpoint runs/openset/run/last.ckpt      # evaluate again, no training

1. Speakers are split (seeded) into 200 for training and 50 held out; of the 50, 40 are enrolled and 10 stay
   impostors. ``WORK/train200`` and ``WORK/heldout50`` are HW4 views of the shared data (json + symlinks to the
   shared ``.pt`` files; HW4 feature paths must be relative to the data directory).
2. ``spkid train WORK/train200`` (default recipe, ``--minutes`` budget) in its own process.
3. Verification (``spkid.speakers.eval_verification``) on all metadata utterances of the 50 held-out speakers:
   EER, minDCF (p_target 0.01), the EER threshold.
4. A fresh SQLite registry (``WORK/registry.db``) enrolls 10 utterances of each of the 40; queries are their
   remaining utterances, every utterance of the 10 impostors and the public-test utterances of the 200
   training speakers (not enrolled either). Three thresholds are scored: the step-3 EER threshold, as the CLI
   would store it (not independent: its trials include the query utterances and the impostors), and two taken
   from the enrollment utterances alone: the EER point of their pairs, and an open-set EER point (leave-one-out
   own-centroid score vs best other-centroid score, as identification scores a query).
5. CPU embedding speed for 4-second (400-frame) inputs, 64 per call and one at a time.

Everything is written to ``WORK/result.json``; the markdown section is printed and, with ``--write``, replaces
the text between ``<!-- openset:start -->`` and ``<!-- openset:end -->`` in that file (appended if absent).

``--cross-domain`` (issue 16) runs the cross-domain protocol instead, after the same step 2 (or ``--checkpoint``):

    python benchmarks/openset.py --cross-domain --minutes 10 --threads 2 --write docs/openset.md
    python benchmarks/openset.py --cross-domain --checkpoint runs/openset/run/last.ckpt --write docs/openset.md

The model enrolls and identifies speakers of FSDD, the demo's synthetic voices and held-out speechocean762
speakers whose Opus audio is degraded (room + noise + telephone), through the registry's own back end with each
piece switched on in turn (``benchmarks/backend_transfer.py``: ``REGISTRY_SETTINGS``, ``run_registry``); then
``spkid train WORK/degraded --init CKPT`` for ``--ft-minutes`` (3) against ``spkid train WORK/degraded`` from
scratch for ``--scratch-minutes`` (10) on those new speakers (``WORK/degraded-audio``, their audio, when the base
model was trained on audio: ``--config audio`` trains it on the Opus audio of the 200 speakers).
``WORK/crossdomain.json`` holds every number; ``--write`` replaces the ``<!-- crossdomain:start -->`` block
(``crossdomain-audio`` for an audio base). ``--quick``: a few clips and steps (the test).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762"
START, END = "<!-- openset:start -->", "<!-- openset:end -->"
SPEED_FRAMES = 400                  # 4 s at the HW4 10 ms hop


@dataclass
class Split:
    train: list[str]
    enrolled: list[str]
    impostors: list[str]


def split_speakers(speakers, *, n_heldout: int = 50, n_impostors: int = 10, seed: int = 0) -> Split:
    """Seeded split into training speakers and held-out ones (enrolled + never-enrolled impostors)."""
    order = sorted(speakers)
    if not 0 < n_heldout < len(order) or not 0 < n_impostors < n_heldout:
        raise ValueError(f"need 0 < impostors ({n_impostors}) < held out ({n_heldout}) < speakers ({len(order)})")
    random.Random(seed).shuffle(order)
    held = order[:n_heldout]
    return Split(sorted(order[n_heldout:]), sorted(held[n_impostors:]), sorted(held[:n_impostors]))


def write_view(data: Path, out: Path, utts, test_utts=(), answers: dict | None = None) -> Path:
    """An HW4 directory at ``out`` holding ``utts`` (and test utterances), features symlinked from ``data``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    from spkid.data.hw4 import write_predictions, write_test_index, write_train_index
    speakers: dict[str, list[tuple[str, int]]] = {}
    for u in utts:
        speakers.setdefault(u.speaker, []).append((u.feature_path, u.mel_len))
    write_train_index(out, 40, speakers)
    if test_utts:
        write_test_index(out, 40, [(u.feature_path, u.mel_len) for u in test_utts])
        write_predictions(out / "answers.csv", [u.feature_path for u in test_utts],
                          [answers[u.feature_path] for u in test_utts])
    for u in list(utts) + list(test_utts):
        _link(data / u.feature_path, out / u.feature_path)
    return out


def _link(src: Path, dst: Path) -> None:
    """A hard link to a shared feature file (spkid refuses feature paths that resolve outside their data
    directory, so no symlink); a copy where the file system cannot link."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_views(data: Path, work: Path, split: Split) -> tuple[Path, Path]:
    """``(WORK/train200, WORK/heldout50)``: training speakers with their public-test utterances; held-out ones."""
    from spkid.data.hw4 import read_testdata, read_train
    from spkid.data.hw4 import read_answers_csv
    _, _, utts = read_train(data)
    _, test = read_testdata(data)
    answers = read_answers_csv(data / "answers.csv")
    train, held = set(split.train), set(split.enrolled + split.impostors)
    view_train = write_view(data, work / f"train{len(train)}", [u for u in utts if u.speaker in train],
                            [u for u in test if answers.get(u.feature_path) in train], answers)
    view_held = write_view(data, work / f"heldout{len(held)}", [u for u in utts if u.speaker in held])
    return view_train, view_held


def audio_list(speakers: list[str], work: Path) -> Path:
    """``WORK/trainN-audio.csv``: ``path,speaker`` rows of the Opus training audio of ``speakers`` (the input
    of an audio recipe, e.g. ``--config audio``)."""
    opus = DATA.parent / "speechocean762-opus" / "train"
    if not opus.is_dir():
        raise SystemExit(f"{opus}: not found; an audio recipe needs the shared Opus audio")
    out = work / f"train{len(speakers)}-audio.csv"
    rows = [f"{f},{spk}" for spk in sorted(speakers) for f in sorted((opus / spk).glob("*.opus"))]
    out.write_text("path,speaker\n" + "\n".join(rows) + "\n")
    return out


def train_model(view: Path, run: Path, *, minutes: float, threads: int, seed: int, steps: int = 0,
                preset: str | None = "default", init: Path | None = None) -> Path:
    """``python -m spkid train`` in a subprocess (``OMP_NUM_THREADS=threads``); returns ``run/last.ckpt``."""
    proc = start_training(view, run, minutes=minutes, threads=threads, seed=seed, steps=steps, preset=preset, init=init)
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return run / "last.ckpt"


def start_training(view: Path, run: Path, *, minutes: float, threads: int, seed: int, steps: int = 0,
                   preset: str | None = "default", init: Path | None = None) -> subprocess.Popen:
    """Start ``python -m spkid train`` (``OMP_NUM_THREADS=threads``) into a fresh ``run``; returns the process."""
    if run.exists():
        shutil.rmtree(run)
    budget = ["--steps", str(steps)] if steps else ["--max-minutes", str(minutes)]
    init_args = ["--init", str(init)] if init else []    # fine-tuning: the preset must be the checkpoint's own
    config = ["--config", preset] if preset else []      # None: the CLI's default (with --init: the checkpoint's)
    cmd = [sys.executable, "-m", "spkid", "train", str(view), "--out", str(run), *config, *init_args, *budget,
           "--seed", str(seed), "--quiet", "--set", f"train.threads={threads}"]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, cwd=ROOT)


def _rate(flags) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def identification(model, registry: Path, enroll: dict, queries: dict, thresholds: list[tuple[float, str]]) -> list:
    """Enroll ``{speaker: (E_i, sources)}`` into a new registry, then score ``queries`` at each threshold.

    ``queries``: ``{"enrolled": (emb, true names), "<group>": (emb, None), ...}``, emb ``(M, E)``. One result
    per ``(threshold, source)``; the registry is left holding the first one.
    """
    from spkid.scoring.speaker_db import UNKNOWN, SpeakerDB
    registry.unlink(missing_ok=True)
    rows = []
    with SpeakerDB.create(registry, model_id=model.model_id, checkpoint=str(model.path.resolve()),
                         embed_dim=model.net.embed_dim, threshold=thresholds[0][0],
                         threshold_source=thresholds[0][1]) as reg:
        for spk, (emb, sources) in enroll.items():
            reg.enroll(spk, emb, sources, model_id=model.model_id)
        emb, truth = queries["enrolled"]
        top1 = [r[0][0] for r in reg.identify(emb)]
        for thr, source in thresholds:
            reg.set_threshold(thr, source)
            row = {"threshold": thr, "source": source, "closed_set_acc": _rate([p == t for p, t in zip(top1, truth)])}
            got = [s for s, _ in reg.decide(emb)]
            row["open_set_acc"] = _rate([g == t for g, t in zip(got, truth)])
            row["rejected"] = _rate([g == UNKNOWN for g in got])
            row["wrong_accepted"] = _rate([g not in (t, UNKNOWN) for g, t in zip(got, truth)])
            for group, (q, _) in queries.items():
                if group != "enrolled":
                    row[f"far_{group}"] = _rate([s != UNKNOWN for s, _ in reg.decide(q)])
            rows.append(row)
        reg.set_threshold(*thresholds[0])
    return rows


def enrollment_thresholds(enroll: dict) -> tuple[float, float]:
    """Two EER thresholds from the enrollment embeddings alone (``{speaker: ((n_i, E) normalised, sources)}``).

    - pairs: EER of utterance-vs-utterance trials among the enrollment utterances (what verification measures);
    - open set: each enrollment utterance is a target for its own speaker's centroid without it (leave one out)
      and an impostor for the best of the other speakers' centroids, as ``SpeakerDB.decide`` scores a query.
    """
    import numpy as np
    from spkid.scoring.metrics import eer, make_trials, score_trials
    embs = [np.asarray(e, dtype=np.float64) for e, _ in enroll.values()]
    labels = [k for k, e in enumerate(embs) for _ in range(len(e))]
    i, j, target = make_trials([str(k) for k in labels])
    _, t_pairs = eer(score_trials(np.concatenate(embs).astype(np.float32), i, j), target)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)          # noqa: E731
    sums = np.stack([e.sum(0) for e in embs])                               # (K, E)
    cents = unit(sums)
    tar, non = [], []
    for k, e in enumerate(embs):
        tar.append((e * unit(sums[k] - e)).sum(1))                          # (n_k,) vs own centroid without itself
        non.append((e @ np.delete(cents, k, axis=0).T).max(1))              # (n_k, K-1) -> best other speaker
    tar, non = np.concatenate(tar), np.concatenate(non)
    _, t_open = eer(np.r_[tar, non], np.r_[np.ones(tar.size), np.zeros(non.size)])
    return t_pairs, t_open


def embed_speed(model, feats, *, batch: int = 64, min_seconds: float = 3.0) -> dict:
    """Utterances/s of ``model.embed`` on 400-frame inputs (tiled from ``feats``): ``batch`` per call and one by one."""
    import torch
    x = [f.float().repeat(-(-SPEED_FRAMES // f.shape[0]), 1)[:SPEED_FRAMES] for f in feats[:batch]]
    x = (x * -(-batch // len(x)))[:batch]                          # (SPEED_FRAMES, F) each, exactly `batch`
    model.embed(x[:2])                                             # warm-up (allocations, kernel choice)
    out = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "frames": SPEED_FRAMES, "batch": batch}
    for mode, calls in (("batched", [x]), ("single", [[t] for t in x])):
        n, t0 = 0, time.perf_counter()
        while n < batch or time.perf_counter() - t0 < min_seconds:
            for c in calls:
                model.embed(c)
                n += len(c)
        out[f"{mode}_utt_per_s"] = n / (time.perf_counter() - t0)
    return out


def evaluate(ckpt: Path, view_train: Path, view_held: Path, split: Split, work: Path, *, n_enroll: int = 10,
             seed: int = 0, device: str = "cpu", speed_seconds: float = 3.0) -> dict:
    """Steps 3-5 for a trained checkpoint; returns every number of the report."""
    import torch.nn.functional as F
    from spkid.training.checkpoint import load_checkpoint
    from spkid.data.features import load_test_features, load_train_features
    from spkid.scoring.model import class_scores, embed_features, load
    from spkid.data.hw4 import read_answers_csv
    from spkid.scoring.openset import eval_verification

    ver = eval_verification(ckpt, view_held, device=device, progress=False)
    model = load(ckpt, device)
    ck = load_checkpoint(ckpt)
    n_mels = model.cfg.features.n_mels
    held = load_train_features(view_held, n_mels, progress=False)
    test = load_test_features(view_train, n_mels, progress=False)
    answers = read_answers_csv(view_train / "answers.csv")
    held_emb = F.normalize(embed_features(model.net, held.feats, model.cfg.infer, model.device), dim=-1)
    raw = embed_features(model.net, test.feats, model.cfg.infer, model.device)
    test_emb = F.normalize(raw, dim=-1)
    truth = [answers[u.feature_path] for u in test.utts]
    pred = [model.speakers[i] for i in class_scores(model.net, raw, model.device).argmax(-1).tolist()]

    rng = random.Random(seed)
    enroll, query_idx = {}, []
    for spk in split.enrolled:
        idx = sorted((i for i, u in enumerate(held.utts) if u.speaker == spk), key=lambda i: held.utts[i].feature_path)
        if len(idx) <= n_enroll:
            raise ValueError(f"speaker {spk} has {len(idx)} utterances; enrolling {n_enroll} leaves no query")
        rng.shuffle(idx)
        enroll[spk] = (held_emb[idx[:n_enroll]], [held.utts[i].feature_path for i in idx[:n_enroll]])
        query_idx += idx[n_enroll:]
    t_pairs, t_open = enrollment_thresholds(enroll)
    impostors = set(split.impostors)
    imp_idx = [k for k, u in enumerate(held.utts) if u.speaker in impostors]
    queries = {"enrolled": (held_emb[query_idx], [held.utts[k].speaker for k in query_idx]),
               "impostors": (held_emb[imp_idx], None), "train_speakers": (test_emb, None)}
    ident = identification(model, work / "registry.db", enroll, queries,
                           [(ver["threshold"], "eer"), (t_pairs, "enrollment pairs"),
                            (t_open, "enrollment open set")])

    cpu_model = model if model.device.type == "cpu" else load(ckpt, "cpu")
    speed = embed_speed(cpu_model, held.feats, min_seconds=speed_seconds)
    cfg = ck["config"]["train"]
    return {
        "train": {"speakers": len(split.train), "max_minutes": cfg["max_minutes"], "threads": cfg["threads"],
                  "seed": cfg["seed"], "steps": ck["step"], "elapsed_s": ck["elapsed"], "val_acc": ck.get("val_acc"),
                  "val_eer": ck.get("val_eer"), "preset": ck["config"].get("name"), "checkpoint": str(ckpt),
                  "public_test_acc": _rate([p == t for p, t in zip(pred, truth)]), "n_public_test": len(truth)},
        "verification": ver,
        "split": {"enrolled": len(split.enrolled), "impostors": len(split.impostors), "n_enroll": n_enroll,
                  "enrolled_queries": len(query_idx), "impostor_queries": len(imp_idx),
                  "train_speaker_queries": len(test.utts)},
        "identification": ident,
        "speed": speed,
    }


def render(r: dict) -> str:
    """The markdown section for ``docs/results.md``."""
    t, v, s, sp = r["train"], r["verification"], r["split"], r["speed"]
    pct = lambda x: f"{100 * x:.2f}%"                                         # noqa: E731
    val = "n/a" if t["val_acc"] is None else f"{t['val_acc']:.4f}"
    budget = f"{t['max_minutes']:g} min budget" if t["max_minutes"] > 0 else "fixed step count"
    total = t["speakers"] + s["enrolled"] + s["impostors"]
    lines = [
        f"## Open set: speakers never seen in training ({r.get('data', 'HW4 data')})", "",
        f"`benchmarks/openset.py`: the {t['preset']} recipe trained on {t['speakers']} of the {total} speakers "
        f"({budget}, {t['threads']} torch threads, seed {t['seed']}: {t['steps']} steps in "
        f"{t['elapsed_s'] / 60:.1f} min; validation accuracy {val}, public-test accuracy "
        f"{t['public_test_acc']:.4f} on the {t['n_public_test']} public-test utterances of those speakers). "
        f"The other {s['enrolled'] + s['impostors']} speakers are never trained on.", "",
        f"**Verification** on all metadata utterances of the {v['n_speakers']} held-out speakers "
        f"(cosine scores, every target pair, non-target pairs sampled):", "",
        "| speakers | utterances | target / non-target trials | EER | minDCF (p_target 0.01) | EER threshold |",
        "|---|---|---|---|---|---|",
        f"| {v['n_speakers']} | {v['n_utterances']} | {v['n_target']} / {v['n_nontarget']} | {pct(v['eer'])} | "
        f"{v['min_dcf']:.4f} | {v['threshold']:.4f} |", "",
        f"Target EER <= 5%: {'met' if v['eer'] <= 0.05 else 'not met'}.", "",
        f"**Identification** with a registry of {s['enrolled']} held-out speakers ({s['n_enroll']} utterances each, "
        f"scored against each speaker's mean embedding). Queries: {s['enrolled_queries']} other utterances of the "
        f"enrolled speakers, {s['impostor_queries']} of the {s['impostors']} never-enrolled held-out speakers and "
        f"the {s['train_speaker_queries']} public-test utterances of the training speakers (not enrolled either); "
        "\"accepted\" means the best score reaches the threshold.", "",
        "| threshold | value | enrolled: top-1 (closed set) | enrolled: right speaker accepted | rejected | "
        "wrong speaker accepted | false accepts: held-out impostors | false accepts: training speakers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["identification"]:
        lines.append(f"| {row['source']} | {row['threshold']:.4f} | {pct(row['closed_set_acc'])} | "
                     f"{pct(row['open_set_acc'])} | {pct(row['rejected'])} | {pct(row['wrong_accepted'])} | "
                     f"{pct(row['far_impostors'])} | {pct(row['far_train_speakers'])} |")
    lines += [
        "",
        f"- eer: the verification EER threshold above, as `spkid eval-verification --registry` stores it (and "
        f"as `WORK/registry.db` keeps it). Its trials include all {v['n_speakers']} held-out speakers, the query "
        "utterances and the impostors, so this row is not an independent estimate.",
        "- enrollment pairs: the EER point of trials among the enrollment utterances only, the same kind of "
        "threshold without the leak: no query or impostor utterance takes part in choosing it.",
        "- enrollment open set: also from the enrollment utterances only, but scored the way identification "
        "scores: each enrollment utterance against its own speaker's centroid without it (target) and against "
        "the best other enrolled speaker (impostor); the EER point between the two.",
        "- An impostor is accepted when its best score over all enrolled speakers reaches the threshold, so the "
        "false-accept rate of identification is higher than the per-trial rate at the same threshold.", "",
        f"**CPU embedding speed**, {sp['frames']}-frame (4 s) inputs through `Model.embed`, torch threads "
        f"{sp['threads']} (of {sp['cpu_count']} CPUs):", "",
        "| mode | utterances/s | ms per utterance | x real time |", "|---|---|---|---|",
    ]
    for mode, name in (("batched", f"{sp['batch']} per call"), ("single", "one per call")):
        u = sp[f"{mode}_utt_per_s"]
        lines.append(f"| {name} | {u:.1f} | {1000 / u:.2f} | {u * sp['frames'] / 100:.0f} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the text between the openset markers in ``path`` (append the section if absent)."""
    write_marked(path, text, START, END)


# -- the cross-domain protocol (issue 16): implemented in benchmarks/backend_transfer.py ---------------------------

XD_START, XD_END = "<!-- crossdomain:start -->", "<!-- crossdomain:end -->"
XD_AUDIO_START, XD_AUDIO_END = "<!-- crossdomain-audio:start -->", "<!-- crossdomain-audio:end -->"   # audio base


@dataclass(frozen=True)
class CrossDomainScale:
    """How much of each domain the protocol uses (``FULL`` for the report, ``QUICK`` for the test)."""
    fsdd: tuple[int, int, int]            # enroll, query, folder clips per FSDD speaker
    synth: tuple[int, int, int, int]      # voices in the protocol, voices in the folder, enroll, query clips per voice
    degraded: tuple[int, int, int, int]   # protocol speakers, folder speakers, enroll, query clips per speaker
    strangers: tuple[int, int, int]       # strangers per fold: fsdd, synth, degraded
    max_folds: int


FULL = CrossDomainScale(fsdd=(10, 40, 20), synth=(20, 20, 10, 20), degraded=(40, 10, 5, 10), strangers=(2, 5, 10),
                        max_folds=15)
QUICK = CrossDomainScale(fsdd=(5, 3, 3), synth=(8, 3, 5, 3), degraded=(8, 2, 4, 3), strangers=(2, 2, 2), max_folds=2)


def _load_bt():
    import importlib.util
    if "backend_transfer" not in sys.modules:
        spec = importlib.util.spec_from_file_location("backend_transfer", ROOT / "benchmarks" / "backend_transfer.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod                 # dataclasses look their module up while being built
        spec.loader.exec_module(mod)
    return sys.modules["backend_transfer"]


def cross_domain(ckpt: Path, split: Split, work: Path, scale: CrossDomainScale, *, seed: int = 0) -> dict:
    """Enroll / identify / verify on FSDD, synthetic voices and degraded held-out speakers with each back-end piece
    switched on in turn (``backend_transfer.REGISTRY_SETTINGS``, the registry's own code). Also writes the degraded
    clips' features to ``work/degraded`` (HW4) for the fine-tuning comparison."""
    import dataclasses
    from spkid.scoring.backend import checkpoint_extras
    from spkid.scoring.model import load
    bt = _load_bt()
    model = load(ckpt, "cpu")
    cohort, _ = checkpoint_extras(ckpt)
    thr = 0.5 if model.val_eer_threshold is None else float(model.val_eer_threshold)
    n_prot, n_fold = scale.degraded[:2]
    sub = dataclasses.replace(split, enrolled=split.enrolled[:n_prot], impostors=split.impostors[:n_fold])
    t0 = time.perf_counter()
    emb = bt.embed_cross_domain(model, work, split=sub, fsdd_clips=sum(scale.fsdd),
                                synth_speakers=scale.synth[0], synth_clips=sum(scale.synth[2:]),
                                synth_folder=scale.synth[1], degraded_clips=sum(scale.degraded[2:]), seed=seed)
    embed_s = time.perf_counter() - t0
    settings = [st for st in bt.REGISTRY_SETTINGS if st.cohort != "checkpoint" or cohort is not None]
    data = {d: (*emb[d], k) for d, k in zip(("fsdd", "synth", "degraded"), scale.strangers)}
    enroll = {"fsdd": scale.fsdd[0], "synth": scale.synth[2], "degraded": scale.degraded[2]}
    test = {"fsdd": scale.fsdd[1], "synth": scale.synth[3], "degraded": scale.degraded[3]}
    report = bt.run_registry(data, cohort, thr, n_enroll=enroll, n_test=test, max_folds=scale.max_folds, seed=seed,
                             settings=settings)
    return {"checkpoint": str(ckpt), "base_source": model.cfg.data.source,
            "checkpoint_threshold": thr, "checkpoint_cohort": cohort is not None,
            "embed_seconds": embed_s, "domains": report, "targets": bt.targets(report),
            "finetune_data": str(work / "degraded")}


def finetune_comparison(ckpt: Path, data: Path, work: Path, *, ft_minutes: float, scratch_minutes: float,
                        threads: int, seed: int, preset: str, ft_steps: int = 0, scratch_steps: int = 0,
                        side_by_side: bool = False) -> dict:
    """Fine-tune ``ckpt`` on the new speakers of ``data`` for ``ft_minutes`` vs train on them from scratch for
    ``scratch_minutes`` (``*_steps`` instead, for the quick mode); validation accuracy / EER on their held-out
    utterances (``data.val_per_speaker`` per speaker). ``side_by_side``: both runs at once (``threads`` each),
    so neither has the machine to itself while the other runs."""
    from spkid.training.checkpoint import load_checkpoint
    out, runs = {}, []
    for name, init, minutes, steps in (("fine-tune", ckpt, ft_minutes, ft_steps),
                                       ("from scratch", None, scratch_minutes, scratch_steps)):
        run = work / ("ft" if init else "scratch")
        proc = start_training(data, run, minutes=minutes, threads=threads, seed=seed, steps=steps, preset=preset,
                              init=init)
        if not side_by_side and proc.wait() != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args)
        runs.append((name, minutes, steps, run, proc))
    for name, minutes, steps, run, proc in runs:
        if proc.wait() != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args)
        last = run / "last.ckpt"
        ck = load_checkpoint(last)
        out[name] = {"minutes": minutes if not steps else None, "steps": ck["step"], "elapsed_s": ck["elapsed"],
                     "val_acc": ck.get("val_acc"), "val_eer": ck.get("val_eer"),
                     "speakers": len(ck["speakers"]), "checkpoint": str(last)}
    return out


def render_cross_domain(r: dict) -> str:
    bt = _load_bt()
    source = r.get("base_source", "features")
    title = "" if source == "features" else ", base model trained on audio"
    lines = [f"## Across domains: enroll, identify, reject strangers (issue 16){title}", "",
             f"`benchmarks/openset.py --cross-domain`: the model `{Path(r['checkpoint']).parent.name}` (trained on "
             f"speechocean762 speakers only, from their {'HW4 feature tensors' if source == 'features' else 'audio'}) "
             "enrolls and identifies speakers of other domains through the registry's "
             "own code (`spkid.scoring.backend`), each back-end piece switched on in turn. \"identified\": the right "
             "speaker and accepted; \"strangers rejected\": never-enrolled speakers answered unknown, at the "
             "threshold `spkid enroll` stores (estimated from the enrollment clips; the first row: the checkpoint's "
             f"validation EER threshold {r['checkpoint_threshold']:.4f}). \"any threshold\": the most both rates "
             "reach at once at the best threshold of each fold, known only afterwards — the ceiling of any "
             "threshold rule on these scores. EER / minDCF (p_target 0.01): every query "
             "against every enrolled speaker; Cllr: with the calibration the registry fits on its enrollment trials. "
             "Mean over folds.", "", bt.render_registry(r["domains"]), "**Targets**", ""]
    lines += [f"- {t}" for t in r["targets"]]
    ft = r.get("finetune")
    if ft:
        lines += ["", f"**Fine-tuning vs. training from scratch** on the degraded held-out speakers "
                  f"({ft['fine-tune']['speakers']} speakers; validation: 2 held-out clips each; "
                  f"{'side by side' if r.get('side_by_side') else 'one after the other'}):", "",
                  "| run | budget | steps | validation accuracy | validation EER |", "|---|---|---|---|---|"]
        for name, v in ft.items():
            budget = f"{v['minutes']:g} min" if v["minutes"] else f"{v['steps']} steps"
            acc = "-" if v["val_acc"] is None else f"{100 * v['val_acc']:.1f}%"
            e = "-" if v["val_eer"] is None else f"{100 * v['val_eer']:.1f}%"
            lines.append(f"| {name} | {budget} | {v['steps']} | {acc} | {e} |")
        a, b = ft["fine-tune"]["val_acc"], ft["from scratch"]["val_acc"]
        if a is not None and b is not None:
            lines += ["", f"- Fine-tuning beats training from scratch: {'met' if a > b else 'not met'} "
                          f"({100 * a:.1f}% vs {100 * b:.1f}%)."]
    return "\n".join(lines) + "\n"


def write_marked(path: Path, text: str, start: str, end: str, title: str = "# Results\n") -> None:
    """Replace the text between ``start`` and ``end`` in ``path`` (append the block if absent)."""
    old = path.read_text() if path.exists() else title
    block = f"{start}\n{text}{end}"
    if start in old and end in old and old.index(start) < old.index(end):
        new = old[: old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="speaker split, enrollment choice and training seed")
    ap.add_argument("--work", default=str(ROOT / "runs" / "openset"), help="views, run, registry, result.json")
    ap.add_argument("--checkpoint", help="evaluate this checkpoint (trained on the same --seed split); no training")
    ap.add_argument("--write", help="markdown file whose openset section (between markers) gets the report")
    ap.add_argument("--data", default=str(DATA), help="HW4 directory with answers.csv (default: shared speechocean762)")
    ap.add_argument("--heldout", type=int, default=50, help="speakers held out of training (default 50)")
    ap.add_argument("--impostors", type=int, default=10, help="held-out speakers never enrolled (default 10)")
    ap.add_argument("--enroll", type=int, default=10, help="utterances enrolled per speaker (default 10)")
    ap.add_argument("--steps", type=int, default=0, help="train this many steps instead of --minutes (smoke tests)")
    ap.add_argument("--config", default="default", help="training preset (default: the default recipe)")
    ap.add_argument("--device", default="cpu", help="device for verification/identification (speed is always CPU)")
    ap.add_argument("--speed-seconds", type=float, default=3.0, help="time each embedding-speed mode at least this long")
    ap.add_argument("--cross-domain", action="store_true",
                    help="the cross-domain protocol (issue 16): FSDD, synthetic voices, degraded held-out speakers; "
                         "each back-end piece in turn; fine-tuning vs training from scratch on the new speakers")
    ap.add_argument("--quick", action="store_true", help="--cross-domain on a few clips and steps (the test)")
    ap.add_argument("--ft-minutes", type=float, default=3.0, help="--cross-domain: fine-tuning budget (default 3)")
    ap.add_argument("--scratch-minutes", type=float, default=10.0,
                    help="--cross-domain: from-scratch budget on the new speakers (default 10)")
    ap.add_argument("--no-finetune", action="store_true",
                    help="--cross-domain: skip the two training runs (those measured earlier on the same checkpoint "
                         "in WORK/crossdomain.json are kept in the report)")
    ap.add_argument("--finetune-only", action="store_true",
                    help="--cross-domain with --checkpoint: only the two training runs, added to WORK/crossdomain.json")
    ap.add_argument("--side-by-side", action="store_true",
                    help="--cross-domain: run fine-tuning and training from scratch at once, --threads each")
    a = ap.parse_args(argv)
    data = Path(a.data)
    if not (data / "metadata.json").is_file():
        print(f"skipped: {data} not found (needs ../shared beside the checkout)")
        return 0
    import torch
    from spkid.data.hw4 import read_mapping
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    split = split_speakers(read_mapping(data), n_heldout=a.heldout, n_impostors=a.impostors, seed=a.seed)
    view_train, view_held = make_views(data, work, split)
    (work / "split.json").write_text(json.dumps(asdict(split), indent=1))
    if a.checkpoint:
        ckpt = Path(a.checkpoint)
        from spkid.training.checkpoint import load_checkpoint
        trained_on = set(load_checkpoint(ckpt)["speakers"])
        if trained_on != set(split.train):
            print(f"error: {ckpt} was not trained on the --seed {a.seed} split of {data}", file=sys.stderr)
            return 1
    else:
        from spkid.config import load_config
        source = view_train if load_config(a.config).data.source == "features" else audio_list(split.train, work)
        ckpt = train_model(source, work / "run", minutes=a.minutes, threads=a.threads, seed=a.seed,
                           steps=a.steps, preset=a.config)
    if a.cross_domain:
        return _cross_domain_main(a, ckpt, split, work)
    result = evaluate(ckpt, view_train, view_held, split, work, n_enroll=a.enroll, seed=a.seed, device=a.device,
                      speed_seconds=a.speed_seconds)
    result["data"] = data.name
    (work / "result.json").write_text(json.dumps(result, indent=1))
    text = render(result)
    print(text)
    if a.write:
        write_section(Path(a.write), text)
        print(f"wrote the openset section of {a.write}")
    return 0


def _saved_report(saved: Path, ckpt: Path) -> dict | None:
    """The report in ``saved`` (``WORK/crossdomain.json``) if it is of ``ckpt``, else None (also when unreadable)."""
    try:
        r = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    return r if Path(r.get("checkpoint", "")).resolve() == ckpt.resolve() else None


def _saved_finetune(saved: Path, ckpt: Path):
    """``(finetune results, side_by_side)`` of an earlier run on the same checkpoint in ``saved``, else None."""
    r = _saved_report(saved, ckpt)
    return None if r is None or "finetune" not in r else (r["finetune"], r.get("side_by_side", False))


def _cross_domain_main(a, ckpt: Path, split: Split, work: Path) -> int:
    from spkid.training.checkpoint import checkpoint_config, load_checkpoint
    if not (DATA.parent / "fsdd").is_dir() or not (DATA.parent / "speechocean762-opus").is_dir():
        print(f"skipped: {DATA.parent}/fsdd or speechocean762-opus not found")
        return 0
    base = checkpoint_config(load_checkpoint(ckpt), ckpt)               # the base run's recipe and input
    audio = base.data.source == "audio"
    if a.finetune_only:
        r = _saved_report(work / "crossdomain.json", ckpt)
        if r is None:
            print(f"error: --finetune-only needs {work / 'crossdomain.json'} from an evaluation of {ckpt} "
                  "(run without it first)", file=sys.stderr)
            return 1
        r.setdefault("base_source", base.data.source)
    else:
        r = cross_domain(ckpt, split, work, QUICK if a.quick else FULL, seed=a.seed)
        saved = _saved_finetune(work / "crossdomain.json", ckpt) if a.no_finetune else None
        if saved:                                      # re-evaluating the back end keeps the measured training runs
            r["finetune"], r["side_by_side"] = saved
    if not a.no_finetune:
        from spkid.config import presets
        preset = base.name if base.name in presets() else None
        steps = (6, 12) if a.quick else (0, 0)
        data = Path(r["finetune_data"] + ("-audio" if audio else ""))    # the new speakers as the base model's input
        r["finetune"] = finetune_comparison(ckpt, data, work, ft_minutes=a.ft_minutes,
                                            scratch_minutes=a.scratch_minutes, threads=a.threads, seed=a.seed,
                                            preset=preset, ft_steps=steps[0], scratch_steps=steps[1],
                                            side_by_side=a.side_by_side)
        r["side_by_side"] = a.side_by_side
    r["quick"] = a.quick
    (work / "crossdomain.json").write_text(json.dumps(r, indent=1))
    text = render_cross_domain(r)
    print(text)
    if a.write:
        start, end = (XD_AUDIO_START, XD_AUDIO_END) if audio else (XD_START, XD_END)
        write_marked(Path(a.write), text, start, end, "# Open set across domains\n")
        print(f"wrote the cross-domain section of {a.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
