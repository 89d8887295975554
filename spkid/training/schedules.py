"""Schedules driven by one notion of progress: the fraction of the run done, by steps or by the time budget.

``progress = max(step / train.steps, elapsed / (60 * train.max_minutes))`` in [0, 1] (the time term only with a
budget). The learning rate is a linear warmup over ``train.warmup_steps`` steps times a cosine from 1 to 0 over
progress; the AM/AAM margin ramps linearly to full over the first ``train.margin_warmup`` of progress; weight
averaging collects snapshots over the last ``train.average_last`` of progress.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    steps: int
    budget_s: float                 # 0: no time budget
    lr: float
    warmup_steps: int
    margin: float                   # full margin of an AM/AAM head (0 for softmax)
    margin_warmup: float
    average_last: float
    average_every: int

    @classmethod
    def from_config(cls, cfg) -> "Schedule":
        t, m = cfg.train, cfg.model
        return cls(steps=t.steps, budget_s=t.max_minutes * 60, lr=t.lr, warmup_steps=t.warmup_steps,
                   margin=m.margin if m.head in ("am", "aam") else 0.0, margin_warmup=t.margin_warmup,
                   average_last=t.average_last, average_every=t.average_every)

    def progress(self, step: int, elapsed: float) -> float:
        p = step / self.steps
        if self.budget_s > 0:
            p = max(p, elapsed / self.budget_s)
        return min(1.0, p)

    def done(self, step: int, elapsed: float) -> bool:
        return self.progress(step, elapsed) >= 1.0

    def lr_at(self, step: int, progress: float) -> float:
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return self.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))

    def margin_at(self, progress: float) -> float:
        if self.margin_warmup <= 0:
            return self.margin
        return self.margin * min(1.0, progress / self.margin_warmup)

    def average_now(self, step: int, progress: float) -> bool:
        """Fold the weights into the average after this step?"""
        return self.average_last > 0 and progress >= 1 - self.average_last and step % self.average_every == 0
