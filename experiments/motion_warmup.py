"""Teach a base's vision tower and visual memory to see a ball move, before a history policy is fine-tuned on
`follow`: a motion warm-up, in the spirit of the vision warm-up that taught the base to see a ball at all.

Fine-tuned on `follow` demonstrations, no model with the cameras' past frames has read the ball's motion out of them
(docs/history.md): in a demonstration the tracking arm trails the ball and gives its way round away, and flow
matching on 140 episodes does not pick the faint motion signal out of tokens that place a ball to ~15 mm. Here the
arm is held at its rest command (`softarm.sim.agents.Hold`) while `follow`'s balls circle, so only the ball moves,
and a loss is aimed at the motion itself: from the current frame's tokens after the visual memory has read the past
frames (`attend`, `memory` or `concat`, K frames `stride` steps apart, the fixed cameras), a thrown-away readout
predicts where the ball is and how far it moves over the next `ahead` steps (the simulator's path, from each episode's
seed). The tower (unless `--freeze-tower`), its projector and the memory learn; the rest of the base is untouched.
OUT/base is then a base like the one given (its tokenizer, norm stats and data spec), with the memory's weights:
fine-tune a frames model of the same K, slots and mode from it (`experiments/history.py --base OUT/base --only ...`).

Writes motion_warmup.json, motion_warmup.md (held-out errors against the mean motion's, the way round) and
motion_warmup.png (the held-out errors over the steps) into OUT.

    .venv/bin/python experiments/motion_warmup.py --base models/sim_base/graph --episodes 120 --out MOTION_BASE
    .venv/bin/python experiments/history.py --base MOTION_BASE/base --modes --image-steps 3 --image-stride 10 \\
        --image-modes attend --only "frames K=3 attend" ...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset, episode_name
from softarm.history import HistorySpec
from softarm.layout import CONFIG_FILE, META_FILE, WEIGHTS_FILE
from softarm.model import PI0GraphPytorch
from softarm.model_config import IMAGE_HISTORY_MODES, SoftArmModelConfig
from softarm.plotting import pyplot, save_figure
from softarm.sim.agents import Hold
from softarm.sim.arm_model import ARMS, CAMERA_SLOTS, DEFAULT_ARM, fixed_camera_slots
from softarm.sim.generate import generate, recorded_targets
from softarm.sim.tasks import FOLLOW_TASKS, ball_motion, motion_errors
from softarm.train.vision_warmup import VISION_PREFIXES, FlatReadout, warmup_cosine
from softarm.weights import load_weights, save_model


def record(args: argparse.Namespace) -> Path:
    """The arm held at rest through `--episodes` episodes of the task, prepared (each reused when there)."""
    raw, prepared = args.out / "raw", args.out / "prepared"
    generate(args.task, args.episodes, raw, arm=args.arm, workers=args.workers, executor=Hold())
    if not (prepared / META_FILE).is_file():
        held_out = max(1, math.ceil(args.val * args.episodes))
        convert(raw, prepared, ConvertOptions(val_episodes=held_out, cameras=CAMERA_SLOTS.get(args.arm)))
    return prepared


def ball_labels(dataset: PreparedDataset, task: str, arm: str, ahead: int) -> tuple:
    """Per sample of `dataset` (split "all"), where the ball is and how far it moves over `ahead` steps [S, 6], the
    circle's tangent there [S, 3], and whether the sample has a label (its look-ahead within the ball's path) and is
    held out; from each episode's seed (its file name), as the simulator drew it. Also the control rate."""
    files = [episode.get("file", episode_name(episode)) for episode in dataset.episodes]
    paths, hz = recorded_targets(files, task, arm)
    labels, tangents, usable, val = [], [], [], []
    for episode, path in zip(dataset.episodes, paths, strict=True):
        for step in range(episode["length"]):
            fits = step + ahead < len(path)
            label, tangent = ball_motion(path, step if fits else 0, ahead)
            labels.append(label)
            tangents.append(tangent)
            usable.append(fits)
            val.append(episode["split"] == "val")
    labels, tangents = np.asarray(labels, np.float32), np.asarray(tangents, np.float32)
    return labels, tangents, np.asarray(usable), np.asarray(val), hz


def build_model(args: argparse.Namespace) -> PI0GraphPytorch:
    """The base with a fresh visual memory of the asked window."""
    saved = json.loads((args.base / CONFIG_FILE).read_text())
    config = SoftArmModelConfig.from_dict({**saved, "image_history_steps": args.image_steps,
                                           "image_history_stride": args.image_stride,
                                           "image_history_mode": args.image_mode,
                                           "image_history_slots": list(args.image_slots)})  # fmt: skip
    model = PI0GraphPytorch(config)
    print(load_weights(model, args.base).summary())
    return model


class MotionReader:
    """The current frame's image tokens of every present camera, those of the history slots after the visual memory
    read the past frames, as the model's prefix gets them (past frames encoded without gradients)."""

    def __init__(self, model: PI0GraphPytorch, dataset: PreparedDataset) -> None:
        self.model, self.dataset = model, dataset
        self.slots = list(dataset.spec.present_cameras)
        self.history_slots = list(model.config.history_slots)
        missing = [slot for slot in self.history_slots if slot not in self.slots]
        if missing:
            raise ValueError(f"{dataset.directory} has no camera in the history slots {missing}; it records "
                             f"{self.slots}")  # fmt: skip
        self.window = HistorySpec(model.config.image_history_steps, model.config.image_history_stride)

    def tokens(self, indices: np.ndarray) -> list[torch.Tensor]:
        out = []
        for slot in self.slots:
            windows = [self.dataset.window(int(i), f"image_{slot}", self.window) for i in indices]
            frames = torch.from_numpy(np.stack([w for w, _ in windows])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
            current = self.model.paligemma_with_expert.embed_image(frames[:, -1])
            if slot in self.history_slots:
                past = self.model.past_frame_tokens(slot, frames[:, :-1])
                mask = torch.from_numpy(np.stack([m[:-1] for _, m in windows]))
                current = self.model.visual_history(self.history_slots.index(slot), current, past, mask)
            out.append(current)
        return out


def warm_up(model: PI0GraphPytorch, prepared: Path, args: argparse.Namespace) -> dict:
    """Train the tower (unless frozen), its projector, the memory and a readout on the ball's place and motion."""
    dataset = PreparedDataset(prepared, "all")
    labels, tangents, usable, held_out, hz = ball_labels(dataset, args.task, args.arm, args.ahead)
    train, val = np.flatnonzero(usable & ~held_out), np.flatnonzero(usable & held_out)
    val = val[:: max(1, len(val) // args.val_samples)]
    if not len(train) or not len(val):
        raise SystemExit(f"{prepared}: {len(train)} train and {len(val)} held-out samples with a look-ahead of "
                         f"{args.ahead} steps; record more or longer episodes")  # fmt: skip
    mean, std = labels[train].mean(0), labels[train].std(0) + 1e-6
    reader = MotionReader(model, dataset)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        count, width = reader.tokens(train[:1])[0].shape[1:]
    readout = FlatReadout(len(reader.slots), count, width, outputs=6)
    tower = [] if args.freeze_tower else [p for n, p in model.named_parameters() if n.startswith(VISION_PREFIXES)]
    trained = [*tower, *model.visual_history.parameters(), *readout.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)

    def predict(indices: np.ndarray) -> torch.Tensor:
        return readout(reader.tokens(indices))

    @torch.no_grad()
    def scored() -> dict:
        model.eval()
        predicted = np.concatenate([predict(val[k : k + 64]).numpy() for k in range(0, len(val), 64)]) * std + mean
        model.train()
        return motion_errors(predicted, labels[val], tangents[val], mean)[0]

    model.train()
    curve, start = [], time.perf_counter()
    progress = tqdm(range(1, args.steps + 1), desc="motion warm-up", unit="step")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(args.lr, step, args.steps, args.warmup_steps)
        batch = rng.choice(train, args.batch)
        target = torch.from_numpy((labels[batch] - mean) / std)
        loss = ((predict(batch) - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        if step % args.val_every == 0 or step == args.steps:
            curve.append({"step": step, "loss": float(loss.item()), **scored()})
            progress.set_postfix(motion_rmse_mm=f"{curve[-1]['motion_rmse_mm']:.1f}",
                                 way_round=f"{curve[-1]['way_round_accuracy']:.0%}")  # fmt: skip
    return {"train_samples": len(train), "val_samples": len(val), "episodes": len(dataset.episodes),
            "ahead_s": args.ahead / hz, "s_per_step": (time.perf_counter() - start) / args.steps,
            "final": curve[-1], "curve": curve}  # fmt: skip


def export(model: PI0GraphPytorch, result: dict, args: argparse.Namespace) -> Path:
    """OUT/base: the warmed model beside what the given base carries (tokenizer, norm stats, data spec)."""
    out = args.out / "base"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    for item in args.base.iterdir():
        if item.name in (CONFIG_FILE, WEIGHTS_FILE, "base.json"):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
    save_model(model, out)
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "smoke"}
    (out / "base.json").write_text(json.dumps({"name": f"{args.base.name} + motion warm-up", "from": str(args.base),
                                               "motion_warmup": {"recipe": recipe, "result": result["final"]}},
                                              indent=2) + "\n")  # fmt: skip
    return out


def report(result: dict, args: argparse.Namespace) -> None:
    (args.out / "motion_warmup.json").write_text(json.dumps({"base": str(args.base), **result}, indent=2) + "\n")
    final, seconds = result["final"], result["ahead_s"]
    tower = "frozen" if args.freeze_tower else "trained"
    lines = [f"`{args.task}` with the arm held at rest: {result['episodes']} episodes "
             f"({result['val_samples']} held-out samples), {args.steps} steps "
             f"({result['s_per_step']:.2f} s/step, the scoring included), "
             f"the tower {tower}; frames K = {args.image_steps}, stride {args.image_stride}, `{args.image_mode}` on "
             f"{', '.join(args.image_slots)}; the ball's motion over the next {args.ahead} steps ({seconds:g} s)", "",
             "| step | ball now: error (median) | its motion: RMSE (the mean's) | way round right |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['step']} | {r['position_error_mm_median']:.1f} mm | {r['motion_rmse_mm']:.1f} mm "
              f"({r['motion_rmse_mm_mean_guess']:.1f} mm) | {100 * r['way_round_accuracy']:.0f} % |"
              for r in result["curve"]]  # fmt: skip
    (args.out / "motion_warmup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    steps = [r["step"] for r in result["curve"]]
    label = f"{args.image_mode}, the tower {tower}"
    left.plot(steps, [r["motion_rmse_mm"] for r in result["curve"]], marker="o", label=label)
    left.axhline(final["motion_rmse_mm_mean_guess"], color="k", ls=":", label="the mean motion")
    left.set(xlabel="step", ylabel="RMSE (mm)", title=f"where the ball is {seconds:g} s later")
    left.legend(fontsize=8)
    right.plot(steps, [100 * r["way_round_accuracy"] for r in result["curve"]], marker="o")
    right.axhline(50, color="k", ls=":", label="a guess")
    right.set(xlabel="step", ylabel="way round right (%)", ylim=(0, 100), title="which way it goes")
    right.legend(fontsize=8)
    save_figure(fig, args.out / "motion_warmup.png")
    print(f"wrote {args.out}/motion_warmup.json, motion_warmup.md, motion_warmup.png and the base {args.out}/base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the base to warm up (a base that sees)")
    parser.add_argument("--task", default="follow", choices=FOLLOW_TASKS, help="whose balls circle")
    parser.add_argument("--arm", default=DEFAULT_ARM, choices=sorted(ARMS), help="the base's arm")
    parser.add_argument("--episodes", type=int, default=120, help="episodes of the arm at rest to record")
    parser.add_argument("--val", type=float, default=0.2, help="fraction of them held out")
    parser.add_argument("--val-samples", type=int, default=1024, help="held-out samples scored (evenly spaced)")
    parser.add_argument("--image-steps", type=int, default=3, help="K: frames the memory reads, the current one too")
    parser.add_argument("--image-stride", type=int, default=10, help="control steps between two of them")
    parser.add_argument("--image-mode", default="attend", choices=[m for m in IMAGE_HISTORY_MODES if m != "stack"])
    parser.add_argument(
        "--image-slots",
        nargs="+",
        help="the cameras whose past frames are read (openpi slots; default: the arm's fixed cameras)",
    )
    parser.add_argument("--ahead", type=int, default=10, help="control steps of motion to predict")
    parser.add_argument("--freeze-tower", action="store_true", help="train only the memory (and the readout)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("motion_warmup_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    args.image_slots = args.image_slots or fixed_camera_slots(args.arm)
    if args.smoke:
        args.episodes, args.steps, args.batch, args.val_every, args.val_samples = 2, 2, 2, 1, 8
        args.image_stride, args.ahead, args.workers = 2, 2, 1
    if args.image_steps < 2 or args.image_stride < 1 or args.ahead < 1:
        raise SystemExit("--image-steps must be >= 2, --image-stride and --ahead >= 1")
    if args.episodes < 2:
        raise SystemExit(f"--episodes must be >= 2 (train and held out), got {args.episodes}")
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_model(args)
    result = warm_up(model, record(args), args)
    export(model, result, args)
    report(result, args)


if __name__ == "__main__":
    main()
