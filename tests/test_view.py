"""`softarm view`: an episode of any source as a Rerun recording that Rerun's own reader reads back, or a PNG."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
import pytest
import rerun.dataframe as rdf
import yaml

from softarm.apps.view import view
from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert
from softarm.data.raw import write_episode
from tests.conftest import make_episode
from tests.rosbag_rig import topic_map, write_rig_bag
from tests.test_rosbag import truth


def logged_steps(rrd: Path, entity: str) -> int:
    """At how many steps `entity` holds data in the .rrd, by Rerun's dataframe reader."""
    table = rdf.load_recording(str(rrd)).view(index="step", contents=entity).select().read_all()
    columns = [c for c in table.column_names if c.startswith(f"{entity}:")]
    assert columns, f"{entity} not in {table.column_names}"
    return max(table.num_rows - table[c].null_count for c in columns)


def test_a_raw_episode_as_a_rerun_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, length in enumerate((5, 9)):
        write_episode(tmp_path / "raw" / f"ep_{seed}.h5", make_episode(length=length, seed=seed))
    out = tmp_path / "ep.rrd"
    assert main(["view", str(tmp_path / "raw"), "--episode", "1", "--out", str(out), "--color-by", "kappa_x"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    recording = rdf.load_recording(str(out))
    assert recording.application_id() == "softarm"
    entities = ("/camera/base", "/camera/tip", "/arm/nodes", "/arm/edges", "/action/0", "/action/9", "/state/3")
    counts = {entity: logged_steps(out, entity) for entity in entities}
    assert counts == dict.fromkeys(counts, 9)  # every stream at every one of episode 1's 9 steps
    table = recording.view(index="step", contents="/arm/nodes").select().read_all()
    positions = table.column("/arm/nodes:Position3D")[0].as_py()
    assert len(positions) == 10  # one point per node
    assert main(["view", str(tmp_path / "raw"), "--episode", "2"]) == 2
    assert "softarm view: error: --episode 2: " in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--color-by 'pressure': the graph's features are \['pos_x'"):
        view(tmp_path / "raw", out=tmp_path / "x.rrd", color_by="pressure")


def test_png_overviews_of_a_bag_and_a_prepared_dataset(tmp_path: Path) -> None:
    write_rig_bag(tmp_path / "bags" / "ep0", truth(0))
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(topic_map("reach the red ball")))
    assert main(["view", str(tmp_path / "bags"), "--topics", str(tmp_path / "topics.yaml"), "--png", "--out",
                 str(tmp_path / "bag.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "bag.png").size[0] > 800
    episode = make_episode(length=7, seed=4, state_dim=None)
    write_episode(tmp_path / "raw" / "ep.h5", episode)
    convert(tmp_path / "raw", tmp_path / "prep", ConvertOptions(val_episodes=0))
    from softarm.apps.view import load_episode, write_png

    titles = write_png(load_episode(tmp_path / "prep"), tmp_path / "prep.png")
    assert titles == [*(f"{slot}, step {t} ({t / 10:.1f} s)" for slot in ("base_0_rgb", "left_wrist_0_rgb")
                        for t in (0, 3, 6)),
                      "node paths (x-z); arm at start (dotted) and end, its nodes by actuator_state", "commands",
                      "state: none recorded"]  # fmt: skip
    assert (tmp_path / "prep.png").stat().st_size > 10_000
