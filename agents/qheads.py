"""Q-network heads for DQN: expected values, or a distribution over returns per action.

- none:  one Q-value per action (Mnih et al. 2015), Huber loss on the TD error (agents/dqn.py).
- c51:   a categorical distribution on `num_atoms` fixed atoms evenly spaced in [v_min, v_max]
         (Bellemare et al. 2017, "A Distributional Perspective on Reinforcement Learning"); the
         target distribution r + gamma^k z is projected back onto the atoms (`project_categorical`)
         and the loss is its cross-entropy with the predicted distribution.
- qrdqn: `num_quantiles` quantiles of the return at the fractions tau_hat_i = (2i + 1) / (2N)
         (Dabney et al. 2018, "Distributional Reinforcement Learning with Quantile Regression");
         the loss is the quantile Huber loss against every target quantile (`quantile_huber_loss`).

Whatever the head, `QNetwork.forward(obs)` returns expected Q-values (batch, actions): acting,
evaluation and the compression commands see an ordinary Q-network. `QNetwork.distribution(obs)`
returns the per-action outputs (batch, actions, N): C51's logits, QR-DQN's quantiles.

The dueling head (Wang et al. 2016) works per atom or quantile: value (batch, 1, N) + advantage
(batch, actions, N) - its mean over actions, then (C51) the softmax over atoms, as in Rainbow
(Hessel et al. 2018). With `noisy`, the head's linear layers (`head`, or `value` and `advantage`:
the layers after the backbone's features; the backbone's own layers stay deterministic) are
NoisyLinear layers (agents/noisy.py).
"""

from __future__ import annotations

import torch
from torch import nn

from rlbase.agents.noisy import NoisyLinear


class QNetwork(nn.Module):
    """Backbone features -> per action: one Q-value, C51 logits over atoms, or QR-DQN quantiles
    (optionally through a dueling head, optionally with noisy head layers)."""

    def __init__(self, backbone: nn.Module, num_actions: int, dueling: bool, *, distributional: str = "none",
                 num_atoms: int = 51, v_min: float = -10.0, v_max: float = 10.0, num_quantiles: int = 200,
                 noisy: bool = False, noisy_sigma0: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.dueling, self.distributional, self.num_actions = dueling, distributional, num_actions
        self.outputs = {"none": 1, "c51": num_atoms, "qrdqn": num_quantiles}[distributional]
        linear = (lambda i, o: NoisyLinear(i, o, noisy_sigma0)) if noisy else nn.Linear
        # Today's names and shapes for the plain head (outputs == 1): older checkpoints load.
        if dueling:
            self.value = linear(backbone.out_dim, self.outputs)
            self.advantage = linear(backbone.out_dim, num_actions * self.outputs)
        else:
            self.head = linear(backbone.out_dim, num_actions * self.outputs)
        if distributional == "c51":  # not a parameter, not saved: rebuilt from the config
            self.register_buffer("support", torch.linspace(v_min, v_max, num_atoms), persistent=False)

    def distribution(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, actions, N): C51 logits over the atoms, QR-DQN quantiles (N = 1 for the plain head)."""
        features = self.backbone(obs)
        if not self.dueling:
            return self.head(features).view(-1, self.num_actions, self.outputs)
        advantage = self.advantage(features).view(-1, self.num_actions, self.outputs)
        return self.value(features).unsqueeze(1) + advantage - advantage.mean(dim=1, keepdim=True)

    def expected(self, outputs: torch.Tensor) -> torch.Tensor:
        """Expected Q-values (batch, actions) of `distribution`'s outputs."""
        if self.distributional == "c51":
            return (outputs.softmax(dim=-1) * self.support).sum(dim=-1)
        if self.distributional == "qrdqn":
            return outputs.mean(dim=-1)
        return outputs.squeeze(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.expected(self.distribution(obs))


def project_categorical(next_probs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor,
                        support: torch.Tensor) -> torch.Tensor:
    """The C51 target: the distribution of returns + discounts * Z, with Z ~ `next_probs` (batch, N) on
    the atoms `support` (N,), projected onto the same atoms (Bellemare et al. 2017, Algorithm 1).

    Each shifted atom Tz, clipped to [v_min, v_max], sits at fractional index b = (Tz - v_min) / dz
    between atoms l = floor(b) and l + 1, and gives them (l + 1 - b) and (b - l) of its mass. l is
    capped at N - 2 so that b exactly on an atom (l == ceil(b): the paper's two weights would both be
    0 and the mass would vanish) gives all of it to atom b, including the last one. Vectorised with
    scatter_add on the device; each row sums to 1.
    """
    num_atoms = support.numel()
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (num_atoms - 1)
    shifted = (returns.unsqueeze(1) + discounts.unsqueeze(1) * support).clamp(v_min, v_max)  # (batch, N)
    b = (shifted - v_min) / delta
    lower = b.floor().clamp(0, num_atoms - 2)
    upper_weight = (b - lower).clamp(0.0, 1.0)
    lower = lower.long()
    target = torch.zeros_like(next_probs)
    target.scatter_add_(1, lower, next_probs * (1.0 - upper_weight))
    target.scatter_add_(1, lower + 1, next_probs * upper_weight)
    return target


def quantile_huber_loss(quantiles: torch.Tensor, targets: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per-sample quantile Huber loss (batch,) of predicted `quantiles` (batch, N) at tau_hat_i =
    (2i + 1) / (2N) against the `targets` (batch, N'), Dabney et al. 2018 eq. 10:
    sum over i of the mean over j of |tau_hat_i - 1{u_ij < 0}| * L_kappa(u_ij) / kappa, with
    u_ij = target_j - quantile_i and L_kappa the Huber loss of threshold kappa."""
    n = quantiles.shape[1]
    tau_hat = (torch.arange(n, device=quantiles.device, dtype=quantiles.dtype) + 0.5) / n  # (N,)
    u = targets.unsqueeze(1) - quantiles.unsqueeze(2)  # (batch, N, N'): pairs (i, j)
    # Huber as |u| * c - c^2 / 2 with c = min(|u|, kappa): 0.5 u^2 inside the band, kappa (|u| - kappa / 2)
    # outside; fewer passes over the (batch, N, N') pairs than F.huber_loss against zeros.
    magnitude = u.abs()
    clipped = magnitude.clamp(max=kappa)
    huber = clipped * (magnitude - 0.5 * clipped)
    with torch.no_grad():  # |tau_hat_i - 1{u < 0}|, already divided by kappa
        weight = torch.where(u < 0, 1.0 - tau_hat.view(1, n, 1), tau_hat.view(1, n, 1)) / kappa
    return (weight * huber).sum(dim=2).sum(dim=1) / targets.shape[1]
