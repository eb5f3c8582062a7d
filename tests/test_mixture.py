"""Training on a mixture of prepared datasets of one arm (`data.datasets`): batches drawn by weight, each dataset
normalised with its own statistics, validated one by one, resumed exactly; datasets that cannot mix are refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from softarm.data.convert import ConvertOptions, convert
from softarm.data.loader import MixtureSampler
from softarm.data.raw import write_episode
from softarm.data.spec import read_spec
from softarm.train.config import ConfigError, load_config
from softarm.train.loop import Dist, Run, build_loaders, train
from tests.conftest import DEBUG_CONFIG, make_episode
from tests.test_train_safety import saved


def dataset(root: Path, name: str, lengths: tuple[int, ...], seed: int, *, scale: float = 1.0, nodes: int = 10) -> Path:
    """A prepared dataset of synthetic episodes; `scale` moves its graph's statistics away from the others'."""
    for i, length in enumerate(lengths):
        episode = make_episode(length=length, seed=seed + i, nodes=nodes)
        episode = dataclasses.replace(episode, graph_nodes=scale * episode.graph_nodes + (scale - 1))
        write_episode(root / f"raw_{name}" / f"ep_{i:03d}.h5", episode)
    convert(root / f"raw_{name}", root / name, ConvertOptions(val_episodes=1))
    return root / name


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mixture")
    return dataset(root, "day1", (30, 25, 20), 0), dataset(root, "day2", (20, 30, 25), 10, scale=3.0)


def mixture(a: Path, b: Path, out: Path, *overrides: str):
    datasets = f"data.datasets=[{{path: {a}, weight: 1.0}}, {{path: {b}, weight: 0.5}}]"
    return load_config(DEBUG_CONFIG, [datasets, f"train.out_dir={out}", "train.val_every=2", "train.save_every=2",
                                      "train.log_every=1", "data.batch_size=4", "train.tensorboard=false",
                                      "train.val_batches=2", *overrides])  # fmt: skip


def test_the_sampler_draws_by_weight_shuffles_within_each_dataset_and_resumes_mid_epoch() -> None:
    sampler = MixtureSampler([600, 300], [1.0, 0.5], batch_size=10, seed=3)
    order = list(sampler)
    assert len(order) == 900
    first = sum(i < 600 for i in order)
    assert 560 <= first <= 640  # 2 : 1 of 900 draws is 600
    assert len({i for i in order if i < 600}) == min(first, 600)  # no repeat before a dataset is used up
    assert len({i for i in order if i >= 600}) == min(900 - first, 300)
    assert list(MixtureSampler([600, 300], [1.0, 0.5], batch_size=10, seed=3)) == order  # a function of the seed
    sampler.set_position(0, 40)
    assert list(sampler) == order[400:]  # resumes inside the epoch without reading what came before
    sampler.set_epoch(1)
    assert list(sampler) != order
    heavy = list(MixtureSampler([5, 100], [10.0, 1.0], batch_size=5))  # the small dataset drawn ~ 95 times
    assert sorted({i for i in heavy if i < 5}) == [0, 1, 2, 3, 4]  # cycled through, all of it
    ranks = [list(MixtureSampler([600, 300], [1.0, 0.5], batch_size=10, seed=3, rank=r, world=2)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(order)  # the same epoch, split between the ranks
    with pytest.raises(ValueError, match=r"weights \[1.0, 0.0\]: expected one positive weight per dataset \(2\)"):
        MixtureSampler([5, 5], [1.0, 0.0], batch_size=2)


def test_each_dataset_is_normalised_with_its_own_statistics(two: tuple[Path, Path], tmp_path: Path) -> None:
    config = mixture(*two, tmp_path / "run")
    run = Run(config=config, model_config=config.validate(), dist=Dist(), device=torch.device("cpu"),
              dir=tmp_path / "run", spec=read_spec(two[0]), tokenizer_path=config.tokenizer_path(),
              norm_stats_path=config.norm_stats_path(), sharded=False)  # fmt: skip
    loader, val = build_loaders(run)
    mixed = loader.dataset
    assert len(mixed) == len(mixed.parts[0]) + len(mixed.parts[1])
    assert list(val) == ["day1", "day2"]
    graphs = [np.stack([part[i]["graph_nodes"] for i in range(len(part))]) for part in mixed.parts]
    for graph in graphs:  # z-scored by its own dataset: mean ~0, std ~1, though day2's raw graph is 3x + 2
        assert abs(float(graph.mean())) < 0.15
        assert 0.8 < float(graph.std()) < 1.2
    item = mixed[len(mixed.parts[0]) + 3]  # day2's fourth sample, through the mixture
    np.testing.assert_array_equal(item["graph_nodes"], mixed.parts[1][3]["graph_nodes"])
    assert (
        mixed.episode_names[int(item["episode"])]
        == f"day2/{mixed.parts[1].episode_names[int(mixed.parts[1][3]['episode'])]}"
    )
    batch = mixed.__getitems__([0, len(mixed) - 1, 1])  # the parts fetched together, in the order asked
    np.testing.assert_array_equal(batch[1]["graph_nodes"], mixed[len(mixed) - 1]["graph_nodes"])


def test_a_mixture_trains_validates_per_dataset_and_resumes_exactly(two: tuple[Path, Path], tmp_path: Path) -> None:
    train(mixture(*two, tmp_path / "straight", "train.steps=4"))
    train(mixture(*two, tmp_path / "resumed", "train.steps=2"))
    assert train(mixture(*two, tmp_path / "resumed", "train.steps=4")).metrics["step"] == 4
    resumed, straight = saved(tmp_path / "resumed", 4), saved(tmp_path / "straight", 4)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(v, straight[k]) for k, v in resumed.items())
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r][-1]
    assert {"val_loss/day1", "val_loss/day2", "val_loss_ema/day1", "val_loss_ema/day2"} <= val.keys()
    expected = (1.0 * val["val_loss/day1"] + 0.5 * val["val_loss/day2"]) / 1.5  # weighted as training draws them
    assert val["val_loss"] == pytest.approx(expected)
    checkpoint = tmp_path / "straight" / "checkpoints" / "4"
    kept = checkpoint / "assets" / "softarm" / "norm_stats.json"
    assert kept.read_text() == (two[0] / "norm_stats.json").read_text()  # the first dataset's, for serving


def test_datasets_that_cannot_mix_are_refused_before_any_work(two: tuple[Path, Path], tmp_path: Path) -> None:
    other = dataset(tmp_path, "eight", (20, 20), 0, nodes=8)
    with pytest.raises(ConfigError, match=rf"data.datasets\[1\]: {other} is another arm than {two[0]} \(num_nodes 8 "
                                          r"there, 10 in the first; edges .*\), but both are arm 'day1'"):  # fmt: skip
        load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {two[0]}}}, {{path: {other}, arm: day1}}]"]).validate()
    assert [a.name for a in mixture(two[0], other, tmp_path / "run").validate().arms] == ["day1", "eight"]
    assert mixture(*two, tmp_path / "run").validate().arms == ()  # one arm recorded twice: a model of one arm
    with pytest.raises(ConfigError, match=r"data.datasets\[1\]: '.*nowhere' is not a prepared dataset"):
        mixture(two[0], tmp_path / "nowhere", tmp_path / "run").validate()
    with pytest.raises(ConfigError, match=r"data.path and data.datasets: give one"):
        mixture(*two, tmp_path / "run", f"data.path={two[0]}").validate()
    with pytest.raises(ConfigError, match=r"data.datasets\[0\].weight: must be > 0, got -1.0"):
        load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {two[0]}, weight: -1}}]"]).validate()
    with pytest.raises(
        ConfigError, match=r"unknown key data.datasets\[0\].wieght; data.datasets\[0\] has \[.arm., .path., .weight.\]"
    ):
        load_config(DEBUG_CONFIG, [f"data.datasets=[{{path: {two[0]}, wieght: 2}}]"])
    with pytest.raises(ConfigError, match="two datasets in directories named 'day1'"):
        mixture(two[0], two[0], tmp_path / "run").validate()
    assert np.isclose(mixture(*two, tmp_path / "run").sources()[1].weight, 0.5)
