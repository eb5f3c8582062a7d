"""`softarm train` on the tiny real model (CPU): end to end, overfitting, exact resume, 2-rank DDP, config errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import re
import socket

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.multiprocessing as mp

from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset
from softarm.layout import FORMAT_VERSION
from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from softarm.train.config import ConfigError, load_config
from softarm.train.loop import freeze, train
from softarm.weights import load_model
from tests.conftest import raw_dir

CONFIG = Path(__file__).parents[1] / "configs" / "debug.yaml"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    convert(raw_dir(tmp, lengths=(40, 30, 35, 25, 30)), tmp / "prep", ConvertOptions(val_episodes=1))
    return tmp / "prep"


def config(prepared: Path, out: Path, *overrides: str):
    return load_config(CONFIG, [f"data.path={prepared}", f"train.out_dir={out}", *overrides])


def test_debug_config_runs_end_to_end(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "--config", str(CONFIG), f"data.path={prepared}", f"train.out_dir={out}", "train.steps=4"]
    assert main([*args, "train.save_every=2", "train.val_every=2", "train.log_every=1", "train.keep_last=1"]) == 0
    assert "final: step 4" in capsys.readouterr().out
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["4"]  # keep_last=1 pruned step 2
    checkpoint = out / "checkpoints" / "4"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.pt", "trainer_state.pt", "train_config.yaml",
                 "tokenizer.model", "assets/softarm/norm_stats.json"):  # fmt: skip
        assert (checkpoint / name).is_file(), name
    assert (checkpoint / "assets/softarm/norm_stats.json").read_text() == (prepared / "norm_stats.json").read_text()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert all("val_loss_ema" in r for r in records if "val_loss" in r)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    model = load_model(checkpoint)
    assert model.config.fusion == "state"
    assert model.config.dtype == "float32"


def test_loss_falls_when_overfitting_one_batch(tmp_path: Path) -> None:
    convert(raw_dir(tmp_path, lengths=(8, 8)), tmp_path / "prep", ConvertOptions(val_episodes=1))
    result = train(config(tmp_path / "prep", tmp_path / "run", "train.steps=60", "train.log_every=1",
                          "train.val_every=1000", "train.save_every=1000", "train.ema_decay=null",
                          "optim.warmup_steps=5", "optim.end_lr=1e-3"))  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    assert result.metrics["step"] == 60


def test_resume_is_exact(prepared: Path, tmp_path: Path) -> None:
    common = ("train.save_every=3", "train.val_every=3", "train.grad_accum=2", "data.batch_size=4")
    train(config(prepared, tmp_path / "straight", "train.steps=6", *common))
    train(config(prepared, tmp_path / "resumed", "train.steps=3", *common))
    resumed = train(config(prepared, tmp_path / "resumed", "train.steps=6", *common))
    assert resumed.metrics["step"] == 6
    for name in ("model.safetensors", "ema.safetensors"):
        a = safetensors.torch.load_file(str(tmp_path / "straight" / "checkpoints" / "6" / name))
        b = safetensors.torch.load_file(str(tmp_path / "resumed" / "checkpoints" / "6" / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}: {key}")
    start = safetensors.torch.load_file(str(tmp_path / "resumed" / "checkpoints" / "3" / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a)  # the last 3 steps did change the weights


def test_anchor_decay_pulls_towards_the_base_and_resumes_exactly(prepared: Path, tmp_path: Path) -> None:
    """optim.anchor_decay moves every trained weight lr * anchor_decay of the way back to train.init_from's value after
    each step; a resumed run pulls towards the base, not towards the checkpoint it resumed from."""
    train(config(prepared, tmp_path / "base", "train.steps=1", "train.val_every=100"))
    base = tmp_path / "base" / "checkpoints" / "1"
    schedule = ("optim.warmup_steps=1", "optim.end_lr=1e-3")  # lr 1e-3 from the second step on
    common = ("train.val_every=100", "train.save_every=2", "data.batch_size=4", f"train.init_from={base}", *schedule)
    runs = {"free": (), "anchored": ("optim.anchor_decay=1000",), "half": ("optim.anchor_decay=300",)}
    for name, extra in runs.items():
        train(config(prepared, tmp_path / name, "train.steps=4", *common, *extra))
    train(config(prepared, tmp_path / "resumed", "train.steps=2", *common, *runs["half"]))
    train(config(prepared, tmp_path / "resumed", "train.steps=4", *common, *runs["half"]))

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return safetensors.torch.load_file(str(run / "model.safetensors"))

    start = weights(base)
    final = {name: weights(tmp_path / name / "checkpoints" / "4") for name in (*runs, "resumed")}

    def moved(name: str) -> float:
        return sum((final[name][k] - start[k]).norm().item() ** 2 for k in start) ** 0.5

    for key, value in start.items():  # lr * 1000 = 1: each step is undone whole
        torch.testing.assert_close(final["anchored"][key], value, rtol=0, atol=1e-7, msg=key)
    assert 0 < moved("half") < 0.7 * moved("free")  # lr * 300 = 0.3: it trains, held nearer the base (0.45x)
    for key, value in final["half"].items():
        torch.testing.assert_close(final["resumed"][key], value, rtol=0, atol=0, msg=key)


LORA = ("lora.rank=4", "lora.expert_rank=8")
NO_EMA, EMA = ("train.ema_decay=null",), ("train.ema_decay=0.9",)


def test_lora_trains_adapters_only_and_saves_a_servable_merged_model(prepared: Path, tmp_path: Path) -> None:
    from softarm.model import PI0GraphPytorch
    from softarm.policy import SoftArmPolicy
    from tests.conftest import observation

    common = ("train.save_every=2", "train.val_every=100", "data.batch_size=4", "optim.warmup_steps=1", *LORA)
    train(config(prepared, tmp_path / "init", "train.steps=1", "train.save_every=1"))  # an init_from checkpoint
    init = tmp_path / "init" / "checkpoints" / "1"
    result = train(config(prepared, tmp_path / "lora", "train.steps=4", f"train.init_from={init}", *common))
    trained = {name for name, p in result.model.named_parameters() if p.requires_grad}
    lora_names = [n for n in trained if ".lora_" in n]
    # A and B of 7 projections x 8 Gemma layers (tiny), less the VLM's last o_proj + MLP that no loss reaches
    assert len(lora_names) == 2 * (7 * 8 - 4)
    assert not any(n.startswith("paligemma_with_expert.gemma_expert.") and ".lora_" not in n for n in trained)
    assert any(n.startswith("graph_encoder.") for n in trained)  # the graph always trains
    assert "action_out_proj.weight" in trained

    checkpoint = tmp_path / "lora" / "checkpoints" / "4"
    merged = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    assert not any(".lora_" in k or ".base_layer." in k for k in merged)
    base = safetensors.torch.load_file(str(init / "model.safetensors"))
    assert merged.keys() == base.keys()  # the very names a plain checkpoint has, tied weights once
    key = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], base[key])  # the adapter is folded in...
    frozen = result.model.get_parameter(key.replace(".weight", ".base_layer.weight"))
    torch.testing.assert_close(frozen.detach(), base[key], rtol=0, atol=0)  # ...while the base stayed frozen

    # The merged file is a plain PI0GraphPytorch computing what the adapted training model computes.
    plain = PI0GraphPytorch(result.model.config)
    plain.load_state_dict(merged, strict=False)
    policy = SoftArmPolicy.from_checkpoint(checkpoint, use_ema=False)
    obs = observation(0, 20, 3)
    torch.manual_seed(0)
    a = policy.infer(obs)["actions"]
    policy.model = result.model.eval()
    torch.manual_seed(0)
    b = policy.infer(obs)["actions"]
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_lora_resume_is_exact(prepared: Path, tmp_path: Path) -> None:
    common = ("train.save_every=2", "train.val_every=100", "data.batch_size=4", *LORA)
    train(config(prepared, tmp_path / "straight", "train.steps=4", *common))
    train(config(prepared, tmp_path / "resumed", "train.steps=2", *common))
    train(config(prepared, tmp_path / "resumed", "train.steps=4", *common))
    for name in ("model.safetensors", "ema.safetensors", "lora.safetensors"):
        a = safetensors.torch.load_file(str(tmp_path / "straight" / "checkpoints" / "4" / name))
        b = safetensors.torch.load_file(str(tmp_path / "resumed" / "checkpoints" / "4" / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}: {key}")
    with pytest.raises(
        ValueError, match=r"no saved value for \d+ trained tensors, e\.g\. paligemma_with_expert\.gemma"
    ):
        train(config(prepared, tmp_path / "straight", "train.steps=6", *common[:-2], "lora.rank=2"))


@dataclasses.dataclass(frozen=True)
class Job:
    """One two-rank training run."""

    out: Path
    strategy: str
    steps: int = 3
    extra: tuple = NO_EMA


def _rank(rank: int, prepared: Path, jobs: list[Job], ports: list[int], queue) -> None:
    """Each job in turn in this rank's process: a spawned rank's ~10 s of imports is paid once for all of them."""
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    states = []
    for job, port in zip(jobs, ports, strict=True):
        os.environ["MASTER_PORT"] = str(port)  # a fresh rendezvous per job
        result = train(config(prepared, job.out, f"train.steps={job.steps}", "data.batch_size=4", "train.val_every=2",
                              "train.save_every=100", "train.val_batches=2", "train.dist_timeout_s=120",
                              f"train.strategy={job.strategy}", *job.extra))  # fmt: skip
        # numpy copies: tensors would travel as shared-memory handles that die with this process; FSDP ranks hold shards
        model = result.model.state_dict() if job.strategy == "ddp" else {}
        states.append({k: v.detach().cpu().numpy() for k, v in model.items()})
    queue.put((rank, states))


def run_two_ranks(prepared: Path, *jobs: Job) -> list[dict[int, dict]]:
    """Run the jobs one after another on two spawned gloo ranks; per job, each rank's final weights (DDP only)."""
    sockets = [socket.socket() for _ in jobs]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, prepared, list(jobs), ports, queue), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        states = dict(queue.get(timeout=120 + 120 * len(jobs)) for _ in procs)
    finally:  # a rank that died must not leave the other waiting in a collective, nor pytest waiting for it
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    assert [p.exitcode for p in procs] == [0, 0]
    return [{rank: states[rank][i] for rank in states} for i in range(len(jobs))]


@pytest.fixture(scope="module")
def two_rank_runs(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[int, dict]]:
    """Two DDP ranks and two FSDP ranks trained 3 steps with EMA: the two run directories and each DDP rank's final
    weights."""
    root = tmp_path_factory.mktemp("two_ranks")
    ddp, _ = run_two_ranks(prepared, Job(root / "ddp", "ddp", extra=EMA), Job(root / "fsdp", "fsdp", extra=EMA))
    return root / "ddp", root / "fsdp", ddp


def test_two_rank_ddp_keeps_ranks_identical(two_rank_runs: tuple[Path, Path, dict[int, dict]]) -> None:
    run, _, states = two_rank_runs
    final = load_model(run / "checkpoints" / "3")  # what rank 0 saved at the last step
    changed = 0
    saved = final.state_dict()
    for key, value in states[0].items():
        np.testing.assert_array_equal(states[1][key], value, err_msg=key)
        np.testing.assert_array_equal(saved[key].numpy(), value, err_msg=key)
        changed += 1
    assert changed > 100


def test_two_rank_fsdp_trains_like_ddp_and_saves_full_weights(two_rank_runs: tuple[Path, Path, dict]) -> None:
    ddp_dir, fsdp_dir, _ = two_rank_runs
    for name in ("model.safetensors", "ema.safetensors"):  # the EMA copy is sharded, averaged and gathered too
        expected = safetensors.torch.load_file(str(ddp_dir / "checkpoints" / "3" / name))
        written = safetensors.torch.load_file(str(fsdp_dir / "checkpoints" / "3" / name))
        assert written.keys() == expected.keys(), name
        for key, value in expected.items():
            torch.testing.assert_close(written[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    ddp = safetensors.torch.load_file(str(ddp_dir / "checkpoints" / "3" / "model.safetensors"))
    sharded = load_model(fsdp_dir / "checkpoints" / "3").state_dict()  # a full, plain model
    written = safetensors.torch.load_file(str(fsdp_dir / "checkpoints" / "3" / "model.safetensors"))
    for key, value in ddp.items():  # same data, same math; only the order of the reductions differs
        torch.testing.assert_close(sharded[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert written.keys() == ddp.keys()  # every tensor in full, under its plain name
    optimizer = torch.load(fsdp_dir / "checkpoints" / "3" / "optimizer.pt", weights_only=False)
    assert "graph_encoder.node_proj.weight" in optimizer["state"]  # unsharded AdamW state, keyed by name
    records = [json.loads(line) for line in (fsdp_dir / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    ddp_val = {
        r["step"]: r["val_loss"]
        for r in map(json.loads, (ddp_dir / "metrics.jsonl").read_text().splitlines())
        if "val_loss" in r
    }
    assert val.keys() == ddp_val.keys() == {2, 3}
    np.testing.assert_allclose(list(val.values()), list(ddp_val.values()), rtol=1e-4)


def test_two_rank_fsdp_with_lora_and_ema_trains_and_resumes_like_ddp(prepared: Path, tmp_path: Path) -> None:
    extra = (*EMA, *LORA)  # adapters load before sharding on resume, as without FSDP (test_lora_resume_is_exact)
    run_two_ranks(
        prepared,
        Job(tmp_path / "ddp", "ddp", extra=extra),
        Job(tmp_path / "fsdp", "fsdp", steps=2, extra=extra),
        Job(tmp_path / "fsdp", "fsdp", extra=extra),  # resumes model, EMA, optimizer, data at 2
    )
    records = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 3]  # logged at each run's last step
    ddp, fsdp = (tmp_path / name / "checkpoints" / "3" for name in ("ddp", "fsdp"))
    for name in ("model.safetensors", "ema.safetensors", "lora.safetensors"):
        expected = safetensors.torch.load_file(str(ddp / name))
        written = safetensors.torch.load_file(str(fsdp / name))
        assert written.keys() == expected.keys(), name  # full tensors under the names a DDP checkpoint has
        for key, value in expected.items():
            torch.testing.assert_close(written[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    merged = safetensors.torch.load_file(str(fsdp / "model.safetensors"))
    adapters = safetensors.torch.load_file(str(fsdp / "lora.safetensors"))
    key = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj"
    assert not any(".lora_" in k for k in merged)
    assert f"{key}.lora_B.default.weight" in adapters
    ema_adapter = adapters[f"ema.{key}.lora_B.default.weight"]
    assert ema_adapter.abs().sum() > 0
    assert not torch.equal(ema_adapter, adapters[f"{key}.lora_B.default.weight"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stepz=3"], "unknown key train.stepz; train has"),
        (["train.steps=ten"], "train.steps: expected int, got 'ten'"),
        (["train.precision=fp16"], "train.precision: must be one of ['fp32', 'bf16-mixed', 'bf16'], got 'fp16'"),
        (["data.path=/nonexistent"], "data.path: '/nonexistent' is not a prepared dataset (no meta.json there)"),
        (["model.overrides.fusion=tokens"], "model: fusion must be one of"),
        (["train.ema_decay=1.5"], "train.ema_decay: must be in (0, 1), got 1.5"),
        (["train.freeze=[expert]", "lora.expert_rank=4"], "train.freeze: 'expert' would freeze the adapters of lora."),
        (["train.strategy=zero"], "train.strategy: must be one of ['ddp', 'fsdp'], got 'zero'"),
        (["train.init_from=/nowhere"], "train.init_from: no model.safetensors in /nowhere"),
        (["data.action_padding=zero"], "data.action_padding: must be one of ['hold', 'mask'], got 'zero'"),
        (["data.tokenizer=/nowhere/t.model"], "data.tokenizer: no sentencepiece model at /nowhere/t.model"),
        (["train.keep_last=0"], "train.keep_last: must be >= 1, got 0"),
        (["data.batch_size=0"], "data.batch_size: must be >= 1, got 0"),
        (["lora.expert_rank=-1"], "lora.expert_rank: must be >= 0 (0 = no LoRA), got -1"),
        (["optim.anchor_decay=1"], "optim.anchor_decay: pulls towards the weights of train.init_from, which is not"),
        (["optim.anchor_decay=-1"], "optim.anchor_decay: must be in [0, 1 / optim.lr]"),
        (["optim.anchor_decay=1e9"], "of the way back, at most all of it), got 1000000000.0"),
    ],
)
def test_config_errors_before_any_work(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str
) -> None:
    args = ["train", "--config", str(CONFIG), f"data.path={prepared}", f"train.out_dir={tmp_path / 'run'}"]
    assert main([*args, *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_dataset_of_another_format_is_refused_by_training_and_by_the_reader(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"format": 2}))
    expected = f"{old / 'meta.json'}: format 2, this softarm reads {FORMAT_VERSION} (convert the raw episodes again)"
    with pytest.raises(ConfigError, match=re.escape(f"data.path: {expected}")):
        load_config(CONFIG, [f"data.path={old}"]).validate()
    with pytest.raises(ValueError, match=re.escape(expected)):
        PreparedDataset(old)


@pytest.mark.parametrize("pi05", [False, True])
def test_freezing_the_action_expert_or_the_arms_way_in_leaves_the_rest_training(pi05: bool) -> None:
    model = PI0GraphPytorch(preset("tiny", pi05=pi05, fusion="prefix" if pi05 else "state"))
    freeze(model, ())
    unused = {name for name, p in model.named_parameters() if not p.requires_grad}  # never in the loss
    freeze(model, ("expert",))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad} - unused
    assert all(name.startswith(("paligemma_with_expert.gemma_expert.", "action_", "time_mlp_")) for name in frozen)
    assert not any(name.startswith("paligemma_with_expert.gemma_expert.") for name in trained)
    assert "action_out_proj.weight" in frozen
    assert "action_in_proj.weight" in frozen
    assert ("time_mlp_in.weight" if pi05 else "action_time_mlp_in.weight") in frozen
    # what reads the images, the prompt and the graph still learns
    assert any(name.startswith("paligemma_with_expert.paligemma.") for name in trained)
    assert any(name.startswith("graph_") for name in trained)
    assert pi05 or "state_proj.weight" in trained
    freeze(model, ("vision", "vlm", "expert"))
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        name for name in trained if not name.startswith("paligemma_with_expert.paligemma.")
    }
    # the arm's way in alone: the graph encoder, its fusion layers and the state projection
    model = PI0GraphPytorch(preset("tiny", pi05=pi05, fusion="prefix" if pi05 else "state"))
    freeze(model, ("state",))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad} - unused
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith(("graph_", "state_proj."))}
    assert any(name.startswith("graph_encoder.") for name in frozen)
    assert pi05 or {"state_proj.weight", "graph_state_gate"} <= frozen
    assert pi05 == any(name.startswith("graph_prefix_proj.") for name in frozen)


def test_yaml_floats_and_lists() -> None:
    cfg = load_config(CONFIG, ["optim.lr=3e-4", "train.freeze=[vision]", "optim.betas=[0.9, 0.99]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.freeze == ("vision",)
    assert cfg.optim.betas == (0.9, 0.99)
    with pytest.raises(ConfigError, match=r"optim.betas: expected 2 values, got \[0.9\]"):
        load_config(CONFIG, ["optim.betas=[0.9]"])


def test_init_from_official_base_weights(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from softarm.model import build_base_model
    from softarm.model_config import preset

    base_dir = tmp_path / "pi0_base"
    base_dir.mkdir()
    torch.manual_seed(5)
    safetensors.torch.save_model(build_base_model(preset("tiny")), str(base_dir / "model.safetensors"))
    base = safetensors.torch.load_file(str(base_dir / "model.safetensors"))
    result = train(config(prepared, tmp_path / "run", f"train.init_from={base_dir}", "train.steps=1",
                          "optim.lr=1e-12", "optim.end_lr=1e-12", "train.val_every=100"))  # fmt: skip
    assert "freshly initialised" in capsys.readouterr().out
    state = result.model.state_dict()
    for key, value in base.items():  # one step at lr 1e-12 leaves the base weights where they were loaded
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-9, msg=key)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_bf16_precisions_train(prepared: Path, tmp_path: Path, precision: str) -> None:
    result = train(config(prepared, tmp_path / "run", f"train.precision={precision}", "train.steps=2",
                          "train.val_every=2", "train.save_every=2"))  # fmt: skip
    assert np.isfinite(result.metrics["loss"])
    assert np.isfinite(result.metrics["val_loss"])
    dtype = result.model.paligemma_with_expert.paligemma.model.language_model.layers[0].mlp.up_proj.weight.dtype
    assert dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert load_model(tmp_path / "run" / "checkpoints" / "2").config.dtype == (
        "bfloat16" if precision == "bf16" else "float32"
    )


def test_compiled_training_matches_eager(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile: the step runs a torch.compile'd model, forward and backward captured by dynamo and AOT autograd,
    and learns what eager learns; the checkpoint holds the plain parameter names. The graphs run on the aot_eager
    backend: inductor's code generation of a training step takes minutes on 2 cores (the compiled sampling test in
    test_policy.py runs inductor)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **{**kw, "backend": "aot_eager"}))
    common = ("train.steps=2", "train.save_every=2", "train.val_every=100", "train.ema_decay=null")
    eager = train(config(prepared, tmp_path / "eager", *common))
    compiled = train(config(prepared, tmp_path / "compiled", *common, "train.compile=true"))
    assert compiled.metrics["loss"] == pytest.approx(eager.metrics["loss"], abs=1e-4)
    for (name, a), (_, b) in zip(eager.model.named_parameters(), compiled.model.named_parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=name)
    saved = safetensors.torch.load_file(str(tmp_path / "compiled" / "checkpoints" / "2" / "model.safetensors"))
    assert not any("_orig_mod" in key for key in saved)


def test_a_softarm_base_brings_its_tokenizer_and_on_request_its_norm_stats(prepared: Path, tmp_path: Path) -> None:
    """Fine-tuning keeps the base's token ids (its tokenizer.model); data.norm_stats normalises with the base's
    statistics instead of the dataset's, and the checkpoint carries what was used."""
    from softarm.data.raw import write_episode
    from tests.conftest import make_episode

    train(config(prepared, tmp_path / "base", "train.steps=1", "train.val_every=100"))
    base = tmp_path / "base" / "checkpoints" / "1"
    for seed in range(3):  # the same arm, another task
        episode = make_episode(length=30, seed=10 + seed)
        episode.prompt = "follow the blue ball"
        write_episode(tmp_path / "raw" / f"f{seed}.h5", episode)
    convert(tmp_path / "raw", tmp_path / "other", ConvertOptions(val_episodes=1))
    common = ("train.steps=1", "train.val_every=100", f"train.init_from={base}")
    train(config(tmp_path / "other", tmp_path / "own", *common))
    train(config(tmp_path / "other", tmp_path / "kept", *common, f"data.norm_stats={base}"))
    stats = Path("assets", "softarm", "norm_stats.json")
    for run, norm_stats in (("own", tmp_path / "other" / "norm_stats.json"), ("kept", base / stats)):
        checkpoint = tmp_path / run / "checkpoints" / "1"
        assert (checkpoint / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()
        assert (checkpoint / stats).read_text() == norm_stats.read_text()
    assert (tmp_path / "other" / "norm_stats.json").read_text() != (base / stats).read_text()
    assert (tmp_path / "other" / "tokenizer.model").read_bytes() != (base / "tokenizer.model").read_bytes()
    with pytest.raises(ConfigError, match=r"data.norm_stats: no norm_stats.json at /nowhere"):
        config(tmp_path / "other", tmp_path / "x", "data.norm_stats=/nowhere").validate()
