"""Backbones: feature extractors built from an observation space, each exposing `out_dim`.

uint8 images are scaled to [0, 1] inside the module, on the device, so replay and rollout
storage can keep them as uint8.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlbase.errors import UsageError


class Backbone(nn.Module):
    """Base class: `forward(obs) -> features (batch, out_dim)`."""

    out_dim: int


def is_image_space(space: gym.spaces.Space) -> bool:
    """A (C, H, W) Box: Atari stacks, rendered frames."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and min(space.shape[1:]) >= 36


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(Backbone):
    """Flatten the observation, then Linear + ReLU layers."""

    def __init__(self, observation_space: gym.spaces.Box, hidden_sizes: tuple[int, ...] = (256, 256),
                 activation: str = "relu"):
        super().__init__()
        in_dim = int(np.prod(observation_space.shape))
        self.scale = input_scale(observation_space)
        # Vector observations go straight in (no per-call flatten or scaling: small nets are overhead-bound).
        layers: list[nn.Module] = [nn.Flatten()] if len(observation_space.shape) > 1 else []
        for width in hidden_sizes:
            layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
            in_dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        return self.net(x * self.scale if self.scale is not None else x)


class NatureCNN(Backbone):
    """The DQN Nature paper CNN (Mnih et al., 2015): 3 conv layers, then a 512-unit layer.

    Works for any image size of at least 36x36: the flatten size comes from a dummy forward.
    Runs in channels_last, which is faster for these convolutions on CPU (oneDNN) and GPU.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 512):
        super().__init__()
        channels = observation_space.shape[0]
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *observation_space.shape)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, features_dim), nn.ReLU())
        self.out_dim = features_dim
        self.to(memory_format=torch.channels_last)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = (obs.to(torch.float32) * (1.0 / 255.0)).contiguous(memory_format=torch.channels_last)
        return self.fc(self.convs(x))


def input_scale(space: gym.spaces.Box) -> float | None:
    """1/high for uint8 pixels (0..255 -> [0, 1]); None (use as is) for one-hot grids and floats."""
    if space.dtype == np.uint8 and float(np.max(space.high)) > 1:
        return 1.0 / float(np.max(space.high))
    return None


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaCNN(Backbone):
    """The IMPALA CNN (Espeholt et al., 2018): three stages of conv, max-pool and two residual blocks.

    Padded 3x3 convolutions and stride-2 pools work from tiny grids (a 7x7 maze) to 64x64 frames;
    the standard choice for procedurally generated levels (Procgen).
    """

    def __init__(self, observation_space: gym.spaces.Box, channels: tuple[int, ...] = (16, 32, 32),
                 features_dim: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = observation_space.shape[0]
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                       nn.MaxPool2d(3, stride=2, padding=1),
                       _ResidualBlock(out_channels), _ResidualBlock(out_channels)]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *observation_space.shape)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, features_dim), nn.ReLU())
        self.out_dim = features_dim
        self.scale = input_scale(observation_space)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float32)
        return self.fc(self.convs(x * self.scale if self.scale is not None else x))


def is_grid_space(space: gym.spaces.Space) -> bool:
    """A (C, H, W) Box of any spatial size: images and small grids (maze observations)."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


BACKBONES: dict[str, tuple[Callable[..., Backbone], Callable[[gym.spaces.Space], bool], str]] = {
    "mlp": (lambda space, hidden_sizes=(256, 256), activation="relu": MLP(space, hidden_sizes, activation),
            lambda space: isinstance(space, gym.spaces.Box), "a Box observation space"),
    "nature_cnn": (lambda space, hidden_sizes=None, activation=None: NatureCNN(space),
                   is_image_space, "image observations of shape (C, H, W) with H, W >= 36"),
    "impala_cnn": (lambda space, hidden_sizes=None, activation=None: ImpalaCNN(space),
                   is_grid_space, "image or grid observations of shape (C, H, W)"),
}


def default_backbone(observation_space: gym.spaces.Space) -> str:
    """nature_cnn for images (H, W >= 36), impala_cnn for smaller (C, H, W) grids, mlp otherwise."""
    if is_image_space(observation_space):
        return "nature_cnn"
    return "impala_cnn" if is_grid_space(observation_space) else "mlp"


def check_backbone(name: str, observation_space: gym.spaces.Space) -> str:
    """The backbone name to use (`auto` resolved); a UsageError when it cannot take these observations."""
    if name == "auto":
        name = default_backbone(observation_space)
    if name not in BACKBONES:
        raise UsageError(f"unknown backbone {name!r}; choose from auto, {', '.join(BACKBONES)}")
    _, accepts, needs = BACKBONES[name]
    if not accepts(observation_space):
        raise UsageError(f"backbone {name!r} needs {needs}, but the environment's observations have shape "
                         f"{getattr(observation_space, 'shape', None)}")
    return name


def build_backbone(name: str, observation_space: gym.spaces.Space, hidden_sizes: tuple[int, ...] = (256, 256),
                   activation: str = "relu") -> Backbone:
    """Build backbone `name` (or the default for the space when `name` is `auto`).

    `hidden_sizes` and `activation` shape the mlp backbone; image backbones ignore them.
    """
    name = check_backbone(name, observation_space)
    return BACKBONES[name][0](observation_space, hidden_sizes=hidden_sizes, activation=activation)
