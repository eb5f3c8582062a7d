"""The full-size π0 and π0.5 end to end on a CPU: `softarm train` (2 steps at batch 1) -> checkpoint -> `softarm
serve` -> one request through openpi-client, per configuration:

- `pi0-lora`, `pi05-lora`: bf16 weights, LoRA rank 16 on the VLM and 32 on the action expert (openpi's recipe);
- `pi0-frozen`, `pi05-frozen`: bf16-mixed (fp32 master weights), the vision tower and the VLM frozen
  (`train.freeze=[vision, vlm]`): a memory-lean full fine-tune of the action expert and the graph encoder.

Random weights of the real shapes (3.5 B parameters, SigLIP So400m/14, 3 cameras at 224x224): nothing is
downloaded; configs/soft_arm.yaml otherwise (gradient checkpointing, EMA 0.999). Each party is its own process, as in
deployment. It prints, per configuration, seconds per training step (the second step), the training process's peak
resident memory, the checkpoint's files, the server's start-up and the request's latency. Minutes per configuration
and about 20 GB of memory; `--smoke` runs the same pipeline on the tiny preset in seconds.

    .venv/bin/python benchmarks/full_size_cpu.py                       # all four
    .venv/bin/python benchmarks/full_size_cpu.py --configs pi0-lora
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from softarm.data.convert import ConvertOptions, convert  # numpy, h5py and sentencepiece: no torch
from softarm.data.raw import RawEpisode, write_episode

ROOT = Path(__file__).parents[1]
SOFTARM = [sys.executable, "-m", "softarm.cli"]
LORA = ["train.precision=bf16", "lora.rank=16", "lora.expert_rank=32"]
FROZEN = ["train.precision=bf16-mixed", "train.freeze=[vision, vlm]"]
CONFIGS = {
    "pi0-lora": ["model.preset=pi0", *LORA],
    "pi05-lora": ["model.preset=pi05", "model.overrides.fusion=suffix", *LORA],
    "pi0-frozen": ["model.preset=pi0", *FROZEN],
    "pi05-frozen": ["model.preset=pi05", "model.overrides.fusion=suffix", *FROZEN],
}
CAMERAS = ("base", "tip", "side")


def episode(length: int, seed: int) -> RawEpisode:
    """A random episode of a 10-segment arm with three cameras (the served shapes) and no state vector."""
    rng = np.random.default_rng(seed)
    return RawEpisode(
        path=Path("unused"), images={c: rng.integers(0, 256, (length, 224, 224, 3), dtype=np.uint8) for c in CAMERAS},
        graph_nodes=rng.normal(size=(length, 10, 19)).astype(np.float32),
        actions=rng.uniform(-1, 1, (length, 10)).astype(np.float32), prompt="reach the red ball", fps=10.0,
    )  # fmt: skip


def request() -> dict:
    ep = episode(2, 99)
    return {"images": {c: ep.images[c][0] for c in CAMERAS}, "graph_nodes": ep.graph_nodes[0], "prompt": ep.prompt}


def dataset(root: Path) -> Path:
    for i in range(3):
        write_episode(root / "raw" / f"ep_{i}.h5", episode(8, i))
    cameras = {"base_0_rgb": "base", "left_wrist_0_rgb": "tip", "right_wrist_0_rgb": "side"}
    convert(root / "raw", root / "prep", ConvertOptions(val_episodes=1, cameras=cameras))
    return root / "prep"


def train(prepared: Path, run: Path, overrides: list[str]) -> tuple[float, float]:
    """Two steps of `softarm train`; returns (seconds of the second step, peak RSS in GB of the process)."""
    cmd = [*SOFTARM, "train", "--config", "configs/soft_arm.yaml", f"data.path={prepared}",
           f"data.tokenizer={prepared / 'tokenizer.model'}", f"train.out_dir={run}", "data.batch_size=1",
           "data.num_workers=0", "train.steps=2", "train.save_every=2", "train.val_every=100", "train.log_every=1",
           "train.tensorboard=false", *overrides]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest of all children so far
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"softarm train failed: {proc.stderr.read().decode()[-3000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    second = next(r for r in records if r.get("step") == 2)
    return 1.0 / second["samples_per_s"], usage.ru_maxrss / 1e6  # batch 1; ru_maxrss is in KB on Linux


def serve(checkpoint: Path) -> tuple[float, float, tuple[int, int]]:
    """Start `softarm serve`, send one request; returns (start-up s, latency s, action chunk shape)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    cmd = [*SOFTARM, "serve", "--checkpoint", str(checkpoint), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(6000):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError("softarm serve exited before it answered") from None
                time.sleep(0.1)
        ready = time.perf_counter() - start
        client = WebsocketClientPolicy("127.0.0.1", port)
        sent = time.perf_counter()
        actions = np.asarray(client.infer(request())["actions"])
        latency = time.perf_counter() - sent
        if not np.isfinite(actions).all():
            raise RuntimeError("the served chunk is not finite")
        return ready, latency, actions.shape
    finally:
        server.terminate()
        server.wait(timeout=60)


def sizes(checkpoint: Path) -> str:
    files = sorted(p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".pt"))
    shown = lambda n: f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"  # noqa: E731
    return ", ".join(f"{p.name} {shown(p.stat().st_size)}" for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--smoke", action="store_true", help="the tiny preset, seconds: checks that the script runs")
    args = parser.parse_args()
    assert "torch" not in sys.modules, "this side is the robot's: torch runs in the trainer and the server only"
    configs = {name: CONFIGS[name] for name in args.configs}
    if args.smoke:  # the same pipeline on the tiny preset (fp32: the pieces a CPU test can check)
        configs = {"tiny-lora": ["model.preset=tiny", "lora.rank=4", "lora.expert_rank=4", "train.ema_decay=0.99",
                                 "train.gradient_checkpointing=false"]}  # fmt: skip
    print("| configuration | s/step | peak RSS | checkpoint | server start | request latency | chunk |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = dataset(Path(tmp))
        for name, overrides in configs.items():
            run = Path(tmp) / name
            step, rss = train(prepared, run, overrides)
            checkpoint = run / "checkpoints" / "2"
            ready, latency, shape = serve(checkpoint)
            print(f"| {name} | {step:.1f} s | {rss:.1f} GB | {sizes(checkpoint)} | {ready:.0f} s | {latency:.2f} s | "
                  f"{list(shape)} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
