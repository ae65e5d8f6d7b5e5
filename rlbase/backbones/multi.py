"""Multi-input backbones for `gym.spaces.Dict` observations (an image and a mission, say).

One sub-backbone per key, in sorted key order, their features concatenated. Which backbone
each key gets is resolved by `rlbase.backbones.backbone_names` from a name: `auto`, a single
backbone name, or a per-key spec such as "image=resnet,mission=text"; this module parses and
formats those specs and holds the module itself.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from rlbase.backbones.vision import Backbone
from rlbase.errors import UsageError


def is_backbone_spec(name: str) -> bool:
    """Whether `name` is a per-key spec ("image=resnet,mission=text") rather than one backbone name."""
    return "=" in name


def parse_backbone_spec(spec: str) -> dict[str, str]:
    """{"image": "resnet", "mission": "text"} from "image=resnet, mission=text"; UsageError when malformed."""
    names: dict[str, str] = {}
    for entry in spec.split(","):
        key, sep, name = (part.strip() for part in entry.partition("="))
        if not sep or not key or not name:
            raise UsageError(f"bad backbone spec {spec!r}: write key=backbone pairs separated by commas, "
                             f"like 'image=resnet,mission=text'")
        if key in names:
            raise UsageError(f"bad backbone spec {spec!r}: key {key!r} appears twice")
        names[key] = name
    return names


def format_backbone_spec(names: Mapping[str, str]) -> str:
    """The canonical spec of per-key names: every key, sorted ("image=resnet,mission=text")."""
    return ",".join(f"{key}={names[key]}" for key in sorted(names))


class MultiInputBackbone(Backbone):
    """Features of a dict observation: each key through its own backbone, concatenated in sorted key
    order, then a fusion MLP (`fusion_sizes`, ReLU) so the features of one key can gate those of
    another (which object the instruction names, where that object is in the image): the agents'
    heads are linear, and a sum of per-key terms could not express "go to the one it names".

    `forward(obs)` takes `{key: (batch, ...) tensor}`; `out_dim` is the last fusion width (the sum
    of the sub-backbones' widths with `fusion_sizes=()`).
    """

    def __init__(self, sub_backbones: Mapping[str, Backbone], fusion_sizes: tuple[int, ...] = (256, 256)):
        super().__init__()
        if not sub_backbones:
            raise UsageError("a multi-input backbone needs at least one observation key")
        for key in sub_backbones:
            if not key or "." in key:  # torch module names cannot hold dots
                raise UsageError(f"observation key {key!r} cannot name a sub-backbone (empty or contains '.')")
        self.sub_backbones = nn.ModuleDict({key: sub_backbones[key] for key in sorted(sub_backbones)})
        # Conditioned sub-backbones (FiLM CNNs) read the features of the other keys (the instruction).
        self.conditioned = [key for key, net in self.sub_backbones.items() if getattr(net, "conditioned", False)]
        self.plain = [key for key in self.sub_backbones if key not in self.conditioned]
        condition_dim = sum(self.sub_backbones[key].out_dim for key in self.plain)
        if self.conditioned and condition_dim:
            for key in self.conditioned:
                self.sub_backbones[key].set_condition_dim(condition_dim)
        width = sum(net.out_dim for net in self.sub_backbones.values())
        layers: list[nn.Module] = []
        for size in fusion_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.fusion = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        features = {key: self.sub_backbones[key](obs[key]) for key in self.plain}
        if self.conditioned:
            condition = torch.cat([features[key] for key in self.plain], dim=1) if self.plain else None
            for key in self.conditioned:
                features[key] = self.sub_backbones[key](obs[key], condition)
        return self.fusion(torch.cat([features[key] for key in self.sub_backbones], dim=1))
