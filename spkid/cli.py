"""``spkid`` command line: parse, call one library function, print. The only module that prints or exits.

Errors from the library (``SpkidError``) become one line ``spkid: error: <file>: <problem>`` and exit status 1;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from .errors import SpkidError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a speaker classifier on an HW4-format directory")
    p.add_argument("data_dir", help="directory with metadata.json, mapping.json and uttr-*.pt")
    p.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, last/best.ckpt)")
    p.add_argument("--config", help="preset name (default, hw4-sample, tiny) or a .toml/.json file")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; the LR schedule follows it")
    p.add_argument("--steps", type=int, help="number of training steps")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.ckpt")
    p.add_argument("--stop-after", type=int, default=0, metavar="STEP",
                   help="end this invocation after STEP (checkpoint saved); --resume finishes the schedule")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--attention", help="attention variant: full, linformer, local, sparse, adaptive")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.n_layers=4 --set train.lr=3e-4")
    p.add_argument("--cache", help="directory for a memory-mapped float16 feature cache (reused across runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="write a Kaggle CSV (Id,Category) for test data or audio files")
    p.add_argument("inputs", nargs="+", metavar="CHECKPOINT... INPUT",
                   help="one or more checkpoints (several = ensemble), then an HW4 directory with testdata.json, "
                        "an audio file or a folder of audio files")
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=int, help="average over windows of this many frames (default: whole utterance)")
    p.add_argument("--quiet", action="store_true")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a prediction CSV against an answers CSV")
    p.add_argument("answers")
    p.add_argument("predictions")


def _cmd_train(a) -> int:
    from .config import apply_overrides, load_config
    from .checkpoint import checkpoint_config, load_checkpoint
    from .train import train
    out = Path(a.out)
    last = out / "last.ckpt"
    if a.resume:
        cfg = load_config(a.config) if a.config else checkpoint_config(load_checkpoint(last), last)
    else:
        if last.exists():
            raise SpkidError(f"{last}: run directory already holds a run; use --resume or another --out")
        cfg = load_config(a.config or "default")
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
    cfg = apply_overrides(cfg, sets)
    r = train(a.data_dir, out, cfg, resume=a.resume, progress=not a.quiet, cache_dir=a.cache,
              stop_after=a.stop_after)
    if r is None:          # a non-zero DDP rank: rank 0 reports
        return 0
    val = "n/a" if r.val_acc is None else f"{r.val_acc:.4f}"
    state = ("interrupted, checkpoint saved (--resume to continue)" if r.interrupted else
             "done" if r.finished else "stopped early, checkpoint saved (--resume to continue)")
    print(f"{state}: {r.steps} steps in {r.elapsed / 60:.1f} min, validation accuracy {val}")
    print(f"checkpoints: {r.last}" + (f", {r.best}" if r.best else ""))
    return 130 if r.interrupted else 0


def _cmd_predict(a) -> int:
    from .predict import predict
    if len(a.inputs) < 2:
        raise SpkidError("predict: give at least one CHECKPOINT and an INPUT")
    n = predict(a.inputs[:-1], a.inputs[-1], a.output, device=a.device, window=a.window, progress=not a.quiet)
    print(f"wrote {n} predictions to {a.output}")
    return 0


def _cmd_evaluate(a) -> int:
    from .metrics import accuracy, read_answers_csv
    acc = accuracy(read_answers_csv(a.answers), read_answers_csv(a.predictions))
    print(f"accuracy {acc:.4f}")
    return 0


COMMANDS = {"train": (_add_train, _cmd_train), "predict": (_add_predict, _cmd_predict),
            "evaluate": (_add_evaluate, _cmd_evaluate)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spkid", description="speaker identification toolkit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except SpkidError as e:
        if args.debug:
            traceback.print_exc()
        print(f"spkid: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spkid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
