"""Loss and accuracy curves of a training run as a PNG (matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from shipyard.training.metrics import EpochMetrics


def curves_png(history: Sequence[EpochMetrics], title: str = "") -> bytes:
    """Return a PNG with losses on the left and accuracy-like metrics on the right, per epoch."""
    from matplotlib.figure import Figure  # Figure directly: no pyplot, so no global backend or GUI state

    epochs = [h.epoch for h in history]
    figure = Figure(figsize=(9, 3.6), dpi=100)
    losses, scores = figure.subplots(1, 2)
    losses.plot(epochs, [h.train_loss for h in history], marker="o", label="train_loss")
    names = sorted({k for h in history for k in h.metrics})
    for name in names:
        axis = losses if "loss" in name else scores
        axis.plot(epochs, [h.metrics.get(name, float("nan")) for h in history], marker="o", label=name)
    for axis, label in ((losses, "loss"), (scores, "score")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
