"""What a lab meets in its first week of training: a NaN batch, a full disk, a preempted job."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch

from softarm.data.convert import ConvertOptions, convert
from softarm.train import checkpoint as ckpt
from softarm.train import loop
from softarm.train.config import load_config
from softarm.train.loop import NonFiniteTraining, train
from tests.conftest import DEBUG_CONFIG, raw_dir

COMMON = ("train.val_every=1000", "train.log_every=1", "data.batch_size=4", "train.tensorboard=false")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("safety")
    convert(raw_dir(tmp, lengths=(30, 25, 20)), tmp / "prep", ConvertOptions(val_episodes=1))
    return tmp / "prep"


def config(prepared: Path, out: Path, *overrides: str):
    return load_config(DEBUG_CONFIG, [f"data.path={prepared}", f"train.out_dir={out}", *COMMON, *overrides])


def poison(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """NaN in the actions of the batches of these (1-based) steps, as a corrupt sample would bring."""
    calls = {"n": 0}
    original = loop.to_device

    def to_device(raw, device):
        calls["n"] += 1
        batch = original(raw, device)
        if calls["n"] in steps:
            batch.actions[0, 0, 0] = float("nan")
        return batch

    monkeypatch.setattr(loop, "to_device", to_device)


def saved(run: Path, step: int) -> dict[str, torch.Tensor]:
    directory = run / "checkpoints" / str(step)
    tensors = {f"model.{k}": v for k, v in safetensors.torch.load_file(directory / "model.safetensors").items()}
    tensors |= {f"ema.{k}": v for k, v in safetensors.torch.load_file(directory / "ema.safetensors").items()}
    optimizer = torch.load(directory / "optimizer.pt", weights_only=False)["state"]
    return tensors | {f"adam.{name}.{k}": v for name, s in optimizer.items() for k, v in s.items()}


def test_a_nan_batch_skips_its_update(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    train(config(prepared, tmp_path / "clean", "train.steps=2", "train.save_every=2"))
    poison(monkeypatch, {3})
    result = train(config(prepared, tmp_path / "poisoned", "train.steps=3", "train.save_every=1"))
    err = capsys.readouterr().err
    assert "rank 0 step 3: non-finite loss nan or gradient norm nan; update skipped (batch from ep_0" in err
    clean, poisoned = saved(tmp_path / "clean", 2), saved(tmp_path / "poisoned", 3)
    assert clean.keys() == poisoned.keys()
    for name, value in clean.items():  # weights, EMA and AdamW moments exactly as after step 2
        assert torch.equal(value, poisoned[name]), name
    assert result.metrics["step"] == 3


def test_too_many_bad_steps_in_a_row_stop_training(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, {2, 3, 4, 5})
    message = r"3 steps in a row up to step 4 had a non-finite loss or gradient norm \(train.max_bad_steps=3\); their"
    with pytest.raises(NonFiniteTraining, match=message + " batches came from ep_0"):
        train(config(prepared, tmp_path / "run", "train.steps=8", "train.save_every=1", "train.max_bad_steps=3"))
    run = tmp_path / "run"
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["2", "3"]  # keep_last 2; every one finite
    assert all(torch.isfinite(v).all() for v in saved(run, 3).values() if v.is_floating_point())


def test_a_nan_weight_is_never_saved(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = loop.train_step

    def corrupting_step(run, state, batches):
        values = original(run, state, batches)
        if state.step == 2:
            with torch.no_grad():
                next(state.model.parameters()).view(-1)[0] = float("inf")
        return values

    monkeypatch.setattr(loop, "train_step", corrupting_step)
    with pytest.raises(ckpt.CheckpointError, match=r"not writing checkpoint 2: 1 tensors hold NaN or Inf, e.g. "):
        train(config(prepared, tmp_path / "run", "train.steps=3", "train.save_every=1"))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["1"]


def test_a_failed_checkpoint_write_keeps_the_previous_one(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error, text = errno.ENOSPC, "No space left on device"  # any OSError takes this path (EACCES too)
    run = tmp_path / "run"
    train(config(prepared, run, "train.steps=2", "train.save_every=2"))
    before = saved(run, 2)
    original = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if "tmp_4" in str(path):
            Path(path).write_bytes(b"half")  # what a full disk leaves behind
            raise OSError(error, os.strerror(error), str(path))
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(ckpt.CheckpointError, match=rf"could not write checkpoint 4 in .*{text}.*nothing of it was "
                                                   r"kept, checkpoint 2 is intact"):  # fmt: skip
        train(config(prepared, run, "train.steps=4", "train.save_every=2"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]  # no tmp_4 for anyone to pick up
    after = saved(run, 2)
    assert after.keys() == before.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    monkeypatch.setattr(ckpt.torch, "save", original)
    assert train(config(prepared, run, "train.steps=4", "train.save_every=2")).metrics["step"] == 4  # resumes


def test_sigterm_saves_and_the_same_command_resumes_exactly(prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [f"data.path={prepared}", f"train.out_dir={run}", *COMMON, "train.steps=12", "train.save_every=1000"]
    command = [sys.executable, "-m", "softarm.cli", "train", "--config", str(DEBUG_CONFIG), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 75, err
    assert "SIGTERM: stopping after this step" in err
    assert "run the same command to resume (exit code 75)" in out
    stopped = [p.name for p in ckpt.list_checkpoints(run)]
    assert len(stopped) == 1
    assert 2 <= int(stopped[0]) < 12

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"resumed from {run / 'checkpoints' / stopped[0]} at step {stopped[0]}" in finished.stdout
    # that the resumed run ends where an uninterrupted one does: test_resume_is_exact (in process) and
    # tests/test_torchrun.py (a signalled job against an uninterrupted one)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] == 12


def test_sigterm_to_the_whole_process_group_still_saves(prepared: Path, tmp_path: Path) -> None:
    """SLURM's preemption signals every process of the job, data-loader workers included: they must outlive the
    step so that the main process can save, and end with it."""
    run = tmp_path / "run"
    args = [f"data.path={prepared}", f"train.out_dir={run}", *COMMON, "train.steps=400", "train.save_every=1000",
            "data.num_workers=1"]  # fmt: skip
    command = [sys.executable, "-m", "softarm.cli", "train", "--config", str(DEBUG_CONFIG), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # hung: leave no process of the group behind
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 75, err
    assert "DataLoader worker" not in err
    assert "run the same command to resume (exit code 75)" in out
    assert len(ckpt.list_checkpoints(run)) == 1
