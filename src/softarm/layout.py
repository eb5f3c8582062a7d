"""Every name on disk, in one place: the prepared dataset, a training run, its checkpoints and an evaluation.

Writers and readers import the names from here, never from each other, so a reader does not depend on its writer
(no import cycle) and a layout change is one edit. The raw HDF5 episode's keys live with its one reader and writer,
softarm.data.raw.
"""

from __future__ import annotations

# the graph tensor's one name: raw episode field, prepared array, norm stats key, request key, model input
GRAPH_NODES = "graph_nodes"
# with history (softarm.history): which steps of graph_nodes [K, N, F] are real; request key and model input
GRAPH_HISTORY_MASK = "graph_history_mask"
# visual history: past frames of the cameras ({camera: [K-1, H, W, 3]}, oldest first) and which are real ([K-1])
IMAGE_HISTORY = "image_history"
IMAGE_HISTORY_MASK = "image_history_mask"

# prepared dataset (`softarm convert`)
FORMAT_VERSION = 3  # 3: meta.json says which node features are measured, and the edges; 2: graph_nodes (was nodes)
IMAGE_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")  # openpi's camera slots, in its order
IMAGE_SIZE = 224  # the side of the square images π0's SigLIP reads
MODEL_DIM = 32  # π0's state and action width: shorter vectors are zero-padded to it
META_FILE = "meta.json"
REPORT_FILE = "report.json"
TOKENIZER_FILE = "tokenizer.model"
NORM_STATS_FILE = "norm_stats.json"  # the name openpi's normalize.save / normalize.load use

# training run (`softarm train`)
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_PLOT = "loss.png"

# one checkpoint: <run>/checkpoints/<step>/
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
EMA_FILE = "ema.safetensors"
LORA_FILE = "lora.safetensors"
STATE_FILE = "trainer_state.pt"  # step, data position, RNG states
OPTIMIZER_FILE = "optimizer.pt"
TRAIN_CONFIG_FILE = "train_config.yaml"
ASSETS_DIR = "assets"
DATA_SPEC_FILE = "data_spec.json"  # what the policy needs of the dataset: camera slots, state/action sizes
ASSET_ID = "softarm"  # openpi's assets/<asset id>/norm_stats.json
# a model of several arms: arm_assets/<name>/ holds each arm's data_spec.json and norm_stats.json (the first arm's
# are also where a one-arm checkpoint keeps them)
ARMS_DIR = "arm_assets"

# evaluation (`softarm eval`)
EVAL_FILE = "eval.json"


def default_camera_slots(cameras: list[str] | tuple[str, ...]) -> dict[str, str]:
    """openpi slot -> camera where none are mapped by hand: the cameras sorted by name, in the slots' order."""
    return dict(zip(IMAGE_SLOTS, sorted(cameras)[: len(IMAGE_SLOTS)], strict=False))
