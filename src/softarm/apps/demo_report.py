"""The demo's report: loss curves and success rates as PNGs, and report.md that states what the numbers say.

Evaluations are pooled before anything is claimed: the episodes of every training seed of a model, and, for the
graph-vs-no-graph verdicts, the episodes of every task. A difference is claimed only where the 95 % Wilson
intervals of the pooled counts part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
from pathlib import Path

import numpy as np

from softarm.apps.evaluate import wilson_interval
from softarm.layout import LOSS_PLOT, METRICS_FILE
from softarm.plotting import pyplot, save_figure
from softarm.train.metrics import read_metrics

LABELS = {"expert": "scripted expert", "expert-blind": "expert, payload-blind", "base": "base (graph), not fine-tuned",
          "graph": "pi0 + graph", "no_graph": "pi0, no graph", "random": "random"}  # fmt: skip
MODELS = ("graph", "no_graph")
# The payload-blind expert plans for 25 g: close enough in the middle band, a miss at either end, where only a policy
# that senses its shape can still be right.
PAYLOAD_BANDS = {
    "light (< 10 g)": (0.0, 10.0),
    "middle (10-40 g)": (10.0, 40.0),
    "heavy (>= 40 g)": (40.0, float("inf")),
}
EXTREMES = ("light (< 10 g)", "heavy (>= 40 g)")
COLORS = {"expert": "tab:gray", "expert-blind": "silver", "base": "tab:olive", "graph": "tab:green",
          "no_graph": "tab:orange", "random": "tab:red"}  # fmt: skip
TASK_TEXT = {
    "reach": "`reach` (vision): one ball anywhere in the workspace; success = the tip stays within 10 mm of it "
    "for 0.3 s within 5 s",
    "choose": "`choose` (language): three balls at fixed places, the prompt names one; success as for reach",
    "follow": "`follow` (feedback): a ball circling at 4 cm radius around a random centre; success = tracking RMSE "
    "below 15 mm after 2 s",
}

Episodes = dict[str, dict[str, list[dict]]]  # task -> policy -> episode rows, pooled over seeds


def successes(rows: Sequence[dict], band: tuple[float, float] = (0.0, float("inf"))) -> tuple[int, int]:
    group = [e["success"] for e in rows if band[0] <= e["payload_g"] < band[1]]
    return sum(group), len(group)


def extremes(rows: Sequence[dict]) -> tuple[int, int]:
    """Successes in the light and heavy bands together: where a plan for the mean payload is furthest off."""
    light, heavy = (successes(rows, PAYLOAD_BANDS[band]) for band in EXTREMES)
    return light[0] + heavy[0], light[1] + heavy[1]


def pooled(episodes: Episodes, policy: str, tasks: Sequence[str]) -> list[dict]:
    return [row for task in tasks for row in episodes[task].get(policy, [])]


def verdict(graph: tuple[int, int], no_graph: tuple[int, int], where: str) -> str:
    """Graph vs no graph, (successes, episodes) each: a difference is claimed only where the 95 % intervals part."""
    (g, g_n), (n, n_n) = graph, no_graph
    (g_low, g_high), (n_low, n_high) = wilson_interval(g, g_n), wilson_interval(n, n_n)
    rate_g, rate_n = g / max(g_n, 1), n / max(n_n, 1)
    counts = (
        f"{where}: {g}/{g_n} ({100 * rate_g:.0f} %, {100 * g_low:.0f}-{100 * g_high:.0f}) with the graph, "
        f"{n}/{n_n} ({100 * rate_n:.0f} %, {100 * n_low:.0f}-{100 * n_high:.0f}) without, "
        f"a difference of {100 * (rate_g - rate_n):+.0f} points"
    )
    if g_low > n_high or n_low > g_high:
        better = "with" if g_low > n_high else "without"
        return f"{counts}; the model {better} the graph succeeds more often, and the 95 % intervals do not overlap."
    ahead = "a tie" if rate_g == rate_n else f"the model {'with' if rate_g > rate_n else 'without'} the graph is ahead"
    return f"{counts}; the 95 % intervals overlap, so these episodes do not separate them ({ahead})."


def plot_losses(path: Path, runs: Mapping[str, Sequence[Path]]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run_dirs in runs.items():
        for k, run_dir in enumerate(run_dirs):
            records = read_metrics(run_dir / METRICS_FILE)
            train = [(r["step"], r["loss"]) for r in records if "loss" in r]
            val = [(r["step"], r["val_loss_ema"]) for r in records if "val_loss_ema" in r]
            label = LABELS[name] + (f" (seed {k})" if len(run_dirs) > 1 else "")
            if train:
                ax.plot(*zip(*train, strict=True), color=COLORS[name], alpha=0.4, label=f"{label}: train")
            if val:
                ax.plot(*zip(*val, strict=True), color=COLORS[name], marker="o", label=f"{label}: validation (EMA)")
    ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log", title="training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _bar(ax, x: float, counts: tuple[int, int], name: str, **kwargs) -> float:
    hits, n = counts
    rate, (low, high) = 100 * hits / n, (100 * v for v in wilson_interval(hits, n))
    ax.bar(x, rate, color=COLORS[name], **kwargs)
    ax.errorbar(x, rate, yerr=[[rate - low], [high - rate]], color="k", capsize=3)
    return rate


def plot_success(path: Path, episodes: Episodes) -> Path:
    """One panel per task (success with 95 % Wilson intervals), and the payload bands pooled over the tasks the
    models were scored on (all tasks if none)."""
    plt = pyplot()
    tasks = list(episodes)
    scored = [t for t in tasks if any(m in episodes[t] for m in MODELS)] or tasks
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.2 * (len(tasks) + 1), 4.6))
    for ax, task in zip(axes, tasks, strict=False):
        names = list(episodes[task])
        for i, name in enumerate(names):
            counts = successes(episodes[task][name])
            rate = _bar(ax, i, counts, name, width=0.8)
            ax.text(i, rate + 2, f"{counts[0]}/{counts[1]}", ha="center", fontsize=8)
        ax.set(xticks=range(len(names)), ylim=(0, 112), title=task)
        ax.set_xticklabels([LABELS[n] for n in names], rotation=25, ha="right", fontsize=8)
    axes[0].set_ylabel("success (%), 95 % Wilson interval")
    bands = axes[-1]
    names = [n for n in LABELS if any(n in episodes[t] for t in scored)]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rows = pooled(episodes, name, scored)
        offset = (i - (len(names) - 1) / 2) * width
        for j, band in enumerate(PAYLOAD_BANDS.values()):
            counts = successes(rows, band)
            if counts[1]:
                _bar(bands, j + offset, counts, name, width=width, label=LABELS[name] if j == 0 else None)
    bands.set(xticks=range(len(PAYLOAD_BANDS)), ylim=(0, 135), yticks=range(0, 101, 20),
              title=f"{', '.join(scored)}, by payload (blind plans miss light, heavy)")  # fmt: skip
    bands.set_xticklabels(list(PAYLOAD_BANDS), fontsize=8)
    bands.legend(fontsize=7, loc="upper center", ncol=3)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path, dpi=110)


def _row(name: str, rows: Sequence[dict], evaluations: int) -> str:
    hits, n = successes(rows)
    low, high = wilson_interval(hits, n)
    errors = [r["final_error_mm"] for r in rows]
    times = [r["time_to_success_s"] for r in rows if r["time_to_success_s"] is not None]
    rmse = [r["tracking_rmse_mm"] for r in rows if "tracking_rmse_mm" in r]
    median = lambda values: f"{np.median(values):.1f}" if values else "-"  # noqa: E731  # as eval.json's summary
    seeds = f" ({evaluations} seeds)" if evaluations > 1 else ""
    return (
        f"| {LABELS[name]}{seeds} | {hits}/{n} ({100 * hits / n:.0f} %) | {100 * low:.0f}-{100 * high:.0f} % | "
        f"{median(errors)} | {median(rmse)} | {median(times)} |"
    )


def _by_payload(episodes: Mapping[str, Sequence[dict]]) -> list[str]:
    lines = [f"| policy | {' | '.join(f'success, {band}' for band in PAYLOAD_BANDS)} |", "|---" * 4 + "|"]
    for name, rows in episodes.items():
        cells = [successes(rows, band) for band in PAYLOAD_BANDS.values()]
        lines.append(f"| {LABELS[name]} | {' | '.join(f'{s}/{n}' if n else '-' for s, n in cells)} |")
    return lines


def _cell(rows: Sequence[dict] | None) -> str:
    if not rows:
        return "-"
    hits, n = successes(rows)
    low, high = wilson_interval(hits, n)
    return f"{hits}/{n} ({100 * low:.0f}-{100 * high:.0f} %)"


def _fine_tuning(episodes: Episodes) -> list[str]:
    """The base alone next to the models fine-tuned from it, per task: what fine-tuning added, and what it kept."""
    names = [n for n in ("base", *MODELS) if any(n in episodes[t] for t in episodes)]
    lines = ["## What fine-tuning added", "", f"| task | {' | '.join(LABELS[n] for n in names)} |",
             "|---" * (len(names) + 1) + "|"]  # fmt: skip
    lines += [f"| {task} | {' | '.join(_cell(episodes[task].get(n)) for n in names)} |" for task in episodes]
    for task in episodes:
        if "base" in episodes[task] and "graph" in episodes[task]:
            base, tuned = successes(episodes[task]["base"]), successes(episodes[task]["graph"])
            (b_low, b_high), (t_low, t_high) = wilson_interval(*base), wilson_interval(*tuned)
            change = "gained" if t_low > b_high else "lost" if t_high < b_low else "kept (intervals overlap)"
            lines.append(f"- {task}: the fine-tuned graph model {change}: {_cell(episodes[task]['base'])} before, "
                         f"{_cell(episodes[task]['graph'])} after.")  # fmt: skip
    return [*lines, ""]


def load_evaluations(paths: Mapping[str, Mapping[str, Sequence[Path]]]) -> tuple[Episodes, dict]:
    """task -> policy -> eval.json paths (one per training seed for a model) -> pooled rows and the count of each."""
    episodes: Episodes = {}
    counts: dict[tuple[str, str], int] = {}
    for task, policies in paths.items():
        episodes[task] = {}
        for policy, files in policies.items():
            episodes[task][policy] = [row for f in files for row in json.loads(Path(f).read_text())["episodes"]]
            counts[task, policy] = len(files)
    return episodes, counts


def write_report(
    out: Path, evaluations: Mapping[str, Mapping[str, Sequence[Path]]], runs: Mapping[str, Sequence[Path]],
    *, intro: str = "", cameras: Sequence[str] = ("base", "side", "tip"),
) -> Path:  # fmt: skip
    """report.md, success.png and loss.png in `out` from the evaluations and the training runs; `cameras` are the
    arm's, side by side in the rollout GIFs."""
    episodes, counts = load_evaluations(evaluations)
    tasks = list(episodes)
    plot_losses(out / LOSS_PLOT, runs)
    plot_success(out / "success.png", episodes)
    lines = ["# softarm demo report", "", intro, ""] if intro else ["# softarm demo report", ""]
    for task in tasks:
        lines += [
            f"## {task}",
            "",
            TASK_TEXT.get(task, f"`{task}`") + ".",
            "",
            "| policy | success | 95 % interval | final tip error, median (mm) | tracking RMSE, median (mm) | "
            "time to success, median (s) |",
            "|---|---|---|---|---|---|",
            *(_row(name, rows, counts[task, name]) for name, rows in episodes[task].items()),
            "",
            *_by_payload(episodes[task]),
            "",
        ]
        if all(m in episodes[task] for m in MODELS):
            graph, no_graph = (episodes[task][m] for m in MODELS)
            lines += [verdict(successes(graph), successes(no_graph), "All episodes"), ""]
        else:
            lines += ["No model was trained on this task in this run.", ""]
        if (out / f"rollouts_{task}.gif").is_file():
            whose = "graph model" if "graph" in episodes[task] else "scripted expert"
            views = " | ".join(cameras)
            lines += [f"Rollouts of the {whose} ({views} camera): ![{task}](rollouts_{task}.gif)", ""]
    if any("base" in episodes[t] for t in tasks):
        lines += _fine_tuning(episodes)
    present = [t for t in tasks if all(m in episodes[t] for m in MODELS)]
    if present:
        graph, no_graph = (pooled(episodes, m, present) for m in MODELS)
        blind_hits, blind_n = extremes(pooled(episodes, "expert-blind", present))
        blind = f", and the payload-blind expert reaches {blind_hits}/{blind_n} of these episodes" if blind_n else ""
        lines += [
            "## Graph vs no graph, pooled over the tasks",
            "",
            f"Where the payload matters most (light or heavy: a plan for the mean payload is furthest off{blind}):",
            "",
            verdict(extremes(graph), extremes(no_graph), "Light or heavy payload, " + ", ".join(present)),
            "",
            verdict(successes(graph), successes(no_graph), "All episodes, " + ", ".join(present)),
            "",
        ]
    val = {}
    for name, run_dirs in runs.items():
        values = [
            next((r["val_loss_ema"] for r in reversed(read_metrics(d / METRICS_FILE)) if "val_loss_ema" in r), None)
            for d in run_dirs
        ]
        val[name] = [v for v in values if v is not None]
    lines += [
        "Validation loss (EMA weights, last evaluation): "
        + ", ".join(f"{LABELS[n]} {' / '.join(f'{v:.4f}' for v in vs)}" for n, vs in val.items() if vs)
        + ".",
        "",
        "![success](success.png)",
        "",
        "![loss](loss.png)",
        "",
        "Each policy's episodes, plots and GIF are in `eval/<task>/<policy>/`; the training runs (metrics.jsonl, "
        "TensorBoard, checkpoints) in `runs/<model>/`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
