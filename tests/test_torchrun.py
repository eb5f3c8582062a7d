"""Training under torchrun with 2 gloo ranks, as `scripts/run_training.sh multi` starts it: a preemption notice to
the whole job, and a rank killed mid-run that torchrun restarts; both end where an uninterrupted run ends."""

from __future__ import annotations

from collections.abc import Callable
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from softarm.data.convert import ConvertOptions, convert
from softarm.train import checkpoint as ckpt
from tests.conftest import DEBUG_CONFIG, raw_dir
from tests.test_train_safety import saved

STEPS = 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("torchrun")
    convert(raw_dir(tmp, lengths=(30, 25, 20)), tmp / "prep", ConvertOptions(val_episodes=1))
    return tmp / "prep"


def torchrun(prepared: Path, run: Path, max_restarts: int = 0) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [f"data.path={prepared}", f"train.out_dir={run}", f"train.steps={STEPS}", "train.save_every=2",
                 "train.val_every=1000", "train.log_every=1", "data.batch_size=4", "train.tensorboard=false",
                 "train.dist_timeout_s=120"]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
            "--master-addr=127.0.0.1", f"--master-port={port}", f"--max-restarts={max_restarts}",
            "-m", "softarm.cli", "train", "--config", str(DEBUG_CONFIG), *overrides]  # fmt: skip


class Job:
    """A torchrun job writing to files, not pipes: a job that prints much never blocks while the test polls it."""

    def __init__(self, command: list[str], logs: Path) -> None:
        self.out, self.err = logs.with_suffix(".out"), logs.with_suffix(".err")
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, start_new_session=True)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
        """Poll until `condition` holds; a job that ended first fails at once with what it printed."""
        deadline = time.monotonic() + timeout
        while not condition():
            ended = self.proc.poll() is not None and not condition()
            if ended or time.monotonic() > deadline:
                self.kill()
                out, err = self.output()
                why = f"the job ended (exit {self.proc.returncode})" if ended else f"{timeout:.0f} s passed"
                pytest.fail(f"{why} before {what}:\n{out[-2000:]}\n{err[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait for the job (killed if it outlives `timeout`); its stdout and stderr."""
        try:
            self.proc.wait(timeout)
        finally:
            self.kill()
        return self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> tuple[str, str]:
        return self.out.read_text(), self.err.read_text()


def workers(agent: int) -> list[int]:
    """The agent's child processes: the ranks torchrun runs."""
    children = Path(f"/proc/{agent}/task/{agent}/children")
    return [int(pid) for pid in children.read_text().split()] if children.is_file() else []


def test_a_preempted_job_and_a_killed_rank_both_resume_to_where_an_uninterrupted_run_ends(
    prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    # 1. a preemption notice to the whole job (agent and ranks): every rank stops after the same step, one checkpoint
    job = Job(torchrun(prepared, run), tmp_path / "preempted")
    metrics = run / "metrics.jsonl"
    job.wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 1, "the first step")
    os.killpg(job.proc.pid, signal.SIGTERM)
    out, err = job.finish(120)
    assert err.count("SIGTERM: stopping after this step") >= 2, err[-3000:]  # both ranks were told
    stopped = [int(p.name) for p in ckpt.list_checkpoints(run)]
    assert len(stopped) == 1, (stopped, out[-2000:])
    assert 1 <= stopped[0] < STEPS
    assert out.count(f"checkpoint of step {stopped[0]} written") == 1  # rank 0 writes it; the ranks agreed on it

    # 2. the same command resumes; a rank killed after the next checkpoint is restarted by torchrun, and the group
    # resumes from that checkpoint
    job = Job(torchrun(prepared, run, max_restarts=1), tmp_path / "resumed")
    try:
        after = stopped[0] + 2 - stopped[0] % 2
        job.wait_for(lambda: (run / "checkpoints" / str(after)).is_dir(), f"checkpoint {after}")
        job.wait_for(lambda: len(workers(job.proc.pid)) == 2, "the ranks")
        os.kill(workers(job.proc.pid)[-1], signal.SIGKILL)
        out, err = job.finish(300)
    finally:
        job.kill()  # whatever failed above, no rank outlives the test
    assert job.proc.returncode == 0, err[-3000:]
    assert f"resumed from {run / 'checkpoints' / str(stopped[0])} at step {stopped[0]}" in out
    assert "exitcode: -9" in err  # the kill happened, and torchrun restarted the group
    resumes = [line for line in out.splitlines() if line.startswith("resumed from")]
    assert len(resumes) == 2, resumes
    assert int(resumes[-1].split()[-1]) >= after

    straight = tmp_path / "straight"
    finished = subprocess.run(torchrun(prepared, straight), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    resumed, uninterrupted = saved(run, STEPS), saved(straight, STEPS)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(v, uninterrupted[k]) for k, v in resumed.items())  # every rank's RNG streams restored
