"""The bases the project ships (models/sim_base): complete, loadable as checkpoints, and the graph base still reaches
balls it must find in the images, so a code change that breaks them is caught."""

from __future__ import annotations

import json
from pathlib import Path

from softarm.apps.evaluate import EvalOptions, evaluate
from softarm.apps.pretrain import BASE_FILE, MODELS, SHIPPED, missing_bases
from softarm.policy import SoftArmPolicy


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_both_bases_ship_with_their_cards() -> None:
    assert missing_bases(SHIPPED) == []
    for name, fusion in MODELS.items():
        base = SHIPPED / name
        assert sorted(p.name for p in base.iterdir()) == ["assets", BASE_FILE, "data_spec.json", "model.safetensors",
                                                          "model_config.json", "tokenizer.model"]  # fmt: skip
        card = json.loads((base / BASE_FILE).read_text())
        assert (card["name"], card["fusion"], card["arm"]) == (f"sim_base/{name}", fusion, "pneumatic")
        assert "choose" not in json.dumps(card["data"]["tasks"])  # the demo's fine-tuning task stays unseen
        assert card["scores"]["reach"]["episodes"] == 100
        # a card names no machine: paths are the project's or the pretraining output's (OUT/...)
        assert not [value for value in _strings(card) if value.startswith("/")]
        assert Path(card["recipe"]["config"]) == Path("configs/pretrain.yaml")
        policy = SoftArmPolicy.from_checkpoint(base)
        assert policy.metadata["fusion"] == fusion


def test_the_graph_base_still_reaches_held_out_balls(tmp_path: Path) -> None:
    """The first 8 held-out reach episodes, as the card's score ran them (noise scale 0): the base reached 7 of them
    within 10 mm when it was scored; a broken model reaches none."""
    options = EvalOptions(task="reach", episodes=8, checkpoint=str(SHIPPED / "graph"), noise_scale=0.0, videos=0)
    summary = evaluate(options, tmp_path)
    assert summary["successes"] >= 6, summary
    assert summary["final_error_mm_median"] < 10.0
