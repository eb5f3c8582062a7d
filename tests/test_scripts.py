"""Every script in benchmarks/ and experiments/ runs, in its smoke mode (tiny sizes, seconds), so none rots unseen."""

from __future__ import annotations

import json
import os
from pathlib import Path
import runpy
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from softarm.layout import CONFIG_FILE, WEIGHTS_FILE
from softarm.model import PI0GraphPytorch
from softarm.model_config import SoftArmModelConfig
from softarm.sim.tasks import motion_errors
from softarm.train.vision_warmup import VISION_PREFIXES
from softarm.weights import load_weights

ROOT = Path(__file__).parents[1]
OWN_PROCESS = {"benchmarks/serving.py", "benchmarks/full_size_cpu.py"}  # their robot side must not import torch
CHECKED_APART = {"experiments/motion_warmup.py"}  # its smoke run is checked further by a test of its own


def smoke_runs(pretrained: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """script -> (arguments, a line its output must contain). The simulator-trained inputs come from the toy
    `softarm pretrain` run: its graph base and dataset."""
    base, prepared = pretrained / "base" / "graph", pretrained / "prepared"
    evaluation = pretrained / "eval" / "reach" / "graph" / "eval.json"
    history = ["--base", str(base), "--reach-weight", "0.5", "--replan", "4", "--noise", "0.05"]
    return {
        "benchmarks/gpu.py": ([], "| 3 | "),
        "benchmarks/full_size_cpu.py": ([], "| tiny-lora | "),
        "benchmarks/graph_overhead.py": ([], "tiny       pi0     state"),
        "benchmarks/history_cost.py": ([], "| tiny | frames K=6 memory, cached | "),
        "benchmarks/lerobot_import.py": ([], "LeRobot / HDF5: "),
        "benchmarks/loader.py": ([], "samples/s    mixture  ratio"),
        "benchmarks/memory_table.py": ([], "| full, bf16-mixed | 0.001 B"),
        "benchmarks/prefix_padding.py": ([], "speed-up"),
        "benchmarks/recorder.py": ([], "| lzf | "),
        "benchmarks/rosbag_import.py": ([], "bags / HDF5: "),
        "benchmarks/serving.py": ([], "infer latency, median of 1: direct"),
        "benchmarks/train_throughput.py": ([], "state   "),
        "experiments/arm_transfer.py": (
            ["--base", str(base.parent), "--matched", "model.preset=tiny"],
            "| K | alone graph | joint graph | joint graph, 2x steps |",
        ),
        "experiments/base_transfer.py": (["--base", str(base), "model.preset=tiny"], "| 2 | 2 | "),
        "experiments/camera_depth.py": ([], "base + side | "),
        "experiments/expert_redundancy.py": ([], "2 reach targets x 2 starts"),
        "experiments/follow_oracle.py": ([], "| 8 steps | "),
        "experiments/follow_trace.py": (
            ["--policy", "expert", "--policy", f"base={base}"],
            "| expert | 1/1 (21-100 %) | ",
        ),
        "experiments/history.py": (
            [*history, "--follow-task", "follow_axis", "--dagger", "1", "model.preset=tiny"],
            "recorded with command noise 0.05; DAgger: 1 follow_axis episodes driven by each round's model",
        ),
        "experiments/motion_probe.py": (["--base", str(base), "--workers", "1", "--out", str(tmp_path)], "| 2 (1) | "),
        "experiments/motion_warmup.py": (
            ["--base", str(base), "--out", str(tmp_path)],
            "the tower trained; frames K = 3, stride 2, `attend` on base_0_rgb, right_wrist_0_rgb",
        ),
        "experiments/noise_scale.py": (["--run", f"reach={base}"], "| reach, "),
        "experiments/payload_probe.py": ([str(prepared)], "graph + pressures  R^2"),
        "experiments/reach_misses.py": ([str(base), str(evaluation)], "median error range over the last 20 steps"),
        "experiments/rtc.py": (["--checkpoint", str(base), "--task", "reach"], "inference cost at a delay of"),
        "experiments/vision_probe.py": ([str(prepared), "--cameras", "base_0_rgb", "right_wrist_0_rgb"], "step 4: "),
    }


def test_every_script_has_a_smoke_run(tmp_path: Path) -> None:
    scripts = sorted(str(p.relative_to(ROOT)) for folder in ("benchmarks", "experiments")
                     for p in (ROOT / folder).glob("*.py"))  # fmt: skip
    assert scripts == sorted(smoke_runs(tmp_path, tmp_path))


@pytest.mark.parametrize("script", sorted(set(smoke_runs(Path("."), Path("."))) - CHECKED_APART))
def test_script_runs_in_smoke_mode(
    script: str, pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    smoke_run(script, pretrained, tmp_path, monkeypatch, capsys)


def smoke_run(
    script: str, pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run `script` in smoke mode with its arguments; its output must hold its expected line."""
    args, expected = smoke_runs(pretrained, tmp_path)[script]
    if script in OWN_PROCESS:
        result = subprocess.run([sys.executable, script, "--smoke", *args], cwd=ROOT, capture_output=True, text=True,
                                check=False, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout
    else:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [script, "--smoke", *args])
        cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
        runpy.run_path(str(ROOT / script), run_name="__main__")
        out = capsys.readouterr().out
        # run in this process, a script must leave it as it found it: pinned to one core, every later test ran 2x slower
        assert (os.sched_getaffinity(0), torch.get_num_threads()) == (cores, threads), script
    assert expected in out, out[-2000:]


def test_follow_trace_splits_the_error_around_the_circle() -> None:
    decompose = runpy.run_path(str(ROOT / "experiments" / "follow_trace.py"))["decompose"]
    # 1.3 anticlockwise laps of a 40 mm circle around (0.1, 0, 0.3): the path's mean is not the circle's centre
    angle = np.linspace(0.0, 2.6 * np.pi, 80)
    ball = np.stack([0.1 + 0.04 * np.cos(angle), 0.04 * np.sin(angle), np.full_like(angle, 0.3)], axis=1)

    def circle(radius: float, behind_deg: float, sense: float = 1.0) -> np.ndarray:
        a = sense * angle - np.radians(behind_deg) * sense
        return np.stack([0.1 + radius * np.cos(a), radius * np.sin(a), np.full_like(a, 0.31)], axis=1)

    behind = decompose(circle(0.05, 30.0), ball, first=0)  # 10 mm outside, 10 mm high, 30° behind
    assert behind["radial_mm"] == pytest.approx(10.0, abs=1e-6)
    assert behind["height_mm"] == pytest.approx(10.0, abs=1e-6)
    assert behind["lag_deg"] == pytest.approx(30.0, abs=1e-6)
    assert behind["lag_abs_deg"] == pytest.approx(30.0, abs=1e-6)
    # the same lag on a clockwise ball; a tip ahead of the ball lags by a negative angle
    assert decompose(circle(0.04, 30.0, -1.0), circle(0.04, 0.0, -1.0), first=0)["lag_deg"] == pytest.approx(30.0)
    assert decompose(circle(0.04, -20.0), ball, first=10)["lag_deg"] == pytest.approx(-20.0)


def test_motion_probe_targets_tell_the_way_round() -> None:
    targets = runpy.run_path(str(ROOT / "experiments" / "motion_probe.py"))["targets"]
    # 1.3 laps of a 40 mm circle around (0.1, 0, 0.3), one anticlockwise and one clockwise (seen from above)
    angle = np.linspace(0.0, 2.6 * np.pi, 80)
    paths = [np.stack([0.1 + 0.04 * np.cos(sense * angle), 0.04 * np.sin(sense * angle), np.full_like(angle, 0.3)], 1)
             for sense in (1.0, -1.0)]  # fmt: skip
    y, tangents = targets(paths, [(0, 0), (1, 0), (0, 40)], ahead=5)
    np.testing.assert_allclose(y[:, :3], [paths[0][0], paths[1][0], paths[0][40]], atol=1e-7)
    np.testing.assert_allclose(y[2, 3:], paths[0][45] - paths[0][40], atol=1e-7)
    # the circle's centre is found though the path covers more than a lap: the tangent at angle 0 points along +y
    np.testing.assert_allclose(tangents[0], [0.0, 0.04, 0.0], atol=1e-3)
    # the motion along the anticlockwise tangent: positive one way round, negative the other
    way = (y[:, 3:] * tangents).sum(1)
    assert list(np.sign(way)) == [1.0, -1.0, 1.0]


def test_motion_probe_reads_the_way_round_from_the_arm_s_own_motion() -> None:
    script = runpy.run_path(str(ROOT / "experiments" / "motion_probe.py"))
    targets, arm_points_the_way = script["targets"], script["arm_points_the_way"]
    angle = np.linspace(0.0, 2.6 * np.pi, 80)
    ball = np.stack([0.1 + 0.04 * np.cos(angle), 0.04 * np.sin(angle), np.full_like(angle, 0.3)], axis=1)

    def tip(angles: np.ndarray) -> np.ndarray:
        return np.stack([0.1 + 0.03 * np.cos(angles), 0.03 * np.sin(angles), np.full_like(angles, 0.3)], axis=1)

    behind, against = tip(angle - 0.4), tip(2 * angle[20] - angle - 0.4)  # the second turns clockwise
    pairs = [(0, 20), (0, 50), (1, 20)]
    y, tangents = targets([ball, ball], pairs, ahead=5)
    # a tip that trails the ball round the circle points its way; one that goes round the other way does not
    ways = arm_points_the_way([behind, against], pairs, y, tangents, frames=3, stride=2)
    assert list(ways) == [True, True, False]
    # one frame shows no motion, and an arm held still (no recorded tips) none either
    assert arm_points_the_way([behind, behind], pairs, y, tangents, frames=1, stride=2) is None
    assert arm_points_the_way([], pairs, y, tangents, frames=3, stride=2) is None


def test_motion_warmup_trains_the_tower_and_memory_into_a_base_a_frames_model_loads(
    pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The smoke run's base: the memory learnt (its zero-initialised output projection moved) and so did the tower;
    every other tensor is the base's, and a model of the same window loads it whole."""
    smoke_run("experiments/motion_warmup.py", pretrained, tmp_path, monkeypatch, capsys)
    base, warmed = pretrained / "base" / "graph", tmp_path / "base"
    before, after = (safetensors.torch.load_file(str(d / WEIGHTS_FILE)) for d in (base, warmed))
    memory = {k for k in after if k.startswith("visual_history.")}
    assert after["visual_history.out.weight"].abs().max() > 0
    tower = {k for k in before if k.startswith(VISION_PREFIXES)}
    assert tower
    assert any(not torch.equal(before[k], after[k]) for k in tower)
    assert set(after) - memory == set(before)
    assert all(torch.equal(before[k], after[k]) for k in set(before) - tower)
    config = SoftArmModelConfig.from_dict(json.loads((warmed / CONFIG_FILE).read_text()))
    assert (config.image_history_steps, config.image_history_stride, config.image_history_mode) == (3, 2, "attend")
    assert load_weights(PI0GraphPytorch(config), warmed, allow_fresh_graph=False).fresh == []
    assert {p.name for p in base.iterdir()} <= {p.name for p in warmed.iterdir()}  # tokenizer, norm stats, spec
    recorded = json.loads((warmed / "base.json").read_text())
    assert recorded["from"] == str(base)
    assert recorded["motion_warmup"]["recipe"]["image_stride"] == 2
    final = json.loads((tmp_path / "motion_warmup.json").read_text())["final"]
    assert 0 <= final["way_round_accuracy"] <= 1
    assert final["motion_rmse_mm_mean_guess"] > 0
    assert (tmp_path / "motion_warmup.png").stat().st_size > 0


def test_motion_errors_score_the_ball_s_place_motion_and_way_round() -> None:
    def errors(*args: np.ndarray) -> dict:
        return motion_errors(*args)[0]

    truth = np.array([[0.1, 0.0, 0.3, 0.0, 0.02, 0.0], [0.1, 0.0, 0.3, 0.0, -0.04, 0.0]], np.float32)
    tangents = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    mean = truth.mean(0)
    exact = errors(truth, truth, tangents, mean)
    assert (exact["position_error_mm_median"], exact["motion_rmse_mm"], exact["way_round_accuracy"]) == (0, 0, 1)
    assert exact["motion_rmse_mm_mean_guess"] == pytest.approx(30.0, rel=1e-5)  # 30 mm either side of the mean
    wrong = truth.copy()
    wrong[:, 0] += 0.01  # 10 mm off in x, and the first ball's way round guessed wrong
    wrong[0, 4] = -0.02
    scored = errors(wrong, truth, tangents, mean)
    assert scored["position_error_mm_median"] == pytest.approx(10.0, rel=1e-4)
    assert scored["way_round_accuracy"] == 0.5
    assert scored["motion_rmse_mm"] == pytest.approx(np.sqrt(40.0**2 / 2), rel=1e-4)


def test_history_refuses_a_variant_it_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["history.py", "--modes", "--image-steps", "3", "--image-modes", "attend", "--only", "frames K=3", "stack"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "experiments" / "history.py"), run_name="__main__")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--only ['frames K=3', 'stack']: not among this run's variants ['no history', 'frames K=3 attend']" in err
    assert list(tmp_path.iterdir()) == []  # refused before recording anything
