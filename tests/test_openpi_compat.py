"""Each assumption softarm.openpi_compat makes about openpi's internals, checked against the installed openpi."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from openpi.models import gemma
from openpi.models.model import Observation
from openpi.models_pytorch import gemma_pytorch
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
import pytest
import torch

from softarm import openpi_compat
from softarm.data.tokenizer import SentencePieceTokenizer, train_prompt_tokenizer
from softarm.model import build_base_model
from softarm.model_config import preset
from softarm.openpi_compat import backbone_overrides
from tests.conftest import make_observation


def test_pi0_hooks_match_and_a_changed_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    openpi_compat.check_pi0_hooks()
    monkeypatch.setattr(PI0Pytorch, "embed_suffix", lambda self, state, noisy_actions, timestep, cond: None)
    with pytest.raises(ImportError, match=r"PI0Pytorch.embed_suffix has parameters .*'cond'.*expecting"):
        openpi_compat.check_pi0_hooks()


def test_sampling_takes_every_denoising_step_through_the_overridable_method() -> None:
    """RTC guidance lives in PI0GraphPytorch.denoise_step: openpi's loop must call it once per step, through self."""
    model = build_base_model(preset("tiny")).eval()
    calls = []
    official = model.denoise_step
    model.denoise_step = lambda *args: calls.append(args[-1][0].item()) or official(*args)
    model.sample_actions("cpu", make_observation(model.config), num_steps=4)
    assert calls == pytest.approx([1.0, 0.75, 0.5, 0.25])  # flow time from noise (1) towards data (0)


def test_backbone_factories_reach_the_official_construction_and_are_restored() -> None:
    originals = gemma_pytorch.PaliGemmaForConditionalGeneration, gemma_pytorch.GemmaForCausalLM
    config = preset("tiny")
    model = build_base_model(config)
    paligemma = model.paligemma_with_expert.paligemma
    vision = paligemma.config.vision_config
    assert (vision.hidden_size, vision.patch_size, vision.num_hidden_layers) == (32, 56, 1)
    assert paligemma.model.language_model.embed_tokens.num_embeddings == config.vocab_size == 1024
    assert model.paligemma_with_expert.gemma_expert.config.vocab_size == 1024
    assert (gemma_pytorch.PaliGemmaForConditionalGeneration, gemma_pytorch.GemmaForCausalLM) == originals
    with pytest.raises(RuntimeError), openpi_compat.backbone_factories(print, print):
        raise RuntimeError
    assert (gemma_pytorch.PaliGemmaForConditionalGeneration, gemma_pytorch.GemmaForCausalLM) == originals


def test_small_gemma_variants_build_wider_towers_and_leave_openpi_as_it_was() -> None:
    model = build_base_model(preset("tiny", paligemma_variant="dummy_128", action_expert_variant="dummy")).eval()
    text = model.paligemma_with_expert.paligemma.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (128, 256, 4)
    assert model.paligemma_with_expert.gemma_expert.config.hidden_size == 64  # the expert stays "dummy"
    assert model.action_in_proj.out_features == 64
    actions = model.sample_actions("cpu", make_observation(model.config), num_steps=2)
    assert actions.shape == (2, model.config.action_horizon, model.config.action_dim)
    assert torch.isfinite(actions).all()
    assert gemma.get_config is openpi_compat._OPENPI_GEMMA_CONFIG  # restored after construction
    with pytest.raises(ValueError, match="Unknown variant: dummy_129"):
        openpi_compat.gemma_config("dummy_129")
    wide = openpi_compat.gemma_config("dummy_256")
    wide.width = 1  # a copy: the next model of that variant is unchanged
    assert openpi_compat.gemma_config("dummy_256").width == 256


def test_pi0_compiles_sampling_per_instance_and_eager_sampling_undoes_it() -> None:
    config = preset("tiny")
    with backbone_overrides(config):
        model = PI0Pytorch(config)
    assert "sample_actions" in vars(model)  # openpi's torch.compile wrapper: if this fails, eager_sampling is moot
    openpi_compat.eager_sampling(model)
    assert model.sample_actions.__func__ is PI0Pytorch.sample_actions


def test_unchecked_observation_equals_the_checked_one() -> None:
    assert hasattr(Observation.__init__, "__wrapped__")  # jaxtyping's checker: the wrapper this module bypasses
    checked = make_observation(preset("tiny"))
    fields = {f.name: getattr(checked, f.name) for f in dataclasses.fields(Observation)}
    unchecked = openpi_compat.unchecked_observation(**fields)
    assert type(unchecked) is Observation
    for name, value in fields.items():
        got = getattr(unchecked, name)
        if isinstance(value, dict):
            assert got.keys() == value.keys()
            assert all(torch.equal(got[k], value[k]) for k in value)
        elif isinstance(value, torch.Tensor):
            assert torch.equal(got, value)
        else:
            assert got == value


def test_tokenizer_without_download_formats_pi0_and_pi05_prompts(tmp_path: Path) -> None:
    tokenizer = SentencePieceTokenizer(train_prompt_tokenizer(["reach the red ball"], tmp_path / "t.model"), max_len=40)
    sp = tokenizer.processor
    tokens, mask = tokenizer.tokenize("reach_the red ball\n")
    expected = sp.encode("reach the red ball", add_bos=True) + sp.encode("\n")
    np.testing.assert_array_equal(tokens[: len(expected)], expected)
    assert mask.sum() == len(expected)
    assert tokens.shape == mask.shape == (40,)
    tokens, mask = tokenizer.tokenize("reach", state=np.array([-1.0, 0.0, 0.999]))
    expected = sp.encode("Task: reach, State: 0 128 255;\nAction: ", add_bos=True)
    np.testing.assert_array_equal(tokens[: len(expected)], expected)
    assert mask.sum() == len(expected)


def test_the_layer_loop_checkpoints_only_when_asked_and_learns_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    """openpi forces gradient checkpointing of the joint layer loop whenever the expert's GemmaModel has the attribute;
    `checkpoint_only_on_request` hides it while training unless gradient_checkpointing_enable() asked for it."""
    from softarm.model import PI0GraphPytorch
    from tests.conftest import make_actions, make_graph

    def loss_and_grads(model: PI0GraphPytorch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(3)  # the flow-matching noise and time
        loss = model(make_observation(config), make_actions(config), graph_nodes=make_graph(config)).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    config = preset("tiny")
    torch.manual_seed(0)
    model = PI0GraphPytorch(config).train()
    expert = model.paligemma_with_expert.gemma_expert.model
    assert not hasattr(expert, "gradient_checkpointing")  # what openpi's forward tests before forcing it on
    plain_loss, plain_grads = loss_and_grads(model)
    assert "Forcing gradient checkpointing" not in capsys.readouterr().out
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert expert.gradient_checkpointing is True
    checkpointed_loss, checkpointed_grads = loss_and_grads(model)
    torch.testing.assert_close(checkpointed_loss, plain_loss)
    assert checkpointed_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    model.gradient_checkpointing_disable()
    model.eval()  # inference reads the flag through HF's GemmaModel.forward
    assert expert.gradient_checkpointing is False
    assert model.sample_actions("cpu", make_observation(config), make_graph(config), num_steps=2).shape == (2, 16, 32)
