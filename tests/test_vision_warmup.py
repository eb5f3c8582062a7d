"""The vision warm-up: every frame labelled with where its episode's tip ends, and a tower that learns to see it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from softarm.arm import SCHEMA
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset
from softarm.data.raw import write_episode
from softarm.model import PI0GraphPytorch
from softarm.train.config import load_config
from softarm.train.vision_warmup import VISION_PREFIXES, WarmupOptions, hindsight_goals, warm_up_vision
from tests.conftest import DEBUG_CONFIG, make_episode

GOAL = "reach the ball"


def _goal(i: int) -> np.ndarray:
    """Episode i's goal: a point on a 3x3 grid (x, y) at a fixed height."""
    return np.array([(i % 3 - 1) * 0.1, (i // 3 % 3 - 1) * 0.1, 0.3], np.float32)


def _dataset(tmp_path: Path, episodes: int = 30, features: tuple[str, ...] | None = None) -> Path:
    """Episodes whose only camera shows a white square where the goal is, the tip ending on the goal; two episodes
    of another task end elsewhere."""
    raw = tmp_path / "raw"
    for i in range(episodes):
        episode = make_episode(length=3, seed=i)
        goal = _goal(i)
        image = np.random.default_rng(i).integers(0, 60, (3, 100, 100, 3), dtype=np.uint8)  # no two frames alike
        row, col = int(50 + goal[1] * 300), int(50 + goal[0] * 300)  # 20 to 80 px
        image[:, row - 12 : row + 12, col - 12 : col + 12] = 255
        other = i >= episodes - 2
        nodes = episode.graph_nodes
        if features is not None:
            nodes = nodes[:, :, : len(features)]
        else:
            nodes[-1, -1, :3] = goal if not other else goal + 1.0
            nodes[:-1, -1, :3] = goal / 2  # on its way: the goal seen from the tip is half the goal, then none
            image[-1, :10, :10] = 200  # the last frame says it is the last
        episode = dataclasses.replace(episode, images={"base": image}, graph_nodes=nodes, node_features=features,
                                      prompt="follow the red ball" if other else GOAL)  # fmt: skip
        write_episode(raw / f"ep_{i:03d}.h5", episode)
    convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=5, cameras={"base_0_rgb": "base"}))
    return tmp_path / "prep"


def test_every_frame_is_labelled_with_where_its_episodes_tip_ends(tmp_path: Path) -> None:
    prepared = PreparedDataset(_dataset(tmp_path), "all")
    goals = hindsight_goals(prepared, (GOAL,))
    chosen = [ep for ep in prepared.episodes if ep["prompt"] == GOAL]
    assert len(chosen) == 28
    for episode in chosen:
        frames = range(episode["start"], episode["start"] + episode["length"])
        i = int(Path(episode["file"]).stem.split("_")[1])
        np.testing.assert_allclose(goals.targets[list(frames)], np.tile(_goal(i), (3, 1)), atol=1e-6)
        np.testing.assert_array_equal(goals.tips[list(frames)], prepared.arrays["graph_nodes"][list(frames), -1, :3])
        assert set(frames) <= set((goals.train if episode["split"] == "train" else goals.val).tolist())
    other = {f for ep in prepared.episodes if ep["prompt"] != GOAL for f in range(ep["start"], ep["start"] + 3)}
    assert len(other) == 6
    assert not other & (set(goals.train.tolist()) | set(goals.val.tolist()))  # other tasks are left out
    assert len(goals.train) + len(goals.val) == 3 * 28
    everything = hindsight_goals(prepared)  # no prompt given: every episode
    assert len(everything.train) + len(everything.val) == 3 * 30
    # episodes that did not end at their goal (missed under DART noise) are left out by file, the others kept as is
    some = hindsight_goals(prepared, (GOAL,), exclude=("ep_000.h5", "ep_004.h5", "ep_029.h5", "ep_999.h5"))
    assert some.excluded == 2  # ep_029 is of another task, ep_999 not in the dataset
    left_out = {f for ep in prepared.episodes if ep["file"] in ("ep_000.h5", "ep_004.h5")
                for f in range(ep["start"], ep["start"] + 3)}  # fmt: skip
    kept = set(some.train.tolist()) | set(some.val.tolist())
    assert kept == (set(goals.train.tolist()) | set(goals.val.tolist())) - left_out
    np.testing.assert_array_equal(some.targets[sorted(kept)], goals.targets[sorted(kept)])
    assert goals.excluded == 0


def test_a_dataset_without_tip_positions_is_refused_by_name(tmp_path: Path) -> None:
    prepared = PreparedDataset(_dataset(tmp_path, episodes=8, features=SCHEMA[3:6]), "all")
    with pytest.raises(ValueError, match=r"needs the tip's measured position, but pos_x, pos_y, pos_z is not among"):
        hindsight_goals(prepared)
    model = PI0GraphPytorch(load_config(DEBUG_CONFIG, [f"data.path={tmp_path / 'prep'}"]).validate())
    with pytest.raises(ValueError, match="readout must be 'attend' or 'flat', not 'pool'"):
        warm_up_vision(model, str(tmp_path / "prep"), WarmupOptions(steps=1, readout="pool"))
    with pytest.raises(ValueError, match="no training episodes with the prompts"):
        hindsight_goals(PreparedDataset(_dataset(tmp_path / "b", episodes=8), "all"), ("reach the green ball",))


@pytest.mark.parametrize(("readout", "relative"), [("attend", False), ("flat", True)])
def test_the_tower_learns_to_see_the_goal_and_nothing_else_changes(
    tmp_path: Path, readout: str, relative: bool
) -> None:
    prepared = _dataset(tmp_path)
    config = load_config(DEBUG_CONFIG, [f"data.path={prepared}"])
    model = PI0GraphPytorch(config.validate())
    before = {name: t.clone() for name, t in model.state_dict().items()}
    options = WarmupOptions(steps=300, batch_size=8, lr=1e-3, warmup_steps=10, prompts=(GOAL,), val_every=50,
                            readout=readout, relative=relative)  # fmt: skip
    result = warm_up_vision(model, str(prepared), options)
    goals = hindsight_goals(PreparedDataset(prepared, "all"), (GOAL,))
    guess = np.linalg.norm(goals.targets[goals.val] - goals.targets[goals.train].mean(0), axis=1) * 1000
    assert (result.steps, result.train_frames, result.val_frames) == (300, len(goals.train), len(goals.val))
    assert result.val_error_mm_median < 0.2 * np.median(guess), (result, np.median(guess))
    if relative:  # the goal seen from the tip now, learnt too
        offsets = goals.targets - goals.tips
        spread = np.linalg.norm(offsets[goals.val] - offsets[goals.train].mean(0), axis=1) * 1000
        assert result.val_relative_error_mm_median < 0.3 * np.median(spread), (result, np.median(spread))
    else:
        assert result.val_relative_error_mm_median is None
    after = model.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert all(name.startswith(VISION_PREFIXES) for name in changed)
    assert any(".vision_tower." in name for name in changed)
    assert any("projector" in name for name in changed)
