"""EpisodeRecorder: a rig's loop writes an episode step by step; bad frames are named at once; a recorder killed
mid-episode leaves an incomplete file that convert reports, and every closed episode intact."""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from softarm.data.convert import ConvertOptions, convert
from softarm.data.raw import read_episode
from softarm.data.recorder import EpisodeRecorder
from tests.conftest import make_episode

FEATURES = ("pos_x", "pos_y", "pos_z", "kappa_x", "kappa_y")


def record(path: Path, seed: int, length: int = 6, **options) -> None:
    episode = make_episode(length=length, seed=seed, features=len(FEATURES))
    with EpisodeRecorder(path, fps=15.0, prompt="reach the red ball", node_features=FEATURES,
                         edges=episode.edges, **options) as recorder:  # fmt: skip
        for t in range(length):
            recorder.add(images={c: f[t] for c, f in episode.images.items()}, graph_nodes=episode.graph_nodes[t],
                         action=episode.actions[t], state=episode.state[t])  # fmt: skip


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_a_recorded_episode_reads_back_as_written(tmp_path: Path, compression: str | None) -> None:
    record(tmp_path / "ep.h5", seed=3, compression=compression)
    got, want = read_episode(tmp_path / "ep.h5"), make_episode(length=6, seed=3, features=len(FEATURES))
    assert (got.prompt, got.fps, got.node_features, got.length) == ("reach the red ball", 15.0, FEATURES, 6)
    for camera, frames in want.images.items():
        np.testing.assert_array_equal(got.images[camera], frames)
    for name in ("graph_nodes", "actions", "state", "edges"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_bad_frames_are_named_by_key_and_step(tmp_path: Path) -> None:
    episode = make_episode(length=3, seed=0)
    frame = {"images": {c: f[0] for c, f in episode.images.items()}, "graph_nodes": episode.graph_nodes[0],
             "action": episode.actions[0], "state": episode.state[0]}  # fmt: skip
    recorder = EpisodeRecorder(tmp_path / "ep.h5", fps=10, prompt="reach")
    with pytest.raises(ValueError, match=r"ep.h5: step 0: action: expected numbers, got dtype <U1"):
        recorder.add(**{**frame, "action": np.array(["a"])})
    recorder.add(**frame)
    nan = episode.graph_nodes[1].copy()
    nan[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"ep.h5: step 1: observations/graph/nodes: NaN or Inf at index \[4, 2\]"):
        recorder.add(**{**frame, "graph_nodes": nan})
    with pytest.raises(ValueError, match=r"step 1: action: shape \[9\], the first step's was \[10\]"):
        recorder.add(**{**frame, "action": episode.actions[1][:9]})
    grey = {**frame["images"], "tip": frame["images"]["tip"][..., 0]}
    with pytest.raises(ValueError, match=r"step 1: observations/images/tip: expected a uint8 \[H, W, 3\] image, got "
                                         r"uint8 \[32, 32\]"):  # fmt: skip
        recorder.add(**{**frame, "images": grey})
    with pytest.raises(ValueError, match=r"step 1: fields \[.*\], but the first step had \[.*observations/state"):
        recorder.add(**{**frame, "state": None})
    recorder.add(**frame)  # a rejected frame leaves nothing behind: the next good one is step 1
    assert recorder.close() == tmp_path / "ep.h5"
    assert read_episode(tmp_path / "ep.h5").length == 2
    with pytest.raises(FileExistsError, match=r"ep\.h5 exists"):
        EpisodeRecorder(tmp_path / "ep.h5", fps=10, prompt="reach")
    with pytest.raises(ValueError, match=r"empty.h5: no step was recorded"):
        EpisodeRecorder(tmp_path / "empty.h5", fps=10, prompt="reach").close()
    assert not (tmp_path / "empty.h5").exists()


def test_a_recorder_killed_mid_episode_leaves_an_incomplete_file_and_the_closed_ones(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from tests.test_recorder import record
        from tests.conftest import make_episode
        from softarm.data.recorder import EpisodeRecorder
        for seed in range(3):
            record(__import__("pathlib").Path({str(tmp_path)!r}) / f"ep_{{seed}}.h5", seed)
        episode = make_episode(length=40, seed=9)
        recorder = EpisodeRecorder({str(tmp_path / "ep_3.h5")!r}, fps=15, prompt="reach")
        for t in range(25):
            recorder.add(images={{c: f[t] for c, f in episode.images.items()}}, graph_nodes=episode.graph_nodes[t],
                         action=episode.actions[t], state=episode.state[t])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    converted = convert(tmp_path, tmp_path / "prep", ConvertOptions(val_episodes=0))
    assert converted.kept == ["ep_0.h5", "ep_1.h5", "ep_2.h5"]
    assert [(s["file"], s["key"]) for s in converted.skipped] == [("ep_3.h5", "attrs/complete")]
    assert "incomplete: the recording was never closed" in converted.skipped[0]["reason"]
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert report["skipped"][0]["file"] == "ep_3.h5"
    assert os.path.getsize(tmp_path / "ep_3.h5") > 0
