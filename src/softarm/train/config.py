"""Training configuration: a YAML file plus dotted `key=value` overrides, checked before any work starts.

Sections mirror what a person changes: `model` (a preset plus SoftArmModelConfig overrides), `data`, `optim`,
`train`. Unknown keys, wrong types and a missing dataset are reported with the dotted key and what was expected.
The arm's sizes, node features and edges are not set here: they come from the dataset (`DatasetSpec.model_fields`).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
from pathlib import Path
import types
import typing
from typing import Any, Literal

import numpy as np
import yaml

from softarm.data.spec import DatasetSpec, read_spec
from softarm.layout import (
    ASSET_ID,
    ASSETS_DIR,
    CONFIG_FILE,
    GRAPH_NODES,
    META_FILE,
    NORM_STATS_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from softarm.model_config import ArmShape, SoftArmModelConfig, plain, preset


class ConfigError(ValueError):
    pass


# What a dataset decides about the model: its arm's node count, node features (and which are measured) and edges,
# and the length of the action chunks it was cut into. Weights depend on the first three.
SHAPE_FIELDS = ("num_nodes", "node_features", "feature_names", "measured_features", "edges")
# What a saved model's architecture is besides its arm: a base given as train.init_from must agree on all of them.
ARCHITECTURE_FIELDS = ("pi05", "paligemma_variant", "action_expert_variant", "vision", "vocab_size", "fusion",
                       "graph_width", "graph_depth", "graph_heads")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: Literal["tiny", "tiny_vision", "pi0", "pi05"] = "tiny"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # any SoftArmModelConfig field

    def build(self, dataset: dict[str, Any] | None = None, where: str = "the dataset") -> SoftArmModelConfig:
        """The preset with the overrides and, when given, the fields a dataset fixes (`DatasetSpec.model_fields`); an
        override that contradicts the dataset is an error."""
        overrides = dict(self.overrides)
        for key, value in (dataset or {}).items():
            if key in overrides and plain(overrides[key]) != plain(value):
                raise ConfigError(
                    f"model.overrides.{key}: {self.overrides[key]!r}, but {where} has {plain(value)!r}; the arm's "
                    "sizes, node features and edges come from the dataset: drop the override"
                )
            overrides[key] = value
        try:
            return preset(self.preset, **overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One prepared dataset of a mixture and how often its samples are drawn relative to the others'."""

    path: str
    weight: float = 1.0
    # which arm it records, when datasets of several arms train one model: what requests, `--arm` and the
    # checkpoint's assets call it. None: the arm of the first dataset with the same spec, else this directory's name
    arm: str | None = None

    @property
    def name(self) -> str:
        """What metrics (`val_loss/NAME`) and episode names call it: its directory's name."""
        return Path(self.path).name


@dataclasses.dataclass(frozen=True)
class ArmGroup:
    """One arm of the training data: its name, its spec, and which of the config's datasets record it."""

    name: str
    spec: DatasetSpec
    sources: tuple[DatasetEntry, ...]


@dataclasses.dataclass(frozen=True)
class DataSection:
    path: str = ""  # a prepared dataset written by `softarm convert`
    # instead of `path`: several prepared datasets (days of recording, other setups, other arms), batches drawn
    # from each in proportion to its weight, each normalised with its own statistics (or all with data.norm_stats).
    # The first one's tokenizer goes into the checkpoints (prompts encode byte by byte where it lacks a word), and
    # the statistics of each arm's first dataset. Datasets of different arms (node counts, edges, actuators, state,
    # cameras, measured features) train one model of several arms (`ArmGroup`).
    datasets: tuple[DatasetEntry, ...] = ()
    batch_size: int = 8  # global: split across ranks
    num_workers: int = 0
    # sentencepiece model; None: train.init_from's tokenizer.model (a softarm base carries its own), else the dataset's
    tokenizer: str | None = None
    # norm_stats.json to normalise with, or a directory holding it (a checkpoint or base: assets/softarm/); None: the
    # dataset's own. Fine-tuning a base on the arm it knows keeps the base's (openpi reuses a base's assets likewise).
    norm_stats: str | None = None
    # chunk steps past an episode's end: "hold" trains them as its last action repeated (openpi, LeRobot), so the
    # policy learns to stay where a demonstration ended; "mask" leaves them out of the loss
    action_padding: Literal["hold", "mask"] = "hold"


@dataclasses.dataclass(frozen=True)
class OptimSection:
    lr: float = 2.5e-5
    end_lr: float = 2.5e-6
    warmup_steps: int = 1000
    decay_steps: int | None = None  # None: the whole run
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-10
    clip_norm: float = 1.0
    # decay towards the weights training started from (train.init_from's) instead of zero: each step moves every
    # trainable weight lr * anchor_decay of the way back (L2-SP, decoupled); 0 = off. Keeps a copy of what trains.
    anchor_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class LoraSection:
    """LoRA (peft) on the Gemma layers; rank 0 leaves that part fully trainable. openpi's LoRA recipe: rank 16 on the
    VLM, 32 on the action expert."""

    rank: int = 0  # PaliGemma's language model
    expert_rank: int = 0  # the action expert
    alpha: float | None = None  # None: equal to the rank (scale 1)
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 100
    grad_accum: int = 1
    precision: Literal["fp32", "bf16-mixed", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the training step's model (keeps padded prefix positions: static shapes)
    # training-time real-time chunking: each sample's first d action tokens clean and out of the loss, d drawn
    # from 0..rtc_max_delay control steps (`uniform` or `exp`, favouring short delays); 0 = off
    rtc_max_delay: int = 0
    rtc_delays: Literal["uniform", "exp"] = "uniform"
    seed: int = 0
    out_dir: str = "runs/debug"
    init_from: str | None = None  # an openpi converted checkpoint directory (model.safetensors)
    ema_decay: float | None = None  # e.g. 0.999; None: no EMA
    # expert: the action expert and its action layers; state: the graph encoder, fusion layers and state projection
    freeze: tuple[Literal["vision", "vlm", "expert", "state"], ...] = ()
    image_augmentation: bool = True  # openpi's random crop, rotation and colour jitter of the training images
    log_every: int = 10
    val_every: int = 50
    val_batches: int = 8  # batches of validation frames, spread evenly over the val split (the same every time)
    save_every: int = 50
    keep_last: int = 3
    max_bad_steps: int = 10  # training stops after this many non-finite steps in a row (each one is skipped)
    device: str = "auto"  # auto: cuda:<local rank> when available, else cpu
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP) the model
    dist_timeout_s: int = 1800  # a collective that waits longer fails with an error instead of hanging
    tensorboard: bool = True  # event files in <out_dir>/tensorboard; local files only, no account


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    lora: LoraSection = LoraSection()

    def validate(self) -> SoftArmModelConfig:
        """Everything that can be checked before building anything; returns the model config, fitted to the dataset
        and checked against `train.init_from`."""
        groups = self.arm_groups()
        spec = groups[0].spec
        fields = spec.model_fields() if len(groups) == 1 else shared_model_fields(groups)
        model = self.model.build(fields, f"the dataset {self.sources()[0].path}" if len(groups) == 1 else "the arms")
        if "rtc_max_delay" in self.model.overrides:
            raise ConfigError("model.overrides.rtc_max_delay: set train.rtc_max_delay instead (training decides it)")
        try:
            model = dataclasses.replace(model, rtc_max_delay=self.train.rtc_max_delay)
        except ValueError as e:
            raise ConfigError(f"train.rtc_max_delay: {e}") from None
        tokenizer = self.tokenizer_path()
        if not tokenizer.is_file():
            raise ConfigError(f"data.tokenizer: no sentencepiece model at {tokenizer}")
        if self.data.norm_stats is not None:
            if len(groups) > 1:
                raise ConfigError(f"data.norm_stats: one file cannot normalise the {len(groups)} arms "
                                  f"{[g.name for g in groups]}; leave it unset (each dataset its own)")  # fmt: skip
            check_norm_stats(self.norm_stats_path(), spec)
        counts = ("steps", "grad_accum", "log_every", "val_every", "save_every", "keep_last", "max_bad_steps",
                  "dist_timeout_s")  # fmt: skip
        for key in ("lora.rank", "lora.expert_rank", "data.batch_size", *(f"train.{name}" for name in counts)):
            section, name = key.split(".")
            value, least = getattr(getattr(self, section), name), 0 if section == "lora" else 1
            if value < least:
                raise ConfigError(f"{key}: must be >= {least}{' (0 = no LoRA)' if least == 0 else ''}, got {value}")
        for part, rank in (("vlm", "rank"), ("expert", "expert_rank")):
            if part in self.train.freeze and getattr(self.lora, rank):
                raise ConfigError(f"train.freeze: {part!r} would freeze the adapters of lora.{rank} too; drop one")
        if self.train.ema_decay is not None and not 0 < self.train.ema_decay < 1:
            raise ConfigError(f"train.ema_decay: must be in (0, 1), got {self.train.ema_decay}")
        if self.optim.anchor_decay < 0 or self.optim.anchor_decay * max(self.optim.lr, self.optim.end_lr) > 1:
            raise ConfigError(
                f"optim.anchor_decay: must be in [0, 1 / optim.lr] (a step moves a weight lr * "
                f"anchor_decay of the way back, at most all of it), got {self.optim.anchor_decay}"
            )
        if self.optim.anchor_decay and not self.train.init_from:
            raise ConfigError("optim.anchor_decay: pulls towards the weights of train.init_from, which is not set")
        if self.train.init_from and not (Path(self.train.init_from) / WEIGHTS_FILE).is_file():
            raise ConfigError(f"train.init_from: no model.safetensors in {self.train.init_from}")
        if self.train.init_from:
            check_same_architecture(model, Path(self.train.init_from))
        return model

    def sources(self) -> tuple[DatasetEntry, ...]:
        """The prepared datasets training draws from: data.datasets, or data.path alone."""
        return self.data.datasets or (DatasetEntry(self.data.path),)

    def dataset_specs(self) -> list[DatasetSpec]:
        """Each dataset's spec, in order; a missing dataset or a bad weight is an error naming it."""
        if self.data.path and self.data.datasets:
            raise ConfigError("data.path and data.datasets: give one (data.datasets lists every dataset)")
        names = [entry.name for entry in self.data.datasets]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ConfigError(f"data.datasets: two datasets in directories named {twice[0]!r}; metrics and episodes "
                              "are named after the directory: give them distinct names")  # fmt: skip
        specs = []
        for i, entry in enumerate(self.sources()):
            key = f"data.datasets[{i}]" if self.data.datasets else "data.path"
            if not entry.path or not (Path(entry.path) / META_FILE).is_file():
                raise ConfigError(f"{key}: {entry.path!r} is not a prepared dataset (no meta.json there)")
            if not entry.weight > 0:
                raise ConfigError(f"{key}.weight: must be > 0, got {entry.weight}")
            try:
                specs.append(read_spec(entry.path))
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
        return specs

    def arm_groups(self) -> list[ArmGroup]:
        """The arms of the datasets, in order of first appearance: one for a single arm (today's model), several for
        a model of several arms. Datasets of one arm must share its spec; arms that cannot share a model (other
        node features, chunk lengths or image sizes) are an error naming the dataset."""
        specs, sources = self.dataset_specs(), self.sources()
        named: dict[str, tuple[DatasetSpec, list[DatasetEntry]]] = {}
        for i, (entry, spec) in enumerate(zip(sources, specs, strict=True)):
            key = f"data.datasets[{i}]" if self.data.datasets else "data.path"
            # unnamed: the arm of the first dataset with the same spec, else a new arm named after its directory
            name = entry.arm or next((n for n, (known, _) in named.items() if known == spec), entry.name)
            if name in named and named[name][0] != spec:
                first, this = named[name][0].to_json(), spec.to_json()
                listing = "; ".join(f"{k} {_short(this[k])} there, {_short(first[k])} in the first"
                                    for k in first if first[k] != this[k])  # fmt: skip
                raise ConfigError(f"{key}: {entry.path} is another arm than {named[name][1][0].path} ({listing}), but "
                                  f"both are arm {name!r}: give it its own data.datasets[{i}].arm")  # fmt: skip
            named.setdefault(name, (spec, []))[1].append(entry)
        groups = [ArmGroup(name, spec, tuple(entries)) for name, (spec, entries) in named.items()]
        first = groups[0]
        for group in groups[1:]:
            key = f"data.datasets[{sources.index(group.sources[0])}]"
            for what, ours, theirs in (("node features", group.spec.layout.features, first.spec.layout.features),
                                       ("action_horizon", group.spec.action_horizon, first.spec.action_horizon),
                                       ("image_size", group.spec.image_size, first.spec.image_size)):  # fmt: skip
                if ours != theirs:
                    raise ConfigError(f"{key}: {group.sources[0].path} (arm {group.name!r}) has {what} {_short(ours)}, "
                                      f"arm {first.name!r} has {_short(theirs)}: a model of several arms reads one "
                                      "node layout and one chunk length")  # fmt: skip
        return groups

    def tokenizer_path(self) -> Path:
        if self.data.tokenizer:
            return Path(self.data.tokenizer).expanduser()
        if self.train.init_from and (Path(self.train.init_from) / TOKENIZER_FILE).is_file():
            return Path(self.train.init_from) / TOKENIZER_FILE  # the base's token ids are the ones it learned
        return Path(self.sources()[0].path) / TOKENIZER_FILE

    def norm_stats_path(self, dataset: str | None = None) -> Path:
        """The norm_stats.json training normalises `dataset` (default: the first) with, which a checkpoint keeps."""
        if self.data.norm_stats is None:
            return Path(dataset or self.sources()[0].path) / NORM_STATS_FILE
        path = Path(self.data.norm_stats).expanduser()
        for candidate in (path / NORM_STATS_FILE, path / ASSETS_DIR / ASSET_ID / NORM_STATS_FILE):
            if path.is_dir() and candidate.is_file():
                return candidate
        return path

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


def shared_model_fields(groups: Sequence[ArmGroup]) -> dict[str, Any]:
    """The model config fields that arms of one model fix: the largest node count (every arm's graph padded to it,
    the first largest arm's edges), the node features, those any arm measures, the chunk length, and each arm."""
    largest = max(groups, key=lambda g: g.spec.num_nodes).spec
    features = largest.layout.features
    measured = tuple(f for f in features if any(f in g.spec.layout.measured for g in groups))
    return {**largest.model_fields(), "measured_features": measured,
            "arms": tuple(ArmShape(g.name, g.spec.num_nodes, g.spec.edges) for g in groups)}  # fmt: skip


def check_same_arm(model: SoftArmModelConfig, directory: Path, what: str, hint: str, fields=SHAPE_FIELDS) -> None:
    """A saved softarm model in `directory` (its model_config.json) must have been built for the same arm, in
    `fields`; an openpi checkpoint (no model_config.json, no graph weights) fits any arm."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return
    saved, ours = json.loads(path.read_text()), model.to_dict()
    differs = [key for key in fields if key in saved and saved[key] != ours[key]]
    if differs:
        listing = "; ".join(f"{key} {_short(saved[key])} there, {_short(ours[key])} here" for key in differs)
        raise ConfigError(f"{what}: {directory} holds a model for another arm or configuration ({listing}); {hint}")


def check_same_architecture(model: SoftArmModelConfig, directory: Path) -> None:
    """A softarm base in `directory` (its model_config.json) must be the architecture the config builds; its arm may
    differ (the arm-shaped graph tensors are then re-initialised when it loads). An openpi checkpoint fits any."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return
    saved, ours = json.loads(path.read_text()), model.to_dict()
    differs = [key for key in ARCHITECTURE_FIELDS if key in saved and saved[key] != ours[key]]
    if differs:
        listing = "; ".join(f"{key} {_short(saved[key])} there, {_short(ours[key])} here" for key in differs)
        raise ConfigError(f"train.init_from: {directory} holds another architecture ({listing}); set model.preset "
                          "and model.overrides to what the base was built with")  # fmt: skip


def check_norm_stats(path: Path, spec: DatasetSpec) -> None:
    """data.norm_stats must exist and describe the dataset's actions, state and graph."""
    if not path.is_file():
        raise ConfigError(f"data.norm_stats: no {NORM_STATS_FILE} at {path}")
    stats = json.loads(path.read_text()).get("norm_stats", {})
    expected = {"actions": [spec.action_dim], GRAPH_NODES: [spec.num_nodes, spec.layout.width]}
    if spec.state_dim:
        expected["state"] = [spec.state_dim]
    for key, shape in expected.items():
        found = list(np.shape(stats[key]["mean"])) if key in stats else None
        if found != shape:
            raise ConfigError(f"data.norm_stats: {path} has {key} of shape {found}; the dataset's {key} is {shape} "
                              "(statistics of another arm?)")  # fmt: skip


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation` where that is lossless, or raise ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_check_type(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    if annotation is Any:
        return value
    raise ConfigError(f"{key}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; {prefix or 'the config'} has {sorted(fields)}")
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        values[name] = _build(hint, value, key) if dataclasses.is_dataclass(hint) else _check_type(key, value, hint)
    return cls(**values)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """`a.b=value` (value parsed as YAML: 10, 1e-4, true, [vision], null) into a nested dict copy."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {parent} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return _build(TrainConfig, apply_overrides(data, overrides), "")
