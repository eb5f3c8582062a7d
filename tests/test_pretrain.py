"""`softarm pretrain` at toy sizes: demonstrations without choose, one dataset, two bases trained, scored, exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import sentencepiece
import torch

from softarm.apps.pretrain import missed_episodes
from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset, episode_name
from softarm.data.raw import write_episode
from softarm.model import PI0GraphPytorch
from softarm.policy import SoftArmPolicy
from softarm.train.vision_warmup import VISION_PREFIXES, hindsight_goals
from softarm.weights import load_model
from tests.conftest import SMALL_PRETRAIN, make_episode


def test_bases_are_trained_scored_and_exported_without_choose(pretrained: Path) -> None:
    for name, fusion in (("graph", "state"), ("no_graph", "none")):
        base = pretrained / "base" / name
        assert sorted(p.name for p in base.iterdir()) == ["assets", "base.json", "data_spec.json", "model.safetensors",
                                                          "model_config.json", "tokenizer.model"]  # fmt: skip
        card = json.loads((base / "base.json").read_text())
        assert (card["name"], card["fusion"], card["steps"]) == (f"sim_base/{name}", fusion, 4)
        assert card["phases"] == {"frozen": 2, "finish": 2}
        assert card["arm"] == "pneumatic"
        assert card["data"]["tasks"] == ["follow the red ball", "reach the ball"]  # never choose's prompts
        hard = json.loads((pretrained / "raw_hard" / "generate_reach.json").read_text())
        assert card["data"]["episodes"] == 3 + hard["written"]
        assert card["recipe"]["hard_reach"] == 4
        # DART demonstrations: every recording executed with its task's noise (the hard reach seeds reach's), as the
        # card says
        assert card["recipe"]["noise"] == {"reach": 0.05, "follow": 0.1}
        for manifest, std in (("raw/generate_reach.json", 0.05), ("raw/generate_follow.json", 0.1),
                              ("raw_hard/generate_reach.json", 0.05)):  # fmt: skip
            assert json.loads((pretrained / manifest).read_text())["noise"] == std, manifest
        assert card["recipe"]["config"] == "configs/pretrain.yaml"  # inside the project: no machine's path
        assert card["recipe"]["export"] == "OUT/base"  # outside the project: relative to the output
        for phase in ("frozen", "finish"):
            assert card["training"][phase]["s_per_step_median"] > 0
            assert set(card["training"][phase]) >= {"val_loss", "val_loss_ema"}
        assert card["vision_warmup"]["steps"] == 2
        assert card["vision_warmup"]["train_frames"] > 0
        # the reach episodes that missed under the noise do not end at their ball: left out of the warm-up
        manifests = [json.loads((pretrained / m / "generate_reach.json").read_text()) for m in ("raw", "raw_hard")]
        missed = [seed for manifest in manifests for seed in manifest["missed_under_noise_seeds"]]
        assert card["vision_warmup"]["excluded_episodes"] == len(missed)
        assert (card["recipe"]["vision_readout"], card["recipe"]["vision_relative"]) == ("flat", True)
        assert "val_relative_error_mm_median" in card["vision_warmup"]  # the goal from the tip, learnt too
        # the finishing phase trains everything, from the frozen phase's EMA weights, at its own peak rate
        assert card["train_config"]["train"]["init_from"] == f"OUT/runs/{name}_frozen"
        assert (card["train_config"]["train"]["freeze"], card["train_config"]["optim"]["lr"]) == ([], 3e-4)
        frozen = json.loads((pretrained / "runs" / f"{name}_frozen" / "base.json").read_text())
        assert frozen == {"from": f"OUT/runs/{name}/checkpoints/2"}
        assert (pretrained / "runs" / f"{name}_frozen" / "model.safetensors").read_bytes() == (
            pretrained / "runs" / name / "checkpoints" / "2" / "ema.safetensors"
        ).read_bytes()
        assert card["train_config"]["data"]["path"] == "OUT/prepared"
        assert set(card["scores"]) == {"reach", "follow", "choose"}
        for task, score in card["scores"].items():
            assert score["episodes"] == 1, task
            assert 0 <= score["success_rate"] <= 1
        # the weights are the EMA of the last checkpoint: what was scored is what ships
        checkpoint = pretrained / "runs" / f"{name}_finish" / "checkpoints" / "2"
        assert (base / "model.safetensors").read_bytes() == (checkpoint / "ema.safetensors").read_bytes()
        assert load_model(base).config.fusion == fusion
        assert SoftArmPolicy.from_checkpoint(base).metadata["fusion"] == fusion  # servable as it is
        # the tokenizer spells the colours of choose, which the base never saw, with pieces of their own
        tokens = sentencepiece.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
        assert not any(p.startswith("<0x") for p in tokens.encode("reach the green ball", out_type=str))


def test_both_bases_start_from_one_warmed_up_tower_and_their_own_fresh_weights(pretrained: Path) -> None:
    starts = {name: safetensors.torch.load_file(pretrained / "vision" / name / "model.safetensors")
              for name in ("graph", "no_graph")}  # fmt: skip
    tower = {k: v for k, v in starts["graph"].items() if k.startswith(VISION_PREFIXES)}
    assert tower
    assert all(torch.equal(v, starts["no_graph"][k]) for k, v in tower.items())
    config = load_model(pretrained / "vision" / "graph").config
    torch.manual_seed(0)  # configs/pretrain.yaml's train.seed: the weights the training would draw itself
    fresh = PI0GraphPytorch(config).state_dict()
    assert not all(torch.equal(v, fresh[k]) for k, v in tower.items())  # the warm-up changed the tower
    rest = [k for k in starts["graph"] if k not in tower]
    assert rest
    assert all(torch.equal(starts["graph"][k], fresh[k]) for k in rest)


def test_a_second_run_reuses_every_stage_and_choose_is_refused(
    pretrained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["pretrain", "--out", str(pretrained), *SMALL_PRETRAIN]) == 0
    out = capsys.readouterr().out
    assert "reach: 0 episodes written, 2 reused" in out
    assert f"{pretrained / 'prepared'} exists, reused" in out
    assert f"{pretrained / 'vision'} exists, reused" in out
    assert out.count("/checkpoints/2 exists, reused") == 4  # both phases of both bases
    assert main(["pretrain", "--out", str(pretrained), "--episodes", "choose=5"]) == 2
    assert "the base must not see choose" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(pretrained), *SMALL_PRETRAIN, "--noise", "folow=0.1"]) == 2
    assert "--noise names ['folow'], which are not recorded; the tasks recorded are ['follow', 'reach']" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit, match="--noise takes STD or TASK=STD"):
        main(["pretrain", "--out", str(pretrained), "--noise", "follow=lots"])


def test_the_episodes_missed_under_noise_are_named_as_the_dataset_names_them(tmp_path: Path) -> None:
    """Two recordings whose files share names: only the one whose manifest lists the miss loses that episode."""
    sources = [tmp_path / "day1", tmp_path / "day2"]
    for source in sources:
        for seed in range(3):
            write_episode(source / f"reach_{seed:06d}.hdf5", make_episode(length=3, seed=seed))
    (sources[0] / "generate_reach.json").write_text(json.dumps({"task": "reach", "missed_under_noise_seeds": [1]}))
    assert missed_episodes(sources[:1]) == ("reach_000001.hdf5",)
    assert missed_episodes(sources) == (f"{sources[0]}: reach_000001.hdf5",)
    convert(sources, tmp_path / "prep", ConvertOptions(val_episodes=1))
    dataset = PreparedDataset(tmp_path / "prep", "all")
    goals = hindsight_goals(dataset, exclude=missed_episodes(sources))
    assert goals.excluded == 1
    kept = {episode_name(ep) for ep in dataset.episodes if ep["start"] in set(goals.train) | set(goals.val)}
    assert kept == {f"{s}: reach_{seed:06d}.hdf5" for s in sources for seed in range(3)} - set(missed_episodes(sources))
