"""PI0GraphPytorch on the tiny preset of the real PI0Pytorch (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from softarm import arm
from softarm.model import PI0GraphPytorch, build_base_model
from softarm.model_config import SoftArmModelConfig, preset
from softarm.vision import ConvStem, VisionSpec
from tests.conftest import make_actions, make_graph, make_observation

CPU = torch.device("cpu")
MODES = [(False, "state"), (False, "prefix"), (False, "suffix"), (True, "prefix"), (True, "suffix")]


def graph_model_from_base(config: SoftArmModelConfig):
    """A base PI0Pytorch and a PI0GraphPytorch holding the same base weights."""
    torch.manual_seed(0)
    base = build_base_model(config)
    graph_model = PI0GraphPytorch(config)
    missing, unexpected = graph_model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert missing
    assert all(k.startswith("graph_") for k in missing)
    return base, graph_model


def as_if_trained(model: PI0GraphPytorch) -> PI0GraphPytorch:
    """Non-zero adaRMS modulation (pi0.5) and gate (state mode), as trained weights have: openpi zero-initialises
    both, which makes a fresh model nearly blind to everything the action expert attends to."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".dense." in name or name == "graph_state_gate":
                p.normal_(0.0, 0.1)
    return model


def loss_with_seed(model, *args, seed: int = 7, **kwargs) -> torch.Tensor:
    torch.manual_seed(seed)  # openpi's training-time image augmentation draws from the global RNG
    return model(*args, **kwargs)


@pytest.mark.parametrize(("pi05", "fusion"), MODES)
def test_forward_backward_each_fusion_mode(pi05: bool, fusion: str) -> None:
    config = preset("tiny", pi05=pi05, fusion=fusion)
    model = PI0GraphPytorch(config)
    obs, actions, graph = make_observation(config), make_actions(config), make_graph(config)

    loss = model(obs, actions, graph_nodes=graph)
    assert loss.shape == (2, config.action_horizon, 32)
    assert torch.isfinite(loss).all()
    loss.mean().backward()

    no_grad = sorted(n for n, p in model.named_parameters() if p.grad is None)
    if fusion != "state":
        assert no_grad == sorted(model.unused_parameter_names())
        assert len(no_grad) == 7
    encoder_grads = [p.grad for n, p in model.named_parameters() if n.startswith("graph_encoder.")]
    fusion_grads = [p.grad for n, p in model.named_parameters() if n.startswith("graph_") and "encoder" not in n]
    assert fusion_grads
    assert all(g is not None and g.abs().sum() > 0 for g in fusion_grads)
    if fusion == "state":
        # The zero gate blocks the encoder at first; one step on the gate opens the path.
        assert all(g is None or g.abs().sum() == 0 for g in encoder_grads)
        with torch.no_grad():
            model.graph_state_gate -= 0.1 * model.graph_state_gate.grad
        model.zero_grad()
        model(obs, actions, graph_nodes=graph).mean().backward()
        encoder_grads = [p.grad for n, p in model.named_parameters() if n.startswith("graph_encoder.")]
    assert sum(float(g.abs().sum()) for g in encoder_grads if g is not None) > 0


@pytest.mark.parametrize(("pi05", "fusion"), MODES)
def test_sample_actions_uses_the_graph(pi05: bool, fusion: str) -> None:
    config = preset("tiny", pi05=pi05, fusion=fusion)
    model = as_if_trained(PI0GraphPytorch(config)).eval()
    obs, noise = make_observation(config), make_actions(config, seed=3)
    a = model.sample_actions(CPU, obs, graph_nodes=make_graph(config, seed=1), noise=noise, num_steps=3)
    b = model.sample_actions(CPU, obs, graph_nodes=make_graph(config, seed=5), noise=noise, num_steps=3)
    assert a.shape == (2, config.action_horizon, 32)
    assert torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-3
    again = model.sample_actions(CPU, obs, graph_nodes=make_graph(config, seed=1), noise=noise, num_steps=3)
    torch.testing.assert_close(a, again)
    assert model._graph is None  # nothing of the call leaks into the next one


def test_state_mode_starts_as_base_pi0() -> None:
    config = preset("tiny", fusion="state")
    base, graph_model = graph_model_from_base(config)
    obs, actions, graph = make_observation(config), make_actions(config), make_graph(config)
    noise, time = make_actions(config, seed=9), torch.tensor([0.3, 0.8])

    expected = loss_with_seed(base, obs, actions, noise=noise, time=time)
    got = loss_with_seed(graph_model, obs, actions, graph_nodes=graph, noise=noise, time=time)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)

    base.eval(), graph_model.eval()
    expected = base.sample_actions(CPU, obs, noise=noise, num_steps=4)
    got = graph_model.sample_actions(CPU, obs, graph_nodes=graph, noise=noise, num_steps=4)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert expected.abs().mean() > 0.1  # a real chunk, not zeros


@pytest.mark.parametrize(("pi05", "fusion"), MODES)
def test_graph_none_is_exactly_the_base_model(pi05: bool, fusion: str) -> None:
    config = preset("tiny", pi05=pi05, fusion=fusion)
    base, graph_model = graph_model_from_base(config)
    obs, actions = make_observation(config), make_actions(config)
    noise, time = make_actions(config, seed=9), torch.tensor([0.5, 0.1])
    expected = loss_with_seed(base, obs, actions, noise=noise, time=time)
    got = loss_with_seed(graph_model, obs, actions, graph_nodes=None, noise=noise, time=time)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)  # padding dropped: float rounding only
    # ... and with a graph, prefix/suffix modes really change the computation.
    if fusion != "state":
        with_graph = loss_with_seed(graph_model, obs, actions, graph_nodes=make_graph(config), noise=noise, time=time)
        assert (with_graph - expected).abs().max() > 1e-5


def test_bad_graph_input_reaches_the_user_as_value_error() -> None:
    config = preset("tiny", fusion="suffix")
    model = PI0GraphPytorch(config)
    obs, actions = make_observation(config), make_actions(config)
    with pytest.raises(ValueError, match=r"graph nodes must have shape \[batch, 10 nodes, 19 features\]"):
        model(obs, actions, graph_nodes=torch.zeros(2, 10, 3))
    graph = make_graph(config)
    graph[0, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"first at batch 0, node 2, feature 5"):
        model.sample_actions(CPU, obs, graph_nodes=graph)


def test_config_extends_pi0config_with_graph_settings() -> None:
    from openpi.models.pi0_config import Pi0Config

    config = preset("tiny", edges=[[0, 1], [1, 2]], num_nodes=3, graph_heads=2)
    assert isinstance(config, Pi0Config)
    assert config.edges == ((0, 1), (1, 2))
    assert config.action_horizon == 16
    assert config.max_token_len == 48
    model = PI0GraphPytorch(config)
    assert model.graph_encoder.hops.tolist() == [[0, 1, 2], [1, 0, 1], [2, 1, 0]]
    assert SoftArmModelConfig.from_dict(config.to_dict()) == config


def test_presets() -> None:
    pi0, pi05, tiny = preset("pi0"), preset("pi05"), preset("tiny")
    assert (pi0.paligemma_variant, pi0.action_expert_variant, pi0.vision, pi0.fusion) == (
        "gemma_2b",
        "gemma_300m",
        None,
        "state",
    )
    assert pi0.vocab_size == 257_152
    assert (pi05.pi05, pi05.fusion, pi05.max_token_len, pi05.discrete_state_input) == (True, "suffix", 200, True)
    assert tiny.vision is not None
    assert tiny.vision.patch_size == 56
    sees = preset("tiny_vision")
    assert (sees.vision.width, sees.vision.depth, sees.vision.patch_size, sees.vision.stem) == (64, 2, 28, "conv")
    assert (sees.paligemma_variant, sees.vocab_size, sees.graph_width) == ("dummy", 1024, 64)
    model = PI0GraphPytorch(tiny)
    image_tokens = model.paligemma_with_expert.embed_image(torch.zeros(1, 3, 224, 224))
    assert image_tokens.shape == (1, 16, 64)
    assert model.paligemma_with_expert.paligemma.language_model.embed_tokens.num_embeddings == 1024
    assert "sample_actions" not in vars(model)  # eager, not the per-instance torch.compile wrapper
    with pytest.raises(ValueError, match=r"unknown model preset 'pi1'"):
        preset("pi1")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pi05": True, "fusion": "state"}, "pi0.5 has none: use 'prefix' or 'suffix'"),
        ({"fusion": "tokens"}, r"fusion must be one of \('state', 'prefix', 'suffix', 'none'\), got 'tokens'"),
        ({"action_dim": 10}, "action_dim must be 32, got 10"),
        ({"graph_depth": 0}, "graph_depth must be positive, got 0"),
        ({"edges": [(0, 12)]}, r"edge 0 = \(0, 12\) refers to a node outside 0..9"),
        ({"vision": {"stem": "cnn"}}, "vision.stem must be 'patch' or 'conv', got 'cnn'"),
        (
            {"action_expert_variant": "dummy_96"},
            r"action_expert_variant must be one of \('dummy', .*'dummy_128', "
            r"'dummy_256'\), got 'dummy_96'",
        ),
    ],
)
def test_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preset("tiny", **overrides)


def test_conv_stem_keeps_the_token_grid_and_trains() -> None:
    """`vision.stem: conv` swaps SigLIP's patch projection for strided convs with the same output grid; the config
    (and so a checkpoint) records it, the tower's tokens still see where in a patch something is, and it learns."""
    vision = VisionSpec(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=28, stem="conv")
    config = preset("tiny", vision=vision, fusion="none")
    assert SoftArmModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert SoftArmModelConfig.from_dict({**config.to_dict(), "vision": {"patch_size": 28}}).vision.stem == "patch"
    torch.manual_seed(0)
    model = PI0GraphPytorch(config)
    stem = model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding
    assert isinstance(stem, ConvStem)
    strides = [m.stride for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2), (2, 2), (7, 7)]  # 2 * 2 * 7 = the 28-px patch
    image = torch.zeros(1, 3, 224, 224)
    tokens = model.paligemma_with_expert.embed_image(image)
    assert tokens.shape == (1, 64, 64)  # 8 x 8 patches, projected to the tiny VLM's width
    shifted = image.clone()
    shifted[:, 0, 4:8, 4:8] = 1.0  # a red dot inside the first patch, then the same dot 12 px to the right
    moved = shifted.roll(12, dims=3)
    difference = model.paligemma_with_expert.embed_image(shifted) - model.paligemma_with_expert.embed_image(moved)
    assert difference.abs().max() > 1e-3
    loss = model(make_observation(config), make_actions(config)).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem.parameters())


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown model config keys \['graph_widht'\]"):
        SoftArmModelConfig.from_dict({"graph_widht": 3})


@pytest.mark.parametrize("pi05", [False, True])
def test_fusion_none_is_the_base_model_even_given_a_graph(pi05: bool) -> None:
    config = preset("tiny", pi05=pi05, fusion="none")
    torch.manual_seed(0)
    base = build_base_model(config)
    model = PI0GraphPytorch(config)
    model.load_state_dict(base.state_dict(), strict=True)  # no graph parameters at all
    assert model.graph_parameter_names() == []
    obs, actions = make_observation(config), make_actions(config)
    noise, time = make_actions(config, seed=9), torch.tensor([0.5, 0.1])
    expected = loss_with_seed(base, obs, actions, noise=noise, time=time)
    got = loss_with_seed(model, obs, actions, graph_nodes=make_graph(config), noise=noise, time=time)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)  # padding dropped: float rounding only


def test_prefix_drops_positions_padded_in_every_sample() -> None:
    """A camera slot the arm lacks and the prompt's padded tail leave the sequence; the loss does not change."""
    config = preset("tiny", fusion="none")
    torch.manual_seed(0)
    base = build_base_model(config)
    model = PI0GraphPytorch(config)
    model.load_state_dict(base.state_dict(), strict=True)
    obs, actions = make_observation(config), make_actions(config)
    obs.image_masks["right_wrist_0_rgb"] = torch.zeros(2, dtype=torch.bool)
    obs.tokenized_prompt_mask[1, :20] = True  # sample 0 has 12 prompt tokens, sample 1 has 20
    images, masks, tokens, token_masks, _ = model._preprocess_observation(obs, train=False)
    embs, pad, att = model.embed_prefix(images, masks, tokens, token_masks)
    assert embs.shape[:2] == (2, 16 + 16 + 20)  # was 3 x 16 image tokens + 48 prompt tokens
    assert pad.sum(dim=1).tolist() == [16 + 16 + 12, 16 + 16 + 20]
    assert not att.any()
    noise, time = make_actions(config, seed=9), torch.tensor([0.5, 0.1])
    expected = loss_with_seed(base, obs, actions, noise=noise, time=time)
    got = loss_with_seed(model, obs, actions, noise=noise, time=time)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    base.eval(), model.eval()
    expected = base.sample_actions(CPU, obs, noise=noise, num_steps=3)
    torch.testing.assert_close(model.sample_actions(CPU, obs, noise=noise, num_steps=3), expected, rtol=0, atol=1e-5)


def test_ignored_node_features_do_not_reach_the_model() -> None:
    config = preset("tiny", fusion="prefix", ignored_features=["vel_x", "last_action"])
    assert config.ignored_features == ("vel_x", "last_action")
    assert SoftArmModelConfig.from_dict(config.to_dict()) == config
    model = as_if_trained(PI0GraphPytorch(config)).eval()
    obs, noise, graph = make_observation(config), make_actions(config, seed=3), make_graph(config)
    expected = model.sample_actions(CPU, obs, graph_nodes=graph, noise=noise, num_steps=2)
    moved = graph.clone()
    moved[:, :, 7] += 5.0  # vel_x
    moved[:, :, 16] -= 3.0  # last_action
    torch.testing.assert_close(model.sample_actions(CPU, obs, graph_nodes=moved, noise=noise, num_steps=2), expected)
    moved[:, :, 0] += 1.0  # pos_x is read
    assert (model.sample_actions(CPU, obs, graph_nodes=moved, noise=noise, num_steps=2) - expected).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"ignored_features: unknown node feature 'speed'; the nodes have \['pos_x'"):
        preset("tiny", ignored_features=["speed"])
    with pytest.raises(ValueError, match=r"unknown node feature 'vel_x'; the nodes have \['feature_0', 'feature_1'"):
        preset("tiny", ignored_features=["vel_x"], node_features=7)


def test_unmeasured_features_are_masked_and_the_config_round_trips() -> None:
    measured = tuple(name for name in arm.SCHEMA if name != "contact_force")
    config = preset("tiny", fusion="suffix", num_nodes=4, measured_features=measured, edges=[(0, 1), (0, 2), (0, 3)])
    assert config.feature_names == arm.SCHEMA
    assert config.node_layout.unmeasured == ("contact_force",)
    assert SoftArmModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = as_if_trained(PI0GraphPytorch(config)).eval()
    assert model.graph_encoder.feature_mask.tolist() == [1.0] * 18 + [0.0]
    assert model.graph_encoder.hops[1, 3] == 2  # a star: leaves are two hops apart
    obs, noise, graph = make_observation(config), make_actions(config, seed=3), make_graph(config)
    expected = model.sample_actions(CPU, obs, graph_nodes=graph, noise=noise, num_steps=2)
    moved = graph.clone()
    moved[:, :, 18] = 100.0  # whatever the unmeasured column holds, the model does not read it
    torch.testing.assert_close(model.sample_actions(CPU, obs, graph_nodes=moved, noise=noise, num_steps=2), expected)
    with pytest.raises(ValueError, match=r"measured feature 'speed' is not one of the node features"):
        preset("tiny", measured_features=("pos_x", "speed"))
    with pytest.raises(ValueError, match=r"3 feature names declared for 19 feature columns"):
        preset("tiny", feature_names=("a", "b", "c"))
