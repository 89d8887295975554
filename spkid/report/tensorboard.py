"""TensorBoard scalars mirroring ``metrics.jsonl``, for users who already live in TensorBoard.

The training loop calls ``write(**row)`` with each row it appends to ``metrics.jsonl``; keys become tags:
``loss`` -> ``train/loss``, ``val_acc`` -> ``val/acc``, ``elapsed`` -> ``time/elapsed_s``; ``step`` is the
global step. Needs the ``tensorboard`` package (``pip install 'spkid[tensorboard]'``).
"""
from __future__ import annotations

import numbers
from pathlib import Path

from spkid.errors import ConfigError

EXTRA = "pip install 'spkid[tensorboard]' (tensorboard==2.21.0)"


def tag_for(key: str) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` key."""
    if key == "elapsed":
        return "time/elapsed_s"
    if key.startswith("val_"):
        return "val/" + key[len("val_"):]
    return "train/" + key


class TensorBoardWriter:
    """Scalars for TensorBoard under ``log_dir`` (event files; point ``tensorboard --logdir`` at it).

    ``purge_step``: on ``--resume``, the step resumed from; events a killed run logged after it are dropped, so
    the curves show the resumed run once.
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(f"train.log_tensorboard needs the tensorboard package: {EXTRA}") from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=30)

    def write(self, **row) -> None:
        """Log one ``metrics.jsonl`` row: ``step`` (int) plus numeric scalars; ``None`` values are skipped."""
        step = row.pop("step", None)
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"a metrics row needs an integer 'step', got {step!r}")
        for key, value in row.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):     # NaN/inf are kept: a diverged
                raise ValueError(f"metric {key!r} must be a number, got {value!r}")  # loss should show as one
            self._writer.add_scalar(tag_for(key), float(value), global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
