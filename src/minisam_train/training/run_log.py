"""The training log of a run: rows in ``metrics.csv`` (adapt and distill) and a PNG of adapt's curves.

The whole CSV is rewritten atomically from the rows held in memory (a few hundred at most), so a resumed
run, whose rows come back from the checkpoint, produces the same file as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .checkpointing import atomic_write_text

COLUMNS = ("step", "loss", "bce", "dice_loss", "iou_loss", "lr", "val_dice", "val_dice_box",
           "val_dice_point1", "elapsed_s")


def write_csv(rows: list[dict], path, columns=COLUMNS) -> None:
    """Rewrite ``path`` from ``rows``; ``columns=None``: every key the rows hold, in order of appearance."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r)) or ["step"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write_text(Path(path), buf.getvalue())


def plot_curves(rows: list[dict], path, title: str = "") -> Path:
    """Training loss and validation Dice against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    train = [r for r in rows if r.get("loss") is not None]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (BCE + Dice + IoU)", color="tab:blue")
    ax2 = ax.twinx()
    for key, style, label in (("val_dice_box", "-o", "val Dice, box"),
                              ("val_dice_point1", "-s", "val Dice, 1 point (deployable)")):
        val = [r for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        if val:
            ax2.plot([r["step"] for r in val], [r[key] for r in val], style, ms=3, label=label)
    ax2.set_ylabel("validation Dice")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax2.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
