"""A run's metrics.jsonl: written while training (and TensorBoard event files), read back, plotted as a PNG."""

from __future__ import annotations

import json
from pathlib import Path
import time

from softarm.layout import METRICS_FILE, TENSORBOARD_DIR
from softarm.plotting import pyplot, save_figure


class MetricsLog:
    """Written by rank 0 only; `last` holds the latest values on every rank."""

    def __init__(self, run_dir: Path, *, main: bool, tensorboard: bool, step: int) -> None:
        self.path, self.main, self.writer, self.last = run_dir / METRICS_FILE, main, None, {}
        self.started, self.since_step = time.perf_counter(), step
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(run_dir / TENSORBOARD_DIR)

    def record_step(self, step: int, values: dict, samples_per_step: int) -> None:
        """A step's training numbers (the one host sync) and the throughput since the last call; starts `last` anew."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.last = {}
        self.record({"step": step, **{k: float(v) for k, v in values.items()},
                     "samples_per_s": (step - self.since_step) * samples_per_step / elapsed})  # fmt: skip
        self.started, self.since_step = time.perf_counter(), step

    def record(self, values: dict) -> None:
        self.last.update(values)
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(values) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if key != "step":
                    self.writer.add_scalar(key, value, values["step"])

    def close(self, plot: Path) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.main:
            plot_metrics(self.path, plot)


def read_metrics(metrics_path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (one JSON object per line); none if the file is not there."""
    if not metrics_path.is_file():
        return []
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out_path: Path) -> Path | None:
    if not metrics_path.is_file():
        return None
    records = read_metrics(metrics_path)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation"), ("val_loss_ema", "validation (EMA)")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o" if key != "loss" else None, markersize=3)
    ax.set(xlabel="step", ylabel="masked flow-matching loss", yscale="log", title=metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_path)
