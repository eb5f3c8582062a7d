"""The simulated arm: physics sanity, the node schema, cameras, the expert, generated data and evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from softarm import arm
from softarm.apps.evaluate import EvalOptions, eval_pool, evaluate, model_label, reusable_report, wilson_interval
from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert
from softarm.data.raw import read_episode
from softarm.layout import default_camera_slots
from softarm.sim import generate as generate_module
from softarm.sim.agents import ExpertAgent, Hold, RandomAgent
from softarm.sim.arm_model import ARMS, CAMERA_SLOTS, ArmSpec, fixed_camera_slots
from softarm.sim.env import SoftArmEnv
from softarm.sim.generate import generate, recorded_targets
from softarm.sim.rollout import run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import MAX_PAYLOAD, TASKS

SETTLE = 40  # control steps (4 s): long enough for the lagged, damped arm to come to rest


@pytest.fixture(scope="module")
def env():
    with SoftArmEnv() as env:
        yield env


@pytest.fixture(scope="module")
def tendon_env():
    with SoftArmEnv(ARMS["tendon"]) as env:
        yield env


def settle(env: SoftArmEnv, command: np.ndarray, steps: int = SETTLE) -> None:
    for _ in range(steps):
        env.step(command)


def test_reach_succeeds_only_when_the_tip_is_held_on_the_target() -> None:
    reach = TASKS["reach"]  # within 10 mm for 3 control steps in a row
    near, far = 0.005, 0.02
    swept = np.array([far, near, near, far, near, far])
    assert not reach.success(swept, 10.0)
    assert not reach.done(swept)
    assert reach.time_to_success(swept, 10.0) is None
    held = np.array([far, far, near, far, near, near, near, far])
    assert reach.success(held, 10.0)
    assert reach.done(held)
    assert reach.time_to_success(held, 10.0) == pytest.approx(0.5)  # held from step 4, after its action: 0.5 s
    assert reach.time_to_success(np.full(3, near), 10.0) == pytest.approx(0.1)
    assert not reach.success(np.array([near, near]), 10.0)  # fewer steps than the dwell


def test_zero_pressure_returns_the_arm_to_its_straight_rest_pose(env) -> None:
    command = np.linspace(-0.8, 0.8, 10)
    env.reset()
    settle(env, command)
    assert np.linalg.norm(env.tip_position() - [0, 0, -0.5]) > 0.05  # it really was bent
    settle(env, np.zeros(10), steps=60)
    np.testing.assert_allclose(env.tip_position(), [0.0, 0.0, -0.5], atol=1e-3)
    assert np.abs(env.data.qvel).max() < 1e-2
    np.testing.assert_allclose(env.node_features()[:, 13:16], 0.0, atol=0.05)  # curvature gone


@pytest.mark.parametrize("segment", [0, 3, 8])
def test_one_actuator_bends_its_own_segment_about_its_axis(env, segment: int) -> None:
    env.reset()
    command = np.zeros(10)
    command[segment] = 1.0
    settle(env, command)
    nodes = env.node_features()
    axis = ArmSpec().actuated_axis(segment)
    bend = nodes[:, 13 + axis]
    assert bend[segment] > 1.0  # 1/m: positive pressure bends the segment the positive way about its axis
    others = np.delete(np.abs(nodes[:, 13:15]), segment, axis=0)
    assert others.max() < 0.25 * bend[segment]  # the rest only follows passively (gravity)
    # The tip swings sideways, perpendicular to the bending axis, not along it.
    side = env.tip_position()[1 - axis]
    assert abs(side) > 0.005
    assert abs(env.tip_position()[axis]) < 0.2 * abs(side)


def test_node_features_mean_what_the_schema_says(env) -> None:
    env.reset()
    command = np.array([0.6, -0.4, 0.2, 0.8, -0.7, 0.1, 0.5, -0.3, 0.9, -0.9])
    env.step(command)
    before = env.node_features()
    env.step(command)
    nodes = env.node_features()
    assert nodes.shape == (arm.NUM_NODES, arm.NUM_NODE_FEATURES)
    assert nodes.dtype == np.float32
    np.testing.assert_allclose(nodes[9, 0:3], env.tip_position(), atol=1e-6)  # node 9 is the tip
    gaps = np.linalg.norm(np.diff(np.vstack([[0, 0, 0], nodes[:, 0:3]]), axis=0), axis=1)
    np.testing.assert_allclose(gaps, 0.05, atol=1e-4)  # nodes sit one segment length apart along the arm
    np.testing.assert_allclose(np.linalg.norm(nodes[:, 3:7], axis=1), 1.0, atol=1e-5)
    assert (nodes[:, 3] >= 0).all()
    # velocity: the centred finite difference of positions over one control period
    mid = (before[:, 7:10] + nodes[:, 7:10]) / 2
    np.testing.assert_allclose((nodes[:, 0:3] - before[:, 0:3]) * env.control_hz, mid, atol=0.03)
    np.testing.assert_allclose(nodes[:, 16], command, atol=1e-6)  # last commanded action
    # actuator state: the first-order lag (tau 0.1 s) after 0.2 s of a step command
    np.testing.assert_allclose(nodes[:, 17], command * (1 - np.exp(-2.0)), atol=0.02)
    assert (nodes[:, 18] == 0).all()  # nothing touches the hanging arm


def test_contact_force_appears_on_the_segment_that_touches() -> None:
    spec = ArmSpec(floor_height=ArmSpec().mount_height - 0.48)  # 2 cm above the resting tip
    with SoftArmEnv(spec) as env:
        command = np.zeros(10)
        command[1] = 0.2  # a slight bend, so the arm buckles sideways instead of standing on its tip
        settle(env, command)
        force = env.node_features()[:, 18]
        tip = env.tip_position()
    assert tip[2] > -0.485  # held up by the floor
    assert force[-1] > 0.5  # N: the tip segment rests on the floor...
    assert (force[:-1] == 0).all()  # ...and only it
    assert force[-1] < 6.0  # of the order of the arm's weight (2.6 N), not a phantom contact


def test_cameras_see_the_arm_and_the_target(env) -> None:
    env.reset()
    env.place_balls({"red": [0.1, 0.0, -0.45]})
    images = env.render()
    assert set(images) == {"base", "side", "tip"}
    for image in images.values():
        assert image.shape == (224, 224, 3)
        assert image.dtype == np.uint8
        assert image.std() > 10  # not a blank frame

    def red_pixels(image: np.ndarray) -> int:
        r, g, b = (image[..., k].astype(int) for k in range(3))
        return int(((r > 120) & (g < 60) & (b < 60)).sum())

    assert red_pixels(images["base"]) > 30
    assert red_pixels(images["side"]) > 30
    env.place_balls({})  # parked out of view
    assert red_pixels(env.render()["base"]) == 0
    env.place_balls({"red": [0.0, 0.0, -0.6]})  # straight below the tip: the wrist camera looks at it
    assert red_pixels(env.render()["tip"]) > 500


def test_the_side_camera_sees_depth_the_base_camera_cannot(env) -> None:
    """Two balls on one ray of the base camera: the same pixel there, 8 cm apart in the side view."""
    from softarm.sim.arm_model import BASE_CAMERA_POS

    def red_centroid(image: np.ndarray) -> np.ndarray:
        r, g, b = (image[..., k].astype(int) for k in range(3))
        return np.argwhere((r > 120) & (g < 60) & (b < 60)).mean(axis=0)

    env.reset()
    near = np.array([0.1, 0.05, -0.42])
    ray = near + env.mount_pos - np.array(BASE_CAMERA_POS)
    far = near + 0.08 * ray / np.linalg.norm(ray)
    views = []
    for ball in (near, far):
        env.place_balls({"red": ball})
        views.append({camera: red_centroid(image) for camera, image in env.render().items() if camera != "tip"})
    assert np.linalg.norm(views[0]["base"] - views[1]["base"]) < 1.0  # pixels
    assert np.linalg.norm(views[0]["side"] - views[1]["side"]) > 8.0


@pytest.mark.parametrize(("arm_name", "episodes"), [("pneumatic", (10, 2, 4)), ("tendon", (6, 1, 3)),
                                                    ("compact", (6, 1, 3))])  # fmt: skip
def test_expert_solves_seeded_episodes(arm_name: str, episodes: tuple[int, int, int]) -> None:
    with SoftArmEnv(ARMS[arm_name]) as env:
        static = StaticArm(env)
        expert = ExpertAgent(static)
        for task_name, count in zip(("reach", "follow", "choose"), episodes, strict=True):
            task = TASKS[task_name]
            for seed in range(count):
                rollout = run_episode(env, static, task, task.sample(seed, static, env.control_hz), expert)
                assert rollout.success, f"{task_name} seed {seed}: min error {1000 * rollout.errors.min():.1f} mm"


def test_follow_circles_either_way_round_and_follow_axis_anticlockwise_around_the_arm(env) -> None:
    static = StaticArm(env)

    def way_round(targets: np.ndarray) -> float:  # the sign of the path's turn seen from above (+1 anticlockwise)
        return float(np.sign(np.cross(targets[1] - targets[0], targets[2] - targets[1])[2]))

    ways = []
    for seed in range(8):
        either = TASKS["follow"].sample(seed, static, env.control_hz)
        axis = TASKS["follow_axis"].sample(seed, static, env.control_hz)
        ways.append(way_round(either.targets))
        assert way_round(axis.targets) == 1.0, seed
        # every point 40 mm from the arm's axis, at one height: the ball's position says where it goes next
        np.testing.assert_allclose(np.hypot(axis.targets[:, 0], axis.targets[:, 1]), 0.04, atol=1e-9)
        assert np.ptp(axis.targets[:, 2]) < 1e-12
        assert (axis.payload, axis.prompt, axis.task) == (either.payload, either.prompt, "follow_axis")
        np.testing.assert_allclose(axis.initial_command, either.initial_command)
    assert set(ways) == {-1.0, 1.0}, ways  # random: both ways among 8 seeds
    centres = [TASKS["follow"].sample(seed, static, env.control_hz).targets.mean(axis=0) for seed in range(2)]
    assert min(np.hypot(*c[:2]) for c in centres) > 0.01  # the random task's circles are not around the axis


def test_follow_lead_shows_a_green_ball_one_second_ahead_on_follow_s_circle(env) -> None:
    static = StaticArm(env)
    hz = env.control_hz
    ahead = round(TASKS["follow_lead"].lead * hz)
    for seed in range(3):
        plain, lead = (TASKS[name].sample(seed, static, hz) for name in ("follow", "follow_lead"))
        np.testing.assert_allclose(lead.targets, plain.targets)  # the same episode, the red ball's path unchanged
        assert plain.guide is None
        assert set(plain.balls(5)) == {"red"}
        # the green ball is where the red one will be 1 s later, past the episode's end too
        np.testing.assert_allclose(lead.guide[:-ahead], lead.targets[ahead:], atol=1e-12)
        assert np.linalg.norm(lead.guide[-1] - lead.targets[-1]) > 0.02
        env.place_balls(lead.balls(5))
        green = env.model.body_mocapid[env.model.body("ball_green").id]
        np.testing.assert_allclose(env.data.mocap_pos[green] - env.mount_pos, lead.targets[5 + ahead])


def test_planning_from_rest_gives_one_goal_per_target_whatever_the_start(env) -> None:
    static, task = StaticArm(env), TASKS["reach"]
    spec = task.sample(3, static, env.control_hz)
    starts = [spec.initial_command, np.full_like(spec.initial_command, 0.3), np.full_like(spec.initial_command, -0.3)]
    goals = {}
    for plan_from in ("current", "rest"):
        expert = ExpertAgent(static, plan_from=plan_from)
        goals[plan_from] = []
        for start in starts:
            expert.reset(dataclasses.replace(spec, initial_command=start), env.control_hz)
            goals[plan_from].append(expert.goal)
            assert np.linalg.norm(static.tip(expert.goal)[0] - spec.targets[0]) < 2e-3  # both put the tip there
    spread = {k: max(np.abs(g - v[0]).max() for g in v) for k, v in goals.items()}
    assert spread["rest"] < 1e-9, spread  # the same pressures from every start
    assert spread["current"] > 0.05, spread  # the redundant arm: each start has its own answer
    rollout = run_episode(env, static, task, spec, ExpertAgent(static, plan_from="rest"))
    assert rollout.success
    with pytest.raises(ValueError, match=r"plan_from must be one of \('current', 'rest'\), got 'home'"):
        ExpertAgent(static, plan_from="home")


def test_the_tendon_arm_differs_in_size_actuators_cameras_and_sensing(tendon_env) -> None:
    env, spec = tendon_env, ARMS["tendon"]
    assert (spec.num_segments, spec.num_actuators, env.command_low, env.command_high) == (6, 9, 0.0, 1.0)
    env.reset()
    command = np.zeros(9)
    command[6] = 1.0  # tendon 0 of the distal section (segments 4 and 5), at angle 0: bends about x
    command[0] = -1.0  # a tendon cannot push: clipped to slack
    settle(env, command)
    nodes = env.node_features()
    assert nodes.shape == (6, arm.NUM_NODE_FEATURES)
    assert (nodes[4:, 13] > 1.0).all()  # 1/m: the pulled section bends the tendon's way...
    assert np.abs(nodes[4:, 14]).max() < 0.1 * nodes[4:, 13].min()  # ...about its axis only
    assert np.abs(nodes[:4, 13:15]).max() < 0.25 * nodes[4:, 13].min()  # the proximal sections just follow
    assert not nodes[:, 16:18].any()  # no per-segment actuator: neither command nor actuator state per node
    np.testing.assert_allclose(env.state()[[0, 6]], [0.0, 1.0], atol=1e-3)  # the tendons' filtered tensions
    images = env.render()
    assert set(images) == {"front", "overhead"}
    assert all(image.shape == (240, 320, 3) and image.std() > 10 for image in images.values())
    assert "contact_force" not in spec.measured
    assert "vel_x" not in spec.measured
    assert "kappa_x" in spec.measured


@pytest.mark.parametrize(
    ("arm_name", "slots"),
    [
        ("pneumatic", {"base_0_rgb": "base", "right_wrist_0_rgb": "side"}),  # mapped by hand, the tip camera left out
        ("compact", {"base_0_rgb": "left", "right_wrist_0_rgb": "right"}),
        ("tendon", {"base_0_rgb": "front", "left_wrist_0_rgb": "overhead"}),  # by name, as `softarm convert` does
    ],
)
def test_fixed_camera_slots_are_where_conversion_puts_an_arm_s_fixed_cameras(arm_name: str, slots: dict) -> None:
    fixed = fixed_camera_slots(arm_name)
    assert fixed == list(slots)
    mapped = CAMERA_SLOTS.get(arm_name) or default_camera_slots([c.name for c in ARMS[arm_name].cameras])
    assert {slot: mapped[slot] for slot in fixed} == slots
    assert not any(c.wrist for c in ARMS[arm_name].cameras if c.name in slots.values())


@pytest.mark.parametrize("arm_name", ["pneumatic", "tendon", "compact"])
def test_choose_balls_are_reachable_under_any_payload(arm_name: str) -> None:
    spec = ARMS[arm_name]
    with SoftArmEnv(spec) as env:
        static = StaticArm(env)
        low, high = spec.command_range
        rng = np.random.default_rng(0)
        starts = [
            np.full(spec.num_actuators, (low + high) / 2),
            *rng.uniform(low / 2, high / 2, (6, spec.num_actuators)),
        ]
        for payload in (0.0, MAX_PAYLOAD):
            env.set_payload(payload)
            for color, position in spec.choices.items():
                residual = min(static.solve(np.array(position), start)[1] for start in starts)
                assert residual < 5e-3, f"{color} ball at payload {payload} kg: {1000 * residual:.1f} mm off"
        spec_episode = TASKS["choose"].sample(3, static, env.control_hz)
    assert spec_episode.prompt == f"reach the {spec_episode.target_color} ball"
    assert set(spec_episode.balls(0)) == set(spec.choices)


def test_static_model_agrees_with_the_simulator(env) -> None:
    static = StaticArm(env)
    command = np.array([0.5, -0.2, 0.3, 0.4, -0.6, 0.2, 0.1, -0.5, 0.7, 0.0])
    predicted, _ = static.tip(command)
    env.reset()
    settle(env, command, steps=60)
    np.testing.assert_allclose(env.tip_position(), predicted, atol=1e-3)


def test_payload_changes_the_shape_that_the_same_pressures_give(env) -> None:
    static = StaticArm(env)
    command = np.array([0.6, 0.3] * 5)
    try:
        env.set_payload(0.0)
        light, _ = static.tip(command)
        env.set_payload(0.05)
        heavy, _ = static.tip(command)
    finally:
        env.set_payload(0.0)
    assert heavy[2] < light[2] - 0.01  # the loaded tip hangs lower...
    assert np.linalg.norm(heavy[:2]) < np.linalg.norm(light[:2]) - 0.02  # ...and reaches less far sideways
    with pytest.raises(ValueError, match="payload must be 0-1 kg, got -1"):
        env.set_payload(-1)


def test_generated_episodes_convert_with_none_skipped(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    result = generate("reach", 3, raw, seed=7)
    assert (result.written, result.reused, result.failed) == (3, 0, [])
    episode = read_episode(raw / "reach_000007.hdf5")
    assert episode.prompt == "reach the ball"
    assert episode.fps == 10.0
    assert episode.images["base"].shape == (episode.length, 224, 224, 3)
    assert episode.graph_nodes.shape == (episode.length, 10, 19)
    assert episode.state.shape == (episode.length, 10)
    np.testing.assert_array_equal(episode.graph_nodes[1:, :, 16], episode.actions[:-1])  # node 16 = previous command
    converted = convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))
    assert len(converted.kept) == 3
    assert converted.skipped == []

    again = generate("reach", 4, raw, seed=7)  # resumes: keeps the 3, writes the 4th
    assert (again.written, again.reused) == (1, 3)
    with pytest.raises(ValueError, match=r"plan_from 'rest' hold_steps 3 hard_only False; choose another --out for "
                                         r"seed 8 "):  # fmt: skip
        generate("reach", 2, raw, seed=8)
    with pytest.raises(ValueError, match=r"for seed 7 noise 0\.0 arm 'tendon' plan_from 'rest'"):
        generate("reach", 2, raw, seed=7, arm="tendon")
    with pytest.raises(ValueError, match=r"hold_steps 3 hard_only False; choose another --out for .* plan_from "
                                         r"'current' hold_steps 3"):  # fmt: skip
        generate("reach", 2, raw, seed=7, plan_from="current")
    with pytest.raises(ValueError, match=r"--plan-from must be one of \('current', 'rest'\), got 'home'"):
        generate("reach", 2, raw, seed=7, plan_from="home")
    with pytest.raises(ValueError, match="--hold-steps must be >= 0, got -1"):
        generate("reach", 2, raw, seed=7, hold_steps=-1)
    held = generate("reach", 1, tmp_path / "held", seed=7, hold_steps=9)  # the same episode, held 6 steps longer
    assert held.written == 1
    longer = read_episode(tmp_path / "held" / "reach_000007.hdf5")
    assert longer.length == episode.length + 6
    np.testing.assert_array_equal(longer.actions[: episode.length], episode.actions)
    mixed = generate("choose", 1, raw, seed=7)  # another task may join the directory: a multi-task dataset
    assert (mixed.written, mixed.reused) == (1, 0)
    assert sorted(p.name for p in raw.glob("generate_*.json")) == ["generate_choose.json", "generate_reach.json"]
    with pytest.raises(ValueError, match="unknown task 'push'"):
        generate("push", 2, tmp_path / "other")
    with pytest.raises(ValueError, match="unknown arm 'octopus'; choose one of"):
        generate("reach", 2, tmp_path / "other", arm="octopus")


def test_hard_only_records_the_far_balls_and_light_payloads_alone(tmp_path: Path, env: SoftArmEnv) -> None:
    assert main(["sim", "generate", "--episodes", "8", "--seed", "40", "--hard-only", "--out", str(tmp_path)]) == 0
    static = StaticArm(env)
    specs = {seed: TASKS["reach"].sample(seed, static, env.control_hz) for seed in range(40, 48)}
    hard = {seed for seed, spec in specs.items() if np.hypot(*spec.targets[-1][:2]) > 0.170 or spec.payload < 0.012}
    assert 0 < len(hard) < 8  # these seeds hold both kinds
    assert {int(p.stem.split("_")[1]) for p in tmp_path.glob("reach_*.hdf5")} == hard
    manifest = json.loads((tmp_path / "generate_reach.json").read_text())
    assert (manifest["hard_only"], manifest["written"], manifest["passed_over"]) == (True, len(hard), 8 - len(hard))
    again = generate("reach", 8, tmp_path, seed=40, hard_only=True)  # resumes: nothing new to record
    assert (again.written, again.reused, again.passed_over) == (0, len(hard), 8 - len(hard))
    with pytest.raises(ValueError, match=r"hard_only True; choose another --out for .* hard_only False"):
        generate("reach", 8, tmp_path, seed=40)


def test_generate_cli_records_the_expert_settings_it_was_given(tmp_path: Path) -> None:
    assert main(["sim", "generate", "--episodes", "1", "--seed", "3", "--plan-from", "current", "--hold-steps", "5",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "generate_reach.json").read_text())
    assert (manifest["plan_from"], manifest["hold_steps"], manifest["written"]) == ("current", 5, 1)
    episode = read_episode(tmp_path / "reach_000003.hdf5")
    with SoftArmEnv() as env:
        static = StaticArm(env)
        expert = ExpertAgent(static, plan_from="current")
        expert.reset(TASKS["reach"].sample(3, static, env.control_hz), env.control_hz)
    # the recorded ramp ends on the goal the expert plans from the arm's own pressures
    np.testing.assert_allclose(episode.actions[-1], expert.goal, atol=0.02)


def test_a_directory_recorded_before_plan_from_resumes_only_as_it_was_recorded(tmp_path: Path) -> None:
    """Its manifest has no plan_from / hold_steps: its episodes were planned from the arm's pressures, held 3 steps."""
    assert generate("reach", 1, tmp_path, seed=3, plan_from="current").written == 1
    manifest_path = tmp_path / "generate_reach.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k not in ("plan_from", "hold_steps")}))
    with pytest.raises(ValueError, match=r"plan_from 'current' hold_steps 3 hard_only False; choose another --out .* "
                                         r"plan_from 'rest'"):  # fmt: skip
        generate("reach", 2, tmp_path, seed=3)  # today's default plans from rest
    resumed = generate("reach", 2, tmp_path, seed=3, plan_from="current")
    assert (resumed.written, resumed.reused) == (1, 1)


def test_the_tendon_arm_through_the_whole_pipeline(tmp_path: Path) -> None:
    """generate -> convert (no shape flag) -> train -> closed loop: the arm's sizes, sensing and cameras go through."""
    from softarm.train.config import load_config
    from softarm.train.loop import train

    spec = ARMS["tendon"]
    assert main(["sim", "generate", "--arm", "tendon", "--task", "choose", "--episodes", "3", "--out",
                 str(tmp_path / "raw")]) == 0  # fmt: skip
    episode = read_episode(tmp_path / "raw" / "choose_000000.hdf5")
    assert episode.graph_nodes.shape == (episode.length, 6, len(spec.measured))  # only what it senses
    assert episode.node_features == spec.measured
    assert (episode.actions.shape[1], episode.state.shape[1]) == (9, 9)
    assert episode.images["front"].shape == (episode.length, 240, 320, 3)
    np.testing.assert_array_equal(episode.edges, [[i, i + 1] for i in range(5)])
    converted = convert(tmp_path / "raw", tmp_path / "prep", ConvertOptions(val_episodes=1))
    assert converted.skipped == []
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert (meta["num_nodes"], meta["action_dim"], meta["state_dim"]) == (6, 9, 9)
    assert meta["measured"] == list(spec.measured)
    assert meta["cameras"] == {"base_0_rgb": "front", "left_wrist_0_rgb": "overhead", "right_wrist_0_rgb": None}
    config = Path(__file__).parents[1] / "configs" / "demo.yaml"  # ignores velocities the arm does not sense
    overrides = [f"data.path={tmp_path / 'prep'}", f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
                 "train.save_every=2", "train.val_every=100", "data.batch_size=4"]  # fmt: skip
    train(load_config(config, overrides))
    options = EvalOptions(task="choose", arm="tendon", policy="model", episodes=1, replan=8, videos=1,
                          checkpoint=str(tmp_path / "run" / "checkpoints" / "2"))  # fmt: skip
    summary = evaluate(options, tmp_path / "eval")
    assert (summary["arm"], summary["episodes"]) == ("tendon", 1)
    with Image.open(tmp_path / "eval" / "rollouts.gif") as gif:
        assert gif.size == (640, 240)  # the two cameras side by side


def test_progress_names_a_model_by_its_run_and_step() -> None:
    assert model_label(Path("runs/graph/checkpoints/400")) == "graph step 400"
    assert model_label(Path("models/sim_base/graph")) == "graph"  # a base: its directory
    assert model_label(Path("exports/checkpoints/best")) == "best"  # not a step: the directory


def test_wilson_interval_matches_known_values() -> None:
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.2775), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(5, 10), (0.2366, 0.7634), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(50, 50), (0.9287, 1.0), atol=1e-4)
    for n in (1, 30, 100, 1000):  # the rate itself is always inside, exactly so at 0 % and 100 %
        assert wilson_interval(n, n)[1] == 1.0
        assert wilson_interval(0, n)[0] == 0.0


def test_eval_baselines_write_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "expert"
    assert main(["eval", "--policy", "expert", "--episodes", "3", "--videos", "1", "--out", str(out)]) == 0
    assert "expert on reach: success 3/3 = 100 %" in capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert report["summary"]["success_rate_wilson95"][1] == 1.0
    assert [e["seed"] for e in report["episodes"]] == [1_000_000, 1_000_001, 1_000_002]
    assert all(e["final_error_mm"] < 10 for e in report["episodes"])
    with Image.open(out / "rollouts.gif") as gif:
        assert gif.n_frames == report["episodes"][0]["steps"]
    assert Image.open(out / "summary.png").size[0] > 500

    summary = evaluate(EvalOptions(policy="random", episodes=3, videos=0), tmp_path / "random")
    assert summary["successes"] == 0
    assert summary["final_error_mm_median"] > 30
    assert not (tmp_path / "random" / "rollouts.gif").exists()
    with pytest.raises(ValueError, match="needs --checkpoint"):
        evaluate(EvalOptions(policy="model"), tmp_path / "model")


def test_eval_runs_a_trained_checkpoint_closed_loop(tmp_path: Path) -> None:
    """The whole chain on simulator data: generate -> convert -> train (tiny) -> eval through SoftArmPolicy."""
    from softarm.train.config import load_config
    from softarm.train.loop import train

    generate("reach", 3, tmp_path / "raw")
    convert(tmp_path / "raw", tmp_path / "prep", ConvertOptions(val_episodes=1))
    config = Path(__file__).parents[1] / "configs" / "debug.yaml"
    overrides = [f"data.path={tmp_path / 'prep'}", f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
                 "train.save_every=2", "train.val_every=100"]  # fmt: skip
    train(load_config(config, overrides))
    options = EvalOptions(policy="model", checkpoint=str(tmp_path / "run" / "checkpoints" / "2"), episodes=2,
                          replan=4, videos=1)  # fmt: skip
    summary = evaluate(options, tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert summary["episodes"] == 2
    assert summary["infer_ms_median"] > 0
    # a 2-step model does not solve reach; it must still have run every step of both episodes
    assert [e["steps"] for e in report["episodes"]] == [50, 50]
    assert summary["success_rate_wilson95"][0] == 0.0
    # two processes, an episode each: the serial run's episodes (seeded per episode), its film, its figures; then the
    # same processes run the expert and the model again (a shared pool: each worker swaps its agent with the options)
    expert = EvalOptions(policy="expert", episodes=2, videos=0)
    with eval_pool(2) as pool:
        evaluate(dataclasses.replace(options, workers=2), tmp_path / "two", pool)
        pooled_expert = evaluate(expert, tmp_path / "expert_pooled", pool)
        evaluate(options, tmp_path / "again", pool)
    for name in ("two", "again"):
        ran = json.loads((tmp_path / name / "eval.json").read_text())["episodes"]
        assert [(e["seed"], e["steps"], e["success"]) for e in ran] == [
            (e["seed"], e["steps"], e["success"]) for e in report["episodes"]
        ]
        for ours, serial in zip(ran, report["episodes"], strict=True):
            assert ours["final_error_mm"] == pytest.approx(serial["final_error_mm"], rel=1e-3)
    assert (tmp_path / "two" / "rollouts.gif").read_bytes() == (tmp_path / "eval" / "rollouts.gif").read_bytes()
    serial_expert = evaluate(expert, tmp_path / "expert_serial")
    assert pooled_expert["successes"] == serial_expert["successes"] == 2
    assert pooled_expert["final_error_mm_median"] == pytest.approx(serial_expert["final_error_mm_median"], rel=1e-6)
    # under 200 ms of simulated latency with real-time chunking: the same episodes, each chunk switch measured
    late = evaluate(dataclasses.replace(options, latency_ms=200, execution="rtc", videos=0), tmp_path / "rtc")
    episodes = json.loads((tmp_path / "rtc" / "eval.json").read_text())["episodes"]
    assert (late["execution"], late["latency_ms"]) == ("rtc", 200)
    assert [e["steps"] for e in episodes] == [50, 50]
    assert all(0 < e["switch_jump"] <= 1 and 0 < e["chunk_gap"] <= 1 and e["jerk_rms"] > 0 for e in episodes)
    assert late["switch_jump_mean"] == pytest.approx(np.mean([e["switch_jump"] for e in episodes]))
    assert (summary["noise_scale"], late["noise_scale"]) == (1.0, 1.0)
    # a finished evaluation is reused only for the options it was written for
    assert reusable_report(options, tmp_path / "eval") == report
    for changed in ({"noise_scale": 0.5}, {"replan": 8}, {"seed": 7}, {"episodes": 3}, {"execution": "async"},
                    {"num_steps": 3}):  # fmt: skip
        assert reusable_report(dataclasses.replace(options, **changed), tmp_path / "eval") is None
    older = {**report, "summary": {k: v for k, v in report["summary"].items() if k != "noise_scale"}}
    (tmp_path / "eval" / "eval.json").write_text(json.dumps(older))  # written before noise_scale was recorded
    assert reusable_report(options, tmp_path / "eval") == older
    assert reusable_report(options, tmp_path / "nowhere") is None
    ensemble = dataclasses.replace(options, execution="ensemble", replan=1, videos=0, episodes=1)
    evaluate(ensemble, tmp_path / "ensemble")
    assert reusable_report(ensemble, tmp_path / "ensemble") is not None
    assert reusable_report(dataclasses.replace(ensemble, ensemble_decay=0.5), tmp_path / "ensemble") is None
    flat = evaluate(dataclasses.replace(options, noise_scale=0.0, num_steps=3, videos=0, episodes=1), tmp_path / "flat")
    assert (flat["noise_scale"], flat["num_steps"], summary["num_steps"]) == (0.0, 3, 10)
    assert [e["steps"] for e in json.loads((tmp_path / "flat" / "eval.json").read_text())["episodes"]] == [50]
    for wrong in ({"latency_ms": 100}, {"noise_scale": 0.0}, {"num_steps": 3}):
        with pytest.raises(ValueError, match="--num-steps concern a model's inference; use them with --policy model"):
            evaluate(EvalOptions(policy="expert", **wrong), tmp_path / "expert")
    with pytest.raises(ValueError, match="--num-steps must be at least 1"):
        evaluate(dataclasses.replace(options, num_steps=0), tmp_path / "none")


def test_payload_blind_expert_misses_light_and_heavy_loads(tmp_path: Path) -> None:
    """Planning for the mean payload is what a controller without shape sensing can do: it misses the extremes."""
    summary = evaluate(EvalOptions(task="choose", policy="expert-blind", episodes=8, videos=0), tmp_path)
    episodes = json.loads((tmp_path / "eval.json").read_text())["episodes"]
    extreme = [e for e in episodes if abs(e["payload_g"] - 25) > 15]
    assert extreme
    assert not any(e["success"] for e in extreme)
    assert all(e["final_error_mm"] > 10 for e in extreme)
    assert summary["successes"] < 8
    full = evaluate(EvalOptions(task="choose", policy="expert", episodes=8, videos=0), tmp_path / "full")
    assert full["successes"] == 8  # the same episodes, solved when the payload is known


def test_noisy_demonstrations_label_the_experts_command_not_the_executed_one(env) -> None:
    """DART: the arm executes command + noise and strays; the recorded action is still the expert's command."""
    static, task = StaticArm(env), TASKS["reach"]
    spec = task.sample(5, static, env.control_hz)
    clean = run_episode(env, static, task, spec, ExpertAgent(static), stop_on_success=False)
    noisy = run_episode(env, static, task, spec, ExpertAgent(static), stop_on_success=False, action_noise=0.1)
    again = run_episode(env, static, task, spec, ExpertAgent(static), stop_on_success=False, action_noise=0.1)
    # reach's expert plans once: its command depends on time only, so the labels are the clean run's
    np.testing.assert_allclose(noisy.actions, clean.actions, atol=1e-6)
    executed = noisy.graph_nodes[1:, :, 16]  # node feature 16 = the command the arm last received
    deviation = executed - noisy.actions[:-1]
    assert deviation.std() == pytest.approx(0.1, rel=0.15)
    assert abs(deviation.mean()) < 0.02
    strayed = np.abs(noisy.graph_nodes[:, :, 0:3] - clean.graph_nodes[:, :, 0:3]).max()
    assert strayed > 0.005  # the arm really strayed (m)
    np.testing.assert_array_equal(again.graph_nodes, noisy.graph_nodes)  # the noise is seeded by the episode
    with pytest.raises(ValueError, match=r"action noise must be >= 0, got -0\.1"):
        run_episode(env, static, task, spec, ExpertAgent(static), action_noise=-0.1)


def test_an_executor_drives_the_arm_while_the_expert_labels(env) -> None:
    """DAgger: another agent's commands reach the arm, the expert's are recorded; scores are the executor's."""
    static, task = StaticArm(env), TASKS["follow"]
    spec = task.sample(3, static, env.control_hz)
    clean = run_episode(env, static, task, spec, ExpertAgent(static))
    driven = run_episode(env, static, task, spec, ExpertAgent(static), executor=RandomAgent(env.spec))
    # follow's expert aims at where the ball will be, whatever the arm does: the labels are the clean run's
    np.testing.assert_allclose(driven.actions, clean.actions, atol=1e-6)
    replay = RandomAgent(env.spec)
    replay.reset(spec, env.control_hz)
    commands = np.stack([replay.act({}) for _ in range(driven.steps)])
    np.testing.assert_allclose(driven.graph_nodes[1:, :, 16], commands[:-1], atol=1e-6)  # what the arm received
    assert clean.success
    assert not driven.success
    assert np.median(driven.errors) > 5 * np.median(clean.errors)


def test_hold_keeps_the_arm_at_rest_while_the_ball_circles(env) -> None:
    """Scenes in which only the ball moves (the motion warm-up's): the arm gets its rest command at every step, its
    tip stays put while the ball goes round, and the labels are still the expert's."""
    static, task = StaticArm(env), TASKS["follow"]
    spec = task.sample(3, static, env.control_hz)
    clean = run_episode(env, static, task, spec, ExpertAgent(static))
    held = run_episode(env, static, task, spec, ExpertAgent(static), executor=Hold()(static))
    received = held.graph_nodes[1:, :, 16]  # node feature 16 = the command the arm last received
    np.testing.assert_allclose(received, np.broadcast_to(spec.initial_command, received.shape), atol=1e-6)
    np.testing.assert_allclose(held.actions, clean.actions, atol=1e-6)
    tip = held.graph_nodes[:, -1, 0:3]
    ball = spec.targets[: held.steps]
    assert np.linalg.norm(tip - tip[0], axis=1).max() < 0.1 * np.linalg.norm(ball - ball[0], axis=1).max()
    assert Hold.name == "hold (the arm kept at its initial command)"


def test_recorded_targets_draw_the_ball_paths_again_from_the_file_names(env, tmp_path: Path) -> None:
    static = StaticArm(env)
    expected = [TASKS["follow"].sample(seed, static, env.control_hz).targets for seed in (3, 12)]
    paths, hz = recorded_targets([tmp_path / "follow_000003.hdf5", "follow_000012.hdf5"], "follow")
    assert hz == env.control_hz
    for got, want in zip(paths, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"reach_000003\.hdf5: not a follow recording named by its seed"):
        recorded_targets(["reach_000003.hdf5"], "follow")


@dataclasses.dataclass(frozen=True)
class RandomExecutor:
    name: str = "random"

    def __call__(self, static: StaticArm) -> RandomAgent:
        return RandomAgent(static.env.spec)


def test_generation_with_an_executor_keeps_every_episode_and_names_it(env, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    result = generate("reach", 2, raw, seed=7, executor=RandomExecutor())
    assert (result.written, result.failed, sorted(result.missed_under_noise)) == (2, [], [7, 8])
    manifest = json.loads((raw / "generate_reach.json").read_text())
    assert (manifest["executor"], manifest["missed_under_noise_seeds"]) == ("random", [7, 8])
    episode = read_episode(raw / "reach_000007.hdf5")
    static = StaticArm(env)
    spec = TASKS["reach"].sample(7, static, env.control_hz)
    expert = run_episode(env, static, TASKS["reach"], spec, ExpertAgent(static), stop_on_success=False)
    np.testing.assert_allclose(episode.actions, expert.actions[: len(episode.actions)], atol=1e-6)  # the labels
    assert np.abs(episode.graph_nodes[1:, :, 16] - episode.actions[:-1]).max() > 0.5  # the executed commands
    refused = r"hard_only False executor 'random'; choose another --out for seed 7 noise 0\.0 .* executor None$"
    with pytest.raises(ValueError, match=refused):
        generate("reach", 2, raw, seed=7)


def test_sim_generate_drives_the_arm_with_a_checkpoint(pretrained: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    base = pretrained / "base" / "graph"
    assert main(["sim", "generate", "--task", "reach", "--episodes", "1", "--out", str(raw), "--executor",
                 str(base), "--executor-replan", "4", "--executor-noise-scale", "0"]) == 0  # fmt: skip
    manifest = json.loads((raw / "generate_reach.json").read_text())
    assert manifest["executor"] == f"{base} (re-plan 4, noise scale 0)"
    episode = read_episode(raw / "reach_000000.hdf5")
    assert episode.actions.shape[1] == ARMS["pneumatic"].num_actuators
    assert np.abs(episode.graph_nodes[1:, :, 16] - episode.actions[:-1]).max() > 0.01  # the policy drove the arm


def test_noisy_generation_keeps_misses_records_noise_and_converts(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    result = generate("choose", 3, raw, seed=0, noise=0.2, workers=2)
    assert result.written == 3
    assert result.failed == []
    assert result.missed_under_noise  # at this noise the tip does not hold within 10 mm, yet the labels are right
    manifest = json.loads((raw / "generate_choose.json").read_text())
    assert manifest["noise"] == 0.2
    assert manifest["missed_under_noise_seeds"] == result.missed_under_noise
    # their files, for what must not take their end for the goal (the vision warm-up)
    assert generate_module.missed_under_noise(raw) == [f"choose_{s:06d}.hdf5" for s in result.missed_under_noise]
    assert generate_module.missed_under_noise(tmp_path / "nothing recorded") == []
    episode = read_episode(raw / "choose_000000.hdf5")
    assert np.abs(episode.graph_nodes[1:, :, 16] - episode.actions[:-1]).max() > 0.1  # executed != recorded
    converted = convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))
    assert (len(converted.kept), converted.skipped) == (3, [])
    again = generate("choose", 3, raw, seed=0, noise=0.2)  # all reused: the misses stay listed
    assert (again.written, again.reused, again.missed_under_noise) == (0, 3, result.missed_under_noise)
    manifest = json.loads((raw / "generate_choose.json").read_text())
    assert manifest["missed_under_noise_seeds"] == result.missed_under_noise
    with pytest.raises(ValueError, match=r"hold_steps 3 hard_only False; choose another --out for seed 0 noise 0\.0"):
        generate("choose", 3, raw, seed=0)
    serial = generate("choose", 3, tmp_path / "serial", seed=0, noise=0.2)  # the same episodes in one process
    assert serial.missed_under_noise == result.missed_under_noise
    assert generate_module._WORKER == {}  # the serial run closed its simulator and renderer
    for name in ("choose_000000.hdf5", "choose_000002.hdf5"):
        a, b = read_episode(raw / name), read_episode(tmp_path / "serial" / name)
        np.testing.assert_array_equal(a.graph_nodes, b.graph_nodes)
        np.testing.assert_array_equal(a.images["side"], b.images["side"])
    with pytest.raises(ValueError, match="--noise must be >= 0"):
        generate("choose", 3, tmp_path / "other", noise=-1.0)


def test_training_and_evaluation_repeat_exactly(tmp_path: Path) -> None:
    """The same data, config and seed give the same weights and the same closed-loop episodes, bit for bit."""
    from softarm.train.config import load_config
    from softarm.train.loop import train

    generate("reach", 3, tmp_path / "raw")
    convert(tmp_path / "raw", tmp_path / "prep", ConvertOptions(val_episodes=1))
    config = Path(__file__).parents[1] / "configs" / "demo.yaml"
    reports = []
    for run in ("a", "b"):
        overrides = [f"data.path={tmp_path / 'prep'}", f"train.out_dir={tmp_path / run}", "train.steps=3",
                     "train.save_every=3", "train.val_every=3", "data.batch_size=4"]  # fmt: skip
        train(load_config(config, overrides))
        options = EvalOptions(policy="model", checkpoint=str(tmp_path / run / "checkpoints" / "3"), episodes=2,
                              videos=0)  # fmt: skip
        evaluate(options, tmp_path / f"eval_{run}")
        reports.append(json.loads((tmp_path / f"eval_{run}" / "eval.json").read_text()))
        assert (tmp_path / run / "checkpoints" / "3" / "model.safetensors").is_file()
    a, b = ((tmp_path / run / "checkpoints" / "3" / "model.safetensors").read_bytes() for run in ("a", "b"))
    assert a == b
    assert reports[0]["episodes"] == reports[1]["episodes"]
    assert reports[0]["episodes"][0]["final_error_mm"] > 0
