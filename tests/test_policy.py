"""SoftArmPolicy: checkpoint -> infer(raw observation) -> actions, through the training transforms."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from openpi.shared import normalize
import pytest
import safetensors.torch
import torch
from torch.utils.data import default_collate

from softarm.data.loader import SoftArmDataset, prepared_cameras, to_device
from softarm.data.prepared import PreparedDataset
from softarm.data.tokenizer import SentencePieceTokenizer
from softarm.data.transforms import input_transform, output_transform
from softarm.policy import SoftArmPolicy, compile_mode
from tests.conftest import POLICY_CAMERAS, observation


def test_infer_returns_a_chunk_in_the_arms_units(checkpoint) -> None:
    policy = SoftArmPolicy.from_checkpoint(checkpoint[0])
    result = policy.infer(observation(0, 20, 5))
    assert result["actions"].shape == (16, 10)
    assert np.isfinite(result["actions"]).all()
    assert result["policy_timing"]["infer_ms"] > 0
    meta = policy.metadata
    assert (meta["action_horizon"], meta["action_dim"], meta["state_dim"]) == (16, 10, 4)
    assert meta["cameras"] == POLICY_CAMERAS
    assert meta["graph"]["num_nodes"] == 10
    assert meta["graph"]["node_features"][18] == "contact_force [N]"
    assert meta["graph"]["ignored_features"] == []
    assert meta["graph"]["edges"][0] == [0, 1]


def test_inference_preprocessing_is_the_training_preprocessing(checkpoint) -> None:
    directory, prepared_dir = checkpoint
    policy = SoftArmPolicy.from_checkpoint(directory)
    norm_stats = normalize.load(directory / "assets" / "softarm")
    tokenizer = SentencePieceTokenizer(directory / "tokenizer.model")
    prepared = PreparedDataset(prepared_dir, "all")
    transform = input_transform(prepared_cameras(prepared), norm_stats, tokenizer, pi05=False, resize=False)
    frame = 20 + 7  # episode 1 (12 steps), step 7
    batch = to_device(default_collate([SoftArmDataset(prepared, transform)[frame]]), "cpu")
    torch.manual_seed(0)
    chunk = policy.model.sample_actions(torch.device("cpu"), batch.observation, graph_nodes=batch.graph_nodes)
    expected = output_transform(norm_stats, pi05=False)({"actions": chunk[0].numpy()})["actions"]

    torch.manual_seed(0)
    got = policy.infer(observation(1, 12, 7))["actions"]

    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_uses_ema_weights_and_leaves_the_request_alone(checkpoint) -> None:
    directory = checkpoint[0]
    policy = SoftArmPolicy.from_checkpoint(directory)
    ema = safetensors.torch.load_file(str(directory / "ema.safetensors"))
    raw = safetensors.torch.load_file(str(directory / "model.safetensors"))
    state = policy.model.state_dict()
    key = "graph_encoder.node_proj.weight"
    assert torch.equal(state[key], ema[key])
    assert not torch.equal(ema[key], raw[key])
    plain = SoftArmPolicy.from_checkpoint(directory, use_ema=False)
    assert torch.equal(plain.model.state_dict()[key], raw[key])

    obs = observation(0, 20, 3)
    before = copy.deepcopy(obs)
    policy.infer(obs)
    assert obs.keys() == before.keys()
    for k in ("graph_nodes", "state"):
        np.testing.assert_array_equal(obs[k], before[k])
    np.testing.assert_array_equal(obs["images"]["base"], before["images"]["base"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"graph_nodes": np.zeros((10, 5))}, r"'graph_nodes' must be \[10, 19\], got \[10, 5\]"),
        ({"images": {"base": np.zeros((8, 8, 3), np.uint8)}}, r"'images' lacks camera 'tip'"),
        ({"prompt": None}, "'prompt' must be a non-empty string, got None"),
        ({"state": np.zeros(10)}, r"'state' must have 4 values \(the width trained on\), got 10"),
    ],
)
def test_bad_observations_are_named(checkpoint, change: dict, message: str) -> None:
    policy = SoftArmPolicy.from_checkpoint(checkpoint[0])
    with pytest.raises(ValueError, match=message):
        policy.infer({**observation(0, 20, 1), **change})


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"is not a softarm checkpoint: model_config\.json is missing"):
        SoftArmPolicy.from_checkpoint(tmp_path)


def test_compile_mode_is_max_autotune_on_cuda_and_eager_on_a_cpu() -> None:
    assert compile_mode("auto", torch.device("cuda")) == "max-autotune"
    assert compile_mode("auto", torch.device("cpu")) is None
    assert compile_mode("none", torch.device("cuda")) is None
    assert compile_mode("reduce-overhead", torch.device("cpu")) == "reduce-overhead"
    with pytest.raises(ValueError, match=r"compile mode must be one of \['auto', 'none', 'default'"):
        compile_mode("fast", torch.device("cpu"))


def test_compiled_sampling_gives_the_eager_actions(checkpoint) -> None:
    """torch.compile (inductor, on this CPU) of the sampling path, with every prefix position kept for static
    shapes, against the eager policy; warm-up pays the compilation and leaves the RNG streams alone."""
    eager = SoftArmPolicy.from_checkpoint(checkpoint[0], num_steps=2)  # 2 denoising steps: a graph 5x smaller
    assert eager.compile_mode is None  # auto: eager on a CPU
    compiled = SoftArmPolicy.from_checkpoint(checkpoint[0], compile="default", num_steps=2)
    assert compiled.model.drop_prefix_padding is False
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert compiled.warm_up(repeats=1) > 0
    assert torch.equal(torch.get_rng_state(), state)
    for t in (2, 9):
        torch.manual_seed(t)
        expected = eager.infer(observation(0, 20, t))["actions"]
        torch.manual_seed(t)
        np.testing.assert_allclose(compiled.infer(observation(0, 20, t))["actions"], expected, atol=1e-4)


def test_noise_scale_scales_the_flows_starting_noise(checkpoint) -> None:
    """1 is openpi's sampling (the preprocessing test above); 0.5 halves the same draw; 0 is deterministic: the flow
    from the noise's mean, whatever the random state."""
    directory = checkpoint[0]
    norm_stats = normalize.load(directory / "assets" / "softarm")
    obs = observation(0, 20, 4)
    half = SoftArmPolicy.from_checkpoint(directory, noise_scale=0.5)
    assert half.metadata["noise_scale"] == 0.5
    batch = to_device(default_collate([half.prepare(obs)]), "cpu")

    def sampled(noise: torch.Tensor) -> np.ndarray:
        chunk = half.model.sample_actions(torch.device("cpu"), batch.observation, graph_nodes=batch.graph_nodes,
                                          noise=noise)  # fmt: skip
        return output_transform(norm_stats, pi05=False)({"actions": chunk[0].numpy()})["actions"]

    torch.manual_seed(3)
    expected = sampled(0.5 * torch.randn(1, 16, 32))
    torch.manual_seed(3)
    np.testing.assert_allclose(half.infer(obs)["actions"], expected, rtol=1e-5, atol=1e-5)

    flat = SoftArmPolicy.from_checkpoint(directory, noise_scale=0)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(flat.infer(obs)["actions"])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], sampled(torch.zeros(1, 16, 32)), rtol=1e-5, atol=1e-5)
    assert np.abs(runs[0] - expected).max() > 1e-3  # the noise does reach the actions

    for wrong in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"noise_scale: expected a finite number >= 0 \(1: openpi's sampling\)"):
            SoftArmPolicy.from_checkpoint(directory, noise_scale=wrong)

    # the flow integrated in 3 Euler steps instead of openpi's 10: the model's own sampling with that count
    coarse = SoftArmPolicy.from_checkpoint(directory, noise_scale=0, num_steps=3)
    assert (coarse.metadata["num_steps"], flat.metadata["num_steps"]) == (3, 10)
    chunk = coarse.model.sample_actions(torch.device("cpu"), batch.observation, graph_nodes=batch.graph_nodes,
                                        noise=torch.zeros(1, 16, 32), num_steps=3)  # fmt: skip
    three = output_transform(norm_stats, pi05=False)({"actions": chunk[0].numpy()})["actions"]
    np.testing.assert_allclose(coarse.infer(obs)["actions"], three, rtol=1e-5, atol=1e-5)
    assert np.abs(three - runs[0]).max() > 1e-4  # the step count does reach the actions
    for wrong in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"num_steps: expected an integer >= 1 \(openpi's 10\), got"):
            SoftArmPolicy.from_checkpoint(directory, num_steps=wrong)
