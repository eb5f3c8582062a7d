"""An arm unlike the simulated one: a 3-finger soft gripper (7 nodes in a tree, 12 chambers, no contact force or
velocity sensing) converts with no shape flags, trains, and serves openpi-client; mismatches are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
import pytest
import torch

from softarm import arm
from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset
from softarm.data.raw import RawEpisode, write_episode
from softarm.data.spec import read_spec
from softarm.policy import SoftArmPolicy
from softarm.train.config import ConfigError, load_config
from softarm.train.loop import train
from softarm.weights import load_model
from tests.conftest import DEBUG_CONFIG, make_episode, running

# a palm (node 0) and three fingers of two segments each: 0-1-2, 0-3-4, 0-5-6
GRIPPER_EDGES = np.array([[0, 1], [1, 2], [0, 3], [3, 4], [0, 5], [5, 6]])
SENSED = tuple(name for name in arm.SCHEMA if not name.startswith(("vel_", "angvel_")) and name != "contact_force")


def gripper_episode(seed: int, length: int = 12, **changes) -> RawEpisode:
    """The gripper's recording: only its sensed features, named in the file, in their own order."""
    episode = make_episode(length=length, seed=seed, nodes=7, features=len(SENSED), actions=12, state_dim=6)
    episode.edges, episode.node_features = GRIPPER_EDGES, tuple(reversed(SENSED))
    for key, value in changes.items():
        setattr(episode, key, value)
    return episode


@pytest.fixture(scope="module")
def gripper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw episodes, prepared dataset) of the gripper, converted without a single shape flag."""
    tmp = tmp_path_factory.mktemp("gripper")
    for seed, length in enumerate((14, 12, 16, 10)):
        write_episode(tmp / "raw" / f"grip_{seed}.h5", gripper_episode(seed, length))
    convert(tmp / "raw", tmp / "prep", ConvertOptions(val_episodes=1))
    return tmp / "raw", tmp / "prep"


@pytest.fixture(scope="module")
def trained(gripper: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("gripper_run")
    overrides = [f"data.path={gripper[1]}", f"train.out_dir={run}", "train.steps=2", "train.save_every=2",
                 "train.val_every=100", "model.overrides.fusion=prefix"]  # fmt: skip
    train(load_config(DEBUG_CONFIG, overrides))
    return run / "checkpoints" / "2"


def test_sizes_features_and_edges_come_from_the_episodes(gripper: tuple[Path, Path]) -> None:
    prep = gripper[1]
    meta = json.loads((prep / "meta.json").read_text())
    assert (meta["num_nodes"], meta["action_dim"], meta["state_dim"]) == (7, 12, 6)
    assert meta["features"] == list(arm.SCHEMA)  # the schema's columns, so arms with other sensors share a layout
    assert meta["measured"] == list(SENSED)  # in schema order, whatever order the file had
    assert meta["edges"] == GRIPPER_EDGES.tolist()
    sample = PreparedDataset(prep, "all")[3]
    recorded = gripper_episode(0, 14).graph_nodes[3]  # columns in the file's (reversed) order
    for name in SENSED:
        column = list(reversed(SENSED)).index(name)
        np.testing.assert_array_equal(sample.graph_nodes[:, arm.feature_index(name)], recorded[:, column])
    unmeasured = [arm.feature_index(n) for n in arm.SCHEMA if n not in SENSED]
    assert not sample.graph_nodes[:, unmeasured].any()
    stats = json.loads((prep / "norm_stats.json").read_text())["norm_stats"]["graph_nodes"]
    assert {stats["mean"][0][i] for i in unmeasured} == {0.0}  # not normalised: the identity
    assert {stats["std"][0][i] for i in unmeasured} == {1.0}
    assert stats["std"][0][arm.feature_index("pos_x")] != 1.0


def test_episodes_that_do_not_fit_the_dataset_are_skipped_with_the_reason(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_episode(raw / "a_first.h5", gripper_episode(0))
    write_episode(raw / "b_ok.h5", gripper_episode(1))
    odd = {
        "c_six_nodes.h5": {"graph_nodes": np.zeros((12, 6, len(SENSED)), np.float32), "edges": None},
        "d_more_actions.h5": {"actions": np.zeros((12, 13), np.float32)},
        "e_no_state.h5": {"state": None},
        "f_wider_state.h5": {"state": np.zeros((12, 8), np.float32)},
        "g_other_edges.h5": {"edges": np.array([[i, i + 1] for i in range(6)])},
        "h_with_contact.h5": {"graph_nodes": np.zeros((12, 7, 19), np.float32), "node_features": None},
    }
    for name, changes in odd.items():
        write_episode(raw / name, gripper_episode(2, **changes))
    result = convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))
    assert result.kept == ["a_first.h5", "b_ok.h5"]
    reasons = {s["file"]: f"{s['key']}: {s['reason']}" for s in result.skipped}
    kept = "(1 episode of this arm; the dataset keeps the arm of 2 episodes, first: a_first.h5)"
    assert reasons["c_six_nodes.h5"] == f"observations/graph/nodes: another arm: 6 nodes; the dataset's have 7 {kept}"
    assert reasons["d_more_actions.h5"] == f"action: another arm: 13-D actions; the dataset's have 12-D {kept}"
    assert reasons["e_no_state.h5"] == (
        "observations/state: another arm: missing; the dataset's have 6-D state; --state none drops state from every "
        f"episode {kept}"
    )
    assert reasons["f_wider_state.h5"].startswith("observations/state: another arm: 8-D state; the dataset's have 6-D")
    assert reasons["g_other_edges.h5"].startswith("graph/edges: edges [[0, 1], [1, 2], [2, 3]")
    assert "differ from the dataset's [[0, 1], [1, 2], [0, 3]" in reasons["g_other_edges.h5"]
    assert reasons["h_with_contact.h5"].startswith("observations/graph/nodes@features: another arm: measures ['pos_x'")
    assert "the dataset's measure ['pos_x'" in reasons["h_with_contact.h5"]

    dropped = convert(raw, tmp_path / "no_state", ConvertOptions(val_episodes=1, state=False))
    assert {"e_no_state.h5", "f_wider_state.h5"} <= set(dropped.kept)
    assert json.loads((tmp_path / "no_state" / "meta.json").read_text())["state_dim"] is None


@pytest.mark.parametrize("odd_name", ["a_odd.h5", "m_odd.h5", "z_odd.h5"])  # first, in the middle, last
def test_a_stray_episode_does_not_decide_the_dataset(tmp_path: Path, odd_name: str) -> None:
    raw = tmp_path / "raw"
    for seed, name in enumerate(("b.h5", "c.h5", "d.h5", "n.h5", "o.h5", "p.h5")):
        write_episode(raw / name, make_episode(length=6, seed=seed))
    write_episode(raw / odd_name, make_episode(length=6, seed=9, features=18))  # 18 columns: another arm
    result = convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))
    assert result.kept == ["b.h5", "c.h5", "d.h5", "n.h5", "o.h5", "p.h5"]
    assert [(s["file"], s["key"]) for s in result.skipped] == [(odd_name, "observations/graph/nodes@features")]
    assert result.skipped[0]["reason"] == (
        "another arm: measures ['feature_0', 'feature_1', 'feature_2', 'feature_3', 'feature_4', 'feature_5', "
        "'feature_6', 'feature_7', 'feature_8', 'feature_9', 'feature_10', 'feature_11', 'feature_12', 'feature_13', "
        "'feature_14', 'feature_15', 'feature_16', 'feature_17']; the dataset's measure ['pos_x', 'pos_y', 'pos_z', "
        "'quat_w', 'quat_x', 'quat_y', 'quat_z', 'vel_x', 'vel_y', 'vel_z', 'angvel_x', 'angvel_y', 'angvel_z', "
        "'kappa_x', 'kappa_y', 'twist', 'last_action', 'actuator_state', 'contact_force'] (1 episode of this arm; "
        "the dataset keeps the arm of 6 episodes, first: b.h5)"
    )
    assert json.loads((tmp_path / "prep" / "meta.json").read_text())["node_features"] == 19
    assert sorted(p.name for p in (tmp_path / "prep").iterdir() if p.name.startswith(".")) == []


def test_a_tie_between_arms_is_refused_and_split_arms_writes_one_dataset_each(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for seed in range(2):
        write_episode(raw / f"ten_{seed}.h5", make_episode(length=5, seed=seed))
        write_episode(raw / f"eight_{seed}.h5", make_episode(length=7, seed=seed, nodes=8, actions=8))
    with pytest.raises(ValueError, match=r"no arm is shared by most episodes: 2 episodes \(first: eight_0.h5\): 8 "
                                         r"nodes x 19 measured features, 8 actuators, 4-D state, cameras base/tip; 2 "
                                         r"episodes \(first: ten_0.h5\): 10 nodes .* --split-arms"):  # fmt: skip
        convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))
    assert not (tmp_path / "prep").exists()
    assert main(["convert", str(raw), str(tmp_path / "split"), "--split-arms", "--val-episodes", "1"]) == 0
    names = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert names == ["arm_0_8nodes_8actuators", "arm_1_10nodes_10actuators", "report.json"]
    for name, nodes, length in (("arm_0_8nodes_8actuators", 8, 7), ("arm_1_10nodes_10actuators", 10, 5)):
        data = PreparedDataset(tmp_path / "split" / name, "all")
        assert (data.meta["num_nodes"], len(data)) == (nodes, 2 * length)
    report = json.loads((tmp_path / "split" / "report.json").read_text())
    assert [(a["dataset"], a["episodes"]) for a in report["arms"]] == [("arm_0_8nodes_8actuators", 2),
                                                                        ("arm_1_10nodes_10actuators", 2)]  # fmt: skip


def test_features_name_undeclared_columns_or_keep_a_subset(tmp_path: Path) -> None:
    # four unnamed columns: --features says what they are; without it they are the arm's own features
    four = tmp_path / "four"
    for seed in range(2):
        write_episode(four / f"e{seed}.h5", make_episode(length=6, seed=seed, nodes=5, features=4, actions=3))
    named = ("pos_x", "pos_y", "pos_z", "contact_force")
    convert(four, tmp_path / "named", ConvertOptions(val_episodes=1, features=named))
    meta = json.loads((tmp_path / "named" / "meta.json").read_text())
    assert (meta["node_features"], meta["measured"]) == (19, list(named))
    convert(four, tmp_path / "own", ConvertOptions(val_episodes=1))
    meta = json.loads((tmp_path / "own" / "meta.json").read_text())
    assert meta["features"] == meta["measured"] == ["feature_0", "feature_1", "feature_2", "feature_3"]

    # all 19 recorded, trained without contact force: the column is dropped, not normalised, fed as 0
    full = tmp_path / "full"
    for seed in range(2):
        write_episode(full / f"e{seed}.h5", make_episode(length=6, seed=seed))
    without = tuple(n for n in arm.SCHEMA if n != "contact_force")
    convert(full, tmp_path / "no_contact", ConvertOptions(val_episodes=1, features=without))
    data = PreparedDataset(tmp_path / "no_contact", "all")
    assert data.meta["measured"] == list(without)
    assert not data.arrays["graph_nodes"][:, :, 18].any()
    np.testing.assert_array_equal(data[0].graph_nodes[:, :18], make_episode(length=6, seed=0).graph_nodes[0, :, :18])

    with pytest.raises(ValueError, match=r"no valid episode among 2 episodes: e0\.h5: observations/graph/nodes@features"
                                         r": lacks feature 'strain' \(--features asks for it\)"):  # fmt: skip
        convert(full, tmp_path / "strain", ConvertOptions(features=("pos_x", "strain")))
    with pytest.raises(ValueError, match=r"--features: measured features name 'pos_x' more than once"):
        convert(full, tmp_path / "twice", ConvertOptions(features=("pos_x", "pos_x")))
    assert not (tmp_path / "twice").exists()


def test_cli_features_and_state_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    for seed in range(2):
        write_episode(raw / f"e{seed}.h5", make_episode(length=6, seed=seed))
    args = ["convert", str(raw), str(tmp_path / "prep"), "--val-episodes", "1", "--state", "none"]
    assert main([*args, "--features", "pos_x, pos_y,pos_z"]) == 0
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert (meta["measured"], meta["state_dim"]) == (["pos_x", "pos_y", "pos_z"], None)
    assert main(["convert", str(raw), str(tmp_path / "bad"), "--features", "pos_x,pos_x"]) == 2
    assert (
        "softarm convert: error: --features: measured features name 'pos_x' more than once" in capsys.readouterr().err
    )


def test_the_model_is_derived_from_the_dataset(gripper: tuple[Path, Path], trained: Path) -> None:
    config = json.loads((trained / "model_config.json").read_text())
    assert (config["num_nodes"], config["node_features"], config["action_horizon"]) == (7, 19, 16)
    assert config["measured_features"] == list(SENSED)
    assert config["edges"] == GRIPPER_EDGES.tolist()


def test_mismatches_are_errors_before_any_work_and_a_base_of_another_arm_transfers(
    gripper: tuple[Path, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = f"data.path={gripper[1]}"
    with pytest.raises(ConfigError, match=r"model.overrides.num_nodes: 10, but the dataset .* has 7; the arm's sizes"):
        load_config(DEBUG_CONFIG, [data, "model.overrides.num_nodes=10"]).validate()
    with pytest.raises(
        ConfigError, match=r"model.overrides.edges: \[\[0, 1\]\], but .* has \[\[0, 1\], \[1, 2\], \[0, 3\]"
    ):
        load_config(DEBUG_CONFIG, [data, "model.overrides.edges=[[0, 1]]"]).validate()
    # the same sizes given explicitly are fine
    assert load_config(DEBUG_CONFIG, [data, "model.overrides.num_nodes=7"]).validate().num_nodes == 7

    # a model of the simulated 10-node arm as the base of the gripper: the tensors its arm shapes start anew, named,
    # everything else is the base's
    ten = tmp_path / "ten"
    for seed in range(2):
        write_episode(ten / "raw" / f"e{seed}.h5", make_episode(length=20, seed=seed, state_dim=None))
    convert(ten / "raw", ten / "prep", ConvertOptions(val_episodes=1))
    train(load_config(DEBUG_CONFIG, [f"data.path={ten / 'prep'}", f"train.out_dir={ten / 'run'}", "train.steps=1",
                                     "train.val_every=100"]))  # fmt: skip
    ten_model = ten / "run" / "checkpoints" / "1"
    capsys.readouterr()
    tuned = train(load_config(DEBUG_CONFIG, [data, f"train.init_from={ten_model}", f"train.out_dir={tmp_path / 'ft'}",
                                             "train.steps=1", "train.val_every=100", "optim.lr=1e-12",
                                             "optim.end_lr=1e-12", "train.ema_decay=null"]))  # fmt: skip
    log = capsys.readouterr().out
    assert ("re-initialised 3 graph-extension tensors shaped by the base's arm (or graph history), which differs from "
            "this one: "
            "graph_encoder.hop_bias [2, 4, 11] -> [2, 4, 8]; graph_encoder.node_embedding [10, 64] -> [7, 64]; "
            "graph_encoder.readout.weight [32, 640] -> [32, 448]") in log  # fmt: skip
    base, state = load_model(ten_model).state_dict(), tuned.model.state_dict()
    vision = "paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight"
    for name in ("graph_encoder.node_proj.weight", "graph_state_gate", "action_in_proj.weight", vision):
        torch.testing.assert_close(state[name], base[name], rtol=0, atol=1e-9, msg=name)
    with pytest.raises(ConfigError, match=r"train.init_from: .* holds another architecture \(vision \{'width': 32.* "
                                          r"there, \{'width': 64.* here\); set model.preset"):  # fmt: skip
        load_config(DEBUG_CONFIG, [data, f"train.init_from={ten_model}", "model.preset=tiny_vision"]).validate()
    with pytest.raises(ConfigError, match=r"train.init_from: .* \(fusion 'state' there, 'none' here\)"):
        load_config(DEBUG_CONFIG, [data, f"train.init_from={ten_model}", "model.overrides.fusion=none"]).validate()
    with pytest.raises(ConfigError, match=r"data.norm_stats: .*norm_stats.json has actions of shape \[10\]; the "
                                          r"dataset's actions is \[12\] \(statistics of another arm\?\)"):  # fmt: skip
        load_config(DEBUG_CONFIG, [data, f"data.norm_stats={ten_model}"]).validate()
    # resuming a run of the 10-node arm with the gripper's dataset
    with pytest.raises(ConfigError, match=r"train.out_dir .* \(resuming\): .* holds a model for another arm or "
                                          r"configuration \(num_nodes 10 there, 7 here"):  # fmt: skip
        train(load_config(DEBUG_CONFIG, [data, f"train.out_dir={ten / 'run'}", "train.steps=2"]))


def test_the_gripper_serves_requests_without_contact_force(trained: Path) -> None:
    policy = SoftArmPolicy.from_checkpoint(trained)
    graph = policy.metadata["graph"]
    assert graph["num_nodes"] == 7
    assert graph["node_features"][:3] == ["pos_x [m]", "pos_y [m]", "pos_z [m]"]
    assert len(graph["node_features"]) == len(SENSED)
    assert {"contact_force", "vel_x"} <= set(graph["unmeasured_features"])
    assert graph["edges"] == GRIPPER_EDGES.tolist()
    assert policy.metadata["action_dim"] == 12

    episode = gripper_episode(7)
    request = {"images": {c: f[0] for c, f in episode.images.items()}, "state": episode.state[0],
               "prompt": episode.prompt}  # fmt: skip
    compact = np.asarray(episode.graph_nodes[0][:, ::-1])  # the measured features in the metadata's order
    full = np.full((7, 19), np.nan, np.float32)  # all 19 columns; unmeasured ones may hold anything, even NaN
    full[:, [arm.feature_index(n) for n in SENSED]] = compact
    named = {
        "graph_nodes": np.concatenate([episode.graph_nodes[0], np.ones((7, 1))], axis=1),
        "graph_features": [*reversed(SENSED), "contact_force"],
    }  # a feature the model never saw: dropped
    with running(policy) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        assert client.get_server_metadata()["graph"] == graph
        chunks = []
        for graph_fields in ({"graph_nodes": compact}, {"graph_nodes": full}, named):
            torch.manual_seed(0)  # the flow-matching noise, drawn in the server's model thread
            chunks.append(client.infer({**request, **graph_fields})["actions"])
        assert chunks[0].shape == (16, 12)
        np.testing.assert_allclose(chunks[1], chunks[0], atol=1e-5)
        np.testing.assert_allclose(chunks[2], chunks[0], atol=1e-5)
        missing = {"graph_nodes": compact[:, 1:], "graph_features": list(SENSED[1:])}
        with pytest.raises(RuntimeError, match=r"bad request: 'graph_nodes' lacks measured feature 'pos_x'"):
            client.infer({**request, **missing})
        with pytest.raises(RuntimeError, match=r"'graph_nodes' must be \[7, 12\] \(the measured features\) or "
                                               r"\[7, 19\] \(all of \['pos_x'"):  # fmt: skip
            client.infer({**request, "graph_nodes": compact[:, :4]})


def test_info_describes_the_arm_of_a_dataset_and_of_a_checkpoint(
    gripper: tuple[Path, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a checkpoint written before data_spec.json held the whole spec: its graph is read from model_config.json
    old = tmp_path / "old_checkpoint"
    old.mkdir()
    config = json.loads((trained / "model_config.json").read_text())
    (old / "model_config.json").write_text(json.dumps(config | {"ignored_features": ["pos_x", "kappa_x"]}))
    spec = json.loads((trained / "data_spec.json").read_text())
    keys = ("cameras", "state_dim", "action_dim", "action_horizon", "num_nodes", "node_features")
    (old / "data_spec.json").write_text(json.dumps({key: spec[key] for key in keys}))
    assert read_spec(trained) == read_spec(old) == read_spec(gripper[1])  # the spec trained on, from memory
    for path in (gripper[1], trained, old):
        assert main(["info", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"Arm of {path}: 7 nodes, 12 actuators, state 6, cameras " in out
        assert "  edges: [[0, 1], [1, 2], [0, 3], [3, 4], [0, 5], [5, 6]]" in out
        assert "  measured node features: pos_x [m], pos_y [m], pos_z [m], quat_w [-]," in out
        assert "  not measured (fed as 0): vel_x, vel_y, vel_z, angvel_x, angvel_y, angvel_z, contact_force" in out
        assert "Node features (the schema" not in out
        ignored = {gripper[1]: None, trained: "none", old: "pos_x, kappa_x"}[path]
        assert (f"  measured, ignored by the model (ignored_features): {ignored}" in out) == (ignored is not None)
    assert main(["info", str(gripper[0])]) == 2
    assert "is neither a prepared dataset (meta.json) nor a checkpoint" in capsys.readouterr().err
