"""Text backbone: `TextEncoder`, a small Transformer encoder with masked mean pooling over token-id
observations (the ids of `rlbase.tokenizer.Tokenizer`: 0 pads, 1 is an unknown word).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlbase.backbones.vision import Backbone, transformer_encoder
from rlbase.tokenizer import PAD_ID, UNK_ID

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
        if self.training and ids.shape[0] > 1:
            # A training batch holds few distinct instructions (an env keeps its mission for a whole
            # episode): encode each distinct row once and give its features to every copy (their
            # gradients add up). Rows never interact, so this is the same function, a fraction of the
            # cost. Training only: acting batches are small, and exporters need no data-dependent shapes.
            distinct, copies = torch.unique(ids, dim=0, return_inverse=True)
            if distinct.shape[0] < ids.shape[0]:
                return self.encode(distinct)[copies]
        return self.encode(ids)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """The features of rows of in-vocabulary token ids (batch, max_len) -> (batch, features_dim)."""
        padding = ids == PAD_ID
        # Attention over nothing but masked keys is a softmax of -inf's (NaN): an all-padding row
        # attends to its first token instead, and the pooling below still leaves it out.
        attend_mask = padding.clone()
        attend_mask[:, 0] &= ~padding.all(dim=1)
        x = self.encoder(self.tokens(ids) + self.positions, src_key_padding_mask=attend_mask)
        keep = (~padding).unsqueeze(-1).to(x.dtype)  # (batch, max_len, 1)
        pooled = (self.norm(x) * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.fc(pooled)
