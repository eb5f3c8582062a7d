"""The demo's report: loss curves and success rates as PNGs, and report.md that states what the numbers say."""

from __future__ import annotations

import json
from pathlib import Path

from softarm.evaluate import wilson_interval

LABELS = {"expert": "scripted expert", "expert-blind": "expert, payload-blind", "graph": "pi0 + graph",
          "no_graph": "pi0, no graph", "random": "random"}  # fmt: skip
# The payload-blind expert plans for 25 g: close enough in the middle band, a miss at either end, where only a policy
# that senses its shape can still be right.
PAYLOAD_BANDS = {
    "light (< 10 g)": (0.0, 10.0),
    "middle (10-40 g)": (10.0, 40.0),
    "heavy (>= 40 g)": (40.0, float("inf")),
}
COLORS = {"expert": "tab:gray", "expert-blind": "silver", "graph": "tab:green", "no_graph": "tab:orange",
          "random": "tab:red"}  # fmt: skip


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_losses(path: Path, runs: dict[str, Path]) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run_dir in runs.items():
        records = _metrics(run_dir)
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_loss_ema"]) for r in records if "val_loss_ema" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=COLORS[name], alpha=0.5, label=f"{LABELS[name]}: train")
        if val:
            ax.plot(*zip(*val, strict=True), color=COLORS[name], marker="o", label=f"{LABELS[name]}: validation (EMA)")
    ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log", title="training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_success(path: Path, episodes: dict[str, list[dict]]) -> Path:
    """Success overall and per payload band (95 % Wilson intervals), and where the tip ended; one policy per entry."""
    plt = _plt()
    names = list(episodes)
    fig, (overall, bands, errors) = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [4, 5, 4]})
    width = 0.8 / len(names)

    def bar(ax, x: float, successes: int, n: int, name: str, **kwargs) -> float:
        rate, (low, high) = 100 * successes / n, (100 * v for v in wilson_interval(successes, n))
        ax.bar(x, rate, color=COLORS[name], **kwargs)
        ax.errorbar(x, rate, yerr=[[rate - low], [high - rate]], color="k", capsize=3)
        return rate

    for i, name in enumerate(names):
        successes, n = _successes(episodes[name])
        rate = bar(overall, i, successes, n, name, width=0.8)
        overall.text(i, rate + 2, f"{successes}/{n}", ha="center", fontsize=9)
        offset = (i - (len(names) - 1) / 2) * width
        for j, band in enumerate(PAYLOAD_BANDS.values()):
            successes, n = _successes(episodes[name], band)
            if n:
                bar(bands, 1 + j + offset, successes, n, name, width=width, label=LABELS[name] if j == 0 else None)
    overall.set(xticks=range(len(names)), ylim=(0, 110), ylabel="success (%), 95 % Wilson interval",
                title="reach the named ball (tip within 10 mm)")  # fmt: skip
    overall.set_xticklabels([LABELS[n] for n in names], rotation=20, ha="right")
    bands.set(
        xticks=range(1, len(PAYLOAD_BANDS) + 1),
        ylim=(0, 130),
        yticks=range(0, 101, 20),
        title="by payload: a blind plan misses light and heavy",
    )
    bands.set_xticklabels(list(PAYLOAD_BANDS))
    bands.legend(fontsize=8, loc="upper center", ncol=3)
    errors.boxplot([[e["final_error_mm"] for e in episodes[name]] for name in names])
    errors.set_xticklabels([LABELS[n] for n in names], rotation=20, ha="right")
    errors.axhline(10, color="tab:red", ls="--", lw=1)
    errors.set(yscale="log", ylabel="final tip error (mm)", title="where the tip ended")
    for ax in (overall, bands, errors):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row(name: str, s: dict) -> str:
    low, high = s["success_rate_wilson95"]
    tts = s["time_to_success_s_median"]
    return (
        f"| {LABELS[name]} | {s['successes']}/{s['episodes']} ({100 * s['success_rate']:.0f} %) | "
        f"{100 * low:.0f}-{100 * high:.0f} % | {s['final_error_mm_median']:.1f} | {s['final_error_mm_mean']:.1f} | "
        f"{'-' if tts is None else f'{tts:.1f}'} |"
    )


def _successes(rows: list[dict], band: tuple[float, float] = (0.0, float("inf"))) -> tuple[int, int]:
    group = [e["success"] for e in rows if band[0] <= e["payload_g"] < band[1]]
    return sum(group), len(group)


def _by_payload(episodes: dict[str, list[dict]]) -> list[str]:
    """Success split by payload band: where a policy that cannot sense its shape should lose."""
    lines = [f"| policy | {' | '.join(f'success, {band}' for band in PAYLOAD_BANDS)} |", "|---" * 4 + "|"]
    for name, rows in episodes.items():
        cells = [_successes(rows, band) for band in PAYLOAD_BANDS.values()]
        lines.append(f"| {LABELS[name]} | {' | '.join(f'{s}/{n}' if n else '-' for s, n in cells)} |")
    return lines


def _verdict(graph: tuple[int, int], no_graph: tuple[int, int], where: str) -> str:
    """Graph vs no graph, (successes, episodes) each: a difference is claimed only where the 95 % intervals part."""
    (g, g_n), (n, n_n) = graph, no_graph
    (g_low, g_high), (n_low, n_high) = wilson_interval(g, g_n), wilson_interval(n, n_n)
    counts = f"{where}: {g}/{g_n} with the graph, {n}/{n_n} without"
    if g_low > n_high or n_low > g_high:
        better = "with" if g_low > n_high else "without"
        return f"{counts}; the model {better} the graph succeeds more often, and the 95 % intervals do not overlap."
    rate_g, rate_n = g / max(g_n, 1), n / max(n_n, 1)
    ahead = "a tie" if rate_g == rate_n else f"the model {'with' if rate_g > rate_n else 'without'} the graph is ahead"
    return f"{counts}; the 95 % intervals overlap, so this run does not separate them ({ahead})."


def _extremes(rows: list[dict]) -> tuple[int, int]:
    """Successes in the light and heavy bands together: the episodes a payload-blind plan misses."""
    light, heavy = (_successes(rows, PAYLOAD_BANDS[band]) for band in ("light (< 10 g)", "heavy (>= 40 g)"))
    return light[0] + heavy[0], light[1] + heavy[1]


def write_report(out: Path, summaries: dict[str, dict], runs: dict[str, Path]) -> Path:
    episodes = {name: json.loads((out / "eval" / name / "eval.json").read_text())["episodes"] for name in summaries}
    plot_losses(out / "loss.png", runs)
    plot_success(out / "success.png", episodes)
    val = {
        name: next((r["val_loss_ema"] for r in reversed(_metrics(run_dir)) if "val_loss_ema" in r), None)
        for name, run_dir in runs.items()
    }
    lines = [
        "# softarm demo report",
        "",
        'Task `choose`: the prompt names one of three balls ("reach the blue ball"); success = the tip stays within '
        "10 mm of it for 0.3 s within 5 s. Each episode starts from a random pose and carries a random 0-50 g payload "
        "on the tip, unknown to the policies: the same pressures then put the tip in a different place. Both models "
        "are the tiny real PI0Pytorch, trained from scratch on the same episodes with the same seed and steps; "
        "'pi0 + graph' also reads the 10 x 19 node graph (fusion `state`), 'pi0, no graph' has only the 10 chamber "
        "pressures in its state slot. The payload-blind expert plans for a 25 g payload whatever the tip carries: what "
        "a controller without shape sensing achieves open loop. Evaluation episodes are held out (seeds from "
        "1,000,000).",
        "",
        "| policy | success | 95 % interval | final tip error, median (mm) | mean (mm) | time to success, median (s) |",
        "|---|---|---|---|---|---|",
        *(_row(name, s) for name, s in summaries.items()),
        "",
        _verdict(_successes(episodes["graph"]), _successes(episodes["no_graph"]), "All episodes"),
        "",
        "By payload: the payload-blind expert's plan for 25 g is close enough in the middle band and misses at either "
        "end, where only a policy that senses its shape can still be right.",
        "",
        *_by_payload(episodes),
        "",
        _verdict(*(_extremes(episodes[name]) for name in ("graph", "no_graph")), "Light or heavy payload"),
        "",
        "Validation loss (EMA weights, last evaluation): "
        + ", ".join(f"{LABELS[n]} {v:.4f}" for n, v in val.items() if v is not None)
        + ".",
        "",
        "![success](success.png)",
        "",
        "![loss](loss.png)",
        "",
        "Rollouts of the graph model (base camera | tip camera): ![rollouts](rollouts_graph.gif)",
        "",
        "Each policy's episodes, plots and GIF are in `eval/<policy>/`; the training runs (metrics.jsonl, "
        "TensorBoard, checkpoints) in `runs/<model>/`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
