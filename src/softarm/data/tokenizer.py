"""Prompt tokenizers that never touch the network.

`SentencePieceTokenizer` is openpi's `PaligemmaTokenizer` (same `tokenize`: the pi0 prompt format, and pi0.5's with the
discretised state) on a sentencepiece model read from a file instead of downloaded. Point it at the real
`paligemma_tokenizer.model` for pretrained pi0 / pi0.5; for the tiny preset, `train_prompt_tokenizer` builds a small
model from the dataset's own prompts at conversion.
"""

from __future__ import annotations

from collections.abc import Iterable
import io
import os
from pathlib import Path

from openpi.models.tokenizer import PaligemmaTokenizer
import sentencepiece

from softarm import openpi_compat
from softarm.layout import TOKENIZER_FILE


def paligemma_tokenizer_path() -> Path:
    """Where openpi caches the PaliGemma tokenizer: $OPENPI_DATA_HOME (default ~/.cache/openpi)/big_vision/."""
    home = Path(os.environ.get("OPENPI_DATA_HOME", "~/.cache/openpi")).expanduser()
    return home / "big_vision" / "paligemma_tokenizer.model"


class SentencePieceTokenizer(PaligemmaTokenizer):
    def __init__(self, model_path: str | Path, max_len: int = 48) -> None:  # no super(): it downloads
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer model {path} not found (the PaliGemma tokenizer is cached by openpi at "
                f"{paligemma_tokenizer_path()}; datasets converted by softarm carry their own {TOKENIZER_FILE})"
            )
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.path = path
        openpi_compat.init_paligemma_tokenizer(self, self.processor, max_len)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()


def train_prompt_tokenizer(prompts: Iterable[str], path: str | Path, vocab_size: int = 512) -> Path:
    """Train a small BPE sentencepiece model on `prompts` (plus the pi0.5 state format), with byte fallback so that
    any text still encodes. The result has at most `vocab_size` pieces."""
    lines = [p.strip().replace("_", " ") for p in prompts if p.strip()]
    # pi0.5 writes "Task: ..., State: 12 250 ...;\nAction: " into the prompt; cover its words and numbers.
    lines += ["Task: , State: ;", "Action: ", " ".join(str(i) for i in range(256))]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    path = Path(path)
    path.write_bytes(model.getvalue())
    return path
