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


def test_demo_runs_every_stage_and_reuses_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["demo", "--out", str(tmp_path), "--episodes", "4", "--eval-episodes", "2",
            "train.steps=3", "train.save_every=3", "train.val_every=3", "data.num_workers=0"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert [f"[{i}/5]" in out for i in range(1, 6)] == [True] * 5
    report = (tmp_path / "report.md").read_text()
    assert "| scripted expert | 2/2 (100 %) |" in report
    assert "| random | 0/2 (0 %) |" in report
    assert "pi0 + graph" in report
    assert "pi0, no graph" in report
    for name in ("success.png", "loss.png", "rollouts_graph.gif"):
        assert (tmp_path / name).stat().st_size > 1000
    fusion = json.loads((tmp_path / "runs" / "no_graph" / "checkpoints" / "3" / "model_config.json").read_text())
    assert fusion["fusion"] == "none"

    assert main(args) == 0  # everything is there: nothing is generated, trained or evaluated again
    again = capsys.readouterr().out
    assert "0 episodes written, 4 reused" in again
    assert again.count("exists, reused") == 1 + 2 + 5  # prepared data, two models, five evaluations


def test_unknown_verb_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err
