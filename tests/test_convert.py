"""raw -> prepared: values survive, bad episodes are reported while good ones convert, inputs stay untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert, convert_first
from softarm.data.prepared import PreparedDataset
from softarm.data.raw import write_episode
from tests.conftest import make_episode, raw_dir


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_values_round_trip_including_the_padded_chunk_at_the_episode_end(tmp_path: Path) -> None:
    raw = raw_dir(tmp_path)
    result = convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1, cameras={"base_0_rgb": "base"}))
    assert result.samples["train"] + result.samples["val"] == 48
    assert not result.skipped
    data = PreparedDataset(tmp_path / "prep", split="all")
    assert len(data) == 48
    episode = make_episode(length=7, seed=1)  # ep_001, frames 20..26
    sample = data[20 + 3]
    np.testing.assert_array_equal(sample.graph_nodes, episode.graph_nodes[3])
    np.testing.assert_array_equal(sample.state[:4], episode.state[3])
    assert not sample.state[4:].any()
    # frames 3..6 remain: 4 real steps, then the last action held for the 12 padded ones
    np.testing.assert_array_equal(sample.actions[:4], episode.actions[3:7])
    np.testing.assert_array_equal(sample.actions[4:], np.tile(episode.actions[6], (12, 1)))
    assert sample.action_is_pad.tolist() == [False] * 4 + [True] * 12
    assert sample.prompt == "reach the red ball"
    # base camera 48x64 resized with padding to 224x224: rows 28..195 hold the image, the rest is black
    image = sample.images["base_0_rgb"]
    assert image.shape == (224, 224, 3)
    assert image.dtype == np.uint8
    assert not image[:28].any()
    assert not image[196:].any()
    assert abs(float(image[28:196].mean()) - float(episode.images["base"][3].mean())) < 3
    assert data.meta["cameras"] == {"base_0_rgb": "base", "left_wrist_0_rgb": None, "right_wrist_0_rgb": None}
    assert not sample.images["left_wrist_0_rgb"].any()
    full = data[0]
    assert not full.action_is_pad.any()


def test_split_is_by_episode(tmp_path: Path) -> None:
    convert(raw_dir(tmp_path), tmp_path / "prep", ConvertOptions(val_episodes=2))
    train, val = PreparedDataset(tmp_path / "prep", "train"), PreparedDataset(tmp_path / "prep", "val")
    train_files = {ep["file"] for ep in train.episodes}
    val_files = {ep["file"] for ep in val.episodes}
    assert len(val_files) == 2
    assert not train_files & val_files
    assert len(train) + len(val) == 48


def test_convert_first_takes_the_first_episodes_whose_name_has_the_prefix(tmp_path: Path) -> None:
    raw = raw_dir(tmp_path, lengths=(9, 7, 8, 6))
    for i, path in enumerate(sorted(raw.iterdir())):  # two tasks' recordings in one directory, interleaved
        path.rename(raw / f"{('follow', 'reach')[i % 2]}_{i:03d}.h5")
    prepared = convert_first(raw, tmp_path / "reach_set", 1, ConvertOptions(val_episodes=1), prefix="reach_")
    files = {ep["file"] for split in ("train", "val") for ep in PreparedDataset(prepared, split).episodes}
    assert files == {"reach_001.h5", "reach_003.h5"}
    assert sorted(p.name for p in (tmp_path / "raw_reach_set").iterdir()) == ["reach_001.h5", "reach_003.h5"]
    assert sorted(p.name for p in raw.iterdir()) == ["follow_000.h5", "follow_002.h5", "reach_001.h5", "reach_003.h5"]
    first = convert_first(raw, tmp_path / "first", 1, ConvertOptions(val_episodes=0))  # no prefix: by name
    assert [ep["file"] for ep in PreparedDataset(first, "train").episodes] == ["follow_000.h5"]


def test_bad_episodes_are_reported_and_good_ones_convert(tmp_path: Path) -> None:
    raw = raw_dir(tmp_path)
    (raw / "ep_900.h5").write_bytes(b"garbage")
    with h5py.File(write_episode(raw / "ep_901.h5", make_episode(seed=9)), "a") as f:
        del f["action"]
    bad = make_episode(seed=10)
    bad.graph_nodes[2, 0, 0] = np.nan
    write_episode(raw / "ep_902.h5", bad)
    (raw / "notes.txt").write_text("not an episode")
    before = digests(raw)

    result = convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))

    assert result.kept == ["ep_000.h5", "ep_001.h5", "ep_002.h5", "ep_003.h5"]
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    reasons = {s["file"]: (s["key"], s["reason"]) for s in report["skipped"]}
    assert reasons["ep_900.h5"][0] == "<file>"
    assert reasons["ep_901.h5"] == ("action", "missing")
    assert reasons["ep_902.h5"][0] == "observations/graph/nodes"
    assert "NaN/Inf" in reasons["ep_902.h5"][1]
    assert report["samples"]["train"] + report["samples"]["val"] == 48
    assert digests(raw) == before


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path: Path) -> None:
    raw = raw_dir(tmp_path)
    out = tmp_path / "prep"
    convert(raw, out, ConvertOptions(val_episodes=1))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert(raw, out, ConvertOptions(val_episodes=1))
    (raw / "ep_003.h5").unlink()
    convert(raw, out, ConvertOptions(val_episodes=1, overwrite=True))
    assert len(PreparedDataset(out, "all")) == 39
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep", "raw"]  # no temporary leftovers


def test_a_crash_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import softarm.data.convert as convert_module

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert_module.image_tools, "resize_with_pad", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(raw_dir(tmp_path), tmp_path / "prep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_no_valid_episode_is_an_error(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"no valid episode among 1 episodes: a\.h5: <file>: not a readable HDF5"):
        convert(raw, tmp_path / "prep")
    with pytest.raises(FileNotFoundError, match="no episode files"):
        convert(tmp_path, tmp_path / "p2")


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = raw_dir(tmp_path)
    assert main(["convert", str(raw), str(tmp_path / "prep"), "--val-episodes", "1", "--camera", "base_0_rgb=tip"]) == 0
    out = capsys.readouterr().out
    assert "kept 4 episodes, skipped 0" in out
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["cameras"] == {"base_0_rgb": "tip", "left_wrist_0_rgb": None, "right_wrist_0_rgb": None}


def test_several_sources_convert_into_one_dataset_named_by_source(tmp_path: Path) -> None:
    first, second = tmp_path / "monday", tmp_path / "tuesday"
    write_episode(first / "ep_000.h5", make_episode(length=9, seed=0))
    write_episode(second / "ep_000.h5", make_episode(length=6, seed=1))  # the same file name in another directory
    bad = make_episode(length=5, seed=2)
    bad.graph_nodes[2, 3, 0] = np.nan
    write_episode(second / "ep_001.h5", bad)
    assert main(["convert", str(first), str(second), str(tmp_path / "prep"), "--val-episodes", "0"]) == 0
    data = PreparedDataset(tmp_path / "prep", split="all")
    episodes = [(ep["source"], ep["file"], ep["length"]) for ep in data.episodes]
    assert episodes == [(str(first), "ep_000.h5", 9), (str(second), "ep_000.h5", 6)]
    np.testing.assert_array_equal(data[9 + 2].graph_nodes, make_episode(length=6, seed=1).graph_nodes[2])
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert report["kept"] == [f"{first}: ep_000.h5", f"{second}: ep_000.h5"]
    assert [(s["source"], s["file"]) for s in report["skipped"]] == [(str(second), "ep_001.h5")]
    with pytest.raises(FileNotFoundError, match=r"raw episode directory .*nowhere does not exist"):
        convert([first, tmp_path / "nowhere"], tmp_path / "other")
