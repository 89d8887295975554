"""Where the diarization error lies: the count given against the count found, and where the count goes wrong.

Each conversation of the benchmark's test set (``--full``: the full set; ``--speaker-levels``: each speaker at a
level of their own, as in ``benchmarks/diarization.py``, ``--levels-seed`` another draw of them) is analysed once
(speech, window embeddings, overlap probabilities; cached in ``--work``), then clustered with the current defaults
(or the ``--merge-raw`` / ``--resplit`` given), boundaries unrefined (0.1-0.35 points of DER above the full
pipeline), three ways: the count found, the count given (``n_speakers``) and the count given within ±1
(``min_speakers``/``max_speakers``). Prints DER (±0.25 s collar, overlap scored) and the share of conversations
whose count is wrong for each, then how many conversations each step made wrong (``decide(..., stages=)``: the
number of speakers after each clustering step; a count too low is put down to the last step that took it below
the truth). ``--monologues``: one 90-second monologue per voice of each source instead, and how many come out as one
speaker. ``--name-margins M ...``: also the speech named right and wrong (``diarization.named_shares``) with
every speaker enrolled and with every other one (the benchmark's registries, enrolled into ``--work``), at each
naming margin (``diarize --name-margin``); ``--dev`` runs on the development conversations of synthetic voices
instead (``diarization_calibrate.dev_sets``: voices no test set holds; the only development voices that can be
enrolled apart from their conversations).

    python benchmarks/diarization_stages.py --checkpoint spkid/pretrained/base.ckpt [--full] [--monologues]
    python benchmarks/diarization_stages.py --checkpoint spkid/pretrained/base.ckpt --dev --name-margins 1 0.5
    python benchmarks/diarization_stages.py --checkpoint spkid/pretrained/base.ckpt --name-margins 1 \
        --telephone-margin 0.5
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diarization import (CONDITIONS, SHARED, add_level_options, check_level_options,  # noqa: E402
                         conversation_plans, count_errors, enroll_corpus, named_shares, pools, write_condition)

from spkid.diarization.evaluate import score_diarization  # noqa: E402
from spkid.diarization.names import Enrolled  # noqa: E402
from spkid.diarization.pipeline import DiarizeConfig, analyse, decide  # noqa: E402
from spkid.diarization.rttm import Segment  # noqa: E402
from spkid.diarization.stream import AudioStream  # noqa: E402
from spkid.errors import ConfigError  # noqa: E402

MONOLOGUE_S = 90.0
STEPS = {"merge": "too few: the centred merge", "resplit": None, "raw_merge": "too few: the raw merge",
         "same_speaker": "too few: the same-speaker merge", "hmm": "too few: the HMM"}     # in pipeline order
CAUSES = ("right", "too many at the end", "too few: the eigengap (or AHC's cut) already",
          *(c for c in STEPS.values() if c))


def plans_of(a) -> list:
    """The benchmark's test conversations (``diarization.conversation_plans``), or a monologue per voice of each
    source."""
    if a.dev:
        from diarization_calibrate import dev_sets
        return [p for p in dev_sets(a.seed)["conversations"] if p[0].startswith("synth-dev")]
    if a.monologues:
        return [(f"{c}-mono{i:02d}", {s: pool[s]}, MONOLOGUE_S, 0.0)
                for c in ("libri", "fsdd", "synth") for pool in [pools(c, seed=a.seed)[0]]
                for i, s in enumerate(sorted(pool))]
    return conversation_plans(a.full, a.seed)


def analyses(a, cond: str, embedder) -> list:
    """``[(manifest row, Analysis)]`` of every planned file under ``cond``, from the cache when there."""
    tag = ("dev-synth" if a.dev else "mono" if a.monologues else "full" if a.full else "default") + f"-seed{a.seed}" + \
        (f"-levels{a.speaker_levels:g}-{a.levels_seed}" if a.speaker_levels else "")
    cache = Path(a.work) / f"{tag}-{cond}-{Path(a.checkpoint).stem}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    seed = a.seed + 7 if a.monologues else a.seed + 100 if a.dev else a.seed    # dev: calibrate-merges' audio
    rows = write_condition(plans_of(a), cond, Path(a.work) / f"{tag}-{cond}", seed, a.speaker_levels, a.levels_seed)
    out = []
    for r in rows:
        with AudioStream(r["file"]) as s:
            out.append((r, analyse(s, embedder, DiarizeConfig())))
    cache.write_bytes(pickle.dumps(out))
    return out


def summarise(data: list, cfg: DiarizeConfig) -> tuple[list[str], dict[str, int], dict[str, list[int]]]:
    """``data`` ``[(manifest row, Analysis)]`` clustered the three ways: the table's cells (DER / count wrong for
    the count found, given, given ±1), how many conversations fall under each of ``CAUSES``, and per source (the
    name's prefix) ``[files found as one speaker, files]``."""
    cells, why, one = [], dict.fromkeys(CAUSES, 0), {}
    for mode in ("found", "given", "given ±1"):
        hyp, ref = [], []
        for r, an in data:
            k = len(r["speakers"])
            kw = {} if mode == "found" else {"n_speakers": k} if mode == "given" else \
                {"min_speakers": max(1, k - 1), "max_speakers": k + 1}
            stages: dict[str, int] = {}
            d = decide(an, None, None, cfg, stages=stages, **kw)
            if mode == "found":
                why[cause(k, stages, len(d.labels))] += 1
                n = one.setdefault(r["name"].split("-")[0], [0, 0])
                n[0] += len(d.labels) == 1
                n[1] += 1
            hyp += [Segment(r["name"], s.start, s.end, s.speaker, s.score) for s in d.segments]
            ref += [Segment(**s) for s in r["reference"]]
        der = score_diarization(ref, hyp)[-1].der_collar
        cells.append(f"{100 * der:.2f} % / {100 * count_errors([r for r, _ in data], hyp)[0]:.0f} %")
    return cells, why, one


def corpus_of(name: str) -> str:
    """The source of a conversation from its name (``libri-03``, ``libri-hour-00``, ``synth-dev-02``)."""
    return "synth-dev" if name.startswith("synth-dev") else name.split("-")[0]


def naming(a, data: list, cfg: DiarizeConfig, margins: list[float], model_id: str,
           telephone: float | None = None) -> list[str]:
    """Cells ``right / wrong %`` with every speaker enrolled, then with every other one, at each of ``margins``
    (``Enrolled(margin_llr=)``; against the telephone copies the same margin, or ``telephone``), over ``data``
    ``[(manifest row, Analysis)]`` clustered with ``cfg`` (the name split included) and named as ``spkid diarize
    --registry`` names them."""
    regs = {}
    for corpus in sorted({corpus_of(r["name"]) for r, _ in data}):
        for half in (False, True):
            p = Path(a.work) / f"registry-{corpus}-{Path(a.checkpoint).stem}{'-half' if half else ''}.db"
            regs[corpus, half] = p if p.exists() else enroll_corpus(corpus, a.checkpoint, Path(a.work), half)
    cells = []
    for m in margins:
        for half in (False, True):
            tel = m if telephone is None else telephone
            enrolled = {c: Enrolled(regs[c, h], model_id, margin_llr=m, margin_llr_telephone=tel)
                        for c, h in regs if h == half}
            ref, hyp = [], []
            for r, an in data:
                en = enrolled[corpus_of(r["name"])]
                d = decide(an, None, None, cfg, enrolled=en)
                names = [c.name or lab for c, lab in zip(en.name(d.cluster_emb, narrowband=an.narrowband), d.labels)]
                hyp += [Segment(r["name"], s.start, s.end, names[d.labels.index(s.speaker)], s.score)
                        for s in d.segments]
                ref += [Segment(**s) for s in r["reference"]]
            right, wrong = named_shares(ref, hyp)
            cells.append(f"{100 * right:.1f} / {100 * wrong:.1f} %")
    return cells


def cause(k: int, stages: dict[str, int], final: int) -> str:
    """Which of ``CAUSES``: the count ``final`` against the true ``k``, the counts after each step ``stages``; a
    count too low is blamed on the last step that took it below ``k``."""
    if final == k:
        return CAUSES[0]
    if final > k:
        return CAUSES[1]
    prev = stages.get("spectral", stages.get("ahc", k))       # the first clustering's count
    blame = CAUSES[2] if prev < k else None
    for step, name in STEPS.items():
        if step in stages:
            if stages[step] < k <= prev:
                blame = name
            prev = stages[step]
    return blame or CAUSES[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="spkid checkpoint (the benchmark's 'spkid base')")
    ap.add_argument("--full", action="store_true", help="the full test set (37 conversations per condition)")
    ap.add_argument("--monologues", action="store_true", help="one 90 s monologue per voice instead")
    ap.add_argument("--dev", action="store_true", help="the development conversations of synthetic voices instead")
    add_level_options(ap)
    ap.add_argument("--merge-raw", type=float, help="DiarizeConfig.merge_raw (default: diarize's; a model's own from "
                    "benchmarks/diarization.py --calibrate-merges)")
    ap.add_argument("--resplit", type=float, help="DiarizeConfig.resplit (default: diarize's)")
    ap.add_argument("--work", default="/tmp/spkid-diarization-stages", help="folder for audio and cached analyses")
    ap.add_argument("--name-margins", type=float, nargs="+", metavar="LLR",
                    help="also the speech named right / wrong at each naming margin (diarize --name-margin; the same "
                         "against the telephone copies unless --telephone-margin)")
    ap.add_argument("--telephone-margin", type=float, metavar="LLR",
                    help="with --name-margins: this margin against the telephone copies in every row "
                         "(diarize --name-margin-telephone)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    check_level_options(ap, a, (a.monologues and "--monologues") or (a.dev and "--dev"))
    if a.dev and a.full:
        ap.error("--dev: the development conversations, not the test set (not with --full)")
    if a.telephone_margin is not None and not a.name_margins:
        ap.error("--telephone-margin goes with --name-margins")
    if a.monologues and (a.dev or a.name_margins):
        ap.error("--monologues: one voice each, nothing to name apart (not with --dev or --name-margins)")
    try:
        cfg = DiarizeConfig(refine=False, **{k: v for k, v in (("merge_raw", a.merge_raw), ("resplit", a.resplit))
                                             if v is not None})
    except ConfigError as e:
        ap.error(str(e))
    if not (SHARED / "librispeech-sample").is_dir():
        print(f"needs {SHARED} (librispeech-sample, fsdd)", file=sys.stderr)
        return 2
    Path(a.work).mkdir(parents=True, exist_ok=True)
    from spkid.diarization.batch import load_embedder
    embedder = load_embedder(a.checkpoint, device="cpu")
    lines = ["| condition | count found: DER / count wrong | count given | count given ±1 | " +
             " | ".join(CAUSES) + " |", "|---" * (4 + len(CAUSES)) + "|"]
    for cond in CONDITIONS:
        cells, why, one = summarise(analyses(a, cond, embedder), cfg)
        lines.append(f"| {cond} | " + " | ".join(cells) + " | " + " | ".join(str(why[c]) for c in CAUSES) + " |")
        if a.monologues:
            print(f"[{cond}] one speaker found: " + ", ".join(f"{c} {n} of {t}" for c, (n, t) in one.items()),
                  file=sys.stderr)
    print("\n".join(lines))
    if a.name_margins:
        print("\n| condition | " + " | ".join(f"margin {m:g}: all enrolled, right / wrong | every other enrolled"
                                             for m in a.name_margins) + " |\n" + "|---" * (1 + 2 * len(a.name_margins))
              + "|")
        for cond in CONDITIONS:
            cells = naming(a, analyses(a, cond, embedder), cfg, a.name_margins, embedder.model_id, a.telephone_margin)
            print(f"| {cond} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
