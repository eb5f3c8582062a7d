import json
from pathlib import Path

import pytest

from softarm.cli import main


def test_info_prints_schema_and_preset_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "tiny", "--fusion", "prefix"]) == 0
    out = capsys.readouterr().out
    assert "Soft arm: 10 nodes x 19 features, 10-D action" in out
    assert " 18  contact_force   N" in out
    assert "Preset 'tiny' (pi0, fusion 'prefix'): 0.91 M parameters, of which the graph extension 0.106 M" in out


def test_demo_learns_the_graph_to_action_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--steps", "60"]) == 0
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["sampled_chunk_shape"] == [4, 16, 32]
    assert result["last_loss"] < 0.6 * result["first_loss"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_unknown_verb_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err
