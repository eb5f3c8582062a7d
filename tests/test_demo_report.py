"""The demo report states what its numbers say: payload bands and graph-vs-no-graph verdicts from the intervals."""

from __future__ import annotations

import json
from pathlib import Path

from softarm.demo_report import write_report
from softarm.evaluate import EvalOptions, _summary

PAYLOADS = [5.0] * 20 + [25.0] * 20 + [45.0] * 20  # light, middle, heavy


def _write_eval(out: Path, name: str, successes: list[bool]) -> dict:
    rows = []
    for i, (payload, success) in enumerate(zip(PAYLOADS, successes, strict=True)):
        row = {"seed": i, "payload_g": payload, "success": success, "steps": 10, "min_error_mm": 2.0}
        rows.append(row | {"time_to_success_s": 1.0 if success else None, "final_error_mm": 3.0 if success else 30.0})
    summary = _summary(rows, EvalOptions(task="choose", policy=name, episodes=len(rows)))
    (out / "eval" / name).mkdir(parents=True)
    (out / "eval" / name / "eval.json").write_text(json.dumps({"summary": summary, "episodes": rows}))
    return summary


def _report(tmp_path: Path, graph: list[bool], no_graph: list[bool]) -> str:
    blind = [False] * 20 + [True] * 20 + [False] * 20  # a plan for 25 g: right only in the middle band
    outcomes = {"expert": [True] * 60, "expert-blind": blind, "graph": graph, "no_graph": no_graph,
                "random": [False] * 60}  # fmt: skip
    summaries = {name: _write_eval(tmp_path, name, successes) for name, successes in outcomes.items()}
    runs = {}
    for name in ("graph", "no_graph"):
        runs[name] = tmp_path / "runs" / name
        runs[name].mkdir(parents=True)
        records = [{"step": 10, "loss": 0.5}, {"step": 10, "val_loss": 0.4, "val_loss_ema": 0.3}]
        (runs[name] / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return write_report(tmp_path, summaries, runs).read_text()


def test_report_splits_by_payload_band_and_separates_only_where_intervals_part(tmp_path: Path) -> None:
    # graph: right in every band; no graph: right only in the middle, like the blind plan
    report = _report(tmp_path, [True] * 60, [False] * 20 + [True] * 20 + [False] * 20)
    assert "| policy | success, light (< 10 g) | success, middle (10-40 g) | success, heavy (>= 40 g) |" in report
    assert "| expert, payload-blind | 0/20 | 20/20 | 0/20 |" in report
    assert "| pi0 + graph | 20/20 | 20/20 | 20/20 |" in report
    assert (
        "All episodes: 60/60 with the graph, 20/60 without; the model with the graph succeeds more often, "
        "and the 95 % intervals do not overlap." in report
    )
    assert "Light or heavy payload: 40/40 with the graph, 0/40 without; the model with the graph" in report
    assert "pi0 + graph 0.3000, pi0, no graph 0.3000" in report
    for name in ("success.png", "loss.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_report_calls_overlapping_intervals_undecided(tmp_path: Path) -> None:
    graph = ([True] * 11 + [False] * 9) * 3  # 33/60
    no_graph = ([True] * 10 + [False] * 10) * 3  # 30/60
    report = _report(tmp_path, graph, no_graph)
    assert (
        "All episodes: 33/60 with the graph, 30/60 without; the 95 % intervals overlap, so this run does not "
        "separate them (the model with the graph is ahead)." in report
    )
    assert "Light or heavy payload: 22/40 with the graph, 20/40 without; the 95 % intervals overlap" in report
