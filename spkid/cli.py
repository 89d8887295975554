"""``spkid`` command line: parse, call one library function, print. The only module that prints or exits.

Errors from the library (``SpkidError``) become one line ``spkid: error: <file>: <problem>`` and exit status 1;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from spkid.errors import InputWarning, SpkidError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a speaker classifier on an HW4 directory or on audio")
    p.add_argument("data_dir", nargs="+", metavar="DATA",
                   help="HW4 directory (metadata.json, mapping.json, uttr-*.pt), or audio: a folder of speaker "
                        "sub-folders or a path,speaker CSV/TSV (then --config audio is the default); several audio "
                        "inputs train as one corpus (their speakers kept apart, --weights shares the crops)")
    p.add_argument("--weights", metavar="W1,W2,...", help="several audio inputs: each one's share of the training "
                                                          "crops (data.weights; default: by utterance count)")
    p.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, last/best.ckpt)")
    p.add_argument("--config", help="preset name (default, conformer, hw4-sample, hw4-gpu, tiny, demo: "
                                    "spkid/configs/*.toml) or a .toml/.json file")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; the LR schedule follows it")
    p.add_argument("--steps", type=int, help="number of training steps")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.ckpt")
    p.add_argument("--init", metavar="CKPT", help="fine-tune: start from this trained checkpoint (its model and features; "
                                                  "a new head for DATA's speakers; default budget 3 minutes)")
    p.add_argument("--freeze", type=int, default=0, metavar="N",
                   help="with --init: keep the subsampling and the first N encoder blocks fixed (TDNN: the stem "
                        "counts as the first)")
    p.add_argument("--stop-after", type=int, default=0, metavar="STEP",
                   help="end this invocation after STEP (checkpoint saved); --resume finishes the schedule")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--attention", help="attention variant of a conformer/transformer encoder: full, linformer, "
                                       "local, sparse, adaptive")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.n_layers=4 --set train.lr=3e-4")
    p.add_argument("--cache", help="directory for a memory-mapped float16 feature cache (reused across runs)")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="data-parallel training in N local processes (re-runs this command through torchrun; "
                        "one GPU each with CUDA, else CPU/gloo with cores // N threads each)")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard (train.log_tensorboard)")
    p.add_argument("--noise", metavar="DIR", help="audio training: add noise from these recordings (e.g. MUSAN noise/) "
                                                  "instead of the built-in synthetic noise")
    p.add_argument("--rir", metavar="DIR", help="audio training: reverberate with these impulse responses instead of "
                                                "simulated rooms")
    p.add_argument("--no-vad", action="store_true", help="audio training: keep silence (no speech detection)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="write a Kaggle CSV (Id,Category) for test data or audio files")
    p.add_argument("inputs", nargs="+", metavar="CHECKPOINT... INPUT",
                   help="one or more checkpoints (several = ensemble), then an HW4 directory with testdata.json, "
                        "an audio file or a folder of audio files")
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=int, help="average over windows of this many frames (default: whole utterance)")
    _add_inference_options(p, nproc=True)
    p.add_argument("--quiet", action="store_true")


def _add_inference_options(p, *, nproc: bool) -> None:
    """``--runtime``/``--threads`` (and ``--int8``, ``--nproc``) of embed, predict and identify."""
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="torch (eager PyTorch, any device) or onnx (ONNX Runtime on the CPU; the model is exported "
                        "once and cached beside the checkpoint as CHECKPOINT.onnx)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0 = the cores not busy with other programs)")
    if nproc:              # identify has neither: its registry holds float32 embeddings of one process
        p.add_argument("--int8", action="store_true",
                       help="with --runtime onnx: dynamic int8 quantisation of the MatMul weights "
                            "(same public-test accuracy, docs/scaling.md)")
        p.add_argument("--nproc", type=int, default=0, metavar="N",
                       help="N processes, each a length-balanced shard of the inputs (one GPU each with CUDA); "
                            "a re-run after a crash reuses the finished shards")


def _inference_args(a) -> dict:
    """Check the shared inference options; set torch's threads for an in-process torch run."""
    from spkid.runtime import use_threads
    if a.threads < 0:
        raise SpkidError(f"{a.command} --threads {a.threads}: must be >= 0 (0 = the free cores)")
    if getattr(a, "nproc", 0) < 0:
        raise SpkidError(f"{a.command} --nproc {a.nproc}: must be >= 0")
    if getattr(a, "int8", False) and a.runtime != "onnx":
        raise SpkidError(f"{a.command} --int8: needs --runtime onnx")
    if a.runtime == "torch" and getattr(a, "nproc", 0) <= 1:
        use_threads(a.threads)
    return {"runtime": a.runtime, "threads": a.threads}


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a prediction CSV against an answers CSV")
    p.add_argument("answers")
    p.add_argument("predictions")


FINETUNE_MINUTES = 3.0            # train --init without --max-minutes/--steps/--config: a short schedule


def _finetune_config(a, cfg):
    """``train --init CKPT [--freeze N]``: the checkpoint's model and features (a --config or override asking for
    another model is refused), ``train.init``/``train.freeze`` set, a short budget unless one was given."""
    from spkid.config import apply_overrides
    from spkid.training.finetune import init_config
    if not a.init:
        raise SpkidError(f"train --freeze {a.freeze}: needs --init CHECKPOINT (the trained blocks to keep fixed)")
    if a.resume:
        raise SpkidError("train --resume continues the run's own fine-tuning; drop --init/--freeze")
    if a.freeze < 0:
        raise SpkidError(f"train --freeze {a.freeze}: must be >= 0")
    explicit = bool(a.config or a.attention) or any(
        item.split("=", 1)[0].strip().startswith(("model.", "features.")) for item in a.set)
    cfg = init_config(cfg, a.init, explicit_model=explicit)
    sets = [f"train.freeze={a.freeze}"]
    if a.max_minutes is None and a.steps is None and not a.config:
        sets.append(f"train.max_minutes={FINETUNE_MINUTES}")
    return apply_overrides(cfg, sets, "train --init")


def _cmd_train(a) -> int:
    from spkid.config import apply_overrides, load_config
    from spkid.training.checkpoint import checkpoint_config, load_checkpoint
    from spkid.training import distributed
    from spkid.training.loop import train
    out = Path(a.out)
    last = out / "last.ckpt"
    if a.resume:
        cfg = load_config(a.config) if a.config else checkpoint_config(load_checkpoint(last), last)
    else:
        if last.exists():
            raise SpkidError(f"{last}: run directory already holds a run; use --resume or another --out")
        from spkid.training.data import looks_like_audio
        cfg = load_config(a.config or ("audio" if all(looks_like_audio(d) for d in a.data_dir) else "default"))
    sets = list(a.set)
    if a.steps is not None:
        sets.append(f"train.steps={a.steps}")
        if a.max_minutes is None:
            sets.append("train.max_minutes=0")
    if a.max_minutes is not None:
        sets.append(f"train.max_minutes={a.max_minutes}")
    if a.device:
        sets.append(f"train.device={a.device}")
    if a.seed is not None:
        sets.append(f"train.seed={a.seed}")
    if a.attention:
        sets.append(f"model.attention={a.attention}")
    if a.tensorboard:
        sets.append("train.log_tensorboard=true")
    if a.noise:
        sets.append(f"augment.noise_dir={a.noise}")
    if a.rir:
        sets.append(f"augment.rir_dir={a.rir}")
    if a.weights:
        sets.append(f"data.weights={json.dumps(a.weights)}")
    cfg = apply_overrides(cfg, sets)
    if a.init or a.freeze:
        cfg = _finetune_config(a, cfg)
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:  # settings checked above: one error line, not one per rank
        return distributed.launch(a.argv, a.nproc)       # this same command line, once per rank
    if a.nproc > 1:
        distributed.check_nproc(a.nproc)
    r = train(a.data_dir if len(a.data_dir) > 1 else a.data_dir[0], out, cfg, resume=a.resume, progress=not a.quiet, cache_dir=a.cache,
              stop_after=a.stop_after, vad=not a.no_vad)
    if r is None:          # a non-zero DDP rank: rank 0 reports
        return 0
    val = "n/a" if r.val_acc is None else f"{r.val_acc:.4f}"
    state = ("interrupted, checkpoint saved (--resume to continue)" if r.interrupted else
             "done" if r.finished else "stopped early, checkpoint saved (--resume to continue)")
    amp = "" if r.amp == "none" else f" ({r.amp} autocast)"
    print(f"{state}: {r.steps} steps in {r.elapsed / 60:.1f} min{amp}, validation accuracy {val}")
    print(f"checkpoints: {r.last}" + (f", {r.best}" if r.best else ""))
    return 130 if r.interrupted else 0


def _cmd_predict(a) -> int:
    from spkid.scoring.predict import predict
    if len(a.inputs) < 2:
        raise SpkidError("predict: give at least one CHECKPOINT and an INPUT")
    if a.window is not None and a.window < 1:
        raise SpkidError(f"predict --window {a.window}: must be >= 1 frame")
    n = predict(a.inputs[:-1], a.inputs[-1], a.output, device=a.device, window=a.window, progress=not a.quiet,
                quantize=a.int8, nproc=a.nproc, **_inference_args(a))
    print(f"wrote {n} predictions to {a.output}")
    return 0


def _cmd_evaluate(a) -> int:
    from spkid.data.hw4 import read_answers_csv
    from spkid.scoring.metrics import accuracy
    acc = accuracy(read_answers_csv(a.answers), read_answers_csv(a.predictions))
    print(f"accuracy {acc:.4f}")
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="audio folders or path,speaker lists -> HW4-format features")
    p.add_argument("input", help="folder with one sub-folder per speaker, or a CSV/TSV of path,speaker")
    p.add_argument("out_dir")
    p.add_argument("--test", dest="test_input", help="folder or list of unlabelled test audio")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    p.add_argument("--float16", action="store_true", help="store features as float16 (default float32)")
    p.add_argument("--min-seconds", type=float, default=0.1, help="skip files shorter than this")
    p.add_argument("--config", help="take the feature definition (features section) of this preset or file")
    p.add_argument("--set", action="append", default=[], metavar="features.KEY=VALUE",
                   help="override the feature definition, e.g. --set features.n_mels=80")
    p.add_argument("--quiet", action="store_true")


def _cmd_prepare(a) -> int:
    import torch
    from spkid.config import apply_overrides, load_config
    from spkid.data.prepare import prepare
    bad = [s for s in a.set if not s.startswith("features.")]
    if bad:
        raise SpkidError(f"prepare --set {bad[0]}: only features.* settings apply to prepare")
    if a.workers < 0:
        raise SpkidError(f"prepare --workers {a.workers}: must be >= 0 (0 = one per core)")
    if not a.min_seconds >= 0:
        raise SpkidError(f"prepare --min-seconds {a.min_seconds}: must be >= 0")
    features = apply_overrides(load_config(a.config or "default"), a.set).features
    r = prepare(a.input, a.out_dir, test_input=a.test_input, workers=a.workers, min_seconds=a.min_seconds,
                dtype=torch.float16 if a.float16 else torch.float32, features=features, vad=not a.no_vad,
                progress=not a.quiet)
    print(f"prepared {r.summary()} in {r.out_dir}")
    if r.skipped:
        print(f"spkid: warning: skipped {len(r.skipped)} file(s), reasons in {r.report_path}", file=sys.stderr)
        return 2
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end run: synthesise voices, prepare, train, predict")
    p.add_argument("--out", default="demo_out", help="working directory (default demo_out)")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="optional training time cap (default none; a cap makes the result depend on the machine's speed)")
    p.add_argument("--steps", type=int, default=1200, help="training steps (default 1200)")
    p.add_argument("--speakers", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def _cmd_demo(a) -> int:
    from spkid.demo import run_demo
    if a.speakers < 2 or a.steps < 1 or not a.minutes >= 0:
        raise SpkidError(f"demo: need --speakers >= 2, --steps >= 1 and --minutes >= 0, got {a.speakers}, {a.steps}, "
                         f"{a.minutes}")
    r = run_demo(a.out, minutes=a.minutes, steps=a.steps, n_speakers=a.speakers, seed=a.seed, progress=not a.quiet)
    print(f"demo: {r.n_speakers} synthetic speakers, {r.n_train} training / {r.n_test} held-out utterances")
    print(f"validation accuracy {r.val_acc:.4f}, held-out test accuracy {r.test_acc:.4f}")
    print(f"predictions: {r.csv}\ncheckpoint:  {r.checkpoint}")
    if r.report:
        print(f"report:      {r.report}")
    if r.base_acc is not None:
        print(f"shipped model base, no training: {r.base_acc:.4f} of the held-out recordings identified through "
              f"{r.registry} ({r.base_unknown} answered unknown)")
    return 0


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="L2-normalised speaker embeddings of .pt features or audio files")
    p.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                   help="optionally a model first (a checkpoint or a shipped name; default: base), then files or "
                        "folders (.pt and audio)")
    p.add_argument("-o", "--output", required=True, help="output .npz (ids, embeddings) or .pt")
    p.add_argument("--device", default="auto")
    _add_inference_options(p, nproc=True)


def _model_and_rest(args: list[str], n_rest: int) -> tuple[str, list[str]]:
    """``[MODEL] REST...``: the leading model when given (``n_rest`` = how many arguments follow it when fixed,
    0 = any), else the shipped default."""
    from spkid.pretrained import DEFAULT
    from spkid.training.checkpoint import is_model_spec
    if (n_rest and len(args) == n_rest + 1) or (not n_rest and len(args) > 1 and is_model_spec(args[0])):
        return args[0], args[1:]
    return DEFAULT, args


def _cmd_embed(a) -> int:
    from spkid.scoring.openset import embed_files
    model, inputs = _model_and_rest(a.inputs, 0)
    n = embed_files(model, inputs, a.output, device=a.device, quantize=a.int8, nproc=a.nproc,
                    **_inference_args(a))
    print(f"wrote {n} embeddings to {a.output}")
    return 0


def _add_enroll(sub) -> None:
    p = sub.add_parser("enroll", help="add (or update) a speaker in a SQLite registry")
    p.add_argument("registry", help="registry file (created when new)")
    p.add_argument("name", help="speaker name")
    p.add_argument("files", nargs="+", help="the speaker's utterances (audio or .pt), or folders of them; each audio "
                                            "clip is also stored as heard through a simulated telephone channel "
                                            "(diarize names phone calls against those copies)")
    p.add_argument("--checkpoint", help="model that embeds a new registry (a checkpoint or a shipped name; default: "
                                        "base); an existing registry keeps its own")
    p.add_argument("--on-outlier", choices=["keep", "refuse"], default="keep",
                   help="a clip far from the speaker's other clips, or with under 1 s of audio: keep it (with a "
                        "warning, the default) or leave it out")
    _add_domain_options(p, "also adapt the registry to its domain: a folder of unlabelled clips of it (see adapt)")
    p.add_argument("--device", default="auto")


def _add_domain_options(p, folder_help: str) -> None:
    """``--domain``/``FOLDER`` companions of enroll and adapt: whitening, the AS-norm cohort and its top-n."""
    if folder_help.startswith("also"):
        p.add_argument("--domain", metavar="FOLDER", help=folder_help)
    p.add_argument("--whiten", action="store_true", help="whiten as well as centre (shrunk covariance of the folder)")
    p.add_argument("--cohort", choices=["folder", "checkpoint", "none"],
                   help="AS-norm cohort: the folder's clips (default with a folder), the training speakers stored "
                        "in the checkpoint, or none (default without a folder: the training speakers hurt across "
                        "domains, docs/openset.md)")
    p.add_argument("--top-n", type=int, default=50, help="AS-norm: highest cohort scores per side (default 50)")


def _print_threshold(state) -> None:
    """The registry's operating point and where it came from, one line on stderr."""
    print(f"spkid: {state.describe()}", file=sys.stderr)


def _cmd_enroll(a) -> int:
    from spkid.scoring.openset import enroll
    r = enroll(a.registry, a.name, a.files, checkpoint=a.checkpoint, device=a.device, on_outlier=a.on_outlier,
               domain=a.domain, whiten=a.whiten, cohort=a.cohort, top_n=a.top_n)
    for flag in r.flags:
        print(f"spkid: warning: {flag.describe()}", file=sys.stderr)
    if r.adaptation:
        print(f"adapted {a.registry}: {r.adaptation}")
    print(f"enrolled {a.name}: {r.n_utterances} utterance(s) in {a.registry} (model {r.checkpoint})")
    t = r.threshold
    if t.clips_needed > 0:
        print(f"spkid: warning: {t.clips_needed} more enrollment clip(s) needed before the registry estimates its "
              f"own threshold (at least 2 speakers with 2 clips each, {t.min_clips} clips in all); until then it "
              f"uses {t.source} on raw cosines, which does not transfer to other recording conditions",
              file=sys.stderr)
    print(f"spkid: {t.describe(with_needed=False)}", file=sys.stderr)
    return 0


def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="adapt a registry to its recording conditions: centre (and AS-norm) its scores "
                                     "with a folder of unlabelled clips of that domain")
    p.add_argument("registry")
    p.add_argument("folder", nargs="?", help="unlabelled clips of the target domain (any speakers; none: back to raw "
                                             "embeddings, or --cohort checkpoint alone)")
    _add_domain_options(p, "")
    p.add_argument("--device", default="auto")


def _cmd_adapt(a) -> int:
    from spkid.scoring.openset import adapt
    r = adapt(a.registry, a.folder, whiten=a.whiten, cohort=a.cohort, top_n=a.top_n, device=a.device)
    print(f"adapted {a.registry}: {r.source}")
    if r.replaced_locked:
        print(f"spkid: warning: the locked threshold ({r.replaced_locked}) was on other scores and is replaced; run "
              "eval-verification --registry again to lock a new one", file=sys.stderr)
    _print_threshold(r.threshold)
    return 0


def _add_identify(sub) -> None:
    p = sub.add_parser("identify", help="who is speaking, among enrolled speakers (or unknown)")
    p.add_argument("registry")
    p.add_argument("files", nargs="+")
    p.add_argument("-o", "--output", help="CSV file,speaker,score (default: print)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--device", default="auto")
    _add_inference_options(p, nproc=False)


def _cmd_identify(a) -> int:
    import csv
    from spkid.fileio import write_csv
    from spkid.scoring.openset import identify
    if a.top_k < 1:
        raise SpkidError(f"identify --top-k {a.top_k}: must be >= 1")
    if a.output:
        from spkid.data.scan import input_files
        from spkid.fileio import refuse_overwriting_inputs
        refuse_overwriting_inputs([a.output], [a.registry, *input_files(a.files)])
    rows = identify(a.registry, a.files, top_k=a.top_k, device=a.device, **_inference_args(a))
    from spkid.scoring.openset import registry_threshold
    _print_threshold(registry_threshold(a.registry))      # which threshold decided, and where it came from
    if a.output:
        write_csv(a.output, ["file", "speaker", "score"], rows)
        print(f"wrote {len(rows)} rows to {a.output}")
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")    # quoted: names with commas or newlines stay one field
        w.writerow(["file", "speaker", "score"])
        w.writerows(rows)
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="same speaker or not: cosine score of two files")
    p.add_argument("files", nargs="+", metavar="[MODEL] A B", help="optionally a model (default: base), then two files")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the registry's, else the "
                                                     "checkpoint's)")
    p.add_argument("--registry", help="score through this registry's back end (domain statistics, AS-norm) and use "
                                      "its threshold and calibration")
    p.add_argument("--prior", type=float, default=0.5, help="prior probability of 'same speaker' for the calibrated "
                                                            "probability (default 0.5)")
    p.add_argument("--device", default="auto")


def _cmd_verify(a) -> int:
    from spkid.scoring.openset import verify
    if len(a.files) not in (2, 3):
        raise SpkidError(f"verify: expected [MODEL] A B, got {len(a.files)} argument(s)")
    model, (x, y) = _model_and_rest(a.files, 2)
    r = verify(model, x, y, threshold=a.threshold, device=a.device, registry=a.registry, prior=a.prior)
    prob = (f", P(same) {r.probability:.3f} at prior {r.prior:g} (calibrated on {r.calibration_source})"
            if r.probability is not None else "")
    print(f"score {r.score:.4f} threshold {r.threshold:.4f}{prob}: {'same speaker' if r.same else 'different speakers'}")
    print(f"spkid: threshold from {r.threshold_source}; scores: {r.scoring}", file=sys.stderr)
    return 0


def _add_eval_verification(sub) -> None:
    p = sub.add_parser("eval-verification", help="EER/minDCF on speakers unseen in training; pick a threshold")
    p.add_argument("args", nargs="+", metavar="[MODEL] DATA_DIR",
                   help="optionally a model (default: base), then an HW4 directory whose speakers the model did "
                        "not see")
    p.add_argument("--far", type=float, help="pick the threshold at this false-accept rate (default: at EER)")
    p.add_argument("--registry", help="score through this registry's back end and store the chosen threshold and the "
                                      "calibration in it (locked: later enrolls keep them)")
    p.add_argument("--prior", type=float, default=0.5, help="target prior of the calibration fit (default 0.5)")
    p.add_argument("--max-nontarget", type=int, default=200000)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def _cmd_eval_verification(a) -> int:
    from spkid.scoring.openset import eval_verification
    if a.far is not None and not 0 <= a.far < 1:
        raise SpkidError(f"eval-verification --far {a.far}: must be in [0, 1)")
    if a.max_nontarget < 1:
        raise SpkidError(f"eval-verification --max-nontarget {a.max_nontarget}: must be >= 1")
    if len(a.args) > 2:
        raise SpkidError(f"eval-verification: expected [MODEL] DATA_DIR, got {len(a.args)} arguments")
    model, (data_dir,) = _model_and_rest(a.args, 1)
    r = eval_verification(model, data_dir, far=a.far, max_nontarget=a.max_nontarget, device=a.device,
                          progress=not a.quiet, registry=a.registry, prior=a.prior)
    print(f"{r['n_speakers']} unseen speakers, {r['n_utterances']} utterances, {r['n_target']} target / "
          f"{r['n_nontarget']} non-target trials; scores: {r['scoring']}")
    print(f"EER {100 * r['eer']:.2f}%  minDCF(p=0.01) {r['min_dcf']:.4f}  threshold {r['threshold']:.4f} "
          f"({r['threshold_source']})")
    stored = ("" if r["cllr_stored"] is None else
              f"  Cllr {r['cllr_stored']:.4f} with the stored calibration ({r['stored_calibration_source']})")
    print(f"Cllr {r['cllr']:.4f} (calibrated on these trials)  minCllr {r['min_cllr']:.4f}{stored}")
    if a.registry:
        print(f"stored threshold and calibration in {a.registry} (locked: enroll keeps them)")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (dynamic batch and time axes)")
    p.add_argument("checkpoint", nargs="?", default="base", help="a checkpoint or a shipped name (default: base)")
    p.add_argument("--onnx", required=True, help="output .onnx file")


def _cmd_export(a) -> int:
    from spkid.fileio import refuse_overwriting_inputs
    from spkid.scoring.export import export_onnx
    refuse_overwriting_inputs([a.onnx], [a.checkpoint])
    worst = export_onnx(a.checkpoint, a.onnx)
    print(f"wrote {a.onnx} (max abs difference to PyTorch {worst:.2e})")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page (plus PNGs) on runs, a test set and verification")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories (several: curves overlaid; the first one's best.ckpt is evaluated), or a "
                        "model (a checkpoint or a shipped name); none: the shipped model base")
    p.add_argument("-o", "--output", default="report.html", help="HTML file; figures go to <name>_figures/ beside it")
    p.add_argument("--test", metavar="DATA_DIR", help="HW4 directory with testdata.json (closed-set section)")
    p.add_argument("--answers", metavar="CSV", help="Id,Category answers of --test")
    p.add_argument("--trials", metavar="DIR", help="HW4 directory of speakers unseen in training (verification)")
    p.add_argument("--registry", metavar="FILE", help="draw this registry's threshold on the verification plots")
    p.add_argument("--diarization", nargs=2, metavar=("REF.rttm", "HYP.rttm"),
                   help="diarization section: DER per file and timelines, reference above hypothesis")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def _cmd_report(a) -> int:
    from spkid.fileio import refuse_overwriting_inputs
    from spkid.report import build_report

    def opt(v):
        return Path(v) if v else None
    refuse_overwriting_inputs([a.output], [x for x in (a.answers, a.registry, *(a.diarization or [])) if x])
    runs = [d if Path(d).is_dir() else str(d) for d in (a.runs or ["base"])]
    r = build_report(runs, Path(a.output), test_dir=opt(a.test), answers=opt(a.answers),
                     trials_dir=opt(a.trials), registry=opt(a.registry), progress=not a.quiet, device=a.device,
                     diarization=tuple(Path(x) for x in a.diarization) if a.diarization else None)
    print(f"report: {r.path}" + (f" ({len(r.figures)} figures in {r.figures[0].parent})" if r.figures else ""))
    for sid in r.sections_missing:
        print(f"  section {sid!r} is empty: the page says what to pass")
    return 0


def _add_diarize(sub) -> None:
    p = sub.add_parser("diarize", help="who spoke when: speaker turns of audio files as RTTM (names from a registry)")
    p.add_argument("audio", nargs="+", help="audio files (any length: decoded in blocks) or folders of them")
    p.add_argument("-o", "--output", required=True, help="RTTM file for all inputs (file field: each file's stem)")
    p.add_argument("--segments", metavar="CSV", help="also write file,start,end,speaker,score")
    p.add_argument("--registry", help="name the speakers enrolled here (its back end, threshold and a margin; "
                                      "one-to-one); the others are SPEAKER_00, SPEAKER_01, ...")
    p.add_argument("--checkpoint", help="model that embeds (default: the registry's, else the pretrained base)")
    p.add_argument("--num-speakers", type=int, metavar="N", help="exactly N speakers (default: found automatically)")
    p.add_argument("--min-speakers", type=int, default=1, metavar="A")
    p.add_argument("--max-speakers", type=int, metavar="B")
    p.add_argument("--method", choices=["ahc", "spectral"], default="spectral", help="clustering (default spectral)")
    p.add_argument("--threshold", type=float, help="cosine distance at which speakers stay apart (default: "
                                                   "calibrated for the base model; lower finds more speakers)")
    p.add_argument("--merge-raw", type=float, metavar="C",
                   help="then merge speakers whose mean embeddings (uncentred) have a cosine above C (default: the "
                        "model's own from tune-diarization, else 0.88, tuned for the base model; 0: off)")
    p.add_argument("--resplit", type=float, metavar="C",
                   help="cluster each speaker of 9 s or more again around its own mean and split it where the parts' "
                        "mean embeddings (uncentred) have a cosine below C (default: the model's own from "
                        "tune-diarization, else 0.75, tuned for the base model; 0: off; spectral only, not with "
                        "--num-speakers)")
    p.add_argument("--settled", action=argparse.BooleanOptionalAction, default=True,
                   help="two speakers that each hold many windows (20, about 15 s of speech; 60 for the uncentred "
                        "merge) stay apart unless much closer (default: on; tuned for the base model; with --method "
                        "ahc only the uncentred merge's limit applies)")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                   help="find overlapped speech and give it a second speaker (default: on)")
    p.add_argument("--band-limit", action=argparse.BooleanOptionalAction, default=True,
                   help="where the speech ends below 6 kHz and only noise lies above (a voice recorded at 8 kHz, "
                        "noise added later), hear the file low-passed there (default: on)")
    p.add_argument("--overlap-threshold", type=float, metavar="P",
                   help="overlap probability from which two speakers are given (default 0.8, and 0.9 for a "
                        "narrowband recording; given here, P for every recording)")
    p.add_argument("--speech-threshold", type=float, metavar="P",
                   help="speech detection: Silero's probability from which a frame is speech (default 0.3; higher "
                        "takes less noise for speech and misses more quiet or covered speech)")
    p.add_argument("--name-split", action=argparse.BooleanOptionalAction, default=True,
                   help="with --registry: split a speaker whose speech holds several enrolled voices into them, where "
                        "at least two parts are named (default: on; not with --num-speakers)")
    p.add_argument("--name-margin", type=float, metavar="LLR",
                   help="with --registry: a speaker takes their best enrolled name only this many natural-log "
                        "likelihood-ratio units above the second best (default 1.0; lower names more speech and more "
                        "of it wrongly, e.g. 0.5 when every speaker is enrolled)")
    p.add_argument("--name-margin-telephone", type=float, metavar="LLR",
                   help="the same for a speaker named against the registry's telephone copies (default 0.5)")
    p.add_argument("--device", default="auto")
    _add_inference_options(p, nproc=False)
    p.add_argument("--quiet", action="store_true")


def _cmd_diarize(a) -> int:
    import time
    from spkid.diarization.batch import audio_inputs, diarize_files, load_embedder
    from spkid.audio.vad import VadConfig
    from spkid.diarization.pipeline import check_counts, model_config
    from spkid.diarization.rttm import write_rttm, write_segments_csv
    from spkid.pretrained import is_shipped
    from spkid.fileio import refuse_overwriting_inputs
    check_counts(a.num_speakers, a.min_speakers, a.max_speakers)
    outs = [a.output] + ([a.segments] if a.segments else [])
    files = audio_inputs(a.audio)
    refuse_overwriting_inputs(outs, [*files, *([a.registry] if a.registry else [])])
    embedder = load_embedder(a.checkpoint, a.registry, device=a.device, **_inference_args(a))
    t0 = time.perf_counter()

    def report(o):
        if o.error:                     # the rest of the batch goes on: a warning, as for predict/embed/identify
            print(f"spkid: warning: {o.error}", file=sys.stderr)
            return
        if o.segments:
            print(f"{o.path}: {o.n_speakers} speaker(s), {len(o.segments)} turns, {o.speech:.1f} s of speech in "
                  f"{o.duration:.1f} s ({o.duration / max(o.seconds, 1e-9):.0f}x real time)"
                  + (f"; {o.names}" if o.names else ""))
        if o.warning:                   # no speech, or fewer speakers than asked
            print(f"spkid: warning: {o.warning}", file=sys.stderr)
    given = {"threshold": a.threshold, "overlap_threshold": a.overlap_threshold, "merge_raw": a.merge_raw,
             "resplit": a.resplit, "name_margin": a.name_margin, "name_margin_telephone": a.name_margin_telephone}
    for flag, v in (("--name-margin", a.name_margin), ("--name-margin-telephone", a.name_margin_telephone)):
        if v is not None and a.registry is None:
            raise SpkidError(f"diarize: {flag} needs --registry (it is how sure a name must be)")
    if not a.settled:
        given.update(settled_s=0.0, raw_settled_s=0.0)
    if not a.name_split:
        given["name_split_s"] = 0.0
    if a.overlap_threshold is not None:
        given["overlap_threshold_narrowband"] = a.overlap_threshold
    if a.speech_threshold is not None:
        if not 0 < a.speech_threshold < 1:                                   # NaN too
            raise SpkidError(f"diarize --speech-threshold {a.speech_threshold}: a probability in (0, 1)")
        given["vad"] = VadConfig(threshold=a.speech_threshold)
    cfg = model_config(embedder, method=a.method, overlap=a.overlap, band_limit=a.band_limit, **given)
    if not (embedder.tuned or is_shipped(embedder.model.path) or a.quiet or {a.merge_raw, a.resplit} != {None}):
        print(f"spkid: note: {embedder.model.path} carries no diarization cosines of its own: base's merge_raw "
              f"{cfg.merge_raw} / resplit {cfg.resplit} apply (spkid tune-diarization chooses the model's own)",
              file=sys.stderr)
    res = diarize_files(files, embedder, cfg, registry=a.registry,
                        n_speakers=a.num_speakers, min_speakers=a.min_speakers, max_speakers=a.max_speakers,
                        progress=not a.quiet, on_file=report)
    failed = sum(o.error is not None for o in res)
    if failed == len(res):                  # nothing to write: an RTTM already there is left as it was
        raise SpkidError(f"diarize: no file could be diarized, {a.output} not written (first: {res[0].error})")
    segments = [s for o in res for s in o.segments]
    write_rttm(a.output, segments)
    if a.segments:
        write_segments_csv(a.segments, segments)
    audio = sum(o.duration for o in res)
    took = time.perf_counter() - t0
    print(f"wrote {len(segments)} turns of {len(res) - failed} file(s) to {a.output}: {audio:.1f} s of audio in "
          f"{took:.1f} s ({audio / max(took, 1e-9):.0f}x real time)" + (f"; {failed} file(s) failed" if failed else ""))
    return 2 if failed or any(o.warning for o in res) else 0     # a complete output, something was off


def _add_tune_diarization(sub) -> None:
    p = sub.add_parser("tune-diarization", help="a model's own diarization cosines, chosen on conversations and "
                                                "monologues of your speakers; stored in a copy of the checkpoint")
    p.add_argument("folders", nargs="*", help="folders holding a folder of audio clips per speaker (as for training "
                                             "or enrollment); none: synthetic voices only")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write: the model with its tuned cosines")
    p.add_argument("--checkpoint", default="base", help="model to tune (default: the pretrained base)")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="also N synthetic voices (default: 16 when no folder is given, else none)")
    p.add_argument("--conversations", type=int, default=16, metavar="N",
                   help="development conversations of 2-5 speakers, 1-2 minutes each (default 16)")
    p.add_argument("--monologues", type=int, default=4, metavar="N",
                   help="development monologues of one speaker, 60 s each (default 4: most recordings diarized hold "
                        "several speakers; 0 when every one does, as many as the conversations when many are one "
                        "speaker's: the cosine that keeps a monologue whole joins voices of a conversation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def _cmd_tune_diarization(a) -> int:
    from tqdm import tqdm

    from spkid.diarization import tune
    from spkid.diarization.batch import load_embedder
    from spkid.fileio import refuse_overwriting_inputs
    from spkid.pretrained import resolve
    synthetic = a.synthetic if a.synthetic is not None else (0 if a.folders else 16)
    if synthetic < 0 or a.conversations < 0 or a.monologues < 0 or a.conversations + a.monologues == 0:
        raise SpkidError("tune-diarization: --synthetic, --conversations and --monologues must be >= 0, and some "
                         "recordings are needed")
    refuse_overwriting_inputs([a.output], [resolve(a.checkpoint), *a.folders])
    embedder = load_embedder(a.checkpoint, device=a.device)
    speakers = {**tune.folder_speakers(a.folders), **tune.synthetic_speakers(synthetic)}
    plans = tune.plans(speakers, a.conversations, a.monologues, a.seed)
    bar = dict(disable=a.quiet or not sys.stderr.isatty(), dynamic_ncols=True)
    with tqdm(total=len(plans), unit="recording", desc="analyse", **bar) as t:
        recs = tune.analysed(plans, speakers, embedder, a.seed, t.update)
    with tqdm(total=len(tune.MERGE_RAW) * len(tune.RESPLIT), unit="pair", desc="sweep", **bar) as t:
        note = (f"{len(speakers)} speakers ({', '.join(map(str, a.folders)) or 'no folder'}"
                f"{f'; {synthetic} synthetic voices' if synthetic else ''}), {a.conversations} conversations and "
                f"{a.monologues} monologues, seed {a.seed}")
        result = tune.tune(recs, note, t.update)
    tune.write_tuned(a.checkpoint, a.output, result)
    print(tune.table(result))
    b, d = result.best, result.default
    print(f"wrote {a.output}: merge_raw {b['merge_raw']:.2f}, resplit {b['resplit']:.2f} (development DER "
          f"{100 * b['all']:.2f} %; the defaults {d['merge_raw']:.2f} / {d['resplit']:.2f}: {100 * d['all']:.2f} %); "
          f"spkid diarize --checkpoint {a.output} uses them")
    return 0


def _add_eval_diarization(sub) -> None:
    p = sub.add_parser("eval-diarization", help="DER (±0.25 s collar and none, overlap scored and skipped), JER, "
                                                "per file (pyannote.metrics)")
    p.add_argument("reference", help="reference RTTM")
    p.add_argument("hypothesis", help="hypothesis RTTM (spkid diarize -o)")
    p.add_argument("--uem", help="UEM file: the scored parts of each file (default: all of it)")


def _cmd_eval_diarization(a) -> int:
    from spkid.diarization.evaluate import format_table, score_diarization
    from spkid.diarization.rttm import read_rttm, read_uem
    ref = read_rttm(a.reference)
    if not ref:
        raise SpkidError(f"{a.reference}: no SPEAKER lines: nothing to score against")
    hyp = read_rttm(a.hypothesis)
    uem = read_uem(a.uem) if a.uem else None
    missing = sorted({s.file for s in ref} - set(uem)) if uem is not None else []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SpkidError(f"{a.uem}: UEM has no line for file {missing[0]!r} of the reference{more}")
    rows = score_diarization(ref, hyp, uem)
    print(format_table(rows))
    t = rows[-1]
    print(f"DER {100 * t.der_collar:.2f}% (±0.25 s collar, overlap scored), {100 * t.der:.2f}% (no collar); "
          f"overlap skipped: {100 * t.der_collar_skip:.2f}% / {100 * t.der_skip:.2f}%; JER {100 * t.jer:.2f}%")
    return 0


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="a model made elsewhere (SpeechBrain, ONNX, Resemblyzer) as a spkid "
                                      "checkpoint, read from local files only")
    p.add_argument("source", choices=["speechbrain", "onnx", "resemblyzer"])
    p.add_argument("path", nargs="?", help="speechbrain: the model folder (hyperparams.yaml, embedding_model.ckpt); "
                                           "onnx: the .onnx file; resemblyzer: none (the wheel's encoder)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write")
    p.add_argument("--frontend", help="onnx: the front end the graph expects (wespeaker, speechbrain, logmel)")
    p.add_argument("--weights", help="resemblyzer: another GE2E pretrained.pt instead of the wheel's")
    p.add_argument("--licence", default="", help="the model's licence as you know it (stored in its card)")


def _cmd_import(a) -> int:
    from spkid.fileio import refuse_overwriting_inputs
    from spkid.importers import onnx, resemblyzer, speechbrain
    needs_path = a.source != "resemblyzer"
    if needs_path != bool(a.path) or (a.source == "onnx") != bool(a.frontend) or (a.weights and needs_path):
        raise SpkidError(f"import {a.source}: give {'a PATH' if needs_path else 'no PATH'}"
                         f"{', --frontend' if a.source == 'onnx' else ''}; --weights only with resemblyzer")
    refuse_overwriting_inputs([a.output], [x for x in (a.path, a.weights) if x])
    card = (speechbrain.import_speechbrain(a.path, a.output, licence=a.licence) if a.source == "speechbrain" else
            onnx.import_onnx(a.path, a.output, frontend=a.frontend, licence=a.licence) if a.source == "onnx" else
            resemblyzer.import_resemblyzer(a.output, weights=a.weights, licence=a.licence))
    print(f"wrote {a.output}: {card['source']} (model {card['fingerprint']}; licence: {card['licence']})")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a model is: source, licence, front end, network, fingerprint")
    p.add_argument("model", help="a checkpoint (trained or imported) or a shipped model's name")


def _cmd_info(a) -> int:
    from spkid.scoring.loader import model_info
    for label, text in model_info(a.model):
        print(f"{label + ':':14} {text}")
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page for enroll/identify/verify/diarize (docs/serve.md)")
    p.add_argument("--registry", default="speakers.db", help="registry file (created when missing)")
    p.add_argument("--model", default="base", help="packaged model name or checkpoint (default base)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; the address is printed)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model")
    p.add_argument("--token-file", help="hashed tokens made by 'spkid token' (default: one admin token per run, "
                                        "printed at start; required beyond loopback)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from this origin call the API (repeatable; default: none)")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="request body cap (default 64)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="audio cap per clip, from its header (default 300)")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s per token (0: no limit; default 20)")
    p.add_argument("--device", default="auto")


def _cmd_serve(a) -> int:
    from spkid.runtime import use_threads
    from spkid.serve import ServeConfig, serve
    cfg = ServeConfig(registry=a.registry, model=a.model, host=a.host, port=a.port, workers=a.workers,
                      token_file=a.token_file, cors_origins=a.cors_origin, max_upload_mb=a.max_upload_mb,
                      max_clip_seconds=a.max_seconds, rate=a.rate, burst=max(1, int(2 * a.rate)), device=a.device,
                      vad=not a.no_vad)
    use_threads(0)
    serve(cfg, lambda line: print(line, flush=True))
    print("spkid serve: stopped", flush=True)
    return 0


def _add_token(sub) -> None:
    p = sub.add_parser("token", help="add an API token for spkid serve to a token file (printed once, stored hashed)")
    p.add_argument("token_file")
    p.add_argument("--role", choices=["admin", "read"], required=True,
                   help="admin: enroll/rename/delete and everything read may; read: list/identify/verify/diarize")
    p.add_argument("--label", default="", help="who the token is for (shown nowhere but the file)")


def _cmd_token(a) -> int:
    from spkid.serve.auth import add_token
    print(add_token(a.token_file, a.role, a.label))
    print(f"spkid: added a {a.role} token to {a.token_file} (stored as its SHA-256; this is the only copy)",
          file=sys.stderr)
    return 0


COMMANDS = {"train": (_add_train, _cmd_train), "predict": (_add_predict, _cmd_predict),
            "evaluate": (_add_evaluate, _cmd_evaluate), "prepare": (_add_prepare, _cmd_prepare),
            "demo": (_add_demo, _cmd_demo), "embed": (_add_embed, _cmd_embed), "enroll": (_add_enroll, _cmd_enroll),
            "identify": (_add_identify, _cmd_identify), "verify": (_add_verify, _cmd_verify),
            "eval-verification": (_add_eval_verification, _cmd_eval_verification), "adapt": (_add_adapt, _cmd_adapt),
            "export": (_add_export, _cmd_export), "report": (_add_report, _cmd_report),
            "import": (_add_import, _cmd_import), "info": (_add_info, _cmd_info),
            "serve": (_add_serve, _cmd_serve), "token": (_add_token, _cmd_token),
            "diarize": (_add_diarize, _cmd_diarize),
            "tune-diarization": (_add_tune_diarization, _cmd_tune_diarization),
            "eval-diarization": (_add_eval_diarization, _cmd_eval_diarization)}

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spkid", description="speaker identification toolkit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, _) in COMMANDS.items():
        add(sub)
        if name in _AUDIO_COMMANDS:
            sub.choices[name].add_argument("--no-vad", action="store_true",
                                           help="audio input: use whole files (no speech detection)")
    return parser


# commands that read audio files: Silero VAD keeps only the speech unless --no-vad (train has its own flag)
_AUDIO_COMMANDS = ("prepare", "predict", "embed", "enroll", "identify", "verify", "adapt", "serve")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Library noise that would turn a one-line error into several: numpy's finfo warns once flush-denormal
    # (set by train/load) is on, and torch warns about the protocol of a pickle it is about to refuse.
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    args = build_parser().parse_args(argv)
    args.argv = argv                  # for commands that re-launch themselves (train --nproc)
    if args.command in _AUDIO_COMMANDS:
        from spkid.scoring import model as scoring_model
        scoring_model.VAD_DEFAULT = not args.no_vad
    previous = _sigterm_as_interrupt()
    try:
        with warnings.catch_warnings(record=True) as caught, _progress_for_logs():
            warnings.simplefilter("always", InputWarning)
            rc = COMMANDS[args.command][1](args)
        return _report_input_warnings(caught, rc)
    except SpkidError as e:
        if args.debug:
            traceback.print_exc()
        print(f"spkid: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        if args.debug:
            traceback.print_exc()
        print(f"spkid: error: {args.command}: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spkid: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


PROGRESS_LOG_INTERVAL_S = 30     # stderr is a file or a pipe: one progress line this often, not a redraw per step


class _Lines:
    """stderr for a log: tqdm redraws a bar by writing ``"\r" + bar``; here each bar prints as a line at most every
    ``interval`` seconds, its last state is kept and printed when the bar ends (tqdm then writes a newline), and
    everything else passes through."""

    def __init__(self, stream, interval: float):
        self.stream, self.interval = stream, interval
        self._last: dict[str, float] = {}
        self._pending: str | None = None
        self._bar_open = False          # the last write was a bar redraw (tqdm's closing newline follows)

    def write(self, text: str) -> int:
        import time
        if text.startswith("\r"):
            bar = text[1:].rstrip()
            key = bar.split(":", 1)[0]
            now = time.monotonic()
            self._bar_open = True
            if bar and (key not in self._last or now - self._last[key] >= self.interval):
                self._last[key], self._pending = now, None
                self.stream.write(bar + "\n")
            elif bar:
                self._pending = bar
            return len(text)
        if not text.strip("\n") and self._bar_open:        # tqdm ending a bar: its last state, once
            if self._pending is not None:
                self.stream.write(self._pending + "\n")
                self._pending = None
            self._bar_open = False
            return len(text)
        self._bar_open = False
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _progress_for_logs():
    """When stderr is not a terminal (a log file, a pipe, CI), a progress bar prints a line every
    ``PROGRESS_LOG_INTERVAL_S`` seconds and its last state, instead of a redraw per step (a 10-minute run wrote
    215 KB of bars)."""
    if sys.stderr.isatty():
        yield
        return
    before = sys.stderr
    sys.stderr = _Lines(sys.stderr, PROGRESS_LOG_INTERVAL_S)
    try:
        yield
    finally:
        sys.stderr = before


def _report_input_warnings(caught, rc: int) -> int:
    """Print the inputs a many-file command went past (``InputWarning``) and the others it recorded; a complete
    output with such inputs exits with status 2 (something was off), an error keeps its own status."""
    off = 0
    for w in caught:
        if issubclass(w.category, InputWarning):
            off += 1
            print(f"spkid: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if off:
        print(f"spkid: warning: {off} input(s) were off (above); the rest of the output is complete", file=sys.stderr)
    return 2 if off and rc == 0 else rc


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """SIGTERM (docker stop, Slurm preemption, kill) behaves as Ctrl-C: train saves a resumable checkpoint, other
    commands remove their temp files. Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


if __name__ == "__main__":
    sys.exit(main())
