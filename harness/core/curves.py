"""The per-run learning-curve figure (train_eval, val and running train loss; the gap).

Plain matplotlib: it is drawn at the end of every run, so its cost counts toward tracking
overhead (benchmarks/tracking_overhead.py); seaborn's statistics machinery has nothing to
aggregate here.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures are files
import matplotlib.pyplot as plt  # noqa: E402

from harness.core.metrics import Evaluation  # noqa: E402


def learning_curves(history: list[Evaluation], title: str = "") -> plt.Figure:
    epochs = [e.epoch for e in history]
    # Fixed margins: a layout engine would draw the figure twice per save.
    fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(10, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.84, wspace=0.22)
    for label, values in (("train (running, regularized)", [e.train_loss for e in history]),
                          ("train (eval mode)", [e.train_eval_loss for e in history]),
                          ("val", [e.val_loss for e in history])):
        ax_loss.plot(epochs, values, marker="o", markersize=4, label=label)
    ax_loss.set(title="loss", xlabel="epoch", ylabel="nats/char")
    ax_loss.legend(title="loss")
    ax_gap.plot(epochs, [e.gap for e in history], marker="o", markersize=4, color="tab:red")
    ax_gap.axhline(0, color="grey", lw=0.8)
    ax_gap.set(title="gap = val - train (eval mode)", xlabel="epoch", ylabel="nats/char")
    if title:
        fig.suptitle(title)
    return fig
