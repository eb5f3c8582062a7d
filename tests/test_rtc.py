"""Real-time chunking: guidance and training-time conditioning in the model, the policy's and the server's
prev_actions / delay (the execution that sends them: tests/test_execution.py)."""

from __future__ import annotations

import math
from pathlib import Path
import types

import numpy as np
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
import pytest
import torch

from softarm import rtc
from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from softarm.policy import SoftArmPolicy
from softarm.rtc import ActionPrefix
from softarm.train.config import ConfigError, load_config
from softarm.train.loop import train
from tests.conftest import DEBUG_CONFIG, make_actions, make_graph, make_observation, observation, running


def test_prefix_weights_and_guidance_weight_follow_the_paper() -> None:
    w = rtc.prefix_weights(16, overlap=8, delay=3)
    assert w[:3].tolist() == [1.0, 1.0, 1.0]
    c = 5 / 6  # (overlap - i) / (overlap - delay + 1) at i = delay
    assert w[3].item() == pytest.approx(c * math.expm1(c) / math.expm1(1))
    assert (torch.diff(w[3:8]) < 0).all()
    assert w[7] > 0
    assert w[8:].tolist() == [0.0] * 8
    assert rtc.prefix_weights(16, 8, 3, "linear")[3].item() == pytest.approx(c)
    assert rtc.prefix_weights(16, 8, 3, "ones")[:8].tolist() == [1.0] * 8
    assert rtc.prefix_weights(16, 8, 3, "zeros").tolist() == [1.0] * 3 + [0.0] * 13
    assert rtc.guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # ((1-t)^2 + t^2) / (t (1-t))
    assert rtc.guidance_weight(0.1, 5.0) == 5.0  # clipped
    assert rtc.guidance_weight(1.0, 5.0) == 5.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        rtc.prefix_weights(16, 8, 3, "cosine")


def test_training_delays_are_in_range_and_the_exp_distribution_favours_short_ones() -> None:
    torch.manual_seed(0)
    uniform = rtc.sample_delays(4000, 6)
    decaying = rtc.sample_delays(4000, 6, "exp")
    assert set(uniform.tolist()) == set(range(7))
    assert set(decaying.tolist()) <= set(range(7))
    assert uniform.float().mean() == pytest.approx(3.0, abs=0.15)
    assert decaying.float().mean() < 2.3
    with pytest.raises(ValueError, match="delay distribution must be one of"):
        rtc.sample_delays(4, 6, "normal")


def test_an_action_prefix_checks_its_delay_and_overlap() -> None:
    actions = torch.zeros(1, 16, 32)
    assert ActionPrefix(actions, 8, 3).clean_tokens().tolist() == [[True] * 3 + [False] * 13]
    with pytest.raises(ValueError, match="delay: 0 to 8 control steps"):
        ActionPrefix(actions, 8, 9)
    with pytest.raises(ValueError, match="prev_actions: 1 to 16 actions, got 0"):
        ActionPrefix(actions, 0, 0)


def test_without_a_previous_chunk_sampling_and_training_are_openpis() -> None:
    """No prefix: sample_actions is openpi's loop with openpi's own denoising step; delay 0 in training is the
    plain loss (a model trained without RTC behaves exactly as before)."""
    model = PI0GraphPytorch(preset("tiny")).eval()
    model.augment_images = False  # the loss below draws no random image augmentation
    config = model.config
    obs, graph, actions = make_observation(config), make_graph(config), make_actions(config)
    noise = torch.randn(2, 16, 32)
    ours = model.sample_actions("cpu", obs, graph_nodes=graph, noise=noise)
    reference = PI0GraphPytorch(config).eval()
    reference.load_state_dict(model.state_dict())
    reference.denoise_step = types.MethodType(PI0Pytorch.denoise_step, reference)  # the official step
    with reference._call_inputs(graph):
        official = PI0Pytorch.sample_actions(reference, "cpu", obs, noise=noise)
    assert torch.equal(ours, official)
    time = torch.tensor([0.3, 0.8])
    plain = model(obs, actions, graph_nodes=graph, noise=noise, time=time)
    zero = model(obs, actions, graph_nodes=graph, noise=noise, time=time, delay=torch.zeros(2, dtype=torch.long))
    assert torch.equal(plain, zero)


def test_clean_action_tokens_are_embedded_at_the_data_end_of_flow_time() -> None:
    model = PI0GraphPytorch(preset("tiny")).eval()
    state, noisy, t = torch.randn(2, 32), torch.randn(2, 16, 32), torch.tensor([0.7, 0.4])
    clean = torch.arange(16) < torch.tensor([[3], [0]])
    with torch.no_grad(), model._call_inputs(None, clean_tokens=clean):
        mixed = model.embed_suffix(state, noisy, t)[0]
    with torch.no_grad():
        at_t = model.embed_suffix(state, noisy, t)[0]
        at_0 = model.embed_suffix(state, noisy, torch.zeros(2))[0]
    # suffix = state token + 16 action tokens
    assert torch.equal(mixed[0, 1:4], at_0[0, 1:4])
    assert torch.equal(mixed[0, 4:], at_t[0, 4:])
    assert torch.equal(mixed[1], at_t[1])
    assert torch.equal(mixed[:, 0], at_t[:, 0])
    assert not torch.allclose(at_0[0, 1:4], at_t[0, 1:4])


def _pi05(fusion: str = "suffix") -> PI0GraphPytorch:
    """A tiny π0.5 whose adaRMS norms respond to their condition (openpi initialises their weights to 0)."""
    torch.manual_seed(0)
    model = PI0GraphPytorch(preset("tiny", pi05=True, fusion=fusion)).eval()
    with torch.no_grad():
        for module in model.paligemma_with_expert.gemma_expert.modules():
            if getattr(module, "dense", None) is not None:
                module.dense.weight.normal_(0, 0.1)
    return model


def test_pi05_gives_each_clean_token_its_own_flow_time_through_adarms() -> None:
    model = _pi05()
    noisy, t = torch.randn(2, 16, 32), torch.tensor([0.7, 0.4])
    clean = torch.arange(16) < torch.tensor([[3], [0]])
    with torch.no_grad(), model._call_inputs(make_graph(model.config), clean_tokens=clean):
        cond = model.embed_suffix(None, noisy, t)[3]
    with torch.no_grad():
        at_t, at_0 = model.embed_suffix(None, noisy, t)[3], model.embed_suffix(None, noisy, torch.zeros(2))[3]
    nodes = model.config.num_nodes  # suffix = graph tokens, then the 16 action tokens
    assert cond.shape == (2, nodes + 16, at_t.shape[-1])
    assert torch.equal(cond[0, nodes : nodes + 3], at_0[0].expand(3, -1))
    assert torch.equal(cond[0, nodes + 3 :], at_t[0].expand(13, -1))
    assert torch.equal(cond[0, :nodes], at_t[0].expand(nodes, -1))  # graph tokens: the sample's time
    assert torch.equal(cond[1], at_t[1].expand(nodes + 16, -1))
    assert not torch.allclose(at_0[0], at_t[0])
    # an adaRMS norm given one condition per token computes what the official norm computes per sample
    norm = model.paligemma_with_expert.gemma_expert.model.norm
    x = torch.randn(2, 5, norm.dim)
    official, official_gate = type(norm).forward(norm, x, at_t)
    per_token, gate = norm(x, at_t[:, None, :].expand(-1, 5, -1))
    torch.testing.assert_close(per_token, official, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gate, official_gate.expand(-1, 5, -1), rtol=1e-6, atol=1e-6)


def test_pi05_committed_tokens_at_time_zero_change_what_the_expert_predicts() -> None:
    """Delay 0 is the plain loss; a committed prefix changes the loss of the other tokens (they attend to tokens at
    another flow time), and the committed ones' noise is their action."""
    model = _pi05()
    model.augment_images = False
    config = model.config
    obs, graph, actions = make_observation(config), make_graph(config), make_actions(config)
    noise, time = torch.randn(2, 16, 32), torch.tensor([0.3, 0.8])
    plain = model(obs, actions, graph_nodes=graph, noise=noise, time=time)
    zero = model(obs, actions, graph_nodes=graph, noise=noise, time=time, delay=torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(zero, plain, rtol=1e-5, atol=1e-6)
    committed = model(obs, actions, graph_nodes=graph, noise=noise, time=time, delay=torch.tensor([4, 0]))
    assert not torch.allclose(committed[0, 4:], plain[0, 4:], atol=1e-4)
    torch.testing.assert_close(committed[1], plain[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides", [{"fusion": "state"}, {"fusion": "prefix"}, {"fusion": "suffix"}, {"pi05": True, "fusion": "suffix"}]
)
def test_guidance_pulls_the_committed_steps_onto_the_previous_chunk(overrides: dict) -> None:
    """Inference-time RTC on every fusion mode and pi0.5: the steps inside the delay land on the previous chunk
    (within a few hundredths where plain sampling is ~1 away), the overlap is pulled too, the rest stays free."""
    torch.manual_seed(0)
    model = PI0GraphPytorch(preset("tiny", **overrides)).eval()
    obs, graph = make_observation(model.config), make_graph(model.config)
    noise, previous = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    previous[:, 10:] = 0
    plain = model.sample_actions("cpu", obs, graph_nodes=graph, noise=noise)
    guided = model.sample_actions("cpu", obs, graph_nodes=graph, noise=noise, prefix=ActionPrefix(previous, 10, 4))
    err = lambda chunk, steps: (chunk - previous)[:, steps].abs().mean().item()  # noqa: E731
    assert err(plain, slice(0, 4)) > 0.8
    assert err(guided, slice(0, 4)) < 0.1 * err(plain, slice(0, 4))
    assert err(guided, slice(4, 10)) < 0.75 * err(plain, slice(4, 10))  # soft weights, decaying to 0
    assert torch.isfinite(guided).all()


def _train_rtc(data: Path, out: Path, *extra: str) -> Path:
    """The conftest policy's data, trained 2 steps with training-time RTC up to 4 steps of delay."""
    overrides = [f"data.path={data}", f"train.out_dir={out}", "train.steps=2", "train.save_every=2",
                 "train.val_every=1", "train.val_batches=1", "train.rtc_max_delay=4", "train.rtc_delays=exp",
                 *extra]  # fmt: skip
    result = train(load_config(DEBUG_CONFIG, overrides))
    assert np.isfinite(result.metrics["loss"])
    assert np.isfinite(result.metrics["val_loss"])
    return out / "checkpoints" / "2"


@pytest.fixture(scope="module")
def rtc_checkpoint(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_rtc(checkpoint[1], tmp_path_factory.mktemp("rtc") / "run")


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_a_model_trained_for_delays_keeps_the_committed_actions_exactly(
    variant: str, rtc_checkpoint: Path, checkpoint, tmp_path: Path
) -> None:
    if variant == "pi05":  # per-token flow time through π0.5's adaRMS conditioning
        rtc_checkpoint = _train_rtc(checkpoint[1], tmp_path / "run", "model.overrides.pi05=true",
                                    "model.overrides.fusion=suffix")  # fmt: skip
    policy = SoftArmPolicy.from_checkpoint(rtc_checkpoint)
    assert (policy.model.config.rtc_max_delay, policy.model.config.pi05) == (4, variant == "pi05")
    assert policy.metadata["rtc"] == {"prev_actions": True, "max_guidance_weight": 5.0, "schedule": "exp",
                                      "trained_max_delay": 4}  # fmt: skip
    obs = observation(0, 20, 3)
    previous = np.random.default_rng(0).uniform(-1, 1, (12, 10)).astype(np.float32)
    plain = policy.infer(obs)["actions"]
    frozen = policy.infer(obs, prev_actions=previous, delay=3)["actions"]
    np.testing.assert_allclose(frozen[:3], previous[:3], atol=1e-5)  # clean tokens: the previous actions themselves
    assert np.abs(plain[:3] - previous[:3]).mean() > 0.1
    # beyond the trained delays: guidance, close but not exact
    guided = policy.infer(obs, prev_actions=previous, delay=6)["actions"]
    assert np.abs(guided[:6] - previous[:6]).mean() < 0.3 * np.abs(plain[:6] - previous[:6]).mean()


def test_training_time_rtc_is_checked_before_any_work(checkpoint) -> None:
    base = [f"data.path={checkpoint[1]}", "train.steps=1"]
    with pytest.raises(ConfigError, match=r"train\.rtc_max_delay: rtc_max_delay must be in 0\.\.15, got 16"):
        load_config(DEBUG_CONFIG, [*base, "train.rtc_max_delay=16"]).validate()
    with pytest.raises(ConfigError, match=r"set train\.rtc_max_delay instead"):
        load_config(DEBUG_CONFIG, [*base, "model.overrides.rtc_max_delay=2"]).validate()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prev_actions": np.zeros((8, 9), np.float32)}, "'prev_actions': expected a float array [L, 10]"),
        ({"prev_actions": np.zeros((17, 10), np.float32)}, "with 1 <= L <= 16"),
        ({"prev_actions": np.full((8, 10), np.nan, np.float32)}, "'prev_actions': contains NaN or Inf"),
        ({"prev_actions": np.zeros((8, 10)), "delay": 9}, "'delay': expected 0 to 8 control steps"),
        ({"prev_actions": np.zeros((8, 10)), "delay": 1.5}, "'delay': expected an integer number of control steps"),
        ({"prev_actions": np.zeros((8, 10)), "delay": True}, "'delay': expected an integer"),
        ({"delay": 2}, "'delay' needs 'prev_actions'"),
    ],
)
def test_malformed_previous_chunks_are_refused_with_the_key(checkpoint, change: dict, message: str) -> None:
    policy = SoftArmPolicy.from_checkpoint(checkpoint[0])
    with pytest.raises(ValueError, match=r"delay|prev_actions") as exc:
        policy.prepare({**observation(0, 20, 1), **change})
    assert message in str(exc.value)


def test_openpi_client_sends_the_previous_chunk_through_the_server(rtc_checkpoint: Path) -> None:
    policy = SoftArmPolicy.from_checkpoint(rtc_checkpoint)
    previous = np.random.default_rng(1).uniform(-1, 1, (8, 10)).astype(np.float32)
    with running(policy) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        assert client.get_server_metadata()["rtc"]["trained_max_delay"] == 4
        reply = client.infer({**observation(0, 20, 2), "prev_actions": previous, "delay": 2})
        np.testing.assert_allclose(reply["actions"][:2], previous[:2], atol=1e-5)
        with pytest.raises(RuntimeError, match="'delay': expected 0 to 8 control steps"):
            client.infer({**observation(0, 20, 2), "prev_actions": previous, "delay": 12})
        assert client.infer(observation(0, 20, 2))["actions"].shape == (16, 10)  # the connection survived
