"""Vision backbones: MLP, the Nature CNN, the IMPALA CNN, a small ResNet and a small ViT.

Every backbone takes a batch of observations and returns features `(batch, out_dim)`. uint8
pixels (high 255) are scaled to [0, 1] inside the module, on the device, so replay and rollout
storage keep them as uint8; one-hot uint8 grids (high 1) and float inputs are used as they are.
The base class lives here because the text and multi-input backbones build on the same contract.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Backbone(nn.Module):
    """Base class: `forward(obs) -> features (batch, out_dim)`."""

    out_dim: int


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) computed as 2 sigmoid(2x) - 1 (within 2e-7 of torch.tanh), with tanh's own backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Tanh):
    """nn.Tanh, faster on large CPU batches.

    The CPU float32 tanh kernel costs about 2.6 ns per element here, six times the sigmoid kernel,
    so above `min_numel` elements tanh is computed from the sigmoid (forward and backward together
    about 1.6x faster at a 1,024 x 64 activation). Small batches (acting) and other devices use
    torch.tanh, where the autograd.Function's own overhead would cost more than it saves.
    """

    min_numel = 65_536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() >= self.min_numel:
            return _SigmoidTanh.apply(x)
        return torch.tanh(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": Tanh}


def norm_layer(layer_norm: bool, shape: int | tuple[int, ...]) -> list[nn.Module]:
    """[LayerNorm(shape)] when `layer_norm`, else []: what goes between a layer and its activation."""
    return [nn.LayerNorm(shape)] if layer_norm else []


def scaled_width(units: int, width: float) -> int:
    """`units` times the width multiplier `width`, rounded, at least 1."""
    return max(1, round(units * width))


def input_scale(space: gym.spaces.Box) -> float | None:
    """1/high for uint8 pixels (0..255 -> [0, 1]); None (use as is) for one-hot grids and floats."""
    if space.dtype == np.uint8 and float(np.max(space.high)) > 1:
        return 1.0 / float(np.max(space.high))
    return None


class MLP(Backbone):
    """Flatten the observation, then Linear + activation layers (with `layer_norm`, Linear +
    LayerNorm + activation: PQN's normalisation, Gallici et al. 2025)."""

    def __init__(self, observation_space: gym.spaces.Box, hidden_sizes: tuple[int, ...] = (256, 256),
                 activation: str = "relu", layer_norm: bool = False):
        super().__init__()
        in_dim = int(np.prod(observation_space.shape))
        self.scale = input_scale(observation_space)
        self.activation = activation  # recorded so saved weights can be checked against it
        # Vector observations go straight in (no per-call flatten or scaling: small nets are overhead-bound).
        layers: list[nn.Module] = [nn.Flatten()] if len(observation_space.shape) > 1 else []
        for width in hidden_sizes:
            layers += [nn.Linear(in_dim, width), *norm_layer(layer_norm, width), ACTIVATIONS[activation]()]
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
    `layer_norm`: a LayerNorm over each conv output (channels and positions together) and over the
    512 features, before each ReLU, as in PQN's Atari network (Gallici et al. 2025).
    `width` multiplies every layer's channels and the features (rounded, at least 1): the
    parameters scale about as width**2 (a student for `rlbase distill`).
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 512, layer_norm: bool = False,
                 width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        x = torch.zeros(1, *observation_space.shape)
        features_dim = scaled_width(features_dim, width)
        for out_channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            conv = nn.Conv2d(x.shape[1], scaled_width(out_channels, width), kernel, stride=stride)
            with torch.no_grad():
                x = conv(x)
            layers += [conv, *norm_layer(layer_norm, tuple(x.shape[1:])), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        flat = x.numel()
        self.fc = nn.Sequential(nn.Linear(flat, features_dim), *norm_layer(layer_norm, features_dim), nn.ReLU())
        self.out_dim = features_dim
        self.to(memory_format=torch.channels_last)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = (obs.to(torch.float32) * (1.0 / 255.0)).contiguous(memory_format=torch.channels_last)
        return self.fc(self.convs(x))


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
    the standard choice for procedurally generated levels (Procgen). `width` multiplies the channels
    of every stage and the features, as for `NatureCNN`.
    """

    def __init__(self, observation_space: gym.spaces.Box, channels: tuple[int, ...] = (16, 32, 32),
                 features_dim: int = 256, layer_norm: bool = False, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = observation_space.shape[0]
        features_dim = scaled_width(features_dim, width)
        for out_channels in (scaled_width(c, width) for c in channels):
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                       nn.MaxPool2d(3, stride=2, padding=1),
                       _ResidualBlock(out_channels), _ResidualBlock(out_channels)]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *observation_space.shape)).shape[1]
        # `layer_norm`: on the features only (the residual stages keep their pre-activation form).
        self.fc = nn.Sequential(nn.Linear(flat, features_dim), *norm_layer(layer_norm, features_dim), nn.ReLU())
        self.out_dim = features_dim
        self.scale = input_scale(observation_space)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float32)
        return self.fc(self.convs(x * self.scale if self.scale is not None else x))


def _group_norm(channels: int) -> nn.GroupNorm:
    # 8 groups where the width allows; gcd keeps any channel count legal.
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _BasicBlock(nn.Module):
    """A ResNet basic block (He et al., 2016): two 3x3 convs with GroupNorm, plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm0 = _group_norm(out_channels)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # a 1x1 projection where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          _group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm0(self.conv0(x)))
        return torch.relu(self.norm1(self.conv1(y)) + self.shortcut(x))


def resnet_stem_stride(height: int, width: int) -> int:
    """The stem's stride: 4 for frames of 64 px and up, 2 from 32 px, 1 for small grids (every cell counts)."""
    side = min(height, width)
    return 4 if side >= 64 else 2 if side >= 32 else 1


class ResNet(Backbone):
    """A small ResNet (He et al., 2016) for any (C, H, W) input, from a 7x7 grid to an 84x84 Atari stack.

    A stem conv (strided on large frames so the stages run on ~21x21 maps, not 84x84), three stages
    of two basic blocks (the second and third stages halve the resolution with a strided conv),
    global average pooling, then Linear + ReLU to `features_dim`.

    GroupNorm, not BatchNorm: BatchNorm normalises with batch statistics, so its output for an
    observation depends on the rest of the batch and on train/eval mode: acting (a batch of
    num_envs, eval statistics) and learning (minibatches, batch statistics) would see different
    networks, which skews PPO's probability ratios and DQN's targets, and its running statistics lag
    the drifting RL data. GroupNorm normalises each sample on its own, the same in both modes.
    """

    def __init__(self, observation_space: gym.spaces.Box, channels: tuple[int, int, int] = (16, 32, 64),
                 features_dim: int = 256):
        super().__init__()
        in_channels, height, width = observation_space.shape
        stride = resnet_stem_stride(height, width)
        kernel = 3 if stride == 1 else 2 * stride - 1  # overlapping receptive fields at any stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], kernel, stride=stride, padding=kernel // 2, bias=False),
            _group_norm(channels[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        previous = channels[0]
        for i, width_out in enumerate(channels):
            blocks += [_BasicBlock(previous, width_out, 1 if i == 0 else 2), _BasicBlock(width_out, width_out, 1)]
            previous = width_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Sequential(nn.Linear(previous, features_dim), nn.ReLU())
        self.out_dim = features_dim
        self.scale = input_scale(observation_space)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float32)
        x = self.blocks(self.stem(x * self.scale if self.scale is not None else x))
        return self.fc(x.mean(dim=(2, 3)))  # global average pooling: any input size


def vit_patch_size(height: int, width: int, max_side: int = 8) -> int:
    """The patch size giving at most `max_side` x `max_side` patches: 1 for a 7x7 grid, 2 for 11x11,
    5 for 40x40, 8 for 64x64, 11 for 84x84 (padded to 88x88)."""
    return max(1, math.ceil(max(height, width) / max_side))


def transformer_encoder(embed_dim: int, depth: int, heads: int, mlp_ratio: int) -> nn.TransformerEncoder:
    """The pre-norm Transformer encoder of the vit and text backbones (GELU, no dropout, batch first).
    Nested tensors are off: they do not apply with pre-norm layers and would warn on every build."""
    layer = nn.TransformerEncoderLayer(embed_dim, heads, mlp_ratio * embed_dim, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class ViT(Backbone):
    """A small Vision Transformer (Dosovitskiy et al., 2021) for any (C, H, W) input.

    Non-overlapping patches (a Conv2d with kernel = stride = patch size; the input is zero-padded on
    the right and bottom to a multiple of the patch size), learned position embeddings and a CLS
    token, a pre-norm Transformer encoder (dropout 0: RL data is already noisy), a final LayerNorm,
    and the CLS output projected to `features_dim` with a ReLU. The patch size is chosen so there are
    at most 8x8 patches (`vit_patch_size`), which keeps attention cheap enough for acting on CPU.
    """

    def __init__(self, observation_space: gym.spaces.Box, embed_dim: int = 128, depth: int = 3, heads: int = 4,
                 mlp_ratio: int = 2, features_dim: int = 256):
        super().__init__()
        in_channels, height, width = observation_space.shape
        self.patch = vit_patch_size(height, width)
        rows, cols = math.ceil(height / self.patch), math.ceil(width / self.patch)
        # F.pad order: (left, right, top, bottom); None when the size already divides.
        pad = (0, cols * self.patch - width, 0, rows * self.patch - height)
        self.pad = pad if any(pad) else None
        self.embed = nn.Conv2d(in_channels, embed_dim, self.patch, stride=self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.positions = nn.Parameter(torch.zeros(1, 1 + rows * cols, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.encoder = transformer_encoder(embed_dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Sequential(nn.Linear(embed_dim, features_dim), nn.ReLU())
        self.out_dim = features_dim
        self.scale = input_scale(observation_space)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float32)
        if self.scale is not None:
            x = x * self.scale
        if self.pad is not None:
            x = F.pad(x, self.pad)
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (batch, patches, embed_dim)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.positions
        cls = self.encoder(tokens)[:, 0]
        return self.fc(self.norm(cls))  # LayerNorm is per token, so normalising the CLS row alone is exact


class FiLMCNN(Backbone):
    """A CNN whose feature maps an instruction can modulate: FiLM (Perez et al., 2018), the standard
    way language conditions vision in instruction-following agents (BabyAI).

    After each convolution, `x <- relu((1 + gamma) * x + beta)` with per-channel (gamma, beta)
    computed linearly from a conditioning vector (the text features of the same observation). The
    FiLM layers start at zero, so the network starts as a plain CNN. Small grids get padded 3x3
    convolutions (16 and 32 channels, full resolution); images of 36 px and more the Nature CNN's
    strided stack. On its own (no conditioning: `condition_dim` 0) it is just that CNN; inside a
    multi-input backbone it is conditioned on the other keys' features (`set_condition_dim`).
    """

    conditioned = True

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 256):
        super().__init__()
        channels, height, width = observation_space.shape
        if min(height, width) >= 36:
            spec = [(32, 8, 4, 0), (64, 4, 2, 0), (64, 3, 1, 0)]
        else:  # full resolution: what an object is, and whether it is the one named, is per square
            spec = [(16, 3, 1, 1), (32, 3, 1, 1)]
        self.convs = nn.ModuleList()
        for out_channels, kernel, stride, padding in spec:
            self.convs.append(nn.Conv2d(channels, out_channels, kernel, stride=stride, padding=padding))
            channels = out_channels
        with torch.no_grad():
            x = torch.zeros(1, *observation_space.shape)
            for conv in self.convs:
                x = conv(x)
            flat = x.numel()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, features_dim), nn.ReLU())
        self.film = nn.ModuleList()
        self.out_dim = features_dim
        self.scale = input_scale(observation_space)

    def set_condition_dim(self, condition_dim: int) -> None:
        """Create the FiLM generators for conditioning vectors of `condition_dim` (zero-initialised)."""
        self.film = nn.ModuleList(nn.Linear(condition_dim, 2 * conv.out_channels) for conv in self.convs)
        self.reset_conditioning()

    def reset_conditioning(self) -> None:
        """Zero the FiLM generators (identity modulation). Agents call it again after their own
        weight initialisation (orthogonal), which would otherwise give every instruction a random
        rescaling of the feature maps before anything is learned."""
        for layer in self.film:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = obs.to(torch.float32)
        if self.scale is not None:
            x = x * self.scale
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if condition is not None and len(self.film):
                gamma, beta = self.film[i](condition)[:, :, None, None].chunk(2, dim=1)
                x = x * (1 + gamma) + beta
            x = torch.relu(x)
        return self.fc(x)
