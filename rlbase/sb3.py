"""Stable-Baselines3 interop: any rlbase backbone, optionally pretrained and frozen, as an SB3 features extractor.

    from stable_baselines3 import PPO
    from rlbase.sb3 import policy_kwargs

    model = PPO("MlpPolicy", env, policy_kwargs=policy_kwargs("resnet", weights="pretrained/maze-action__resnet__0",
                                                              freeze=True))

or by hand: `policy_kwargs=dict(features_extractor_class=BackboneExtractor,
features_extractor_kwargs=dict(backbone="resnet", weights=DIR, freeze=True), normalize_images=False)`.
rlbase backbones scale uint8 pixels themselves, so SB3's own division by 255 must be off
(`normalize_images=False`, which `policy_kwargs` sets); for Dict observations use SB3's
`MultiInputPolicy`.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import torch
from torch import nn

try:
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
except ImportError as exc:  # pragma: no cover - SB3 is a dev/bench dependency
    raise ImportError("rlbase.sb3 needs stable-baselines3: pip install stable-baselines3") from exc


class BackboneExtractor(BaseFeaturesExtractor):
    """An rlbase backbone (by registry name, `auto` by default) behind SB3's features-extractor interface.

    `weights` (a `rlbase pretrain` run directory or its `backbone/` artifact) initialises it, and
    `freeze=True` keeps it fixed (its parameters get no gradient, so SB3's optimiser never moves them).
    With weights and `backbone="auto"` the artifact's backbone is used.
    """

    def __init__(self, observation_space: gym.Space, backbone: str = "auto", weights: str | None = None,
                 freeze: bool = False, hidden_sizes: tuple[int, ...] = (256, 256), activation: str = "relu"):
        from rlbase.backbones import build_backbone, check_backbone
        from rlbase.backbones.artifact import load_backbone_spec, load_backbone_weights

        if weights:
            spec = load_backbone_spec(weights)
            if backbone not in ("auto", spec["name"]):
                raise ValueError(f"backbone {backbone!r} does not match the pretrained backbone in {weights} "
                                 f"({spec['name']})")
            backbone = spec["name"]
            if spec.get("quantization") is not None and not freeze:
                # its weights are int8 values dequantized: SB3's optimiser would move them off that grid
                raise ValueError(f"{weights} is an int8 artifact (rlbase quantize): use it with freeze=True, or "
                                 f"fine-tune the fp32 artifact it came from")
            if backbone == "mlp":
                hidden_sizes, activation = tuple(spec["hidden_sizes"]), spec["activation"]
        name = check_backbone(backbone, observation_space)
        module = build_backbone(name, observation_space, tuple(hidden_sizes), activation)
        super().__init__(observation_space, module.out_dim)
        if weights:
            load_backbone_weights(module, weights, name, observation_space)
        if freeze:
            module.requires_grad_(False)
        self.backbone = module
        self.backbone_name = name
        self.pretrained = bool(weights)

    def apply(self, fn: Callable[[nn.Module], None]) -> "BackboneExtractor":
        """nn.Module.apply, except that pretrained weights are kept: SB3's policies re-initialise
        their features extractor through `apply` (orthogonal init) after building it."""
        if self.pretrained:
            return self
        # torch's orthogonal_ cannot view channels_last kernels (the Nature CNN's): init them contiguous.
        channels_last = any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                            and not p.is_contiguous() for p in self.parameters())
        if channels_last:
            self.to(memory_format=torch.contiguous_format)
        super().apply(fn)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def forward(self, observations: Any) -> torch.Tensor:
        return self.backbone(observations)


def policy_kwargs(backbone: str = "auto", weights: str | None = None, freeze: bool = False,
                  **extra: Any) -> dict[str, Any]:
    """SB3 `policy_kwargs` for an rlbase backbone (`extra` goes to the policy: net_arch, ...)."""
    return {"features_extractor_class": BackboneExtractor,
            "features_extractor_kwargs": {"backbone": backbone, "weights": weights, "freeze": freeze},
            "normalize_images": False, **extra}
