"""The training log: ``log.csv`` rows and the loss plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_text

LOG_NAME = "log.csv"
LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "patches_per_s", "elapsed_s"]


def start_log(path: Path) -> None:
    """Create ``log.csv`` with its header unless it exists."""
    if not path.exists():
        atomic_write_text(path, ",".join(LOG_FIELDS) + "\n")


def append_row(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_log(path) -> list[dict]:
    """Rows of a training ``log.csv`` as dicts of floats."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def plot_loss(log_path, png_path, title: str = "training loss") -> Path:
    """PNG of the loss curve (log scale) from ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="mean over the logging interval")
    if len(loss) >= 20:
        k = max(5, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"running mean of {k} rows")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("masked eps MSE")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
