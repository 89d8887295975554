"""spkid.report.tensorboard: the metrics.jsonl rows come back out of the event files under the documented tags."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from spkid.errors import ConfigError
from spkid.report.tensorboard import TensorBoardWriter, tag_for

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard not installed")


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tags_follow_the_metrics_keys():
    assert tag_for("loss") == "train/loss"
    assert tag_for("steps_per_s") == "train/steps_per_s"
    assert tag_for("val_eer_threshold") == "val/eer_threshold"
    assert tag_for("elapsed") == "time/elapsed_s"


@needs_tensorboard
def test_rows_round_trip_through_event_files(tmp_path):
    rows = [dict(step=25, elapsed=7.5, lr=1e-3, loss=5.25, acc=0.125, steps_per_s=3.25),
            dict(step=50, elapsed=15.0, lr=2e-3, loss=4.5, acc=0.25, steps_per_s=3.5),
            dict(step=50, elapsed=16.0, val_acc=0.75, val_eer=0.125, val_eer_threshold=None)]
    with TensorBoardWriter(tmp_path / "tb") as tb:
        for row in rows:
            tb.write(**row)
    got = _scalars(tmp_path / "tb")
    assert got["train/loss"] == [(25, 5.25), (50, 4.5)]
    assert got["train/lr"] == [(25, pytest.approx(1e-3)), (50, pytest.approx(2e-3))]
    assert got["val/acc"] == [(50, 0.75)] and got["val/eer"] == [(50, 0.125)]
    assert "val/eer_threshold" not in got                          # None is skipped, not logged as 0
    assert [s for s, _ in got["time/elapsed_s"]] == [25, 50, 50]


@needs_tensorboard
def test_resume_purges_steps_after_the_checkpoint(tmp_path):
    with TensorBoardWriter(tmp_path / "tb") as tb:
        for step in (25, 50, 75):
            tb.write(step=step, loss=float(step))
    with TensorBoardWriter(tmp_path / "tb", purge_step=50) as tb:  # the killed run had logged 50 and 75
        tb.write(step=50, loss=-50.0)
    assert _scalars(tmp_path / "tb")["train/loss"] == [(25, 25.0), (50, -50.0)]


@needs_tensorboard
def test_bad_rows_are_errors(tmp_path):
    with TensorBoardWriter(tmp_path / "tb") as tb:
        with pytest.raises(ValueError, match="integer 'step'"):
            tb.write(loss=1.0)
        with pytest.raises(ValueError, match="'note' must be a number"):
            tb.write(step=1, note="hi")


def test_missing_tensorboard_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # import now raises ImportError
    with pytest.raises(ConfigError, match=r"spkid\[tensorboard\]"):
        TensorBoardWriter(tmp_path / "tb")
