"""prepared -> transforms -> batch: values, padding and masks, errors, tokenizer, distributed sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from openpi.shared import normalize
import pytest
import torch

from softarm.data.convert import ConvertOptions, convert
from softarm.data.loader import ResumableSampler, SoftArmDataset, make_loader, prepared_cameras, spread, to_device
from softarm.data.prepared import PreparedDataset
from softarm.data.tokenizer import SentencePieceTokenizer, train_prompt_tokenizer
from softarm.data.transforms import SoftArmInputs, input_transform, output_transform
from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from tests.conftest import make_episode, raw_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("data")
    convert(raw_dir(tmp), tmp / "prep", ConvertOptions(val_episodes=1, cameras={"base_0_rgb": "base"}))
    return tmp / "prep"


def dataset(prepared: Path, pi05: bool, split: str = "all") -> SoftArmDataset:
    data = PreparedDataset(prepared, split)
    tokenizer = SentencePieceTokenizer(prepared / "tokenizer.model")
    transform = input_transform(prepared_cameras(data), normalize.load(prepared), tokenizer, pi05=pi05, resize=False)
    return SoftArmDataset(data, transform)


@pytest.mark.parametrize("pi05", [False, True])
def test_batch_values(prepared: Path, pi05: bool) -> None:
    ds = dataset(prepared, pi05)
    stats = normalize.load(prepared)
    batch = to_device(torch.utils.data.default_collate([ds[20 + 3], ds[0]]), "cpu")
    episode = make_episode(length=7, seed=1)  # frames 20..26 of the dataset; sample 23 is its step 3

    def norm(x, s):
        if pi05:
            return (x - s.q01[: x.shape[-1]]) / (s.q99[: x.shape[-1]] - s.q01[: x.shape[-1]] + 1e-6) * 2 - 1
        return (x - s.mean[: x.shape[-1]]) / (s.std[: x.shape[-1]] + 1e-6)

    assert batch.graph_nodes.shape == (2, 10, 19)
    assert batch.graph_nodes.dtype == torch.float32
    np.testing.assert_allclose(
        batch.graph_nodes[0].numpy(), norm(episode.graph_nodes[3], stats["graph_nodes"]), rtol=1e-4, atol=1e-4
    )
    assert batch.actions.shape == (2, 16, 32)
    held = np.concatenate([episode.actions[3:7], np.tile(episode.actions[6], (12, 1))])
    np.testing.assert_allclose(batch.actions[0, :, :10].numpy(), norm(held, stats["actions"]), atol=1e-4)
    assert not batch.actions[0, :, 10:].any()
    assert batch.action_is_pad[0].tolist() == [False] * 4 + [True] * 12
    hold, mask = batch.loss_mask("hold"), batch.loss_mask("mask")
    assert hold.shape == mask.shape == (2, 16, 32)
    assert int(hold[0].sum()) == int(hold[1].sum()) == int(mask[1].sum()) == 16 * 10  # held steps are trained
    assert int(mask[0].sum()) == 4 * 10
    assert bool(mask[0, 3, 9])
    assert not bool(mask[0, 3, 10])
    assert not bool(hold[0, 3, 10])
    assert not bool(mask[0, 4, 0])
    assert bool(hold[0, 4, 0])
    assert not batch.action_is_pad[1].any()
    state = batch.observation.state
    np.testing.assert_allclose(state[0, :4].numpy(), norm(episode.state[3], stats["state"]), atol=1e-4)
    assert not state[0, 4:].any()
    image = batch.observation.images["base_0_rgb"]
    assert image.shape == (2, 3, 224, 224)
    assert float(image.min()) >= -1.0
    assert float(image.max()) <= 1.0
    raw = np.asarray(PreparedDataset(prepared, "all")[23].images["base_0_rgb"], np.float32)
    np.testing.assert_allclose(image[0].permute(1, 2, 0).numpy(), raw / 255 * 2 - 1, atol=1e-6)
    assert batch.observation.image_masks["base_0_rgb"].tolist() == [True, True]
    assert batch.observation.image_masks["left_wrist_0_rgb"].tolist() == [False, False]
    tokenizer = SentencePieceTokenizer(prepared / "tokenizer.model")
    expected_tokens, _ = tokenizer.tokenize(
        "reach the red ball", norm(episode.state[3], stats["state"]) if pi05 else None
    )
    np.testing.assert_array_equal(batch.observation.tokenized_prompt[0].numpy(), expected_tokens)
    # and the real model takes it
    config = preset("tiny", pi05=pi05, fusion="suffix")
    loss = PI0GraphPytorch(config)(batch.observation, batch.actions, graph_nodes=batch.graph_nodes)
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("pi05", [False, True])
def test_output_transform_inverts_normalisation(prepared: Path, pi05: bool) -> None:
    sample = dataset(prepared, pi05)[5]
    actions = output_transform(normalize.load(prepared), pi05=pi05)({"actions": sample["actions"]})["actions"]
    assert actions.shape == (16, 10)
    expected = make_episode(length=20, seed=0).actions[5:20]  # 15 real steps remain; the 16th is padding
    np.testing.assert_allclose(actions[:15], expected, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": {}}, r"'images' lacks camera 'base' \(feeds base_0_rgb\); got \[\]"),
        (
            {"images": {"base": np.zeros((8, 8, 3), np.float32)}},
            r"images\['base'\] must be uint8 \[H, W, 3\], got float32",
        ),
        ({"graph_nodes": np.zeros((9, 19))}, r"'graph_nodes' must be \[10, 19\], got \[9, 19\]"),
        ({"graph_nodes": np.full((10, 19), np.nan)}, "'graph_nodes' contains NaN or Inf"),
        ({"state": np.array([np.inf])}, "'state' contains NaN or Inf"),
        ({"prompt": ""}, "'prompt' must be a non-empty string, got ''"),
    ],
)
def test_inputs_reject_bad_observations(change: dict, message: str) -> None:
    good = {"images": {"base": np.zeros((8, 8, 3), np.uint8)}, "graph_nodes": np.zeros((10, 19)), "prompt": "reach"}
    inputs = SoftArmInputs({"base_0_rgb": "base"})
    assert inputs(good)["image_mask"]["base_0_rgb"]
    with pytest.raises(ValueError, match=message):
        inputs({**good, **change})


def test_tokenizer_is_offline_and_small(tmp_path: Path) -> None:
    path = train_prompt_tokenizer(["reach the red ball", "push the blue cube"], tmp_path / "t.model")
    tokenizer = SentencePieceTokenizer(path, max_len=12)
    assert tokenizer.vocab_size <= 512
    tokens, mask = tokenizer.tokenize("reach the red ball")
    assert tokens.shape == (12,)
    assert mask.sum() >= 3
    assert tokens[0] == 1  # BOS, as PaligemmaTokenizer
    unseen, unseen_mask = tokenizer.tokenize("grasp ü")  # byte fallback: unseen text still encodes
    assert unseen_mask.sum() > 2
    assert int(unseen.max()) < tokenizer.vocab_size
    with pytest.raises(FileNotFoundError, match=r"tokenizer model .*missing.model not found"):
        SentencePieceTokenizer(tmp_path / "missing.model")


def test_sampler_shards_reshuffles_and_resumes() -> None:
    ranks = [ResumableSampler(50, 4, seed=3, rank=r, world=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == 6  # 50 samples -> 6 batches of 4 per rank, 2 samples left out
    epoch0 = [list(s) for s in ranks]
    assert len(epoch0[0]) == len(epoch0[1]) == 24
    assert not set(epoch0[0]) & set(epoch0[1])  # disjoint shards
    for s in ranks:
        s.set_epoch(1)
    assert [list(s) for s in ranks] != epoch0  # a new shuffle each epoch
    ranks[0].set_position(0, 2)  # resume epoch 0 at its third batch
    assert list(ranks[0]) == epoch0[0][8:]
    assert len(ranks[0]) == 16
    with pytest.raises(ValueError, match="3 samples cannot fill one batch of 4 on each of 1 ranks"):
        ResumableSampler(3, 4)


def test_validation_frames_spread_over_the_split(prepared: Path) -> None:
    ds = dataset(prepared, False)  # episodes of 20, 7, 12 and 9 frames
    picked = spread(ds, 8)
    assert picked.indices == [0, 7, 13, 20, 27, 34, 40, 47]  # the first and last frame, evenly between
    assert [int(picked[i]["episode"]) for i in range(8)] == [0, 0, 0, 1, 2, 2, 3, 3]  # every episode is read
    assert spread(ds, len(ds)) is ds
    assert spread(ds, 100) is ds


def test_loader_uses_the_process_group(prepared: Path, tmp_path: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = make_loader(dataset(prepared, False, "train"), batch_size=4)
        assert isinstance(loader.sampler, ResumableSampler)
        assert (loader.sampler.rank, loader.sampler.world) == (0, 1)
        assert len(list(loader)) == loader.sampler.batches_per_epoch
    finally:
        torch.distributed.destroy_process_group()
