"""Can a checkpoint's vision tower see where a moving ball goes? Small readouts learn, from its frozen image tokens
of the current frame alone or of K frames `stride` control steps apart, where the `follow` ball is now and how far
it moves over the next `ahead` steps; scored on held-out episodes.

The ball circles a random centre either way round, so one frame shows where it is but not which way it goes
(docs/history.md): a readout of one frame guesses the way round (50 %), and one of several frames can tell it only if
the tower's tokens place the ball precisely enough from frame to frame. Minutes instead of a fine-tuning run and a
closed-loop evaluation: what a readout cannot find in the tokens, a policy reading the same tokens cannot use either;
what it finds, a policy could. Writes motion_probe.json, motion_probe.md (the table) and motion_probe.png into OUT.

In the expert's demonstrations the arm trails the ball, so its pose can give the way round away in one frame; with
`--still` the arm holds its rest pose while the same balls circle (the same seeds), so only the ball moves. Over the
same window the table also says how often the arm's own motion (its tip's, from the recorded graph) points the ball's
way round: what the graph's history could read, and on DAgger's recordings (`--raw` of a policy's rollouts) a cue that
holds in the policy's own states, not only in the expert's.

    .venv/bin/python experiments/motion_probe.py --base models/sim_base/graph --episodes 120 --frames 1 2 3 \\
        --stride 5 --out MOTION
    .venv/bin/python experiments/motion_probe.py --base models/sim_base/graph --still --out MOTION_STILL ...
    .venv/bin/python experiments/motion_probe.py --base models/sim_base/graph --raw H11/raw ...  # reuse recordings
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from softarm import arm as arm_schema
from softarm.data.raw import RawEpisode, read_episode
from softarm.plotting import pyplot, save_figure
from softarm.policy import SoftArmPolicy
from softarm.sim.agents import HoldAgent
from softarm.sim.arm_model import ARMS, DEFAULT_ARM
from softarm.sim.env import SoftArmEnv
from softarm.sim.generate import MANIFEST, generate, recorded_targets
from softarm.sim.rollout import run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import FOLLOW_TASKS, TASKS, ball_motion, motion_errors
from softarm.train.vision_warmup import FlatReadout


def recordings(args: argparse.Namespace) -> tuple[list[Path], str]:
    """The `follow` episodes to probe (recorded into OUT/raw unless --raw names a recording) and their arm."""
    raw = args.raw or args.out / "raw"
    if args.raw is None:
        generate(args.task, args.episodes, raw, noise=args.noise, arm=args.arm, workers=args.workers)
    manifest = raw / MANIFEST.format(task=args.task)
    arm = json.loads(manifest.read_text()).get("arm", DEFAULT_ARM) if manifest.is_file() else args.arm
    files = sorted(raw.glob(f"{args.task}_*.hdf5"))[: args.episodes]
    if len(files) < 2:
        raise SystemExit(f"{raw} holds {len(files)} {args.task} episodes; the probe needs 2 or more (train and val)")
    return files, arm


def still(policy: SoftArmPolicy, args: argparse.Namespace) -> tuple[list[torch.Tensor], list[np.ndarray], float]:
    """Episodes of seeds 0... with the arm held at rest, encoded as they run: their tokens, ball paths and rate."""
    env = SoftArmEnv(ARMS[args.arm])
    try:
        static, task, agent = StaticArm(env), TASKS[args.task], HoldAgent()
        tokens, paths = [], []
        for seed in tqdm(range(args.episodes), desc="still arm: record and encode", unit="episode"):
            spec = task.sample(seed, static, env.control_hz)
            rollout = run_episode(env, static, task, spec, agent, record_images=True, stop_on_success=False)
            # all 19 schema columns, as the simulator gives them: the policy reads the ones its model was trained on
            observations = ({"images": {camera: frames[t] for camera, frames in rollout.images.items()},
                             "graph_nodes": rollout.graph_nodes[t], "state": rollout.state[t], "prompt": spec.prompt}
                            for t in range(len(rollout.actions)))  # fmt: skip
            tokens.append(image_tokens(policy, observations))
            paths.append(spec.targets)
        return tokens, paths, env.control_hz
    finally:
        env.close()


@torch.no_grad()
def image_tokens(policy: SoftArmPolicy, observations: Iterable[dict]) -> torch.Tensor:
    """The tower's tokens of every frame of one episode, every camera the checkpoint reads: [T, cameras, tokens, D]
    (float16 to keep a hundred episodes in memory)."""
    embed = policy.model.paligemma_with_expert.embed_image
    frames = []
    for observation in observations:
        prepared = policy.prepare(observation)
        slots = [s for s, real in prepared["image_mask"].items() if real]
        pixels = np.stack([prepared["image"][s] for s in slots])
        frames.append(embed(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0).half())
    return torch.stack(frames)


def samples(paths: list[np.ndarray], lengths: list[int], args: argparse.Namespace) -> list[tuple[int, int]]:
    """(episode, step) pairs every probe is trained or scored on: the longest window and the look-ahead fit."""
    first = args.stride * (max(args.frames) - 1)
    return [(e, t) for e, (path, length) in enumerate(zip(paths, lengths, strict=True))
            for t in range(first, min(length, len(path) - args.ahead))]  # fmt: skip


def targets(paths: list[np.ndarray], pairs: list[tuple[int, int]], ahead: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the ball's position now and its displacement over `ahead` steps (m); and the circle's tangent
    there pointing anticlockwise, to tell the way round."""
    out, tangents = zip(*(ball_motion(paths[e], t, ahead) for e, t in pairs), strict=True)
    return np.asarray(out, np.float32), np.asarray(tangents, np.float32)


def tip_path(episode: RawEpisode) -> np.ndarray:
    """The recorded tip (the last node) position [T, 3]."""
    names = arm_schema.column_names(episode.graph_nodes.shape[2], episode.node_features)
    return episode.graph_nodes[:, -1, [names.index(axis) for axis in ("pos_x", "pos_y", "pos_z")]]


def arm_points_the_way(tips: list[np.ndarray], pairs, y, tangents, frames: int, stride: int) -> np.ndarray | None:
    """Per sample: whether the tip's motion over the window of `frames` frames `stride` steps apart turns around the
    circle the way the ball does; None for one frame (no motion) or an arm held still (no tips)."""
    if frames < 2 or not tips:
        return None
    span = stride * (frames - 1)
    moved = np.stack([tips[e][t] - tips[e][t - span] for e, t in pairs])
    return np.sign((moved * tangents).sum(1)) == np.sign((y[:, 3:] * tangents).sum(1))


def probe(
    tokens: list[torch.Tensor], tips: list[np.ndarray], pairs, y, tangents, train, val, late, frames: int, args
) -> dict:
    """Train one readout of `frames` frames on the train samples; its errors on the val samples. The way round is
    also scored apart in the task's first `acquire` seconds, when the expert catches the ball, and after (`late`,
    per sample), when it tracks it: a tracking arm trails the ball, so one frame of a demonstration shows the way
    round in the arm's pose, a cue that the policy's own rollouts lack until it knows the way round."""
    torch.manual_seed(0)
    cameras, count, width = tokens[0].shape[1:]
    readout = FlatReadout(frames * cameras, count, width, outputs=6)
    optimizer = torch.optim.AdamW(readout.parameters(), lr=args.lr, weight_decay=1e-2)
    mean, std = y[train].mean(0), y[train].std(0) + 1e-6
    scaled = torch.from_numpy((y - mean) / std)
    offsets = [args.stride * (frames - 1 - k) for k in range(frames)]  # oldest first

    def inputs(ids) -> list[torch.Tensor]:
        x = torch.stack([torch.stack([tokens[pairs[i][0]][pairs[i][1] - o] for o in offsets]) for i in ids]).float()
        return list(x.flatten(1, 2).unbind(1))  # one [B, tokens, D] per (frame, camera)

    rng = np.random.default_rng(0)
    for _ in tqdm(range(args.steps), desc=f"probe, {frames} frame(s)", leave=False):
        ids = rng.choice(train, args.batch)
        loss = ((readout(inputs(ids)) - scaled[ids]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = torch.cat([readout(inputs(val[k : k + 256])) for k in range(0, len(val), 256)]).numpy()
    predicted = predicted * std + mean
    truth = y[val]
    scores, way = motion_errors(predicted, truth, tangents[val], mean)

    arm = arm_points_the_way(tips, [pairs[i] for i in val], truth, tangents[val], frames, args.stride)

    def share(among: np.ndarray, right: np.ndarray | None = way) -> float | None:
        return float(right[among].mean()) if right is not None and among.any() else None

    return {"frames": frames, "stride": args.stride, "val_samples": len(val), **scores,
            "way_round_accuracy_early": share(~late[val]),
            "way_round_accuracy_late": share(late[val]),
            "arm_motion_way_round_late": share(late[val], arm)}  # fmt: skip


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f} %"


def report(results: list[dict], args: argparse.Namespace, episodes: tuple[int, int], hz: float) -> None:
    (args.out / "motion_probe.json").write_text(json.dumps({"base": str(args.base), "results": results}, indent=2))
    seconds, acquire = args.ahead / hz, TASKS[args.task].acquire
    lines = [f"`{args.task}`: readouts of {args.base}'s frozen image tokens, {episodes[0]} train / {episodes[1]} "
             f"held-out episodes, {args.steps} steps each; the ball's motion over the next {args.ahead} steps", "",
             "| frames (stride) | ball now: error (median) | its motion: RMSE (the mean's) | way round right: all "
             f"| first {acquire:g} s | after | the arm's own motion points it, after |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['frames']} ({r['stride'] if r['frames'] > 1 else '-'}) | "
              f"{r['position_error_mm_median']:.1f} mm | {r['motion_rmse_mm']:.1f} mm "
              f"({r['motion_rmse_mm_mean_guess']:.1f} mm) | {percent(r['way_round_accuracy'])} | "
              f"{percent(r['way_round_accuracy_early'])} | {percent(r['way_round_accuracy_late'])} | "
              f"{percent(r['arm_motion_way_round_late'])} |"
              for r in results]  # fmt: skip
    (args.out / "motion_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    names = [str(r["frames"]) for r in results]
    left.bar(names, [100 * r["way_round_accuracy"] for r in results], color="tab:blue")
    left.axhline(50, color="k", ls=":", label="a guess")
    left.set(xlabel="frames read", ylabel="way round right (%)", ylim=(0, 100), title="which way the ball goes")
    left.legend(fontsize=8)
    right.bar(names, [r["motion_rmse_mm"] for r in results], color="tab:orange")
    right.axhline(results[0]["motion_rmse_mm_mean_guess"], color="k", ls=":", label="the mean motion")
    right.set(xlabel="frames read", ylabel="RMSE (mm)", title=f"where it is {seconds:g} s later, from now")
    right.legend(fontsize=8)
    save_figure(fig, args.out / "motion_probe.png")
    print(f"wrote {args.out}/motion_probe.json, motion_probe.md and motion_probe.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="checkpoint whose vision tower is probed")
    parser.add_argument("--raw", type=Path, help="recorded follow episodes to use; default: record into OUT/raw")
    parser.add_argument("--still", action="store_true", help="the arm held at rest instead of the expert tracking")
    parser.add_argument("--task", default="follow", choices=FOLLOW_TASKS)
    parser.add_argument("--arm", default=DEFAULT_ARM, choices=sorted(ARMS), help="of a new recording")
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--val", type=float, default=0.2, help="fraction of the episodes held out")
    parser.add_argument("--noise", type=float, default=0.0, help="DART noise of a new recording")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 2, 3], help="frames each readout reads")
    parser.add_argument("--stride", type=int, default=5, help="control steps between the frames")
    parser.add_argument("--ahead", type=int, default=10, help="control steps of motion to predict")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("motion_probe_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.steps, args.batch, args.frames, args.stride, args.ahead = 2, 2, 4, [1, 2], 1, 2
    if min(args.frames) < 1 or args.stride < 1 or args.ahead < 1:
        raise SystemExit("--frames, --stride and --ahead must be >= 1")
    if args.episodes < 2:
        raise SystemExit(f"--episodes must be >= 2 (train and held out), got {args.episodes}")
    args.out.mkdir(parents=True, exist_ok=True)
    policy = SoftArmPolicy.from_checkpoint(args.base, device="cpu", compile="none")
    tips: list[np.ndarray] = []  # the arm held still has no motion to read
    if args.still:
        tokens, paths, hz = still(policy, args)
    else:
        files, arm = recordings(args)
        paths, hz = recorded_targets(files, args.task, arm)
        tokens = []
        for file in tqdm(files, desc="image tokens", unit="episode"):
            episode = read_episode(file)
            tokens.append(image_tokens(policy, (episode.observation(t) for t in range(episode.length))))
            tips.append(tip_path(episode))
    pairs = samples(paths, [len(t) for t in tokens], args)
    y, tangents = targets(paths, pairs, args.ahead)
    held_out = max(1, math.ceil(args.val * len(tokens)))
    train = np.array([i for i, (e, _) in enumerate(pairs) if e < len(tokens) - held_out])
    val = np.array([i for i, (e, _) in enumerate(pairs) if e >= len(tokens) - held_out])
    late = np.array([t >= round(TASKS[args.task].acquire * hz) for _, t in pairs])
    results = [probe(tokens, tips, pairs, y, tangents, train, val, late, k, args) for k in args.frames]
    report(results, args, (len(tokens) - held_out, held_out), hz)


if __name__ == "__main__":
    main()
