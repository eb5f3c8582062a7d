"""Proprioceptive history: the window rule (loader and robot side alike), the graph encoder over past steps, the
transform's checks, and a history model trained, checkpointed and asked for actions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import runpy

import numpy as np
import pytest
import torch

from softarm.apps.evaluate import ModelAgent
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset
from softarm.graph_encoder import GraphEncoder
from softarm.history import GraphHistory, HistorySpec
from softarm.model_config import SoftArmModelConfig
from softarm.policy import SoftArmPolicy
from softarm.sim.tasks import EpisodeSpec
from tests.conftest import DEBUG_CONFIG, POLICY_CAMERAS, observation, raw_dir


def test_a_window_repeats_the_first_step_before_the_episode_and_masks_it() -> None:
    spec = HistorySpec(steps=3, stride=2)
    assert spec.span == 5
    back, mask = spec.offsets(available=1)
    assert back.tolist() == [0, 0, 0]
    assert mask.tolist() == [False, False, True]
    back, mask = spec.offsets(available=3)
    assert back.tolist() == [2, 2, 0]
    assert mask.tolist() == [False, True, True]
    back, mask = spec.offsets(available=9)
    assert back.tolist() == [4, 2, 0]
    assert mask.tolist() == [True, True, True]
    with pytest.raises(ValueError, match="history steps and stride must be >= 1, got 0 and 1"):
        HistorySpec(steps=0)


def test_the_robot_sides_window_is_the_loaders(tmp_path: Path) -> None:
    convert(raw_dir(tmp_path, lengths=(9, 7)), tmp_path / "prep", ConvertOptions(val_episodes=1))
    data, spec = PreparedDataset(tmp_path / "prep", "all"), HistorySpec(steps=3, stride=2)
    history = GraphHistory(spec)
    for index in range(len(data)):
        episode = data.episodes[data.episode_of(index)]
        if index == 0 or data.episode_of(index) != data.episode_of(index - 1):
            history.reset()
        history.push(data[index].graph_nodes)
        nodes, mask = history.window()
        expected_nodes, expected_mask = data.graph_window(index, spec)
        np.testing.assert_array_equal(nodes, expected_nodes, err_msg=f"{episode['file']} sample {index}")
        np.testing.assert_array_equal(mask, expected_mask)
        assert nodes.shape == (3, 10, 19)
    first = data.graph_window(0, spec)[0]
    np.testing.assert_array_equal(first, np.stack([data[0].graph_nodes] * 3))  # the episode start, repeated
    np.testing.assert_array_equal(data.graph_window(4, spec)[0], np.stack([data[i].graph_nodes for i in (0, 2, 4)]))
    with pytest.raises(ValueError, match=r"graph_nodes changed shape within an episode \(\[10, 19\] -> \[10, 18\]\)"):
        history.push(np.zeros((10, 18)))
    with pytest.raises(ValueError, match="no graph nodes pushed yet"):
        GraphHistory(spec).window()


@pytest.mark.parametrize("mode", ["attend", "stack"])
def test_the_encoder_reads_past_steps_and_ignores_masked_ones(mode: str) -> None:
    torch.manual_seed(0)
    encoder = GraphEncoder(num_nodes=5, node_features=4, width=16, depth=2, history_steps=3, history_mode=mode)
    with torch.no_grad():  # the learned step embedding starts at 0; make the steps distinguishable as training would
        for p in encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    nodes = torch.randn(2, 3, 5, 4)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    out = encoder(nodes, mask)
    assert out.tokens.shape == (2, 5, 16)
    assert out.embedding.shape == (2, 32)
    changed = nodes.clone()
    changed[:, 0] += 1.0  # the oldest step: real in sample 0, before the episode in sample 1
    moved = encoder(changed, mask)
    assert not torch.allclose(moved.tokens[0], out.tokens[0])  # a past step matters...
    if mode == "attend":  # ...unless masked (stack sees the repeated first step a loader puts there)
        torch.testing.assert_close(moved.tokens[1], out.tokens[1])
    with pytest.raises(ValueError, match=r"graph nodes must have shape \[batch, 3 steps, 5 nodes, 4 features\]"):
        encoder(nodes[:, 0])
    with pytest.raises(ValueError, match=r"the history mask must be bool \[batch, 3\] with the current step True"):
        encoder(nodes, torch.tensor([[True, True, False]] * 2))


def test_no_history_is_the_model_of_before() -> None:
    plain = GraphEncoder(num_nodes=5, node_features=4, width=16, depth=2)
    assert sorted(plain.state_dict()) == sorted(GraphEncoder(num_nodes=5, node_features=4, width=16, depth=2,
                                                             history_steps=1).state_dict())  # fmt: skip
    assert not any("step" in k or "lag" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="history_mode must be one of"):
        SoftArmModelConfig(history_steps=2, history_mode="stacked")
    assert SoftArmModelConfig(history_steps=4).history == HistorySpec(4, 1)
    assert SoftArmModelConfig(history_steps=4, fusion="none").history.steps == 1  # no graph, so no graph history


@pytest.fixture(scope="module")
def history_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from softarm.train.config import load_config
    from softarm.train.loop import train

    tmp = tmp_path_factory.mktemp("history")
    convert(raw_dir(tmp, lengths=(20, 12, 16)), tmp / "prep", ConvertOptions(val_episodes=1, cameras=POLICY_CAMERAS))
    base = [f"data.path={tmp / 'prep'}", f"train.out_dir={tmp / 'base'}", "train.steps=1", "train.val_every=100"]
    train(load_config(DEBUG_CONFIG, base))  # no history: the history model starts from it, as from the sim base
    overrides = [f"data.path={tmp / 'prep'}", f"train.out_dir={tmp / 'run'}", "train.steps=2", "train.save_every=2",
                 f"train.init_from={tmp / 'base' / 'checkpoints' / '1'}",
                 "train.val_every=2", "model.overrides.history_steps=3",
                 "model.overrides.history_stride=2"]  # fmt: skip
    result = train(load_config(DEBUG_CONFIG, overrides))
    assert np.isfinite(result.metrics["val_loss"])
    return tmp / "run" / "checkpoints" / "2"


@pytest.mark.parametrize(("mode", "fresh", "reshaped"), [("attend", 2, 0), ("stack", 0, 1)])
def test_a_base_without_history_starts_a_history_model(
    history_checkpoint: Path, mode: str, fresh: int, reshaped: int
) -> None:
    from softarm.model import PI0GraphPytorch
    from softarm.weights import load_model, load_weights

    base = history_checkpoint.parents[2] / "base" / "checkpoints" / "1"  # K = 1, the history model's init_from
    config = dataclasses.replace(load_model(base).config, history_steps=4, history_mode=mode)
    report = load_weights(PI0GraphPytorch(config), base, other_arm=True)
    assert len(report.fresh) == fresh  # attend: the step embedding and the lag biases start fresh
    # stack: the node projection is K times wider
    assert [r.split(" ")[0] for r in report.reshaped] == ["graph_encoder.node_proj.weight"] * reshaped
    assert report.loaded > 100


def test_a_history_model_trains_says_what_it_reads_and_answers_windows(history_checkpoint: Path) -> None:
    policy = SoftArmPolicy.from_checkpoint(history_checkpoint)
    assert policy.metadata["history"] == {"steps": 3, "stride": 2}
    assert policy.history == HistorySpec(3, 2)
    history = GraphHistory(policy.history)
    for t in range(5):
        history.push(observation(0, 20, t)["graph_nodes"])
    nodes, mask = history.window()
    request = {**observation(0, 20, 4), "graph_nodes": nodes, "graph_history_mask": mask}
    torch.manual_seed(0)
    actions = policy.infer(request)["actions"]
    assert actions.shape == (16, 10)
    assert np.isfinite(actions).all()
    torch.manual_seed(0)
    older = policy.infer({**request, "graph_nodes": nodes * np.array([0.0, 1, 1], np.float32)[:, None, None]})
    assert not np.allclose(older["actions"], actions)  # the past steps reach the actions
    with pytest.raises(ValueError, match=r"'graph_nodes' must be \[3 steps, 10, 19\]: the last 3 control steps, 2 "):
        policy.infer(observation(0, 20, 4))  # one step: this model reads three
    with pytest.raises(ValueError, match=r"'graph_history_mask' must be 3 bools"):
        policy.infer({**request, "graph_history_mask": [True, False, False]})
    assert policy.warm_up() > 0  # its blank observation has the window's shape
    from softarm.cli import describe_arm

    assert "  graph history read by the model: the last 3 control steps, 2 apart (attend)" in describe_arm(
        history_checkpoint
    )


class Recorder:
    """Stands for a policy in ModelAgent: what the agent sends, and a fixed chunk back."""

    def __init__(self, spec: HistorySpec) -> None:
        self.history, self.requests = spec, []

    def infer(self, observation: dict, **chunk) -> dict:
        self.requests.append(observation | chunk)  # chunk: the previous chunk's prev_actions and delay, with rtc
        return {"actions": np.zeros((16, 10), np.float32), "policy_timing": {"infer_ms": 0.0}}


def test_the_evaluation_agent_feeds_every_control_step_into_the_window() -> None:
    recorder = Recorder(HistorySpec(steps=3, stride=2))
    agent = ModelAgent(recorder, replan=4)
    for episode in range(2):
        spec = EpisodeSpec("reach", episode, "p", initial_command=np.zeros(10), targets=np.zeros((7, 3)), time_limit=1)
        agent.reset(spec, control_hz=10.0)
        for t in range(6):
            agent.act({"graph_nodes": np.full((10, 19), 10 * episode + t, np.float32), "prompt": "p"})
    sent = [(r["graph_nodes"][:, 0, 0].tolist(), r["graph_history_mask"].tolist()) for r in recorder.requests]
    assert sent == [
        ([0, 0, 0], [False, False, True]),
        ([0, 2, 4], [True, True, True]),  # every step went in
        ([10, 10, 10], [False, False, True]),
        ([10, 12, 14], [True, True, True]),
    ]  # reset per episode

    # real-time chunking under 2 steps of latency: requests leave at other steps, each with the window of its step
    recorder.requests.clear()
    agent = ModelAgent(recorder, replan=4, delay=2, execution="rtc")
    agent.reset(spec, control_hz=10.0)
    for t in range(12):
        agent.act({"graph_nodes": np.full((10, 19), t, np.float32), "prompt": "p"})
    windows = [r["graph_nodes"][:, 0, 0].tolist() for r in recorder.requests]
    assert len(windows) >= 3
    assert "prev_actions" in recorder.requests[-1]
    assert all(w == [max(w[-1] - 4, 0), max(w[-1] - 2, 0), w[-1]] for w in windows), windows


def test_the_robot_loop_sends_windows_to_a_served_history_model(history_checkpoint: Path, tmp_path: Path) -> None:
    from softarm.data.raw import write_episode
    from tests.conftest import make_episode, running

    loop = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "robot_loop.py"))
    episode = write_episode(tmp_path / "ep.h5", make_episode(length=12, seed=0))
    with running(SoftArmPolicy.from_checkpoint(history_checkpoint)) as port:
        result = loop["run"]("127.0.0.1", port, loop["EpisodeReplay"](str(episode)), None, 4)
        # the server refuses a single step from this model (test above): every request carried a window
        assert result["steps"] == 12
        assert np.isfinite(result["mse_vs_recorded"])
