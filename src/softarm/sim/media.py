"""What people look at after an evaluation: a summary plot (PNG) and a few rollouts (GIF)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from softarm.plotting import pyplot, save_figure
from softarm.sim.tasks import SUCCESS_RADIUS


def save_eval_plot(path: Path, summary: dict, error_curves: Sequence[np.ndarray], control_hz: float) -> Path:
    """Left: success rate with its 95 % Wilson interval. Right: tip error over time, one line per episode."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 3]})
    rate, (low, high) = summary["success_rate"], summary["success_rate_wilson95"]
    left.bar([0], [100 * rate], color="tab:green", width=0.6)
    left.errorbar([0], [100 * rate], yerr=[[100 * (rate - low)], [100 * (high - rate)]], color="k", capsize=8)
    left.set(xticks=[0], xticklabels=[summary["policy"]], ylim=(0, 100), ylabel="success (%)",
             title=f"{summary['successes']}/{summary['episodes']} ({summary['task']})")  # fmt: skip
    for curve in error_curves:
        right.plot(np.arange(1, len(curve) + 1) / control_hz, curve, color="tab:blue", alpha=0.35, lw=1)
    right.axhline(1000 * SUCCESS_RADIUS, color="tab:red", ls="--", lw=1, label="10 mm")
    right.set(xlabel="time (s)", ylabel="tip error (mm)", yscale="log", title="tip to target, per episode")
    right.grid(alpha=0.3)
    right.legend()
    return save_figure(fig, path, dpi=110)


def save_rollout_gif(path: Path, rollouts: Sequence, cameras: Sequence[str], *, fps: float = 10.0) -> Path:
    """Cameras side by side, one episode after another, with step, tip error and outcome written on each frame."""
    frames = []
    for rollout in rollouts:
        for t in range(rollout.steps):
            image = Image.fromarray(np.concatenate([rollout.images[c][t] for c in cameras], axis=1))
            draw = ImageDraw.Draw(image)
            outcome = "success" if rollout.success else "fail"
            text = f"seed {rollout.spec.seed}  t={t / fps:.1f}s  err {1000 * rollout.errors[t]:.0f} mm  ({outcome})"
            draw.rectangle((0, 0, image.width, 14), fill=(0, 0, 0))
            draw.text((4, 1), text, fill=(255, 255, 255))
            frames.append(image.quantize(colors=128, method=Image.Quantize.FASTOCTREE))  # median cut: 10-100x slower
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path
