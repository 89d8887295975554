"""One matplotlib figure per function: plain arrays in, a ``matplotlib.figure.Figure`` out.

Figures are built with ``Figure()`` directly (no pyplot): no global state, no GUI backend, nothing to close.
"""
from __future__ import annotations

import numpy as np

from spkid.errors import ConfigError

TRAIN_PANELS = (("loss", "training loss (smoothed)", "train"), ("acc", "training accuracy (crops)", "train"),
                ("val_acc", "validation accuracy", "val"), ("val_eer", "validation EER", "val"),
                ("lr", "learning rate", "train"), ("steps_per_s", "steps / s", "train"))
DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99)


def _figure(w: float, h: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("spkid report needs matplotlib: pip install 'spkid[report]' "
                          "(matplotlib==3.10.7, scikit-learn==1.9.1)") from None
    return Figure(figsize=(w, h), layout="constrained")


def training_curves(curves, x: str = "step"):
    """Loss, training accuracy, validation accuracy and EER, learning rate and speed against ``x``.

    ``curves``: a list of :class:`spkid.report.runs.Curves` (one per run, overlaid); ``x``: ``"step"`` or
    ``"elapsed"`` (drawn in minutes).
    """
    if x not in ("step", "elapsed"):
        raise ValueError(f"x must be 'step' or 'elapsed', got {x!r}")
    fig = _figure(12, 6.2)
    axes = fig.subplots(2, 3).ravel()
    scale = 1 / 60 if x == "elapsed" else 1
    for c in curves:
        colour = None
        for ax, (key, title, kind) in zip(axes, TRAIN_PANELS):
            d = c.train if kind == "train" else c.val
            xs, ys = d[x] * scale, d[key]
            ok = np.isfinite(xs) & np.isfinite(ys)
            if not ok.any():
                continue
            (line,) = ax.plot(xs[ok], ys[ok], "o-" if kind == "val" else "-", ms=3, lw=1.4, color=colour,
                              label=c.label)
            colour = line.get_color()                  # one colour per run across panels
    for ax, (key, title, kind) in zip(axes, TRAIN_PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step" if x == "step" else "wall time (min)")
        ax.grid(alpha=0.3)
        if key in ("acc", "val_acc"):
            ax.set_ylim(0, 1.02)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
    if len(curves) > 1:
        axes[0].legend(fontsize=8)
    return fig


def per_speaker_accuracy(names: list[str], accuracy, counts):
    """Per-speaker accuracy ``(K,)`` sorted worst first, beside how many speakers reach each accuracy.

    ``counts`` ``(K,)``: test utterances per speaker (the resolution of each bar).
    """
    acc, n = np.asarray(accuracy, dtype=float), np.asarray(counts)
    order = np.lexsort((np.array(names), acc))
    fig = _figure(12, 3.4)
    ax, hist = fig.subplots(1, 2, width_ratios=(3, 1))
    ax.bar(np.arange(acc.size), acc[order], width=1.0 if acc.size > 60 else 0.8,
           color=np.where(acc[order] < 1, "#d95f02", "#1b9e77"))
    if acc.size <= 40:
        ax.set_xticks(np.arange(acc.size), [names[i] for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{acc.size} speakers, worst first (orange: at least one error); "
                      f"median {int(np.median(n))} test utterances each")
    ax.set_xlim(-0.5, acc.size - 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.axhline(acc.mean(), color="k", lw=0.8, ls="--", label=f"mean over speakers {acc.mean():.3f}")
    ax.legend(loc="lower right", fontsize=8)
    edges = np.linspace(0, 1, 11)
    per_bin, _, _ = hist.hist(acc, bins=edges, orientation="horizontal", color="#7570b3")
    for c, lo in zip(per_bin, edges[:-1]):
        if c:
            hist.text(c, lo + 0.05, f" {int(c)}", va="center", fontsize=7)
    hist.set_ylim(0, 1.02)
    hist.set_xscale("symlog", linthresh=1)             # one failing speaker stays visible beside 240 perfect ones
    hist.set_xlabel("speakers")
    hist.set_title("speakers per accuracy", fontsize=9)
    return fig


def confusion_heatmap(cm, names: list[str], order):
    """Row-normalised confusion matrix ``(K, K)`` in the speaker ``order`` ``(K,)``; log colour scale."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, NullFormatter

    cm = np.asarray(cm, dtype=float)
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    rate = rate[np.ix_(order, order)]
    k = rate.shape[0]
    size = 5.5 if k <= 30 else 8.5
    fig = _figure(size + 1.4, size)
    ax = fig.subplots()
    shown = np.where(rate > 0, rate, np.nan)         # blank where nothing was predicted
    low = min(0.1, rate[rate > 0].min()) if (rate > 0).any() else 0.1
    im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=low, vmax=1.0), interpolation="nearest",
                   aspect="auto")                    # "equal" fights the constrained layout and clips labels
    bar = fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true speaker's utterances")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    if k <= 60:
        labels, fs = [names[i] for i in order], 7 if k <= 30 else 5
        ax.set_xticks(np.arange(k), labels, rotation=90, fontsize=fs)
        ax.set_yticks(np.arange(k), labels, fontsize=fs)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted speaker")
    ax.set_ylabel("true speaker")
    return fig


def accuracy_by_duration(lo, hi, accuracy, low_ci, high_ci, counts):
    """Accuracy per duration bin (``(B,)`` arrays, seconds) with its confidence interval as error bars."""
    lo, hi, acc = (np.asarray(v, dtype=float) for v in (lo, hi, accuracy))
    err = np.vstack([acc - np.asarray(low_ci), np.asarray(high_ci) - acc])
    fig = _figure(7, 3.4)
    ax = fig.subplots()
    xs = np.arange(acc.size)
    ax.bar(xs, acc, color="#7570b3", alpha=0.85)
    ax.errorbar(xs, acc, yerr=err, fmt="none", ecolor="k", capsize=4, lw=1)
    for x, a, n in zip(xs, acc, counts):
        ax.text(x, 0.03, f"n={n}", ha="center", color="white", fontsize=8)
    ax.set_xticks(xs, [f"{a:.1f}–{b:.1f}" for a, b in zip(lo, hi)])
    ax.set_xlabel("utterance duration (s)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    return fig


def score_histograms(target, nontarget, lines: dict[str, float]):
    """Histograms of target ``(Pt,)`` and non-target ``(Pn,)`` cosine scores; ``lines``: name -> threshold."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    both = np.r_[target, nontarget]
    bins = np.linspace(both.min(), both.max(), 60)
    ax.hist(nontarget, bins=bins, density=True, alpha=0.6, color="#d95f02", label=f"non-target ({len(nontarget)})")
    ax.hist(target, bins=bins, density=True, alpha=0.6, color="#1b9e77", label=f"target ({len(target)})")
    for (name, thr), style in zip(lines.items(), ("--", ":", "-.")):
        ax.axvline(thr, color="k", ls=style, lw=1.2, label=f"{name} {thr:.3f}")
    ax.set_xlabel("cosine score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return fig


def det_curve(p_fa, p_miss, points: dict[str, tuple[float, float]]):
    """DET curve on normal-deviate (probit) axes: ``p_fa``/``p_miss`` ``(K,)``; ``points``: name -> (p_fa, p_miss)."""
    from scipy.stats import norm

    p_fa, p_miss = np.asarray(p_fa, dtype=float), np.asarray(p_miss, dtype=float)
    floor = DET_TICKS[0] / 2
    # the usual DET window ends at 60%; widen it so that every marked point (a far-off threshold too) is on it
    top = min(DET_TICKS[-1], max([0.6] + [max(fa, miss) for fa, miss in points.values()]))
    clip = lambda p: norm.ppf(np.clip(p, floor, top))            # noqa: E731 (0 and 1 are off the probit axis)
    fig = _figure(5.6, 5.2)
    ax = fig.subplots()
    ax.plot(clip(p_fa), clip(p_miss), color="#1f78b4", lw=1.6, label="DET")
    lim = norm.ppf([floor, top])
    ax.plot(lim, lim, color="0.6", lw=0.8, ls=":")                 # EER line: p_miss = p_fa
    for (name, (fa, miss)), marker in zip(points.items(), ("o", "s", "D", "^")):
        ax.plot(clip(fa), clip(miss), marker, ms=8, mfc="none", mew=2, label=f"{name} ({fa:.2%} FA, {miss:.2%} miss)")
    ticks = [t for t in DET_TICKS if t <= top + 1e-9]
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks], fontsize=8)
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks], fontsize=8)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false-accept rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def embedding_map(xy, speaker_ids, wrong):
    """2-D map ``(N, 2)`` coloured by speaker id ``(N,)``; ``wrong`` ``(N,)`` bool marks misclassified points.

    Beyond 20 speakers colours repeat, so each point is also joined by a faint line to its speaker's centre:
    short spokes = a speaker's utterances land together.
    """
    from matplotlib.collections import LineCollection

    xy, ids, wrong = np.asarray(xy, dtype=float), np.asarray(speaker_ids), np.asarray(wrong, dtype=bool)
    fig = _figure(7.5, 6.5)
    ax = fig.subplots()
    uniq, inv = np.unique(ids, return_inverse=True)
    k = uniq.size
    if k > 20:
        centre = np.zeros((k, 2))
        np.add.at(centre, inv, xy)
        centre /= np.bincount(inv, minlength=k)[:, None]
        ax.add_collection(LineCollection(np.stack([xy, centre[inv]], axis=1), colors="0.6", linewidths=0.5,
                                         alpha=0.6, zorder=1))
        colour, cmap = (inv * 0.618034) % 1.0, "hsv"      # golden-ratio hues: neighbouring ids differ
    else:
        colour, cmap = inv / 19, "tab20"
    ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap=cmap, vmin=0, vmax=1, s=14, alpha=0.9, linewidths=0, zorder=2)
    if wrong.any():
        ax.scatter(xy[wrong, 0], xy[wrong, 1], marker="x", c="k", s=30, lw=1.2, zorder=3,
                   label=f"misclassified ({wrong.sum()})")
        ax.legend(fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
