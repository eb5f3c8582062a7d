"""`softarm <verb>`: a thin front door; each verb calls one module.

A user's mistake (a path that is not what the verb needs, a bad value) raises ValueError or an OSError with a
message naming it; `main` prints that as one line `softarm <verb>: error: ...` and exits 2. Anything else is a bug
and keeps its traceback; SOFTARM_DEBUG=1 shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
import dataclasses
import os
from pathlib import Path
import sys

EXIT_PREEMPTED = 75  # `softarm train` stopped by SIGTERM / SIGINT after saving (EX_TEMPFAIL: run it again)
NUM_STEPS_HELP = (
    "Euler steps integrating the flow (openpi's 10); fewer are faster and, measured on the simulator's tasks from "
    "the sim base, as precise or more (docs/sim_base.md)"
)
NOISE_SCALE_HELP = (
    "scale of the flow's starting noise: 1 samples as openpi does, 0 deterministically (measured: more precise on "
    "reach, less on choose; docs/cpu_model_search.md)"
)
TASK_HELP = (
    "reach | follow | follow_axis (around the arm's axis, anticlockwise) | follow_lead (a green ball 1 s ahead) "
    "| choose"
)
ARM_HELP = (
    "pneumatic: 10 segments, one chamber each, 3 cameras, every node feature sensed; tendon: 6 segments, 3 sections "
    "of 3 pull-only tendons, 2 cameras at 240x320, shape sensing only; compact: 8 stiffer segments, one chamber each, "
    "cameras left, right and tip, positions, curvatures and pressures sensed"
)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def describe_arm(path: Path) -> list[str]:
    """The arm a prepared dataset or a checkpoint was made for (its `DatasetSpec`; every arm of a model of several),
    as lines of text; for a checkpoint also the measured features its model was built to ignore."""
    import json

    from softarm import layout
    from softarm.data.spec import read_spec

    checkpoint = not (path / layout.META_FILE).is_file() and (path / layout.CONFIG_FILE).is_file()
    config = json.loads((path / layout.CONFIG_FILE).read_text()) if checkpoint else {}
    arms = [a["name"] for a in config.get("arms") or ()]
    if arms:
        lines = [f"{path}: a model of {len(arms)} arms, each named to it by {config['arm_conditioning']} "
                 f"(serve one with --arm NAME, or all, each request naming its \"arm\")"]  # fmt: skip
        for name in arms:
            lines += _spec_lines(read_spec(path / layout.ARMS_DIR / name), f"Arm {name!r}", "  ")
    else:
        lines = _spec_lines(read_spec(path), f"Arm of {path}", "")
    if checkpoint:
        ignored = [n for n in config.get("ignored_features") or [] if n in (config.get("measured_features") or [n])]
        lines.append(f"  measured, ignored by the model (ignored_features): {', '.join(ignored) or 'none'}")
        steps, stride, mode = (config.get(f"history_{k}") for k in ("steps", "stride", "mode"))
        graph = config.get("fusion") != "none"
        history = f"the last {steps} control steps, {stride} apart ({mode})" if graph and (steps or 1) > 1 else "none"
        lines.append(f"  graph history read by the model: {history}")
        frames, stride = config.get("image_history_steps") or 1, config.get("image_history_stride") or 1
        slots = config.get("image_history_slots") or "every camera"
        seen = f"{frames - 1} past frames of {slots}, {stride} apart ({config.get('image_history_mode')})"
        lines.append(f"  camera history read by the model: {seen if frames > 1 else 'none'}")
    return lines


def _spec_lines(spec, title: str, indent: str) -> list[str]:
    from softarm import arm

    return [indent + line for line in (
        f"{title}: {spec.num_nodes} nodes, {spec.action_dim} actuators, state {spec.state_dim or 'none'}, "
        f"cameras {spec.present_cameras}, action chunks of {spec.action_horizon}",
        f"  edges: {[list(e) for e in spec.edges]}",
        f"  measured node features: {', '.join(f'{n} [{arm.feature_unit(n)}]' for n in spec.layout.measured)}",
        f"  not measured (fed as 0): {', '.join(spec.layout.unmeasured) or 'none'}",
    )]  # fmt: skip


def cmd_info(args: argparse.Namespace) -> int:
    """Describe the arm of a dataset or checkpoint, and for a preset what the model adds to π0; with neither (or with
    --schema) the node schema an arm's features come from."""
    from softarm import arm

    if args.path:
        print("\n".join(describe_arm(Path(args.path))))
    if args.schema or not (args.path or args.preset):
        print("Node features (the schema; an arm senses all or some of them, on any number of nodes):")
        for i, feature in enumerate(arm.NODE_FEATURES):
            print(f"  {i:2d}  {feature.name:<15} {feature.unit:<9} {feature.description}")
    if args.preset:
        from softarm.model import PI0GraphPytorch, count_parameters
        from softarm.model_config import preset

        config = preset(args.preset, **({"fusion": args.fusion} if args.fusion else {}))
        model = PI0GraphPytorch(config)
        graph = count_parameters(model, model.graph_parameter_names())
        total = count_parameters(model)
        print(
            f"Preset {args.preset!r} ({'pi0.5' if config.pi05 else 'pi0'}, fusion {config.fusion!r}): "
            f"{total / 1e6:.2f} M parameters, of which the graph extension {graph / 1e6:.3f} M"
        )
    return 0


def _task_counts(items: list[str] | None, defaults: Mapping[str, int], flag: str, example: str) -> dict[str, int]:
    """TASK=COUNT items over the defaults; a bare COUNT sets every task."""
    counts = dict(defaults)
    for item in items or ():
        task, sep, count = item.rpartition("=")
        if not count.isdigit() or (sep and not task):
            raise SystemExit(f"{flag} takes TASK=COUNT or COUNT (e.g. {example}), got {item!r}")
        counts.update({task: int(count)} if sep else dict.fromkeys(counts, int(count)))
    return counts


def _task_noise(items: list[str] | None, tasks: list[str]) -> float | dict[str, float]:
    """[TASK=]STD items: one number for every task, or {task: std} once a task is named (a bare STD then sets the
    tasks not named)."""
    every, named = 0.0, {}
    for item in items or ():
        task, sep, value = item.rpartition("=")
        try:
            std = float(value)
        except ValueError:
            raise SystemExit(f"--noise takes STD or TASK=STD (e.g. follow=0.05), got {item!r}") from None
        if sep and not task:
            raise SystemExit(f"--noise takes STD or TASK=STD (e.g. follow=0.05), got {item!r}")
        if sep:
            named[task] = std
        else:
            every = std
    return {**dict.fromkeys(tasks, every), **named} if named else every


def cmd_demo(args: argparse.Namespace) -> int:
    from softarm.apps.demo import DemoOptions, run_demo
    from softarm.apps.pretrain import SHIPPED, missing_bases

    if args.from_scratch and args.base:
        raise SystemExit("--from-scratch trains without a base: drop --base")
    if not args.from_scratch and not args.base and (missing := missing_bases(SHIPPED)):
        print(f"no pretrained {' and '.join(missing)} base in {SHIPPED}: the models train from scratch (`softarm "
              "pretrain` makes the bases; --base takes them)")  # fmt: skip
        args.from_scratch = True
    defaults = DemoOptions(**({"base": None} if args.from_scratch else {"base": Path(args.base)} if args.base else {}))
    episodes = _task_counts(args.episodes, defaults.episodes, "--episodes", "reach=600")
    evaluations = _task_counts(args.eval_episodes, defaults.eval_episodes, "--eval-episodes", "follow=50")
    options = dataclasses.replace(
        defaults, episodes={task: n for task, n in episodes.items() if n > 0}, noise=args.noise,
        plan_from=args.plan_from, seeds=args.seeds, eval_episodes=evaluations, config=args.config or defaults.config,
        overrides=tuple(args.overrides), arm=args.arm,
        num_steps=args.num_steps,  # None: the default for the base or for training from scratch
    )  # fmt: skip
    results = run_demo(args.out, options)
    for task, summaries in results.items():
        for name, s in summaries.items():
            low, high = s["success_rate_wilson95"]
            print(f"  {task:<6} {name:<12} success {s['successes']}/{s['episodes']} "
                  f"(95 % CI {100 * low:.0f}-{100 * high:.0f} %), final tip error median "
                  f"{s['final_error_mm_median']:.1f} mm")  # fmt: skip
    print(f"wrote {args.out}/report.md")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from softarm.apps.pretrain import DEFAULT_CONFIG, PretrainOptions, pretrain

    defaults = PretrainOptions()
    episodes = _task_counts(args.episodes, defaults.episodes, "--episodes", "reach=2400")
    evaluations = _task_counts(args.eval_episodes, defaults.eval_episodes, "--eval-episodes", "reach=100")
    episodes = {task: n for task, n in episodes.items() if n > 0}
    recorded = [*episodes, *(["reach"] if args.hard_reach and "reach" not in episodes else [])]
    options = PretrainOptions(
        episodes=episodes, hard_reach=args.hard_reach, noise=_task_noise(args.noise, recorded),
        val_episodes=args.val_episodes, vision_steps=args.vision_steps, vision_readout=args.vision_readout,
        vision_relative=args.vision_relative, finish_steps=args.finish_steps, finish_lr=args.finish_lr,
        eval_episodes=evaluations, models=tuple(args.models),
        config=Path(args.config) if args.config else DEFAULT_CONFIG, overrides=tuple(args.overrides),
        export=Path(args.export) if args.export else None, workers=args.workers,
    )  # fmt: skip
    for name, base in pretrain(args.out, options).items():
        import json

        scores = json.loads((base / "base.json").read_text())["scores"]
        text = ", ".join(f"{task} {s['successes']}/{s['episodes']}" for task, s in scores.items())
        print(f"  {name}: {base} ({text})")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from softarm.apps.view import view
    from softarm.data.rosbag import TopicMap

    topics = TopicMap.load(args.topics) if args.topics else None
    written = view(args.path, index=args.episode, out=args.out, png=args.png, live=args.live, topics=topics,
                   color_by=args.color_by)  # fmt: skip
    print(f"wrote {written}" if written else "sent the episode to the running Rerun viewer")
    if written and written.suffix == ".rrd":
        print(f"open it with: rerun {written}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from softarm.data.convert import ConvertOptions, convert
    from softarm.data.lerobot import LeRobotKeys
    from softarm.data.rosbag import TopicMap

    cameras = None
    if args.camera:
        pairs = [c.split("=", 1) for c in args.camera]
        if any(len(p) != 2 for p in pairs):
            raise SystemExit(f"--camera takes SLOT=CAMERA, got {args.camera}")
        cameras = dict(pairs)
    features = None if args.features is None else tuple(f.strip() for f in args.features.split(",") if f.strip())
    options = ConvertOptions(
        val_episodes=args.val_episodes,
        action_horizon=args.action_horizon,
        cameras=cameras,
        overwrite=args.overwrite,
        seed=args.seed,
        features=features,
        state=args.state != "none",
        topics=TopicMap.load(args.topics) if args.topics else None, split_arms=args.split_arms,
        lerobot=LeRobotKeys(
            graph=args.graph_key, state=None if args.state_key == "none" else args.state_key,
            action=args.action_key, num_nodes=args.num_nodes,
        ),
    )  # fmt: skip
    result = convert(args.sources, args.out_dir, options)
    print(
        f"kept {len(result.kept)} episodes, skipped {len(result.skipped)}; samples: train {result.samples['train']}, "
        f"val {result.samples['val']}; wrote {result.out_dir} (skipped episodes and reasons in report.json)"
    )
    if args.split_arms:
        print("one dataset per arm: " + ", ".join(str(d) for d in result.datasets))
    return 0


def cmd_export_lerobot(args: argparse.Namespace) -> int:
    from softarm.data.lerobot_export import ExportOptions, export_lerobot

    options = ExportOptions(overwrite=args.overwrite, codec=args.codec, data_file_size_mb=args.data_file_size_mb,
                            video_file_size_mb=args.video_file_size_mb)  # fmt: skip
    result = export_lerobot(args.raw_dir, args.out_dir, options)
    print(f"wrote {result.episodes} episodes ({result.frames} frames) as LeRobot v3.0 to {result.out_dir}"
          + (f"; skipped {len(result.skipped)}: " + "; ".join(f"{s['file']}: {s['reason']}" for s in result.skipped)
             if result.skipped else ""))  # fmt: skip
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from softarm.data.stats import write_norm_stats
    from softarm.layout import NORM_STATS_FILE

    stats = write_norm_stats(args.dataset)
    for key, value in stats.items():
        mean, std = abs(value.mean).max(), value.std.min()
        dims = "x".join(map(str, value.mean.shape))
        print(f"{key:<12} {dims:>6} dims  |mean| max {mean:.3g}  std min {std:.3g}")
    print(f"wrote {args.dataset}/{NORM_STATS_FILE}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from softarm.train.config import load_config
    from softarm.train.loop import train

    config = load_config(args.config, args.overrides)
    config.validate()
    result = train(config)
    metrics = result.metrics.items()
    print("final: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics))
    if result.preempted:
        print(f"stopped early on request; run the same command to resume (exit code {EXIT_PREEMPTED})")
        return EXIT_PREEMPTED
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from softarm.serve import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, api_key_file=args.api_key_file,
          compile=args.compile, noise_scale=args.noise_scale, arm=args.arm, num_steps=args.num_steps)  # fmt: skip
    return 0


def cmd_sim_generate(args: argparse.Namespace) -> int:
    from softarm.sim.generate import generate

    executor = None
    if args.executor is not None:
        from softarm.apps.evaluate import PolicyExecutor

        executor = PolicyExecutor(args.executor, args.executor_replan, args.executor_noise_scale, args.arm)
    result = generate(
        args.task, args.episodes, args.out, seed=args.seed, noise=args.noise, workers=args.workers, arm=args.arm,
        plan_from=args.plan_from, hold_steps=args.hold_steps, hard_only=args.hard_only, executor=executor,
    )  # fmt: skip
    failed = f", expert failed on seeds {result.failed} (not written)" if result.failed else ""
    passed = f", passed over {result.passed_over} seeds that are not hard" if args.hard_only else ""
    print(f"wrote {result.written} episodes, kept {result.reused} already there{failed}{passed}; raw episodes in "
          f"{args.out}")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from softarm.apps.evaluate import EvalOptions, evaluate

    options = EvalOptions(
        task=args.task, episodes=args.episodes, policy=args.policy, checkpoint=args.checkpoint, seed=args.seed,
        replan=args.replan, videos=args.videos, device=args.device, arm=args.arm, latency_ms=args.latency_ms,
        execution=args.execution, ensemble_decay=args.ensemble_decay, noise_scale=args.noise_scale,
        num_steps=args.num_steps, workers=args.workers, model_arm=args.model_arm,
    )  # fmt: skip
    s = evaluate(options, args.out)
    low, high = s["success_rate_wilson95"]
    print(
        f"{s['policy']} on {s['task']}: success {s['successes']}/{s['episodes']} = {100 * s['success_rate']:.0f} % "
        f"(95 % CI {100 * low:.0f}-{100 * high:.0f} %), final tip error median {s['final_error_mm_median']:.1f} mm, "
        f"mean {s['final_error_mm_mean']:.1f} mm"
    )
    print(f"wrote {args.out}/eval.json, summary.png and rollouts.gif")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softarm", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    info = verbs.add_parser("info", help="the arm of a dataset or checkpoint, a model preset's size, the node schema")
    info.add_argument("path", nargs="?", help="a prepared dataset or a checkpoint: print the arm it was made for")
    info.add_argument("--preset", choices=["tiny", "tiny_vision", "pi0", "pi05"],
                      help="also build this model preset and count it")  # fmt: skip
    info.add_argument(
        "--fusion", choices=["state", "prefix", "suffix", "none"], help="override the preset's fusion mode"
    )
    info.add_argument("--schema", action="store_true", help="also list the 19 node features of the schema")
    info.set_defaults(func=cmd_info)
    conv = verbs.add_parser("convert", help="validate raw HDF5 or LeRobot episodes and write a prepared dataset")
    conv.add_argument("sources", nargs="+", metavar="SOURCE",
                      help="a directory of raw HDF5 episodes, a LeRobot dataset root (v2.1 / v3.0), or ROS bags "
                           "(with --topics); several sources of the same arm convert into one dataset")  # fmt: skip
    conv.add_argument("out_dir")
    conv.add_argument("--val-episodes", type=int, default=20, help="episodes held out for validation")
    conv.add_argument("--action-horizon", type=int, default=16)
    conv.add_argument("--camera", action="append", metavar="SLOT=CAMERA",
                      help="e.g. base_0_rgb=base or base_0_rgb=observation.images.base (repeatable)")  # fmt: skip
    conv.add_argument("--features", metavar="NAME,NAME,...",
                      help="node features the dataset measures: names for unnamed columns, or a subset to keep "
                           "(default: what the episodes declare; 19 unnamed columns are the schema)")  # fmt: skip
    conv.add_argument("--state", choices=["auto", "none"], default="auto",
                      help="none: drop the episodes' state (auto: use it where the episodes have it)")  # fmt: skip
    conv.add_argument("--topics", metavar="MAP.yaml",
                      help="the sources are ROS bags (ROS 2 directories, ROS 1 .bag files, or directories of them): "
                           "which topic is which field (docs/data_format.md)")  # fmt: skip
    conv.add_argument("--graph-key", default="observation.graph", help="LeRobot: the [N, F] (or flat N*F) feature")
    conv.add_argument("--num-nodes", type=int, help="LeRobot: N of a flat graph feature (default: its size / F)")
    conv.add_argument("--state-key", default="observation.state", help="LeRobot: the state feature, or none")
    conv.add_argument("--action-key", default="action", help="LeRobot: the action feature")
    conv.add_argument("--split-arms", action="store_true",
                      help="episodes of several arms: one dataset per arm in OUT_DIR/arm_<k>_... (default: the arm "
                           "most episodes share; the others are reported)")  # fmt: skip
    conv.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    conv.set_defaults(func=cmd_convert)
    vw = verbs.add_parser("view", help="look at an episode: a Rerun recording (.rrd) or a PNG overview")
    vw.add_argument("path", help="a raw HDF5 file or directory, a LeRobot root, ROS bags (with --topics) or a prepared "
                                 "dataset")  # fmt: skip
    vw.add_argument("--episode", type=int, default=0, help="which episode, in the order convert reads them")
    vw.add_argument("--out", help="the .rrd (or .png) to write (default: the episode's name in this directory)")
    vw.add_argument("--png", action="store_true", help="a static overview instead, for a machine without a screen")
    vw.add_argument("--live", action="store_true", help="send to a Rerun viewer already running instead of a file")
    vw.add_argument("--topics", metavar="MAP.yaml", help="PATH holds ROS bags: which topic is which field")
    vw.add_argument("--color-by", metavar="FEATURE",
                    help="node feature that colours the arm (default: the first of actuator_state, kappa_x, "
                         "contact_force, pos_z it has)")  # fmt: skip
    vw.set_defaults(func=cmd_view)
    exp = verbs.add_parser("export-lerobot", help="write raw HDF5 episodes as a LeRobot v3.0 dataset")
    exp.add_argument("raw_dir")
    exp.add_argument("out_dir")
    exp.add_argument("--version", choices=["v3.0"], default="v3.0", help="LeRobot codebase version to write")
    exp.add_argument("--codec", choices=["libsvtav1", "h264", "hevc"], default="libsvtav1", help="AV1 is LeRobot's")
    exp.add_argument("--data-file-size-mb", type=float, default=100.0, help="start a new parquet file past this size")
    exp.add_argument("--video-file-size-mb", type=float, default=200.0, help="start a new mp4 past this size")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    exp.set_defaults(func=cmd_export_lerobot)
    stats = verbs.add_parser("stats", help="(re)compute norm_stats.json of a prepared dataset's train split")
    stats.add_argument("dataset")
    stats.set_defaults(func=cmd_stats)
    tr = verbs.add_parser("train", help="train PI0GraphPytorch from a YAML config (torchrun for several GPUs)")
    tr.add_argument("--config", help="YAML file, e.g. configs/debug.yaml")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.steps=10")
    tr.set_defaults(func=cmd_train)
    srv = verbs.add_parser("serve", help="serve a checkpoint over openpi's websocket protocol")
    srv.add_argument("--checkpoint", required=True, help="a checkpoint directory written by softarm train")
    srv.add_argument("--host", default="0.0.0.0")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--device", default="auto")
    srv.add_argument("--api-key-file", help="clients must send this key (openpi-client's api_key); or $SOFTARM_API_KEY")
    srv.add_argument("--compile", default="auto", help="torch.compile mode of the sampling path: auto (max-autotune on "
                     "CUDA, none on a CPU), none, default, reduce-overhead, max-autotune")  # fmt: skip
    srv.add_argument("--noise-scale", type=float, default=1.0, help=NOISE_SCALE_HELP)
    srv.add_argument("--num-steps", type=int, default=10, help=NUM_STEPS_HELP)
    srv.add_argument("--arm", help="a model of several arms: serve this one (default: all, each request naming its "
                     "own as \"arm\")")  # fmt: skip
    srv.set_defaults(func=cmd_serve)
    sim = verbs.add_parser("sim", help="the simulated soft arm").add_subparsers(dest="sim_verb", required=True)
    gen = sim.add_parser("generate", help="record scripted-expert episodes as raw HDF5")
    gen.add_argument("--task", default="reach", help=TASK_HELP)
    gen.add_argument("--episodes", type=int, default=126)
    gen.add_argument("--out", required=True, help="directory of raw episodes (an interrupted run resumes)")
    gen.add_argument("--seed", type=int, default=0, help="episode i uses task seed SEED + i")
    gen.add_argument(
        "--noise", type=float, default=0.0,
        help="std of Gaussian noise added to the executed commands, in half command ranges; the recorded label stays "
        "the expert's (DART)",
    )  # fmt: skip
    gen.add_argument("--workers", type=int, default=1, help="simulator processes recording episodes in parallel")
    gen.add_argument("--arm", default="pneumatic", help=ARM_HELP)
    gen.add_argument(
        "--plan-from", choices=["rest", "current"], default="rest",
        help="where the expert's pressure solver starts: the middle of the range (one answer per target, independent "
        "of the start) or the arm's current pressures (the shortest move)",
    )  # fmt: skip
    gen.add_argument("--hold-steps", type=int, default=3,
                     help="steps recorded after success: the expert holding the tip on the target")  # fmt: skip
    gen.add_argument("--hard-only", action="store_true",
                     help="record only the seeds whose ball lies far from the arm's axis or whose payload is light "
                          "(where policies miss reach most); the others are passed over")  # fmt: skip
    gen.add_argument("--executor", metavar="CHECKPOINT",
                     help="a checkpoint whose policy drives the arm while the expert labels every step (DAgger): the "
                          "states its own mistakes lead to, with what the expert would do there")  # fmt: skip
    gen.add_argument("--executor-replan", type=int, default=8, help="the executor's re-plan period (control steps)")
    gen.add_argument("--executor-noise-scale", type=float, default=1.0,
                     help="of the executor's sampling (as softarm eval --noise-scale)")  # fmt: skip
    gen.set_defaults(func=cmd_sim_generate)
    ev = verbs.add_parser("eval", help="closed-loop success rate of a checkpoint (or the expert / random) in sim")
    ev.add_argument("--checkpoint", help="a checkpoint directory written by softarm train (for --policy model)")
    ev.add_argument(
        "--policy",
        choices=["model", "expert", "expert-blind", "random"],
        default="model",
        help="expert-blind: the expert planning for the mean payload (no shape sensing)",
    )
    ev.add_argument("--task", default="reach", help=TASK_HELP)
    ev.add_argument("--episodes", type=int, default=50)
    ev.add_argument("--out", default="eval_out", help="where eval.json, summary.png and rollouts.gif go")
    ev.add_argument("--seed", type=int, default=1_000_000, help="first evaluation episode seed")
    ev.add_argument("--replan", type=int, default=8, help="actions executed from each chunk before re-planning")
    ev.add_argument("--videos", type=int, default=3, help="episodes recorded into rollouts.gif")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--arm", default="pneumatic", help=ARM_HELP)
    ev.add_argument("--model-arm", help="a checkpoint of several arms: the arm of it that drives the simulated one "
                    "(default: the one named as --arm)")  # fmt: skip
    ev.add_argument("--latency-ms", type=float, default=0.0, help="simulated inference latency (model policy)")
    ev.add_argument("--execution", default="sync", choices=["sync", "async", "rtc", "ensemble"],
                    help="during inference the arm holds (sync), keeps executing the old chunk (async), or does so "
                         "and the new chunk joins it (rtc: prev_actions and delay sent with the request), or every "
                         "running chunk's action is averaged (ensemble: ACT's temporal ensembling)")  # fmt: skip
    ev.add_argument("--ensemble-decay", type=float, default=0.1,
                    help="ensemble: chunk i (0 the oldest still running) weighs exp(-DECAY * i)")  # fmt: skip
    ev.add_argument("--noise-scale", type=float, default=1.0, help=NOISE_SCALE_HELP)
    ev.add_argument("--num-steps", type=int, default=10, help=NUM_STEPS_HELP)
    ev.add_argument("--workers", type=int, default=1,
                    help="processes running episodes side by side (the same results as one)")  # fmt: skip
    ev.set_defaults(func=cmd_eval)
    demo = verbs.add_parser("demo", help="simulate, convert, train with and without the graph, evaluate, report")
    demo.add_argument("--out", default="demo_out", help="where everything goes; a re-run reuses what is there")
    demo.add_argument(
        "--episodes", action="append", metavar="TASK=COUNT",
        help="expert episodes of a task to train on, 0 leaves it out (repeatable; default choose=150 reach=100, from "
        "scratch choose=150)",
    )  # fmt: skip
    demo.add_argument("--noise", type=float, default=0.05, help="DART noise on the executed commands while recording")
    demo.add_argument("--plan-from", choices=["rest", "current"], default="rest",
                      help="where the expert's pressure solver starts (see softarm sim generate --help)")  # fmt: skip
    demo.add_argument("--seeds", type=int, default=1, help="training seeds per model, pooled in the report")
    demo.add_argument(
        "--eval-episodes", action="append", metavar="[TASK=]COUNT",
        help="closed-loop episodes per policy, per task or all; 0 skips a task (default reach=100 choose=100 "
        "follow=30)",
    )  # fmt: skip
    demo.add_argument("--base", help="the pretrained bases, a directory per model (default: models/sim_base)")
    demo.add_argument("--from-scratch", action="store_true",
                      help="train the tiny model from scratch instead of fine-tuning the bases (configs/demo.yaml, "
                           "choose alone)")  # fmt: skip
    demo.add_argument("--config", help="training config (default: configs/finetune.yaml, from scratch "
                                       "configs/demo.yaml)")  # fmt: skip
    demo.add_argument("--arm", default="pneumatic", help=ARM_HELP)
    demo.add_argument("--num-steps", type=int, help="Euler steps integrating the models' flow (default: 3 from the "
                      "bases, 10 from scratch; openpi's 10)")  # fmt: skip
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=300")
    demo.set_defaults(func=cmd_demo)
    pre = verbs.add_parser("pretrain", help="pretrain the simulator's base models (graph, no graph) from scratch")
    pre.add_argument("--out", default="pretrain_out", help="where everything goes; a re-run reuses what is there")
    pre.add_argument("--export", help="where the bases go, one directory per model (default: OUT/base)")
    pre.add_argument("--episodes", action="append", metavar="TASK=COUNT",
                     help="expert episodes of a task (repeatable; default reach=1200; never "
                          "choose)")  # fmt: skip
    pre.add_argument("--hard-reach", type=int, default=800,
                     help="further reach seeds of which only the hard ones (far ball, light payload) are recorded "
                          "(default %(default)s: about half of them are hard; 0: none)")  # fmt: skip
    pre.add_argument("--noise", action="append", metavar="[TASK=]STD",
                     help="DART: std of the noise on the executed commands while recording (the labels stay the "
                          "expert's), for every task or one (repeatable, e.g. follow=0.05; the hard reach seeds take "
                          "reach's); default 0: clean demonstrations, as the shipped bases")  # fmt: skip
    pre.add_argument("--val-episodes", type=int, default=100, help="episodes held out for validation")
    pre.add_argument("--vision-steps", type=int, default=2000,
                     help="steps of the vision warm-up (where each reach episode's tip ends) before the policy "
                          "trains; 0: none")  # fmt: skip
    pre.add_argument("--vision-readout", choices=["flat", "attend"], default="flat",
                     help="the warm-up's thrown-away readout of the image tokens")  # fmt: skip
    pre.add_argument("--vision-relative", action=argparse.BooleanOptionalAction, default=True,
                     help="the warm-up also learns where the goal is from the tip now")  # fmt: skip
    pre.add_argument(
        "--finish-steps",
        type=int,
        default=1500,
        help="a last phase with the tower trained too, from the frozen phase's EMA weights; 0: none",
    )
    pre.add_argument("--finish-lr", type=float, default=3e-4, help="the finishing phase's peak learning rate")
    pre.add_argument("--eval-episodes", action="append", metavar="[TASK=]COUNT",
                     help="closed-loop episodes per base and task (default reach=100 follow=30 choose=30)")  # fmt: skip
    pre.add_argument("--models", nargs="+", choices=["graph", "no_graph"], default=["graph", "no_graph"])
    pre.add_argument("--config", help="training config (default: configs/pretrain.yaml)")
    pre.add_argument("--workers", type=int, default=2, help="simulator processes recording demonstrations")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=300")
    pre.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if os.environ.get("SOFTARM_DEBUG"):
            raise
        verb = f"sim {args.sim_verb}" if args.verb == "sim" else args.verb
        print(f"softarm {verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
