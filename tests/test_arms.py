"""One model of several arms: each arm's graph padded to the largest, its own hop distances, statistics, actions and
cameras; the arm named to the model; one checkpoint serving every arm."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import shutil

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
import pytest
import torch

from softarm import arm
from softarm.cli import describe_arm
from softarm.data.convert import ConvertOptions, convert
from softarm.data.raw import write_episode
from softarm.graph_encoder import GraphEncoder
from softarm.layout import ARMS_DIR, DATA_SPEC_FILE, NORM_STATS_FILE
from softarm.model_config import ArmShape, preset
from softarm.policy import MultiArmPolicy, SoftArmPolicy
from softarm.train.config import ConfigError, load_config
from softarm.train.loop import train
from tests.conftest import DEBUG_CONFIG, make_episode, running


def _encoder(**kwargs) -> GraphEncoder:
    torch.manual_seed(0)
    return GraphEncoder(num_nodes=6, node_features=5, width=32, depth=2, num_heads=2, embedding_dim=8, **kwargs)


STAR = ((0, 1), (0, 2), (0, 3))  # a 4-node arm whose nodes all hang off node 0
ARMS = ((6, arm.chain_edges(6)), (4, STAR))


def test_a_padded_node_is_neither_read_nor_said() -> None:
    encoder = _encoder(arms=ARMS).eval()
    nodes = torch.randn(3, 6, 5)
    which = torch.tensor([1, 1, 0])  # two samples of the 4-node arm, one of the 6-node arm
    out = encoder(nodes, arm=which)
    changed = nodes.clone()
    changed[:, 4:] = 100.0  # the small arm's padding, the large arm's last two nodes
    again = encoder(changed, arm=which)
    torch.testing.assert_close(again.tokens[:2], out.tokens[:2])
    torch.testing.assert_close(again.embedding[:2], out.embedding[:2])
    assert not torch.equal(again.tokens[2], out.tokens[2])  # the large arm reads its nodes 4 and 5
    assert torch.equal(out.tokens[:2, 4:], torch.zeros(2, 2, 32))
    assert out.node_mask.tolist() == [[True] * 4 + [False] * 2] * 2 + [[True] * 6]
    # each arm's own edges bias its attention: the same nodes read as the star arm or as the first 4 of the chain
    chain4 = _encoder(arms=((6, arm.chain_edges(6)), (4, arm.chain_edges(4)))).eval()
    assert not torch.allclose(chain4(nodes, arm=which).tokens[:2], out.tokens[:2])


def test_an_arm_as_large_as_the_model_is_read_as_by_a_model_of_one_arm() -> None:
    one, several = _encoder().eval(), _encoder(arms=ARMS).eval()
    several.load_state_dict(one.state_dict())
    nodes = torch.randn(2, 6, 5)
    expected = one(nodes)
    got = several(nodes, arm=torch.tensor([0, 0]))
    torch.testing.assert_close(got.tokens, expected.tokens)
    torch.testing.assert_close(got.embedding, expected.embedding)
    # history: the same holds over a window, and the small arm's padding stays unread there too
    one_k, several_k = _encoder(history_steps=3).eval(), _encoder(history_steps=3, arms=ARMS).eval()
    several_k.load_state_dict(one_k.state_dict())
    window = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(several_k(window, arm=torch.tensor([0, 0])).tokens, one_k(window).tokens)
    padded = window.clone()
    padded[:, :, 4:] = -50.0
    small = torch.tensor([1, 1])
    torch.testing.assert_close(several_k(padded, arm=small).tokens, several_k(window, arm=small).tokens)


def test_the_arm_embedding_tells_arms_apart_and_the_arm_must_be_given() -> None:
    encoder = _encoder(arms=((6, arm.chain_edges(6)), (6, arm.chain_edges(6))), arm_embedding=True).eval()
    nodes = torch.randn(1, 6, 5).expand(2, -1, -1)
    out = encoder(nodes, arm=torch.tensor([0, 1]))
    assert not torch.allclose(out.tokens[0], out.tokens[1])  # same graph, same edges: only the arm differs
    with pytest.raises(ValueError, match="knows 2 arms: each sample's arm index must be given"):
        encoder(nodes)
    with pytest.raises(ValueError, match=r"arm indices must be int64 \[batch\], got torch.int32 \[2\]"):
        encoder(nodes, arm=torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="an arm index was given to a graph encoder of one arm"):
        _encoder()(nodes, arm=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="arm 1 has 7 nodes; the padded graph has 6"):
        _encoder(arms=((6, ()), (7, ())))
    with pytest.raises(ValueError, match="arm_embedding needs the arms"):
        _encoder(arm_embedding=True)


def test_the_model_config_checks_its_arms() -> None:
    arms = (ArmShape("big", 10, arm.chain_edges(10)), ArmShape("small", 8, arm.chain_edges(8)))
    config = preset("tiny", arms=arms, arm_conditioning="embedding")
    assert config.arm_index("small") == 1
    assert type(config).from_dict(config.to_dict()) == config  # through JSON's lists and dicts
    with pytest.raises(ValueError, match=r"unknown arm 'other'; this model knows \['big', 'small'\]"):
        config.arm_index("other")
    with pytest.raises(ValueError, match=r"without a graph \(fusion none\) name the arm in the prompt"):
        preset("tiny", arms=arms, fusion="none", arm_conditioning="embedding")
    with pytest.raises(ValueError, match=r"needs two or more, each named once; got \['big', 'big'\]"):
        preset("tiny", arms=(arms[0], arms[0]))
    with pytest.raises(ValueError, match="arm 'huge' has 12 nodes, more than the model's 10"):
        preset("tiny", arms=(arms[0], ArmShape("huge", 12, ())))
    with pytest.raises(ValueError, match="an arm's name must be a non-empty string without '/'"):
        ArmShape("a/b", 3, ())


def _dataset(root: Path, name: str, *, nodes: int, actions: int, state: int | None, cameras: dict, seed: int,
             measured: tuple[str, ...] | None = None) -> Path:  # fmt: skip
    for i, length in enumerate((14, 12, 10)):
        episode = make_episode(length=length, seed=seed + i, nodes=nodes, actions=actions, state_dim=state)
        if measured is not None:
            columns = [arm.SCHEMA.index(f) for f in measured]
            episode = dataclasses.replace(episode, graph_nodes=episode.graph_nodes[:, :, columns],
                                          node_features=measured)  # fmt: skip
        write_episode(root / f"raw_{name}" / f"ep_{i}.h5", episode)
    convert(root / f"raw_{name}", root / name, ConvertOptions(val_episodes=1, cameras=cameras))
    return root / name


@pytest.fixture(scope="module")
def two_arms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(big arm dataset, small arm dataset, checkpoint of a model of both trained 2 steps)."""
    root = tmp_path_factory.mktemp("arms")
    big = _dataset(root, "big", nodes=10, actions=10, state=4, seed=0,
                   cameras={"base_0_rgb": "base", "left_wrist_0_rgb": "tip"})  # fmt: skip
    no_force = tuple(f for f in arm.SCHEMA if f != "contact_force")
    small = _dataset(root, "small", nodes=6, actions=3, state=None, seed=10, cameras={"base_0_rgb": "base"},
                     measured=no_force)  # fmt: skip
    config = load_config(DEBUG_CONFIG, [
        f"data.datasets=[{{path: {big}}}, {{path: {small}, weight: 2.0}}]", f"train.out_dir={root / 'run'}",
        "train.steps=2", "train.save_every=2", "train.val_every=2", "data.batch_size=4", "train.tensorboard=false",
        "model.overrides.fusion=prefix",
    ])  # fmt: skip
    train(config)
    return big, small, root / "run" / "checkpoints" / "2"


def test_datasets_of_two_arms_train_one_model_whose_checkpoint_keeps_each_arm(two_arms, tmp_path: Path) -> None:
    big, small, checkpoint = two_arms
    config = json.loads((checkpoint / "model_config.json").read_text())
    assert (config["num_nodes"], config["node_features"]) == (10, 19)  # padded to the larger arm
    assert [(a["name"], a["num_nodes"]) for a in config["arms"]] == [("big", 10), ("small", 6)]
    assert config["measured_features"] == list(arm.SCHEMA)  # what any arm measures
    for name, source in (("big", big), ("small", small)):
        kept = checkpoint / ARMS_DIR / name
        assert (kept / NORM_STATS_FILE).read_text() == (source / NORM_STATS_FILE).read_text()
        spec = json.loads((kept / DATA_SPEC_FILE).read_text())
        assert (spec["num_nodes"], spec["action_dim"]) == ((10, 10) if name == "big" else (6, 3))
    info = describe_arm(checkpoint)
    assert info[0].startswith(f"{checkpoint}: a model of 2 arms, each named to it by prompt")
    small_arm = "  Arm 'small': 6 nodes, 3 actuators, state none, cameras {'base_0_rgb': 'base'}, action chunks of 16"
    assert small_arm in info
    assert "    not measured (fed as 0): contact_force" in info
    metrics = [json.loads(line) for line in (checkpoint.parents[1] / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in metrics if "val_loss" in r][-1]
    assert {"val_loss/big", "val_loss/small"} <= val.keys()


def test_each_arm_is_served_by_name_from_one_checkpoint(two_arms) -> None:
    checkpoint = two_arms[2]
    rng = np.random.default_rng(0)
    requests = {
        "big": {"images": {"base": rng.integers(0, 255, (48, 64, 3), np.uint8),
                           "tip": rng.integers(0, 255, (32, 32, 3), np.uint8)},
                "graph_nodes": rng.normal(size=(10, 19)).astype(np.float32),
                "state": np.zeros(4, np.float32), "prompt": "reach the red ball"},
        "small": {"images": {"base": rng.integers(0, 255, (48, 64, 3), np.uint8)},
                  "graph_nodes": rng.normal(size=(6, 18)).astype(np.float32), "prompt": "reach the red ball"},
    }  # fmt: skip
    policy = MultiArmPolicy.from_checkpoint(checkpoint, device="cpu", noise_scale=0.0)
    assert policy.metadata["arms"]["small"]["graph"]["num_nodes"] == 6
    assert policy.metadata["arms"]["small"]["action_dim"] == 3
    assert policy.metadata["arms"]["big"]["cameras"] == {"base_0_rgb": "base", "left_wrist_0_rgb": "tip"}
    with running(policy) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        assert set(client.get_server_metadata()["arms"]) == {"big", "small"}
        replies = {name: client.infer({**request, "arm": name}) for name, request in requests.items()}
        assert replies["big"]["actions"].shape == (16, 10)
        assert replies["small"]["actions"].shape == (16, 3)
        with pytest.raises(RuntimeError, match=r"no 'arm' given: this server drives the arms \['big', 'small'\]"):
            client.infer(requests["small"])
        with pytest.raises(RuntimeError, match=r"'graph_nodes' must be \[6, 18\]"):  # the small arm's own graph
            client.infer({**requests["big"], "arm": "small"})
    # one arm served alone (softarm serve --arm) answers as the server of all arms does, deterministically
    alone = SoftArmPolicy.from_checkpoint(checkpoint, device="cpu", noise_scale=0.0, arm="small")
    np.testing.assert_allclose(alone.infer(requests["small"])["actions"], replies["small"]["actions"], atol=1e-5)
    with pytest.raises(ValueError, match=r"'arm': 'big', but this policy drives arm 'small'"):
        alone.infer({**requests["small"], "arm": "big"})
    with pytest.raises(ValueError, match=r"holds a model of the arms \['big', 'small'\]: name one"):
        SoftArmPolicy.from_checkpoint(checkpoint, device="cpu")
    # the arm is named in the prompt (the default): the same observation as the other arm acts otherwise
    as_big = SoftArmPolicy.from_checkpoint(checkpoint, device="cpu", noise_scale=0.0, arm="big")
    tokens = {
        name: p.prepare({**requests[name]})["tokenized_prompt"] for name, p in (("big", as_big), ("small", alone))
    }
    assert not np.array_equal(tokens["big"], tokens["small"])


def test_arms_that_cannot_share_a_model_are_refused_naming_the_dataset(two_arms, tmp_path: Path) -> None:
    big, small, _ = two_arms
    own = _dataset(tmp_path, "own", nodes=4, actions=2, state=None, seed=20, cameras={"base_0_rgb": "base"},
                   measured=("pos_x", "pos_y", "pos_z"))  # fmt: skip
    mixture = f"data.datasets=[{{path: {big}}}, {{path: {small}, arm: big}}]"
    expected = rf"datasets\[1\]: {small} is another arm than {big} \(cameras .*; num_nodes 6 there, 10 in the first"
    with pytest.raises(ConfigError, match=expected + r"; .*\), but both are arm 'big'"):
        load_config(DEBUG_CONFIG, [mixture]).validate()
    with pytest.raises(ConfigError, match=r"data.norm_stats: one file cannot normalise the 2 arms \['big', 'small'\]"):
        load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {big}}}, {{path: {small}}}]",
                                   f"data.norm_stats={big}"]).validate()  # fmt: skip
    # an arm of its own node features (names outside the schema are kept as they are) cannot share the layout
    custom = tmp_path / "raw_custom"
    episode = make_episode(length=12, seed=3, nodes=4, features=2, actions=2, state_dim=None)
    for i in range(3):
        write_episode(custom / f"ep_{i}.h5", dataclasses.replace(episode, node_features=("strain", "temperature")))
    convert(custom, tmp_path / "custom", ConvertOptions(val_episodes=1, cameras={"base_0_rgb": "base"}))
    with pytest.raises(
        ConfigError, match=r"data.datasets\[1\]: .*custom \(arm 'custom'\) has node features \('strain'"
    ):
        load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {own}}}, {{path: {tmp_path / 'custom'}}}]"]).validate()
    # an unnamed dataset of an arm already named joins it; two names for one spec are two arms
    again = tmp_path / "small_again"
    shutil.copytree(small, again)
    joined = load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {small}, arm: tiny}}, {{path: {again}}}]"])
    assert [(g.name, len(g.sources)) for g in joined.arm_groups()] == [("tiny", 2)]
    twice = load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {small}, arm: a}}, {{path: {again}, arm: b}}]"])
    assert [g.name for g in twice.arm_groups()] == ["a", "b"]
    fields = load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {own}}}, {{path: {small}}}]"]).validate()
    assert [a.name for a in fields.arms] == ["own", "small"]
    assert fields.num_nodes == 6
    assert "contact_force" not in fields.measured_features  # neither arm measures it


def test_eval_drives_the_simulated_arm_with_the_checkpoints_arm_of_that_name(two_arms) -> None:
    from types import SimpleNamespace

    from softarm.apps.evaluate import EvalOptions, make_agent

    checkpoint, static = two_arms[2], SimpleNamespace(env=SimpleNamespace(control_hz=10.0))
    agent = make_agent(EvalOptions(checkpoint=str(checkpoint), model_arm="small", device="cpu"), static)
    assert agent.policy.arm == "small"
    with pytest.raises(ValueError, match=r"holds a model of the arms \['big', 'small'\]: unknown arm 'pneumatic'"):
        make_agent(EvalOptions(checkpoint=str(checkpoint), device="cpu"), static)  # the simulated arm's name


def test_the_no_graph_baseline_trains_on_the_same_arms_named_in_the_prompt(two_arms, tmp_path: Path) -> None:
    big, small, _ = two_arms
    config = load_config(DEBUG_CONFIG, [
        f"data.datasets=[{{path: {big}}}, {{path: {small}}}]", f"train.out_dir={tmp_path}", "train.steps=1",
        "train.save_every=1", "train.val_every=1", "data.batch_size=4", "train.tensorboard=false",
        "model.overrides.fusion=none",
    ])  # fmt: skip
    assert [a.name for a in config.validate().arms] == ["big", "small"]
    train(config)
    policy = MultiArmPolicy.from_checkpoint(tmp_path / "checkpoints" / "1", device="cpu")
    assert policy.metadata["arms"]["small"]["fusion"] == "none"
    request = {"images": {"base": np.zeros((48, 64, 3), np.uint8)}, "graph_nodes": np.zeros((6, 18), np.float32),
               "prompt": "reach the red ball", "arm": "small"}  # fmt: skip
    assert policy.infer(request)["actions"].shape == (16, 3)
    named = load_config(
        DEBUG_CONFIG,
        [
            f"data.datasets=[{{path: {big}}}, {{path: {small}}}]",
            "model.overrides.fusion=none",
            "model.overrides.arm_conditioning=embedding",
        ],
    )
    with pytest.raises(ConfigError, match="model: arm_conditioning 'embedding' adds to the graph's node tokens"):
        named.validate()


def test_arms_with_graph_history_pad_every_step_of_the_window(two_arms, tmp_path: Path) -> None:
    big, small, _ = two_arms
    config = load_config(DEBUG_CONFIG, [
        f"data.datasets=[{{path: {big}}}, {{path: {small}}}]", f"train.out_dir={tmp_path}", "train.steps=1",
        "train.save_every=1", "train.val_every=1", "data.batch_size=4", "train.tensorboard=false",
        "model.overrides.history_steps=3", "model.overrides.arm_conditioning=embedding",
    ])  # fmt: skip
    train(config)
    policy = SoftArmPolicy.from_checkpoint(tmp_path / "checkpoints" / "1", device="cpu", arm="small")
    window = np.random.default_rng(0).normal(size=(3, 6, 18)).astype(np.float32)
    request = {"images": {"base": np.zeros((48, 64, 3), np.uint8)}, "graph_nodes": window, "prompt": "reach"}
    prepared = policy.prepare(request)
    assert prepared["graph_nodes"].shape == (3, 10, 19)  # each step padded to the larger arm's 10 nodes
    assert not prepared["graph_nodes"][:, 6:].any()
    assert prepared["arm"] == 1
    assert policy.act(prepared)["actions"].shape == (16, 3)
