"""The shipped model `base` against Resemblyzer, side by side on the same clips: one table (docs/model_card.md).

Sections, every number for each embedder on the same audio:

- **channel**: the speechocean762 public test identified among its 250 speakers, each enrolled as the mean
  embedding of its clean training clips (``--enroll-clips`` per speaker); clean, then every degradation of
  ``benchmarks/degrade.py`` (``--limit`` test clips each). `base` trained on these speakers' training audio; the
  test clips and the degradations are new to it.
- **unseen**: EER on speakers no model here trained on: librispeech-sample/test-other (10 speakers), FSDD (6
  speakers, 8 kHz digits), synthetic voices (``spkid.audio.synth``), and test-other through room + noise and
  through a telephone channel (the cross-domain conditions of ``benchmarks/openset.py``, on unseen speakers).
- **registry**: spkid's own open-set path (``spkid enroll`` / ``spkid identify``, the registry's estimated
  threshold) on FSDD and test-other: half the speakers enrolled, the rest strangers: identified and rejected.
- **speed**: embedding throughput from decoded 16-kHz audio (speech detection included for both) and load time.

    python benchmarks/pretrained.py                     # base vs Resemblyzer (needs pip install resemblyzer)
    python benchmarks/pretrained.py --model runs/x.ckpt --quick --no-resemblyzer
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from degrade import CONDITIONS, degrade  # noqa: E402

SR = 16000


# -- embedders: paths of audio files -> (N, E) L2-normalised -------------------------------------------------------

class SpkidEmbedder:
    """A spkid model through its user path (``spkid.load(spec).embed(paths)``: decoding, Silero VAD, log-mel)."""

    def __init__(self, spec: str):
        import spkid
        t0 = time.perf_counter()
        self.model = spkid.load(spec, "cpu")
        self.load_s = time.perf_counter() - t0
        self.name = f"spkid {spec}"

    def embed(self, paths: list[Path]) -> np.ndarray:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")             # quiet clips fall back to the whole signal
            return self.model.embed([Path(p) for p in paths]).numpy()

    def embed_waves(self, waves: list[np.ndarray]) -> np.ndarray:
        """From decoded 16-kHz audio, speech detection included (for the speed comparison)."""
        from spkid.audio.vad import keep_speech
        feats = []
        for w in waves:
            speech, seconds = keep_speech(torch.from_numpy(w))
            feats.append(self.model.features([speech if seconds >= 0.25 else torch.from_numpy(w)])[0])
        return torch.nn.functional.normalize(self.model.embed_raw(feats), dim=-1).numpy()


class ResemblyzerEmbedder:
    """Resemblyzer's own path: ``preprocess_wav`` (its normalisation and webrtcvad trimming), ``embed_utterance``."""

    def __init__(self):
        from resemblyzer import VoiceEncoder
        t0 = time.perf_counter()
        self.enc = VoiceEncoder("cpu", verbose=False)
        self.load_s = time.perf_counter() - t0
        self.name = "Resemblyzer"

    def _one(self, w: np.ndarray) -> np.ndarray:
        from resemblyzer import preprocess_wav
        p = preprocess_wav(w.astype(np.float32), source_sr=SR)
        return self.enc.embed_utterance(p if len(p) >= 1600 else w.astype(np.float32))

    def embed(self, paths: list[Path]) -> np.ndarray:
        from spkid.audio.io import load_audio
        return np.stack([self._one(load_audio(p, SR).numpy()) for p in paths])

    def embed_waves(self, waves: list[np.ndarray]) -> np.ndarray:
        return np.stack([self._one(w) for w in waves])


# -- data -----------------------------------------------------------------------------------------------------------

def speaker_files(root: Path, per_speaker: int, seed: int) -> tuple[list[Path], list[str]]:
    """Up to ``per_speaker`` files of each speaker folder of ``root`` (seeded pick): ``(paths, speakers)``."""
    from spkid.data.scan import scan
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(scan(d))
        pick = sorted(rng.permutation(len(files))[:per_speaker]) if per_speaker else range(len(files))
        paths += [files[i] for i in pick]
        labels += [d.name] * len(pick)
    return paths, labels


def synth_voices(work: Path, n_speakers: int, per_speaker: int) -> tuple[list[Path], list[str]]:
    from spkid.audio.synth import synth_corpus
    c = synth_corpus(work / "synth", n_speakers=n_speakers, n_train=per_speaker, n_test=0, seed=77,
                     seconds=(2.0, 4.0))
    return speaker_files(c.train_dir, 0, 0)


def degraded_copies(paths: list[Path], labels: list[str], condition: str, work: Path, seed: int) -> list[Path]:
    """``condition`` of ``benchmarks/degrade.py`` applied to each file (babble from other speakers' clips)."""
    from spkid.audio.io import load_audio
    folder = work / "degraded" / condition
    out = [folder / f"{k:05d}.wav" for k in range(len(paths))]
    if (folder / ".done").exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    waves = [load_audio(p, SR).numpy() for p in paths]
    for k, (w, o) in enumerate(zip(waves, out)):
        rng = np.random.default_rng([seed, k, len(condition)])
        others = [waves[j] for j in rng.permutation(len(waves))[:8] if labels[j] != labels[k]][:3]
        sf.write(o, np.clip(degrade(w, condition, rng, babble=others).numpy(), -1, 1), SR, subtype="FLOAT")
    (folder / ".done").touch()
    return out


# -- measurements -----------------------------------------------------------------------------------------------------

def eer_of(emb: np.ndarray, labels: list[str]) -> float:
    from spkid.scoring.metrics import eer, make_trials, score_trials
    i, j, target = make_trials(labels, max_nontarget=200_000, seed=0)
    return eer(score_trials(emb, i, j), target)[0]


def channel(embedders, work: Path, *, limit: int, enroll_clips: int, conditions: list[str], seed: int) -> dict:
    """Closed-set identification of the public test by enrollment from clean training audio, per condition.
    (spkid only by default: Resemblyzer embeds at a tenth of the speed, and the targets here are absolute.)"""
    from robustness import write_conditions
    train_paths, train_spk = speaker_files(SHARED / "speechocean762-opus" / "train", enroll_clips, seed)
    sets, answers = write_conditions(work / "channel", conditions, limit, seed)
    out = {}
    for e in embedders:
        t0 = time.perf_counter()
        emb = e.embed(train_paths)
        speakers = sorted(set(train_spk))
        idx = {s: k for k, s in enumerate(speakers)}
        cent = np.zeros((len(speakers), emb.shape[1]))
        np.add.at(cent, [idx[s] for s in train_spk], emb)
        cent /= np.linalg.norm(cent, axis=1, keepdims=True)
        acc = {}
        for cond, paths in sets.items():
            q = e.embed(paths)
            pred = [speakers[k] for k in (q @ cent.T).argmax(1)]
            acc[cond] = float(np.mean([p == answers[f.stem + ".opus"] for p, f in zip(pred, paths)]))
        out[e.name] = acc
        print(f"  channel {e.name}: clean {acc.get('clean', float('nan')):.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return out


def unseen(embedders, work: Path, *, quick: bool, seed: int) -> dict:
    """EER on unseen speakers, clean and through the cross-domain conditions."""
    libri = speaker_files(SHARED / "librispeech-sample" / "test-other", 0, seed)
    fsdd = speaker_files(SHARED / "fsdd", 15 if quick else 50, seed)
    synth = synth_voices(work, 10 if quick else 20, 5 if quick else 10)
    sets = {"librispeech test-other": libri, "FSDD (8 kHz digits)": fsdd, "synthetic voices": synth}
    for cond, label in (("room-babble-telephone", "test-other, room + babble + telephone"),
                        ("pink-5", "test-other, pink noise 5 dB"), ("room-sim", "test-other, simulated room"),
                        ("telephone", "test-other, telephone")):
        sets[label] = (degraded_copies(libri[0], libri[1], cond, work, seed), libri[1])
    out = {}
    for e in embedders:
        out[e.name] = {}
        for name, (paths, labels) in sets.items():
            out[e.name][name] = eer_of(e.embed(paths), labels)
            print(f"  unseen {e.name:22s} {name:40s} EER {100 * out[e.name][name]:.2f} %", flush=True)
    return out


def registry(spec: str, work: Path, *, quick: bool, seed: int) -> dict:
    """spkid's registry: half the speakers enrolled (``enroll_n`` clips each), the other half strangers; every other
    clip a query. Identified = accepted with the right name; rejected = a stranger answered "unknown"."""
    import warnings
    from spkid.scoring.openset import enroll, identify
    out = {}
    # enough enrollment clips for the registry to estimate its own threshold (20 clips; fewer: the checkpoint's)
    for name, root, enroll_n, per in (("FSDD", SHARED / "fsdd", 10, 10 if quick else 30),
                                      ("librispeech test-other", SHARED / "librispeech-sample" / "test-other", 4, 0)):
        paths, labels = speaker_files(root, per + enroll_n if per else 0, seed)
        speakers = sorted(set(labels))
        rng = np.random.default_rng(seed)
        enrolled = set(rng.permutation(speakers)[: (len(speakers) + 1) // 2].tolist())
        db = work / f"registry-{name.split()[0]}.db"
        db.unlink(missing_ok=True)
        queries, truth = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s in speakers:
                mine = [p for p, lab in zip(paths, labels) if lab == s]
                if s in enrolled:
                    enroll(db, s, mine[:enroll_n], checkpoint=spec, device="cpu")
                    mine = mine[enroll_n:]
                queries += mine
                truth += [s if s in enrolled else "unknown"] * len(mine)
            rows = [r for r in identify(db, queries, device="cpu") if not r[1].startswith("candidate:")]
        got = [r[1] for r in rows]
        known = [g == t for g, t in zip(got, truth) if t != "unknown"]
        strangers = [g == "unknown" for g, t in zip(got, truth) if t == "unknown"]
        out[name] = {"identified": float(np.mean(known)), "rejected": float(np.mean(strangers)),
                     "enrolled": len(enrolled), "strangers": len(speakers) - len(enrolled), "queries": len(queries)}
        print(f"  registry {name}: identified {out[name]['identified']:.3f}, rejected {out[name]['rejected']:.3f}",
              flush=True)
    return out


def speed(embedders, *, n_clips: int, seed: int) -> dict:
    from spkid.audio.io import load_audio
    paths, _ = speaker_files(SHARED / "librispeech-sample" / "test-other", 0, seed)
    waves = [load_audio(p, SR).numpy() for p in paths[:n_clips]]
    seconds = sum(len(w) for w in waves) / SR
    out = {}
    for e in embedders:
        e.embed_waves(waves[:2])                                   # warm-up
        t0 = time.perf_counter()
        e.embed_waves(waves)
        wall = time.perf_counter() - t0
        out[e.name] = {"x_realtime": seconds / wall, "load_s": e.load_s}
        print(f"  speed {e.name}: {seconds / wall:.0f}x real time, loaded in {e.load_s:.2f} s", flush=True)
    return out


def trend(snapshots: list[Path], work: Path, *, seed: int) -> list[dict]:
    """The run's own checkpoints, step by step: librispeech test-other and FSDD EER, and the public test (100
    clips, clean and telephone) identified among the 250 enrolled speakers (3 clean clips each)."""
    from robustness import write_conditions
    libri = speaker_files(SHARED / "librispeech-sample" / "test-other", 0, seed)
    fsdd = speaker_files(SHARED / "fsdd", 20, seed)
    train_paths, train_spk = speaker_files(SHARED / "speechocean762-opus" / "train", 3, seed)
    sets, answers = write_conditions(work / "channel-trend", ["clean", "telephone"], 100, seed)
    rows = []
    for snap in snapshots:
        e = SpkidEmbedder(str(snap))
        speakers = sorted(set(train_spk))
        emb = e.embed(train_paths)
        cent = np.zeros((len(speakers), emb.shape[1]))
        np.add.at(cent, [speakers.index(s) for s in train_spk], emb)
        cent /= np.linalg.norm(cent, axis=1, keepdims=True)
        row = {"step": int(torch.load(snap, map_location="cpu", weights_only=True).get("step", 0)),
               "libri_eer": eer_of(e.embed(libri[0]), libri[1]), "fsdd_eer": eer_of(e.embed(fsdd[0]), fsdd[1])}
        for cond, paths in sets.items():
            pred = [speakers[k] for k in (e.embed(paths) @ cent.T).argmax(1)]
            row[cond] = float(np.mean([p == answers[f.stem + ".opus"] for p, f in zip(pred, paths)]))
        rows.append(row)
        print(f"  trend step {row['step']}: {row}", flush=True)
    return rows


def render_trend(rows: list[dict]) -> str:
    lines = ["| step | public test clean | public test telephone | test-other EER % | FSDD EER % |",
             "|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["step"]):
        lines.append(f"| {r['step']:,} | {r['clean']:.3f} | {r['telephone']:.3f} | {100 * r['libri_eer']:.2f} | "
                     f"{100 * r['fsdd_eer']:.2f} |")
    return "\n".join(lines)


# -- the table --------------------------------------------------------------------------------------------------------

def render(r: dict) -> str:
    names = list(r["speed"])
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
    ch = r["channel"]
    ch_names = [n for n in names if n in ch]
    lines = ["**Channel robustness** (speechocean762 public test, 250 enrolled speakers; accuracy)", "",
             "| | " + " | ".join(ch_names) + " |\n|---|" + "---|" * len(ch_names)]
    degraded = [c for c in next(iter(ch.values())) if c != "clean"]
    for c in next(iter(ch.values())):
        lines.append(f"| {c} | " + " | ".join(f"{ch[n][c]:.3f}" for n in ch_names) + " |")
    if degraded:
        lines.append(f"| **mean over {len(degraded)} degradations** | " +
                     " | ".join(f"**{np.mean([ch[n][c] for c in degraded]):.3f}**" for n in ch_names) + " |")
        lines.append("| worst degradation | " + " | ".join(
            "{:.3f} ({})".format(*min((ch[n][c], c) for c in degraded)) for n in ch_names) + " |")
        lines.append("| degradations below 0.80 | " + " | ".join(
            str(sum(ch[n][c] < 0.80 for c in degraded)) for n in ch_names) + " |")
    lines += ["", "**Voices never seen** (EER, %)", "", head]
    for s in next(iter(r["unseen"].values())):
        lines.append(f"| {s} | " + " | ".join(f"{100 * r['unseen'][n][s]:.2f}" for n in names) + " |")
    lines += ["", f"**Speed** (one process, {torch.get_num_threads()} torch thread(s), speech detection included)",
              "", head]
    lines.append("| embedding throughput (x real time) | " +
                 " | ".join(f"{r['speed'][n]['x_realtime']:.0f}" for n in names) + " |")
    lines.append("| model load (s) | " + " | ".join(f"{r['speed'][n]['load_s']:.2f}" for n in names) + " |")
    if r.get("registry"):
        lines += ["", f"**spkid registry at its own threshold** ({r['model']})", "",
                  "| corpus | enrolled / strangers | queries | identified | strangers rejected |", "|---|---|---|---|---|"]
        for name, v in r["registry"].items():
            lines.append(f"| {name} | {v['enrolled']} / {v['strangers']} | {v['queries']} | {v['identified']:.3f} | "
                         f"{v['rejected']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", help="spkid model (default: the shipped base)")
    ap.add_argument("--no-resemblyzer", action="store_true")
    ap.add_argument("--resemblyzer-channel", action="store_true", help="also run Resemblyzer on the channel section")
    ap.add_argument("--reuse-resemblyzer", action="store_true",
                    help="take Resemblyzer's unseen-voice EERs from the last run's WORK/resemblyzer.json (same "
                         "settings); its speed is measured again beside spkid's")
    ap.add_argument("--quick", action="store_true", help="fewer clips and conditions (a few minutes)")
    ap.add_argument("--limit", type=int, default=0, help="public-test clips per condition (0: 150; quick: 60)")
    ap.add_argument("--enroll-clips", type=int, default=0, help="training clips per speaker (0: 6; quick: 3)")
    ap.add_argument("--sections", nargs="*", default=["channel", "unseen", "registry", "speed"])
    ap.add_argument("--work", default=str(ROOT / "runs" / "pretrained-bench"))
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--trend", nargs="+", metavar="CKPT", help="only the steps-versus-metric table of these "
                                                                "checkpoints of one run (docs/model_card.md)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs {SHARED}", file=sys.stderr)
        return 1
    from spkid.runtime import use_threads
    print(f"torch threads: {use_threads(0)} (the cores other programs leave free)", flush=True)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.trend:
        rows = trend([Path(p) for p in a.trend], work, seed=a.seed)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        print()
        print(render_trend(rows))
        return 0
    embedders = [SpkidEmbedder(a.model)]
    saved = work / "resemblyzer.json"
    settings = {k: getattr(a, k) for k in ("quick", "limit", "enroll_clips", "seed", "resemblyzer_channel")}
    reuse = None
    if a.reuse_resemblyzer and saved.is_file():
        reuse = json.loads(saved.read_text())
        if reuse.get("settings") != settings:
            print(f"{saved}: other settings ({reuse.get('settings')}); measuring Resemblyzer again", file=sys.stderr)
            reuse = None
    if not a.no_resemblyzer:
        embedders.append(ResemblyzerEmbedder())
    conditions = (["clean", "white-5", "babble-5", "room-sim", "telephone", "crop-1s"] if a.quick else CONDITIONS)
    r = {"model": a.model}
    t0 = time.perf_counter()
    if "channel" in a.sections:
        r["channel"] = channel(embedders if a.resemblyzer_channel else embedders[:1], work, limit=a.limit or (60 if a.quick else 150),
                               enroll_clips=a.enroll_clips or (3 if a.quick else 6), conditions=conditions, seed=a.seed)
    if "unseen" in a.sections:                  # Resemblyzer's EERs do not change: --reuse-resemblyzer takes them
        r["unseen"] = unseen(embedders[:1] if reuse and "unseen" in reuse else embedders, work, quick=a.quick,
                             seed=a.seed)
    if "registry" in a.sections:
        r["registry"] = registry(a.model, work, quick=a.quick, seed=a.seed)
    if "speed" in a.sections:
        r["speed"] = speed(embedders, n_clips=20 if a.quick else 60, seed=a.seed)
    r["wall_s"] = round(time.perf_counter() - t0)
    if reuse is not None:                       # speed is always measured side by side, in this run
        r.setdefault("unseen", {}).update(reuse.get("unseen", {}))
    elif not a.no_resemblyzer:
        saved.write_text(json.dumps({"settings": settings, **{k: {"Resemblyzer": v["Resemblyzer"]} for k, v in r.items()
                                                              if isinstance(v, dict) and "Resemblyzer" in v}}))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    if all(k in r for k in ("channel", "unseen", "speed")):
        print()
        print(render(r))
    print(f"\n({r['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
