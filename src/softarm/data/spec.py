"""The dataset contract: what a prepared dataset holds for a model, typed, with its one JSON reader and writer.

`softarm convert` writes it at the top of meta.json (followed by the dataset's arrays, episodes and sample counts); a
checkpoint writes the spec it trained on as data_spec.json. Everything that needs to know a dataset's arm (model
config, norm stats, loader, policy, `softarm info`, the viewer) reads a `DatasetSpec`, never the JSON by key.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
from pathlib import Path
from typing import Any

from softarm import arm
from softarm.layout import CONFIG_FILE, DATA_SPEC_FILE, FORMAT_VERSION, IMAGE_SIZE, IMAGE_SLOTS, META_FILE

# the keys of the spec in meta.json and data_spec.json, in the order they are written
KEYS = ("format", "image_size", "cameras", "num_nodes", "node_features", "features", "measured", "edges",
        "action_dim", "state_dim", "action_horizon")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One arm's data as a model sees it: cameras per openpi image slot, the graph (nodes, their feature columns and
    which are measured, edges), the action and state sizes, and the length of the action chunks."""

    cameras: Mapping[str, str | None]  # every openpi image slot -> the camera recorded into it, or None
    num_nodes: int
    layout: arm.NodeLayout
    edges: tuple[arm.Edge, ...]
    action_dim: int
    state_dim: int | None  # None: the arm has no state vector besides the graph
    action_horizon: int
    image_size: int = IMAGE_SIZE
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if list(self.cameras) != list(IMAGE_SLOTS):
            raise ValueError(f"cameras: expected an entry per image slot {list(IMAGE_SLOTS)}, got {list(self.cameras)}")
        for name in ("num_nodes", "action_dim", "action_horizon", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.state_dim is not None and (not isinstance(self.state_dim, int) or self.state_dim < 1):
            raise ValueError(f"state_dim: expected a positive integer or null, got {self.state_dim!r}")
        object.__setattr__(self, "cameras", dict(self.cameras))
        object.__setattr__(self, "edges", arm.validate_edges(self.num_nodes, self.edges))

    @property
    def present_cameras(self) -> dict[str, str]:
        """The slots that hold a camera, with its name."""
        return {slot: camera for slot, camera in self.cameras.items() if camera is not None}

    def model_fields(self) -> dict[str, Any]:
        """The model config fields the dataset fixes: the arm's graph and the chunk length."""
        return {"num_nodes": self.num_nodes, "node_features": self.layout.width, "feature_names": self.layout.features,
                "measured_features": self.layout.measured, "edges": self.edges,
                "action_horizon": self.action_horizon}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON values, keyed as in meta.json (`node_features` is the column count there)."""
        return {
            "format": self.format,
            "image_size": self.image_size,
            "cameras": dict(self.cameras),
            "num_nodes": self.num_nodes,
            "node_features": self.layout.width,
            "features": list(self.layout.features),
            "measured": list(self.layout.measured),
            "edges": [list(e) for e in self.edges],
            "action_dim": self.action_dim,
            "state_dim": self.state_dim,
            "action_horizon": self.action_horizon,
        }

    @classmethod
    def from_json(cls, values: Mapping[str, Any], where: str | Path) -> DatasetSpec:
        """The spec of a meta.json or data_spec.json; ValueError names the file and the key."""
        if values.get("format") != FORMAT_VERSION:
            raise ValueError(f"{where}: format {values.get('format')!r}, this softarm reads {FORMAT_VERSION} (convert "
                             "the raw episodes again)")  # fmt: skip
        missing = [key for key in KEYS if key not in values]
        if missing:
            raise ValueError(f"{where}: {missing[0]!r} missing (a dataset spec has {list(KEYS)})")
        try:
            layout = arm.NodeLayout(tuple(values["features"]), tuple(values["measured"]))
            if layout.width != values["node_features"]:
                raise ValueError(f"node_features: {values['node_features']} columns, but {layout.width} features named")
            return cls(cameras=values["cameras"], num_nodes=values["num_nodes"], layout=layout,
                       edges=tuple(map(tuple, values["edges"])), action_dim=values["action_dim"],
                       state_dim=values["state_dim"], action_horizon=values["action_horizon"],
                       image_size=values["image_size"], format=values["format"])  # fmt: skip
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


def read_meta(directory: str | Path) -> tuple[DatasetSpec, dict]:
    """A prepared dataset's spec and whole meta.json (arrays, episodes, samples too), read and checked once."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a dataset written by `softarm convert`")
    meta = json.loads(path.read_text())
    return DatasetSpec.from_json(meta, path), meta


def read_spec(directory: str | Path) -> DatasetSpec:
    """The spec of a prepared dataset (meta.json) or of a checkpoint or base (data_spec.json). A checkpoint written
    before data_spec.json held the whole spec keeps its graph in the model config, and is read from both."""
    directory = Path(directory)
    if (directory / META_FILE).is_file():
        return read_meta(directory)[0]
    path = directory / DATA_SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is neither a prepared dataset ({META_FILE}) nor a checkpoint "
                                f"({DATA_SPEC_FILE})")  # fmt: skip
    values = json.loads(path.read_text())
    if "features" not in values and (directory / CONFIG_FILE).is_file():
        config = json.loads((directory / CONFIG_FILE).read_text())
        names = arm.column_names(config["node_features"], config.get("feature_names"))
        values = {"format": FORMAT_VERSION, "image_size": IMAGE_SIZE, "features": list(names),
                  "measured": list(config.get("measured_features") or names), "edges": config["edges"],
                  **values}  # fmt: skip
    return DatasetSpec.from_json(values, path)


def write_spec(spec: DatasetSpec, path: str | Path) -> None:
    """data_spec.json: the spec alone, as meta.json begins."""
    Path(path).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
