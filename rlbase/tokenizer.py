"""A word-level tokenizer with its own vocabulary file: text processing, no network.

Instructions in rlbase's worlds are short, templated English ("go to the blue ball"), so a
word-level vocabulary is exact and small: lowercase, split on anything that is not a letter or a
digit. Id 0 pads, id 1 stands for any word outside the vocabulary. The vocabulary is a JSON file
saved next to a text encoder's weights, so a pretrained encoder always reads ids the way it was
trained.

A leaf module: the envs that phrase instructions (rlbase.envs.mazegoto), the datasets made from
them and the text backbone all read ids through it, and it imports nothing else of rlbase.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import torch

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_WORD = re.compile(r"[a-z0-9]+")
VOCAB_FORMAT = "rlbase-vocabulary"


def words_of(text: str) -> list[str]:
    """The words of `text`: lowercase runs of letters and digits ("Go to the BLUE ball!" -> 5 words)."""
    return _WORD.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer: `encode(text, max_len)` -> ids padded with 0; unknown words -> 1."""

    def __init__(self, words: Iterable[str]):
        vocab = [PAD, UNK]
        seen = set(vocab)
        for word in words:
            for w in words_of(word):
                if w not in seen:
                    seen.add(w)
                    vocab.append(w)
        self.vocab = vocab
        self.ids = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "Tokenizer":
        """A vocabulary of every word in `texts`, in order of first appearance."""
        return cls(w for text in texts for w in words_of(text))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Ids of the first `max_len` words of `text`, padded with PAD_ID to exactly `max_len`."""
        ids = [self.ids.get(w, UNK_ID) for w in words_of(text)][:max_len]
        return ids + [PAD_ID] * (max_len - len(ids))

    def encode_batch(self, texts: Iterable[str], max_len: int) -> torch.Tensor:
        """(len(texts), max_len) int64 ids."""
        return torch.tensor([self.encode(t, max_len) for t in texts], dtype=torch.int64).reshape(-1, max_len)

    def decode(self, ids: Iterable[int]) -> str:
        """The words of `ids`, padding dropped (unknown words read as <unk>)."""
        return " ".join(self.vocab[i] if 0 <= i < len(self.vocab) else UNK for i in map(int, ids) if i != PAD_ID)

    def to_dict(self) -> dict:
        return {"format": VOCAB_FORMAT, "version": 1, "vocab": self.vocab}

    @classmethod
    def from_dict(cls, data: dict) -> "Tokenizer":
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT or not isinstance(data.get("vocab"), list):
            raise ValueError("not an rlbase vocabulary")
        vocab = data["vocab"]
        if vocab[:2] != [PAD, UNK] or not all(isinstance(w, str) for w in vocab) or len(set(vocab)) != len(vocab):
            raise ValueError("corrupt vocabulary: it must start with <pad>, <unk> and list distinct words")
        return cls(vocab[2:])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and other.vocab == self.vocab

    def __repr__(self) -> str:
        return f"Tokenizer({self.vocab_size} words)"


__all__ = ["Tokenizer", "words_of", "PAD", "UNK", "PAD_ID", "UNK_ID", "VOCAB_FORMAT"]
