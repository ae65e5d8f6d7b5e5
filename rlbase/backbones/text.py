"""Text: a word-level tokenizer with its own vocabulary file.

Instructions in rlbase's worlds are short, templated English ("go to the blue ball"), so a
word-level vocabulary is exact and small: lowercase, split on anything that is not a letter or a
digit. Id 0 pads, id 1 stands for any word outside the vocabulary. The vocabulary is a JSON file
saved next to a text encoder's weights, so a pretrained encoder always reads ids the way it was
trained.

`TextEncoder` is the backbone for such token-id observations: a small Transformer encoder with
masked mean pooling.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlbase.backbones.vision import Backbone, transformer_encoder

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


# Token-id spaces larger than this are not vocabularies (a Box with default int64 bounds would
# otherwise ask for an embedding table of 2**63 rows).
MAX_VOCAB = 1_000_000


def is_token_space(space: gym.spaces.Space) -> bool:
    """A 1-D Box of token ids: integer dtype, low >= 0, high < MAX_VOCAB.

    uint8 vectors are excluded: they are byte features (Atari RAM), not ids, and stay with the mlp.
    """
    return (isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.shape[0] > 0
            and np.issubdtype(space.dtype, np.integer) and space.dtype != np.uint8
            and int(np.min(space.low)) >= 0 and int(np.max(space.high)) < MAX_VOCAB)


class TextEncoder(Backbone):
    """A small Transformer encoder over token ids (vocabulary = space.high.max() + 1, PAD_ID pads).

    Token and learned position embeddings, a pre-norm Transformer encoder whose attention ignores
    padding, a final LayerNorm, the mean over the non-padding tokens, then Linear + ReLU to
    `features_dim`. Ids outside the vocabulary read as UNK_ID. A row of nothing but padding (an
    empty instruction) gives the features of an all-zero mean: finite, never NaN. Float
    observations holding integer ids (Stable-Baselines3 casts observations to float) are rounded.
    """

    def __init__(self, observation_space: gym.spaces.Box, embed_dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp_ratio: int = 2, features_dim: int = 128):
        super().__init__()
        self.vocab_size = int(np.max(observation_space.high)) + 1
        max_len = observation_space.shape[0]
        self.tokens = nn.Embedding(self.vocab_size, embed_dim, padding_idx=PAD_ID)
        self.positions = nn.Parameter(torch.zeros(1, max_len, embed_dim))
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.encoder = transformer_encoder(embed_dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Sequential(nn.Linear(embed_dim, features_dim), nn.ReLU())
        self.out_dim = features_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        ids = obs.round().long() if obs.is_floating_point() else obs.long()  # (batch, max_len)
        ids = torch.where((ids >= 0) & (ids < self.vocab_size), ids, UNK_ID)
        padding = ids == PAD_ID
        # Attention over nothing but masked keys is a softmax of -inf's (NaN): an all-padding row
        # attends to its first token instead, and the pooling below still leaves it out.
        attend_mask = padding.clone()
        attend_mask[:, 0] &= ~padding.all(dim=1)
        x = self.encoder(self.tokens(ids) + self.positions, src_key_padding_mask=attend_mask)
        keep = (~padding).unsqueeze(-1).to(x.dtype)  # (batch, max_len, 1)
        pooled = (self.norm(x) * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.fc(pooled)
