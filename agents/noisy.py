"""Noisy linear layers: exploration by learned parameter noise.

Fortunato et al. 2018, "Noisy Networks for Exploration" (ICLR), factorised Gaussian noise (their
section 3.2): a layer with p inputs and q outputs draws p + q standard normals per resample,
eps_in (p,) and eps_out (q,), shapes them with f(x) = sign(x) * sqrt(|x|), and uses

    weight = weight_mu + weight_sigma * outer(f(eps_out), f(eps_in))      (q, p)
    bias   = bias_mu   + bias_sigma   * f(eps_out)                        (q,)

initialised with mu ~ U(-1/sqrt(p), 1/sqrt(p)) and sigma = sigma0 / sqrt(p).

Names: the means are stored as `weight` and `bias`, exactly where an `nn.Linear` keeps them, and the
scales as `weight_sigma` and `bias_sigma`. So a plain `nn.Linear` loads the mean weights by name
once the two `*_sigma` tensors are left out (`mean_tensors`): the acting path of a noisy run
(evaluation, ONNX export, quantize, prune) is an ordinary network. The noise lives in
non-persistent buffers: checkpoints hold no noise, and a resumed run draws fresh noise from its
restored generator.

Noise is drawn only by `resample(generator)` (the run's torch.Generator, on the layer's device, so
runs are reproducible); `forward` in training mode uses the last draw, in eval mode the means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SIGMA_NAMES = ("weight_sigma", "bias_sigma")
"""The parameters a NoisyLinear has beyond an nn.Linear's."""


class NoisyLinear(nn.Module):
    """A linear layer with factorised Gaussian parameter noise (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        # The last draw of f(eps_in), f(eps_out); zeros (no noise) until the first resample.
        self.register_buffer("eps_in", torch.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", torch.zeros(out_features), persistent=False)
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)
            self.weight_sigma.fill_(sigma0 * bound)
            self.bias_sigma.fill_(sigma0 * bound)

    @torch.no_grad()
    def resample(self, generator: torch.Generator) -> None:
        """Draw new factorised noise from `generator` (on this layer's device): no host sync."""
        noise = torch.randn(self.in_features + self.out_features, device=self.eps_in.device, generator=generator)
        noise = noise.sign() * noise.abs().sqrt()
        self.eps_in.copy_(noise[:self.in_features])
        self.eps_out.copy_(noise[self.in_features:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # acting greedily, evaluating: the mean weights
            return F.linear(x, self.weight, self.bias)
        weight = self.weight + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        return F.linear(x, weight, self.bias + self.bias_sigma * self.eps_out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def resample_noise(module: nn.Module, generator: torch.Generator) -> None:
    """Resample every NoisyLinear in `module` (nothing happens for a network without them)."""
    for layer in module.modules():
        if isinstance(layer, NoisyLinear):
            layer.resample(generator)


def mean_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors without the noise scales: what the nn.Linear layers of a noiseless
    copy of the network load (the means are already named `weight` and `bias`)."""
    return {name: value for name, value in tensors.items() if name.rsplit(".", 1)[-1] not in SIGMA_NAMES}
