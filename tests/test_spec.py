import json
from pathlib import Path

import pytest

from softarm import arm
from softarm.data.convert import ConvertOptions, convert
from softarm.data.spec import KEYS, DatasetSpec, read_meta, read_spec, write_spec
from tests.conftest import raw_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("spec")
    convert(raw_dir(tmp), tmp / "prep", ConvertOptions(val_episodes=1, action_horizon=8))
    return tmp / "prep"


def test_the_spec_is_the_head_of_meta_json_and_round_trips(prepared: Path, tmp_path: Path) -> None:
    meta = json.loads((prepared / "meta.json").read_text())
    assert list(meta) == [*KEYS, "arrays", "episodes", "samples"]
    spec = read_spec(prepared)
    assert spec.to_json() == {key: meta[key] for key in KEYS}
    assert DatasetSpec.from_json(spec.to_json(), "somewhere") == spec
    assert (spec.num_nodes, spec.layout, spec.action_dim, spec.state_dim, spec.action_horizon) == (
        10, arm.FULL_LAYOUT, 10, 4, 8)  # fmt: skip
    assert spec.present_cameras == {"base_0_rgb": "base", "left_wrist_0_rgb": "tip"}
    assert spec.edges == arm.chain_edges(10)
    assert spec.model_fields() == {"num_nodes": 10, "node_features": 19, "feature_names": arm.SCHEMA,
                                   "measured_features": arm.SCHEMA, "edges": arm.chain_edges(10),
                                   "action_horizon": 8}  # fmt: skip
    write_spec(spec, tmp_path / "data_spec.json")  # a checkpoint's: the spec alone, written as meta.json begins it
    assert read_spec(tmp_path) == spec
    assert (tmp_path / "data_spec.json").read_text() == json.dumps(spec.to_json(), indent=2) + "\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, r"format 2, this softarm reads 3 \(convert the raw episodes again\)"),
        ({"edges": None}, r"'edges' missing \(a dataset spec has \['format', 'image_size'"),
        ({"node_features": 18}, "node_features: 18 columns, but 19 features named"),
        ({"edges": [[0, 1], [3, 10]]}, r"edge 1 = \(3, 10\) refers to a node outside 0..9"),
        ({"cameras": {"base_0_rgb": "base"}}, r"cameras: expected an entry per image slot \['base_0_rgb', 'left_wr"),
        ({"state_dim": 0}, "state_dim: expected a positive integer or null, got 0"),
        ({"action_horizon": "16"}, "action_horizon: expected a positive integer, got '16'"),
        ({"measured": ["pos_x", "bogus"]}, r"measured feature 'bogus' is not one of the node features \['pos_x'"),
    ],
)
def test_a_bad_spec_is_named_by_file_and_key(prepared: Path, tmp_path: Path, change: dict, message: str) -> None:
    meta = json.loads((prepared / "meta.json").read_text())
    meta = {key: value for key, value in (meta | change).items() if value is not None}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'meta.json'}: {message}"):
        read_meta(tmp_path)
    with pytest.raises(FileNotFoundError, match="is neither a prepared dataset"):
        read_spec(tmp_path / "nothing")
