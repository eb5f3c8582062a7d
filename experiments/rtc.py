"""Real-time execution under inference latency: sync vs async vs real-time chunking, closed loop on the sim arm.

For each task and simulated latency, the same held-out episodes run with
- sync: the arm holds its last command while the policy thinks;
- async: it keeps executing the previous chunk and switches when the new one arrives;
- rtc: async, the new chunk guided towards the previous one (inference-time RTC, the plain checkpoint);
- rtc-trained: async, the committed actions given as a clean prefix (a checkpoint trained with train.rtc_max_delay).
It reports success (95 % Wilson interval), time to success, final error, tracking RMSE (follow), the worst jump at
a chunk switch, the worst gap between a new chunk and what the old one planned for that step, and the RMS jerk,
writes rtc.json and rtc.png, and measures the extra inference cost of guidance (median ms per chunk, interleaved
with plain sampling, on one observation of the task).

    .venv/bin/python experiments/rtc.py --task choose --checkpoint PLAIN/checkpoints/1500 \\
        --trained-checkpoint RTC/checkpoints/1500 --episodes 100 --out rtc_out

Each cell is an `softarm eval` run in OUT/<task>/<mode>/<latency>ms, reused when it is already there.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
import statistics
import time

import numpy as np

from softarm.apps.evaluate import EvalOptions, evaluate, reusable_report
from softarm.execution import delay_steps
from softarm.plotting import pyplot, save_figure
from softarm.policy import SoftArmPolicy
from softarm.sim.arm_model import ARMS
from softarm.sim.env import SoftArmEnv
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS

MODES = ("sync", "async", "rtc", "rtc-trained")


def cell(args, task: str, mode: str, latency: float) -> dict:
    out = Path(args.out) / task / mode / f"{latency:g}ms"
    checkpoint = args.trained_checkpoint if mode == "rtc-trained" else args.checkpoint
    execution = "rtc" if mode.startswith("rtc") else mode
    options = EvalOptions(task=task, episodes=args.episodes, checkpoint=checkpoint, replan=args.replan, videos=0,
                          arm=args.arm, latency_ms=latency, execution=execution,
                          noise_scale=args.noise_scale)  # fmt: skip
    report = reusable_report(options, out)
    return report["summary"] if report else evaluate(options, out)


def guidance_cost(args, task: str, repeats: int) -> dict:
    """Median ms per chunk: plain sampling, guided (inference-time RTC) and clean-prefix (trained) sampling of the
    same observation, interleaved so that the machine's drift hits all three alike."""
    load = functools.partial(SoftArmPolicy.from_checkpoint, noise_scale=args.noise_scale)
    plain = load(args.checkpoint)
    trained = load(args.trained_checkpoint) if args.trained_checkpoint else None
    with SoftArmEnv(ARMS[args.arm]) as env:
        static = StaticArm(env)
        spec = TASKS[task].sample(10**6, static, env.control_hz)
        env.set_payload(spec.payload)
        env.reset(static.equilibrium(spec.initial_command), spec.initial_command)
        env.place_balls(spec.balls(0))
        obs = {"images": env.render(), "graph_nodes": env.node_features(), "state": env.state(), "prompt": spec.prompt}
    previous = plain.infer(obs)["actions"][args.replan :]
    delay = delay_steps(200, 10.0)
    runs = {"plain": lambda: plain.infer(obs), "guided": lambda: plain.infer(obs, prev_actions=previous, delay=delay)}
    if trained is not None:
        runs["trained prefix"] = lambda: trained.infer(obs, prev_actions=previous, delay=delay)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 2):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= 2:  # warm-up
                times[name].append(1000 * (time.perf_counter() - start))
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"ms": medians, "ratio": {name: ms / medians["plain"] for name, ms in medians.items()}, "delay": delay}


def plot(results: dict, path: Path) -> None:
    tasks = list(results)
    fig, axes = pyplot().subplots(3, len(tasks), figsize=(5.5 * len(tasks), 10), squeeze=False)
    for column, task in enumerate(tasks):
        for mode in MODES:
            cells = results[task].get(mode)
            if not cells:
                continue
            latencies = sorted(cells, key=float)
            x = [float(lat) for lat in latencies]
            rate = np.array([cells[lat]["success_rate"] for lat in latencies])
            low, high = np.array([cells[lat]["success_rate_wilson95"] for lat in latencies]).T
            axes[0, column].errorbar(x, 100 * rate, yerr=100 * np.array([rate - low, high - rate]), marker="o",
                                     capsize=3, label=mode)  # fmt: skip
            axes[1, column].plot(x, [cells[lat]["switch_jump_mean"] for lat in latencies], marker="o", label=mode)
            axes[2, column].plot(x, [cells[lat]["chunk_gap_mean"] for lat in latencies], marker="o", label=mode)
        axes[0, column].set(title=task, ylabel="success (%), 95 % Wilson interval", ylim=(-5, 105))
        axes[1, column].set(ylabel="step at a chunk switch\n(fraction of command range)")
        axes[2, column].set(xlabel="inference latency (ms)", ylabel="new chunk - old plan at switch\n(fraction)")
        axes[0, column].legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint trained without RTC")
    parser.add_argument("--trained-checkpoint", help="the same training with train.rtc_max_delay (rtc-trained)")
    parser.add_argument("--task", action="append", help="choose, follow or reach (repeatable; default choose)")
    parser.add_argument("--latencies", default="0,100,200,300", help="simulated inference latencies, ms")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--replan", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30, help="timed inferences per kind for the guidance cost")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="of the flow's starting noise (softarm eval)")
    parser.add_argument("--arm", default="pneumatic")
    parser.add_argument("--out", default="rtc_out")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.latencies, args.episodes, args.repeats = "0,100", 1, 1
    tasks, latencies = args.task or ["choose"], [float(x) for x in args.latencies.split(",")]
    modes = [m for m in MODES if m != "rtc-trained" or args.trained_checkpoint]
    results: dict = {}
    for task in tasks:
        results[task] = {mode: {f"{lat:g}": cell(args, task, mode, lat) for lat in latencies} for mode in modes}
    cost = guidance_cost(args, tasks[0], args.repeats)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "rtc.json").write_text(json.dumps({"results": results, "guidance_cost": cost}, indent=2))
    plot(results, Path(args.out) / "rtc.png")
    for task in tasks:
        rmse = "tracking_rmse_mm_median" in next(iter(results[task]["sync"].values()))
        print(f"\n{task}, {args.episodes} episodes per cell, re-plan every {args.replan} steps, noise scale "
              f"{args.noise_scale:g}")  # fmt: skip
        print("| latency | execution | success | 95 % interval | time to success (s) | final error (mm) |"
              + (" tracking RMSE (mm) |" if rmse else "") + " switch jump | chunk gap | jerk RMS |")  # fmt: skip
        print("|---" * (9 + rmse) + "|")
        for lat in latencies:
            for mode in modes:
                s = results[task][mode][f"{lat:g}"]
                low, high = s["success_rate_wilson95"]
                tts = f"{s['time_to_success_s_median']:.2f}" if s["time_to_success_s_median"] is not None else "-"
                print(f"| {lat:g} ms | {mode} | {s['successes']}/{s['episodes']} | "
                      f"{100 * low:.0f}-{100 * high:.0f} % | {tts} | {s['final_error_mm_median']:.1f} |"
                      + (f" {s['tracking_rmse_mm_median']:.1f} |" if rmse else "")
                      + f" {s['switch_jump_mean']:.3f} | {s['chunk_gap_mean']:.3f} |"
                      + f" {s['jerk_rms_mean']:.4f} |")  # fmt: skip
    print(f"\ninference cost at a delay of {cost['delay']} steps (median ms per chunk, {args.repeats} each, "
          "interleaved):")  # fmt: skip
    for name, ms in cost["ms"].items():
        print(f"  {name}: {ms:.1f} ms ({cost['ratio'][name]:.2f}x plain)")
    print(f"wrote {args.out}/rtc.json and rtc.png")


if __name__ == "__main__":
    main()
