"""The demo report states what its numbers say: per-task tables, payload bands, and graph-vs-no-graph verdicts decided
by the intervals of evaluations pooled over seeds and tasks; and the demo fine-tunes a base at the base's size."""

from __future__ import annotations

import json
from pathlib import Path

from softarm.apps import demo
from softarm.apps.demo_report import write_report
from softarm.apps.evaluate import EvalOptions, _summary
from softarm.layout import CONFIG_FILE
from softarm.model_config import preset
from softarm.train.config import load_config

PAYLOADS = [5.0] * 20 + [25.0] * 20 + [45.0] * 20  # light, middle, heavy
BLIND = [False] * 20 + [True] * 20 + [False] * 20  # a plan for 25 g: right only in the middle band


def _write_eval(path: Path, task: str, name: str, successes: list[bool]) -> Path:
    rows = []
    for i, (payload, success) in enumerate(zip(PAYLOADS, successes, strict=True)):
        row = {"seed": i, "payload_g": payload, "success": success, "steps": 10, "min_error_mm": 2.0}
        rows.append(row | {"time_to_success_s": 1.0 if success else None, "final_error_mm": 3.0 if success else 30.0})
    summary = _summary(rows, EvalOptions(task=task, policy=name, episodes=len(rows)))
    path.mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps({"summary": summary, "episodes": rows}))
    return path / "eval.json"


def _report(tmp_path: Path, models: dict[str, dict[str, list[list[bool]]]]) -> str:
    """models: task -> model -> one outcome list per training seed."""
    evaluations = {}
    for task, outcomes in models.items():
        baselines = {"expert": [True] * 60, "expert-blind": BLIND, "random": [False] * 60}
        evaluations[task] = {n: [_write_eval(tmp_path / "eval" / task / n, task, n, s)] for n, s in baselines.items()}
        for name, seeds in outcomes.items():
            evaluations[task][name] = [
                _write_eval(tmp_path / "eval" / task / f"{name}_{k}", task, name, s) for k, s in enumerate(seeds)
            ]
    runs = {}
    for name in ("graph", "no_graph"):
        runs[name] = [tmp_path / "runs" / name]
        runs[name][0].mkdir(parents=True)
        records = [{"step": 10, "loss": 0.5}, {"step": 10, "val_loss": 0.4, "val_loss_ema": 0.3}]
        (runs[name][0] / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return write_report(tmp_path, evaluations, runs, intro="What the demo did.").read_text()


def test_report_splits_by_task_and_payload_band_and_separates_only_where_intervals_part(tmp_path: Path) -> None:
    # graph: right in every band; no graph: right only in the middle, like the blind plan
    report = _report(tmp_path, {"choose": {"graph": [[True] * 60], "no_graph": [BLIND]}})
    assert report.startswith("# softarm demo report\n\nWhat the demo did.\n\n## choose\n")
    assert "| policy | success, light (< 10 g) | success, middle (10-40 g) | success, heavy (>= 40 g) |" in report
    assert "| expert, payload-blind | 0/20 | 20/20 | 0/20 |" in report
    assert "| pi0 + graph | 20/20 | 20/20 | 20/20 |" in report
    assert "| pi0 + graph | 60/60 (100 %) | 94-100 % | 3.0 | - | 1.0 |" in report
    assert (
        "All episodes: 60/60 (100 %, 94-100) with the graph, 20/60 (33 %, 23-46) without, a difference of +67 "
        "points; the model with the graph succeeds more often, and the 95 % intervals do not overlap." in report
    )
    assert "Light or heavy payload, choose: 40/40 (100 %, 91-100) with the graph, 0/40 (0 %, 0-9) without" in report
    assert "furthest off, and the payload-blind expert reaches 0/40 of these episodes):" in report
    assert "pi0 + graph 0.3000, pi0, no graph 0.3000" in report
    for name in ("success.png", "loss.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_report_pools_seeds_and_tasks_before_calling_a_difference(tmp_path: Path) -> None:
    # per task and seed the graph is 14/40 vs 8/40 at the extremes: too few episodes to separate them...
    graph = [True] * 14 + [False] * 6 + [True] * 20 + [False] * 20
    no_graph = [True] * 8 + [False] * 12 + [True] * 20 + [False] * 20
    report = _report(tmp_path, {task: {"graph": [graph, graph], "no_graph": [no_graph, no_graph]}
                                for task in ("reach", "choose", "follow")})  # fmt: skip
    assert "| pi0 + graph (2 seeds) | 68/120 (57 %) |" in report
    assert (
        "All episodes: 68/120 (57 %, 48-65) with the graph, 56/120 (47 %, 38-56) without, a difference of +10 "
        "points; the 95 % intervals overlap, so these episodes do not separate them (the model with the graph is "
        "ahead)." in report
    )
    # ...pooled over 2 seeds x 3 tasks the extremes are 84/240 vs 48/240: the intervals part
    assert (
        "Light or heavy payload, reach, choose, follow: 84/240 (35 %, 29-41) with the graph, 48/240 (20 %, 15-26) "
        "without, a difference of +15 points; the model with the graph succeeds more often, and the 95 % intervals "
        "do not overlap." in report
    )
    assert report.count("\n## ") == 4  # three tasks and the pooled verdicts


def test_the_demo_fine_tunes_a_base_with_the_base_s_gemma_towers(tmp_path: Path) -> None:
    base = tmp_path / "graph"
    base.mkdir()
    (base / CONFIG_FILE).write_text(json.dumps(preset("tiny_vision", paligemma_variant="dummy_128").to_dict()))
    overrides = demo._base_towers(base)
    assert overrides == ["model.overrides.paligemma_variant=dummy_128", "model.overrides.action_expert_variant=dummy"]
    model = load_config(demo.DEFAULT_CONFIG, overrides).model.build()
    assert (model.paligemma_variant, model.action_expert_variant, model.fusion) == ("dummy_128", "dummy", "state")
