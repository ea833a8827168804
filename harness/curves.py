"""The per-run learning-curve figure (train_eval, val and running train loss; the gap)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.metrics import Evaluation  # noqa: E402


def learning_curves(history: list[Evaluation], title: str = "") -> plt.Figure:
    frame = pd.DataFrame({
        "epoch": [e.epoch for e in history],
        "train (running, regularized)": [e.train_loss for e in history],
        "train (eval mode)": [e.train_eval_loss for e in history],
        "val": [e.val_loss for e in history],
    }).melt("epoch", var_name="loss", value_name="nats/char")
    fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(10, 3.6))
    sns.lineplot(frame, x="epoch", y="nats/char", hue="loss", marker="o", ax=ax_loss)
    ax_loss.set_title("loss")
    sns.lineplot(x=[e.epoch for e in history], y=[e.gap for e in history], marker="o", ax=ax_gap,
                 color="tab:red")
    ax_gap.axhline(0, color="grey", lw=0.8)
    ax_gap.set(title="gap = val - train (eval mode)", xlabel="epoch", ylabel="nats/char")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
