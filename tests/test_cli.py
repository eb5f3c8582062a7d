import json
from pathlib import Path

import pytest

from softarm.cli import main
from tests.conftest import raw_dir


def test_info_prints_the_preset_size_and_the_schema_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "tiny", "--fusion", "prefix"]) == 0
    out = capsys.readouterr().out
    assert "Preset 'tiny' (pi0, fusion 'prefix'): 0.91 M parameters, of which the graph extension 0.106 M" in out
    assert "Node features (the schema" not in out  # only with --schema, or when nothing else is asked
    for flags in (["--schema"], []):
        assert main(["info", *flags]) == 0
        out = capsys.readouterr().out
        assert "Node features (the schema; an arm senses all or some of them, on any number of nodes):" in out
        assert " 18  contact_force   N" in out


def test_demo_fine_tunes_the_bases_and_reports_what_it_added(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = pretrained / "base"
    flags = ["demo", "--out", str(tmp_path), "--base", str(base), "--episodes", "choose=2", "--episodes", "reach=1",
             "--eval-episodes", "1"]  # fmt: skip
    overrides = ["model.preset=tiny", "train.steps=2", "train.save_every=2", "train.val_every=2", "data.num_workers=0",
                 "data.batch_size=4"]  # fmt: skip
    assert main([*flags, *overrides]) == 0
    out = capsys.readouterr().out
    assert f"[3/5] fine-tuning the pretrained bases ({base}) on choose + reach" in out
    for name in ("graph", "no_graph"):
        checkpoint = tmp_path / "runs" / name / "checkpoints" / "2"
        config = (checkpoint / "train_config.yaml").read_text()
        assert f"init_from: {base / name}" in config
        assert (checkpoint / "tokenizer.model").read_bytes() == (base / name / "tokenizer.model").read_bytes()
        stats = Path("assets", "softarm", "norm_stats.json")
        assert (checkpoint / stats).read_text() == (base / name / stats).read_text()  # the same arm: the base's
    report = (tmp_path / "report.md").read_text()
    assert "start from a base pretrained once in simulation" in report
    fine_tuning = report[report.index("## What fine-tuning added") :]
    assert "| task | base (graph), not fine-tuned | pi0 + graph | pi0, no graph |" in fine_tuning
    for task in ("reach", "choose", "follow"):
        assert (tmp_path / "eval" / task / "base" / "eval.json").is_file()
        assert f"\n| {task} | " in fine_tuning
    summary = json.loads((tmp_path / "eval" / "reach" / "graph" / "eval.json").read_text())["summary"]
    assert (summary["noise_scale"], summary["num_steps"]) == (0.0, 3)  # the demo's defaults from the bases
    assert "the flow is integrated in 3 steps (openpi: 10)" in report
    (base / "graph" / "base.json").rename(base / "graph" / "card.json")
    try:
        assert main([*flags, *overrides]) == 2
        assert f"{base / 'graph'} is not a base of `softarm pretrain` (base.json missing)" in capsys.readouterr().err
    finally:
        (base / "graph" / "card.json").rename(base / "graph" / "base.json")


def test_demo_from_scratch_runs_every_stage_and_reuses_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["demo", "--from-scratch", "--out", str(tmp_path), "--episodes", "reach=3", "--episodes", "choose=2",
             "--eval-episodes", "2", "--eval-episodes", "follow=0"]  # fmt: skip
    overrides = ["train.steps=3", "train.save_every=3", "train.val_every=3", "data.num_workers=0", "data.batch_size=4"]
    args = [*flags, *overrides]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert [f"[{i}/5]" in out for i in range(1, 6)] == [True] * 5
    assert "training the small real pi0 on choose + reach" in out
    report = (tmp_path / "report.md").read_text()
    assert "## reach" in report
    assert "## choose" in report
    assert "## follow" not in report  # COUNT 0 leaves a task out
    assert report.count("| scripted expert | 2/2 (100 %) |") == 2
    assert report.count("| random | 0/2 (0 %) |") == 2
    assert report.count("| pi0 + graph | ") == 2 * 2  # two tasks, success and payload-band tables
    assert "Light or heavy payload, reach, choose:" in report
    for name in ("success.png", "loss.png", "rollouts_reach.gif", "rollouts_choose.gif"):
        assert (tmp_path / name).stat().st_size > 1000
    for task in ("reach", "choose"):  # only what the report shows is filmed: the graph model's rollouts
        assert [p.parent.name for p in (tmp_path / "eval" / task).glob("*/rollouts.gif")] == ["graph"]
    fusion = json.loads((tmp_path / "runs" / "no_graph" / "checkpoints" / "3" / "model_config.json").read_text())
    assert fusion["fusion"] == "none"
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["cameras"] == {"base_0_rgb": "base", "left_wrist_0_rgb": "tip", "right_wrist_0_rgb": "side"}
    assert json.loads((tmp_path / "eval" / "choose" / "graph" / "eval.json").read_text())["summary"]["task"] == "choose"
    assert json.loads((tmp_path / "raw" / "generate_reach.json").read_text())["plan_from"] == "rest"

    assert main(args) == 0  # everything is there: nothing is generated, trained or evaluated again
    again = capsys.readouterr().out
    assert "reach: 0 episodes written, 3 reused" in again
    assert "choose: 0 episodes written, 2 reused" in again
    assert again.count("exists, reused") == 1 + 2 + 2 * 5  # prepared data, two models, five evaluations per task

    # a task scored but not trained: its baselines only, said so in the report
    assert main([*flags, "--eval-episodes", "follow=1", *overrides]) == 0
    report = (tmp_path / "report.md").read_text()
    follow = report[report.index("## follow") :]
    assert "| scripted expert | 1/1 (100 %) |" in follow
    assert "pi0 + graph |" not in follow.split("## Graph vs no graph")[0]
    assert "No model was trained on this task in this run." in follow
    assert "No model was trained on follow in this run" in report
    assert [p.parent.name for p in (tmp_path / "eval" / "follow").glob("*/rollouts.gif")] == ["expert"]
    assert "![follow](rollouts_follow.gif)" in follow  # the expert's, where no model is scored
    assert (tmp_path / "rollouts_follow.gif").stat().st_size > 1000
    with pytest.raises(SystemExit, match="--episodes takes TASK=COUNT"):
        main(["demo", "--out", str(tmp_path), "--episodes", "reach"])
    with pytest.raises(SystemExit, match=r"--eval-episodes takes TASK=COUNT or COUNT \(e\.g\. follow=50\), got '=3'"):
        main(["demo", "--out", str(tmp_path), "--eval-episodes", "=3"])
    assert main([*flags, "--plan-from", "current", *overrides]) == 2  # the episodes there were planned from rest
    err = capsys.readouterr().err
    assert ("plan_from 'rest' hold_steps 3 hard_only False; choose another --out for seed 0 noise 0.05 arm "
            "'pneumatic' plan_from") in err  # fmt: skip
    assert err.endswith("plan_from 'current' hold_steps 3 hard_only False\n")
    assert main(["demo", "--from-scratch", "--out", str(tmp_path), "--episodes", "reach=3", "--eval-episodes",
                 "reach=0"]) == 2  # fmt: skip
    assert "softarm demo: error: no evaluation episodes for reach: give --eval-episodes TASK=COUNT >= 1" in (
        capsys.readouterr().err
    )


def test_unknown_verb_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_lerobot_export_and_import_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = raw_dir(tmp_path, lengths=(6, 5))
    assert main(["export-lerobot", str(raw), str(tmp_path / "lr"), "--codec", "h264"]) == 0
    assert "wrote 2 episodes (11 frames) as LeRobot v3.0 to" in capsys.readouterr().out
    cameras = ["--camera", "base_0_rgb=observation.images.base", "--camera", "left_wrist_0_rgb=tip"]
    assert main(["convert", str(tmp_path / "lr"), str(tmp_path / "prep"), "--val-episodes", "1", *cameras]) == 0
    assert "kept 2 episodes, skipped 0; samples: train 5, val 6" in capsys.readouterr().out
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["cameras"] == {"base_0_rgb": "base", "left_wrist_0_rgb": "tip", "right_wrist_0_rgb": None}
    assert main(["convert", str(tmp_path / "lr"), str(tmp_path / "p2"), "--graph-key", "observation.nodes"]) == 2
    assert "softarm convert: error: " in capsys.readouterr().err
    assert main(["export-lerobot", str(raw), str(tmp_path / "lr")]) == 2
    assert "softarm export-lerobot: error: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "{tmp}/empty", "{tmp}/out"], "softarm convert: error: no episode files (.h5, .hdf5) in {tmp}/"),
        (["convert", "{tmp}/nowhere", "{tmp}/out"], "softarm convert: error: raw episode directory {tmp}/nowhere does "
                                                    "not exist"),
        (["export-lerobot", "{tmp}/empty", "{tmp}/out"], "softarm export-lerobot: error: no episode files"),
        (["stats", "{tmp}/empty"], "softarm stats: error: {tmp}/empty/meta.json not found: not a dataset written by"),
        (["serve", "--checkpoint", "{tmp}/empty"], "softarm serve: error: {tmp}/empty is not a softarm checkpoint: "
                                                   "model_config.json is missing"),
        (["eval", "--checkpoint", "{tmp}/empty", "--out", "{tmp}/eval"], "softarm eval: error: {tmp}/empty is not a "
                                                                         "softarm checkpoint"),
        (["eval", "--out", "{tmp}/eval"], "softarm eval: error: --policy model needs --checkpoint"),
        (["serve", "--checkpoint", "{tmp}/empty", "--noise-scale", "-1"], "softarm serve: error: noise_scale: "
                                                                          "expected a finite number >= 0"),
        (["serve", "--checkpoint", "{tmp}/empty", "--num-steps", "0"], "softarm serve: error: num_steps: expected an "
                                                                       "integer >= 1"),
        (["demo", "--out", "{tmp}/d", "--num-steps", "0"], "softarm demo: error: --seeds and --num-steps must be at "
                                                           "least 1, got 1 and 0"),
        (["train", "data.path={tmp}/empty"], "softarm train: error: data.path: '{tmp}/empty' is not a prepared"),
        (["train", "train.steps=zero"], "softarm train: error: train.steps: expected int, got 'zero'"),
        (["sim", "generate", "--task", "push", "--out", "{tmp}/r"], "softarm sim generate: error: unknown task 'push'"),
        (["sim", "generate", "--hold-steps", "-2", "--out", "{tmp}/r"], "softarm sim generate: error: --hold-steps "
                                                                         "must be >= 0, got -2"),
    ],
)  # fmt: skip
def test_user_mistakes_are_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_debug_flag_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTARM_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match=r"raw episode directory .* does not exist"):
        main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")])


def test_demo_without_shipped_bases_trains_from_scratch_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import softarm.apps.pretrain

    shipped = tmp_path / "sim_base"
    monkeypatch.setattr(softarm.apps.pretrain, "SHIPPED", shipped)
    flags = ["demo", "--out", str(tmp_path / "out"), "--episodes", "reach=3", "--eval-episodes", "reach=0"]
    assert main(flags) == 2
    captured = capsys.readouterr()
    assert f"no pretrained graph and no_graph base in {shipped}: the models train from scratch" in captured.out
    assert "no evaluation episodes for reach" in captured.err
    (shipped / "graph").mkdir(parents=True)
    (shipped / "graph" / "base.json").write_text("{}")  # one base alone: the comparison needs both
    assert main(flags) == 2
    assert f"no pretrained no_graph base in {shipped}: the models train from scratch" in capsys.readouterr().out
