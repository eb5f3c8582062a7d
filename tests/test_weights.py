"""Loading official openpi PyTorch checkpoints (written as openpi's converter does) and round-tripping."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from softarm.model import PI0GraphPytorch, build_base_model
from softarm.model_config import preset
from softarm.weights import load_model, load_weights, save_model
from tests.conftest import make_actions, make_graph, make_observation


def official_checkpoint(tmp_path: Path, **overrides) -> Path:
    """A converted-openpi-style directory: model.safetensors of a base PI0Pytorch (tied weights stored once)."""
    directory = tmp_path / "pi0_base"
    directory.mkdir()
    safetensors.torch.save_model(build_base_model(preset("tiny", **overrides)), str(directory / "model.safetensors"))
    return directory


def test_loads_base_weights_and_reports_fresh_graph_keys(tmp_path: Path) -> None:
    torch.manual_seed(1)
    checkpoint = official_checkpoint(tmp_path, fusion="prefix")
    base_sd = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    model = PI0GraphPytorch(preset("tiny", fusion="prefix"))

    report = load_weights(model, checkpoint)

    assert report.loaded == len(base_sd)
    assert report.fresh == sorted(model.graph_parameter_names())
    assert any(k.startswith("graph_prefix_proj.") for k in report.fresh)
    assert all(k.startswith("graph_") for k in report.fresh)
    assert "freshly initialised" in report.summary()
    assert "graph_prefix_proj.weight" in report.summary()
    state = model.state_dict()
    for name, tensor in base_sd.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)


def test_missing_base_key_is_an_error(tmp_path: Path) -> None:
    checkpoint = official_checkpoint(tmp_path)
    tensors = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    del tensors["action_out_proj.weight"]
    safetensors.torch.save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing 1 base-model tensors: action_out_proj.weight"):
        load_weights(PI0GraphPytorch(preset("tiny")), checkpoint)


def test_wrong_shape_is_an_error(tmp_path: Path) -> None:
    checkpoint = official_checkpoint(tmp_path, vocab_size=512)
    with pytest.raises(
        ValueError, match=r"2 tensors have the wrong shape .*lm_head.weight: file \[512, 64\] vs model \[1024, 64\]"
    ):
        load_weights(PI0GraphPytorch(preset("tiny")), checkpoint)


def test_other_variant_is_an_error(tmp_path: Path) -> None:
    checkpoint = official_checkpoint(tmp_path, pi05=True, fusion="suffix")
    with pytest.raises(
        ValueError, match=r"holds 22 tensors this model does not have \(pi0 vs pi0.5.*input_layernorm.dense.bias"
    ):
        load_weights(PI0GraphPytorch(preset("tiny")), checkpoint)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no weights file at .*empty/model.safetensors"):
        load_weights(PI0GraphPytorch(preset("tiny")), tmp_path / "empty")


@pytest.mark.parametrize("fusion", ["state", "suffix"])
def test_whole_model_round_trips(tmp_path: Path, fusion: str) -> None:
    config = preset("tiny", fusion=fusion, graph_width=32)
    model = PI0GraphPytorch(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # as if trained: nothing equals its initial value
    save_model(model, tmp_path / "m")

    loaded = load_model(tmp_path / "m")

    assert loaded.config == config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    obs, graph, noise = make_observation(config), make_graph(config), make_actions(config)
    model.eval(), loaded.eval()
    expected = model.sample_actions(torch.device("cpu"), obs, graph_nodes=graph, noise=noise, num_steps=2)
    got = loaded.sample_actions(torch.device("cpu"), obs, graph_nodes=graph, noise=noise, num_steps=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_whole_model_load_requires_graph_keys(tmp_path: Path) -> None:
    model = PI0GraphPytorch(preset("tiny"))
    save_model(model, tmp_path / "m")
    safetensors.torch.save_model(build_base_model(preset("tiny")), str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \d+ graph-extension tensors: graph_encoder"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"no model_config\.json"):
        load_model(tmp_path)
