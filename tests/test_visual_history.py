"""Visual history: past camera frames read by the current image tokens (memory) or stacked into the prefix, cut from
prepared episodes and kept on the robot side by one rule, trained, served and fed by the evaluation agent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from softarm.apps.evaluate import ModelAgent
from softarm.cli import describe_arm
from softarm.data.convert import ConvertOptions, convert
from softarm.data.loader import SoftArmDataset
from softarm.data.prepared import PreparedDataset
from softarm.history import HistorySpec, ImageHistory
from softarm.layout import IMAGE_HISTORY, IMAGE_HISTORY_MASK, IMAGE_SLOTS
from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from softarm.policy import SoftArmPolicy
from softarm.sim.tasks import EpisodeSpec
from softarm.visual_memory import FrameCache, PatchWindow, VisualMemory
from tests.conftest import DEBUG_CONFIG, POLICY_CAMERAS, make_actions, make_graph, make_observation, raw_dir


def _open(memory: VisualMemory | PatchWindow) -> None:
    """Give a fresh memory's silent output projection weights, as training does."""
    with torch.no_grad():
        memory.out.weight.normal_(0.0, 0.2)


def test_the_memory_reads_real_past_frames_and_starts_as_no_memory() -> None:
    torch.manual_seed(0)
    memory = VisualMemory(width=32, steps=3, slots=1)
    current, past = torch.randn(2, 5, 32), torch.randn(2, 2, 5, 32)
    mask = torch.tensor([[True, True], [False, True]])
    assert torch.equal(memory(0, current, past, mask), current)  # the branch starts silent
    # ... and learns from the first step: its output projection has a gradient (a closed gate gave it none)
    memory(0, current, past, mask).square().sum().backward()
    assert memory.out.weight.grad.abs().sum() > 0
    assert memory.gate.grad.abs().sum() == 0
    _open(memory)
    out = memory(0, current, past, mask)
    changed = past.clone()
    changed[:, 0] += 3.0 * torch.randn(5, 32)  # the oldest frame: real in sample 0, before the episode in sample 1
    moved = memory(0, current, changed, mask)
    assert not torch.allclose(moved[0], out[0])
    torch.testing.assert_close(moved[1], out[1])  # a masked frame is not read
    changed[:, 1, 2] += 3.0 * torch.randn(32)  # the other patch positions do not see patch 2 of a past frame
    again = memory(0, current, changed, mask)
    torch.testing.assert_close(again[1, [0, 1, 3, 4]], moved[1, [0, 1, 3, 4]])
    assert not torch.allclose(again[1, 2], moved[1, 2])


def test_the_spatial_memory_reads_every_patch_of_the_real_past_frames() -> None:
    torch.manual_seed(0)
    memory = VisualMemory(width=32, steps=3, slots=1, spatial=True)
    current, past = torch.randn(2, 5, 32), torch.randn(2, 2, 5, 32)
    mask = torch.tensor([[True, True], [False, True]])
    assert torch.equal(memory(0, current, past, mask), current)  # silent when fresh, as the per-patch memory
    _open(memory)
    out = memory(0, current, past, mask)
    changed = past.clone()
    changed[:, 1, 2] += 3.0 * torch.randn(32)  # one patch of the newest past frame
    moved = memory(0, current, changed, mask)
    assert ((moved - out).abs().amax(dim=-1) > 1e-3).all()  # every current token reads it, not only patch 2
    changed = past.clone()
    changed[:, 0] += 3.0 * torch.randn(5, 32)  # the oldest frame: masked in sample 1
    moved = memory(0, current, changed, mask)
    assert not torch.allclose(moved[0], out[0])
    torch.testing.assert_close(moved[1], out[1])


def test_the_patch_window_keeps_each_patch_s_frames_apart_and_in_order() -> None:
    torch.manual_seed(0)
    window = PatchWindow(width=32, steps=3, slots=2)
    current, past = torch.randn(2, 5, 32), torch.randn(2, 2, 5, 32)
    mask = torch.tensor([[True, True], [False, True]])
    assert torch.equal(window(0, current, past, mask), current)  # silent when fresh
    window(0, current, past, mask).square().sum().backward()
    assert window.out.weight.grad.abs().sum() > 0  # ... and learns from the first step
    _open(window)
    out = window(0, current, past, mask)
    with torch.no_grad():
        window.slot[1].normal_()  # each camera its own bias, learnt
    assert not torch.allclose(window(1, current, past, mask), out)
    swapped = window(0, current, past.flip(1), torch.ones_like(mask))
    assert not torch.allclose(swapped[0], window(0, current, past, torch.ones_like(mask))[0])  # order is read
    changed = past.clone()
    changed[:, 0] += 3.0 * torch.randn(5, 32)  # the oldest frame: real in sample 0, before the episode in sample 1
    moved = window(0, current, changed, mask)
    assert not torch.allclose(moved[0], out[0])
    torch.testing.assert_close(moved[1], out[1])  # a padded frame reads as zeros whatever it holds
    changed[:, 1, 2] += 3.0 * torch.randn(32)  # patch 2 of the newest past frame: only patch 2 reads it
    again = window(0, current, changed, mask)
    torch.testing.assert_close(again[:, [0, 1, 3, 4]], moved[:, [0, 1, 3, 4]])
    assert not torch.allclose(again[:, 2], moved[:, 2])


def test_the_frame_cache_encodes_each_frame_once_and_only_an_equal_frame_hits() -> None:
    encoded = []

    def embed(frames: torch.Tensor) -> torch.Tensor:
        encoded.append(len(frames))
        return frames.mean(dim=(2, 3))[:, None, :] * torch.ones(1, 4, 1)  # [n, 4 tokens, 3]

    cache, frames = FrameCache(size=3), torch.rand(3, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(cache.tokens("base_0_rgb", frames, embed), embed(frames))
    encoded.clear()
    again = cache.tokens("base_0_rgb", frames[[2, 0]], embed)  # seen before, in another order
    assert (encoded, cache.hits, cache.misses) == ([], 2, 3)
    torch.testing.assert_close(again, embed(frames[[2, 0]]))
    nudged = frames[:1].clone()
    nudged[0, 1, 4, 4] += 1 / 127.5  # one pixel one step brighter: another frame
    cache.tokens("base_0_rgb", nudged, embed)
    assert cache.misses == 4
    cache.tokens("left_wrist_0_rgb", frames[:1], embed)  # the same pixels from another camera: its own entry
    assert cache.misses == 5
    assert len(cache._frames) == 3  # the least recently used went


def _frames(batch: int = 2, past: int = 2, seed: int = 5) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    frames = {slot: torch.rand(batch, past, 3, 224, 224, generator=gen) * 2 - 1 for slot in IMAGE_SLOTS}
    return frames, torch.ones(batch, past, dtype=torch.bool)


@pytest.mark.parametrize("mode", ["memory", "attend", "concat", "stack"])
def test_a_model_with_visual_history_reads_the_past_frames(mode: str) -> None:
    plain = preset("tiny")
    config = preset("tiny", image_history_steps=3, image_history_mode=mode, image_history_slots=("base_0_rgb",))
    torch.manual_seed(0)
    without = PI0GraphPytorch(plain).eval()
    model = PI0GraphPytorch(config).eval()
    without.augment_images = model.augment_images = False  # the same images in every call
    missing, unexpected = model.load_state_dict(without.state_dict(), strict=False)
    assert not unexpected
    assert all(name.startswith("visual_history.") for name in missing)
    observation, graph, actions = make_observation(config), make_graph(config), make_actions(config)
    frames, mask = _frames()
    noise, time = torch.randn(2, 16, 32), torch.full((2,), 0.5)
    base = without(observation, actions, graph_nodes=graph, noise=noise, time=time)
    loss = model(observation, actions, graph_nodes=graph, noise=noise, time=time, image_history=(frames, mask))
    if mode != "stack":  # a fresh memory is silent: exactly the model without history
        torch.testing.assert_close(loss, base)
        _open(model.visual_history)
    changed = {**frames, "base_0_rgb": -frames["base_0_rgb"]}
    moved = model(observation, actions, graph_nodes=graph, noise=noise, time=time, image_history=(changed, mask))
    assert not torch.allclose(moved, loss)  # the past frames of the history slot are read
    other = {**frames, "left_wrist_0_rgb": -frames["left_wrist_0_rgb"]}  # not a history slot
    same = model(observation, actions, graph_nodes=graph, noise=noise, time=time, image_history=(other, mask))
    torch.testing.assert_close(same, model(observation, actions, graph_nodes=graph, noise=noise, time=time,
                                           image_history=(frames, mask)))  # fmt: skip
    with pytest.raises(ValueError, match=r"reads 2 past frames of \['base_0_rgb'\]: give image_history"):
        model(observation, actions, graph_nodes=graph)
    with pytest.raises(ValueError, match="image_history_slots: 'wrist' is not one of openpi's image slots"):
        preset("tiny", image_history_steps=2, image_history_slots=("wrist",))


def test_the_robot_sides_frames_are_the_loaders(tmp_path: Path) -> None:
    convert(
        raw_dir(tmp_path, lengths=(9, 7)), tmp_path / "prep", ConvertOptions(val_episodes=1, cameras=POLICY_CAMERAS)
    )
    data, spec = PreparedDataset(tmp_path / "prep", "all"), HistorySpec(steps=3, stride=2)
    dataset = SoftArmDataset(data, lambda fields: fields, image_history=spec, image_slots=IMAGE_SLOTS)
    assert dataset.image_slots == ["base_0_rgb", "left_wrist_0_rgb"]  # the slots that hold a camera
    robot = ImageHistory(spec, ["base_0_rgb", "left_wrist_0_rgb"])
    for index in range(len(data)):
        if index == 0 or data.episode_of(index) != data.episode_of(index - 1):
            robot.reset()
        robot.push(data[index].images)
        sent, item = robot.request_fields(), dataset[index]
        np.testing.assert_array_equal(sent[IMAGE_HISTORY_MASK], item[IMAGE_HISTORY_MASK])
        for slot in dataset.image_slots:
            np.testing.assert_array_equal(sent[IMAGE_HISTORY][slot], item[IMAGE_HISTORY][slot])
    np.testing.assert_array_equal(dataset[4][IMAGE_HISTORY]["base_0_rgb"],
                                  np.stack([data[i].images["base_0_rgb"] for i in (0, 2)]))  # fmt: skip
    assert dataset[1][IMAGE_HISTORY_MASK].tolist() == [False, False]  # the episode's first frame, repeated
    with pytest.raises(ValueError, match="images lack camera 'left_wrist_0_rgb', whose past frames the model reads"):
        robot.push({"base_0_rgb": data[0].images["base_0_rgb"]})


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model reading 2 past frames of its base camera, 2 control steps apart, trained 2 steps."""
    from softarm.train.config import load_config
    from softarm.train.loop import train

    tmp = tmp_path_factory.mktemp("visual")
    convert(raw_dir(tmp, lengths=(12, 10, 9)), tmp / "prep", ConvertOptions(val_episodes=1, cameras=POLICY_CAMERAS))
    train(load_config(DEBUG_CONFIG, [f"data.path={tmp / 'prep'}", f"train.out_dir={tmp / 'run'}", "train.steps=2",
                                     "train.save_every=2", "train.val_every=2", "data.batch_size=4",
                                     "train.tensorboard=false", "model.overrides.image_history_steps=3",
                                     "model.overrides.image_history_stride=2",
                                     "model.overrides.image_history_slots=[base_0_rgb]"]))  # fmt: skip
    return tmp / "run" / "checkpoints" / "2"


@pytest.fixture(scope="module")
def served(served_dir: Path) -> SoftArmPolicy:
    return SoftArmPolicy.from_checkpoint(served_dir, device="cpu", noise_scale=0.0)


def test_a_trained_model_with_visual_history_says_what_it_reads_and_answers(
    served: SoftArmPolicy, served_dir: Path
) -> None:
    assert served.metadata["image_history"] == {"steps": 3, "stride": 2, "cameras": ["base"]}
    info = describe_arm(served_dir)
    assert "  camera history read by the model: 2 past frames of ['base_0_rgb'], 2 apart (memory)" in info
    rng = np.random.default_rng(0)
    request = {"images": {"base": rng.integers(0, 255, (48, 64, 3), np.uint8),
                          "tip": rng.integers(0, 255, (32, 32, 3), np.uint8)},
               "graph_nodes": rng.normal(size=(10, 19)).astype(np.float32), "state": np.zeros(4, np.float32),
               "prompt": "reach the red ball",
               IMAGE_HISTORY: {"base": rng.integers(0, 255, (2, 48, 64, 3), np.uint8)}}  # fmt: skip
    cache = served.model.frame_cache
    first = served.infer(request)["actions"]
    assert first.shape == (16, 10)
    misses = cache.misses
    again = served.infer(request)["actions"]  # the same past frames: their tokens come from the cache
    assert (cache.misses, cache.hits) == (misses, 2)
    served.model.frame_cache = None
    try:
        np.testing.assert_allclose(again, served.infer(request)["actions"], atol=1e-5)  # as encoding them anew
    finally:
        served.model.frame_cache = cache
    prepared = served.prepare(request)
    assert prepared[IMAGE_HISTORY]["base_0_rgb"].shape == (2, 224, 224, 3)
    same = served.prepare({**request, "images": {**request["images"], "base": request[IMAGE_HISTORY]["base"][1]}})
    np.testing.assert_array_equal(
        prepared[IMAGE_HISTORY]["base_0_rgb"][1], same["image"]["base_0_rgb"]
    )  # resized alike
    assert prepared[IMAGE_HISTORY_MASK].tolist() == [True, True]
    with pytest.raises(ValueError, match=r"'image_history' lacks camera 'base': the model reads its 2 past frames, 2 "):
        served.prepare({k: v for k, v in request.items() if k != IMAGE_HISTORY})
    with pytest.raises(ValueError, match=r"image_history\['base'\] must be uint8 \[2, H, W, 3\], got uint8 \[1, 48"):
        served.prepare({**request, IMAGE_HISTORY: {"base": request[IMAGE_HISTORY]["base"][:1]}})
    with pytest.raises(ValueError, match=r"'image_history_mask' must be 2 bools"):
        served.prepare({**request, IMAGE_HISTORY_MASK: np.ones(3, bool)})
    assert served.warm_up() > 0


def test_the_evaluation_agent_sees_every_step_and_sends_the_past_frames(served: SoftArmPolicy) -> None:
    agent = ModelAgent(served, replan=4)
    agent.reset(
        EpisodeSpec("reach", 0, "p", initial_command=np.zeros(10), targets=np.zeros((6, 3)), time_limit=1), 10.0
    )
    assert agent.needs_images  # every step, not only when a chunk is asked for
    sent = []
    served.infer = lambda observation, **_: sent.append(observation) or {"actions": np.zeros((16, 10)),
                                                                       "policy_timing": {"infer_ms": 1.0}}  # fmt: skip
    rng = np.random.default_rng(1)
    for step in range(5):
        images = {cam: np.full((8, 8, 3), 10 * step + k, np.uint8) for k, cam in enumerate(("base", "tip"))}
        agent.act({"images": images, "graph_nodes": rng.normal(size=(10, 19)), "state": np.zeros(4), "prompt": "x"})
    assert len(sent) == 2  # steps 0 and 4
    assert sent[1][IMAGE_HISTORY]["base"][:, 0, 0, 0].tolist() == [0, 20]  # steps 0 and 2: stride 2, oldest first
    assert sent[0][IMAGE_HISTORY_MASK].tolist() == [False, False]
    assert sent[1][IMAGE_HISTORY_MASK].tolist() == [True, True]
