"""Recent-episode statistics kept on the device (what `rollout/ep_rew_mean` reports)."""

from __future__ import annotations

import torch


class RecentEpisodes:
    """Returns and lengths of the last `window` finished episodes, updated without host syncs.

    Finished episodes of a step are scattered into a ring at positions computed from a running
    count; rows of envs that did not finish go to a dump slot at the end.
    """

    def __init__(self, window: int, device: torch.device):
        self.window = window
        self.returns = torch.zeros(window + 1, device=device)
        self.lengths = torch.zeros(window + 1, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)

    def add(self, episode_return: torch.Tensor, episode_length: torch.Tensor, dones: torch.Tensor) -> None:
        order = torch.cumsum(dones.long(), 0) - 1 + self.count
        slot = torch.where(dones, order % self.window, torch.full_like(order, self.window))
        self.returns[slot] = episode_return.to(self.returns.dtype)
        self.lengths[slot] = episode_length.to(self.lengths.dtype)
        self.count += dones.long().sum()

    def summary(self) -> dict[str, float]:
        """Host values (one sync): mean return and length over the window, episodes so far."""
        count = int(self.count)
        n = min(count, self.window)
        if n == 0:
            return {"episodes": 0}
        return {"episodes": count, "ep_rew_mean": float(self.returns[:n].mean()),
                "ep_len_mean": float(self.lengths[:n].mean())}
