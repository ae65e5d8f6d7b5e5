"""Statistics kept on the device between log points: recent episodes (what `rollout/ep_rew_mean`
reports) and running means of training values (losses, Q-values)."""

from __future__ import annotations

import torch


class RecentEpisodes:
    """Returns and lengths of the last `window` finished episodes, updated without host syncs.

    Each step only copies the env's per-env episode totals and done mask into a staging block
    (three cheap copies). Every `stage_steps` steps, and before a summary, the staged episodes
    are scattered into the ring in one vectorised pass: positions come from a running count,
    and entries that are not finished episodes go to a dump slot at the end of the ring.
    """

    def __init__(self, window: int, device: torch.device, num_envs: int = 1, stage_steps: int = 256):
        self.window = window
        self.returns = torch.zeros(window + 1, device=device)
        self.lengths = torch.zeros(window + 1, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.stage_returns = torch.zeros(stage_steps, num_envs, device=device)
        self.stage_lengths = torch.zeros(stage_steps, num_envs, device=device)
        self.stage_dones = torch.zeros(stage_steps, num_envs, dtype=torch.bool, device=device)
        self.staged = 0

    def add(self, episode_return: torch.Tensor, episode_length: torch.Tensor, dones: torch.Tensor,
            rows: slice | None = None) -> None:
        """One step's episode totals and done mask; `rows`: of those envs only (a half of a
        `SplitVecEnv`), the others counted as not done in this staging row."""
        i = self.staged
        if rows is None:
            self.stage_dones[i] = dones
        else:
            self.stage_dones[i] = False
            self.stage_dones[i, rows] = dones
        index = i if rows is None else (i, rows)
        self.stage_returns[index] = episode_return
        self.stage_lengths[index] = episode_length
        self.staged += 1
        if self.staged == self.stage_returns.shape[0]:
            self.flush()

    def flush(self) -> None:
        if self.staged == 0:
            return
        dones = self.stage_dones[: self.staged].flatten()
        order = torch.cumsum(dones.long(), 0) - 1 + self.count
        new_count = self.count + dones.long().sum()
        # Only the newest `window` episodes of this flush go to the ring, so no ring slot is written twice.
        keep = dones & (order >= new_count - self.window)
        slot = torch.where(keep, order % self.window, torch.full_like(order, self.window))
        self.returns.index_copy_(0, slot, self.stage_returns[: self.staged].flatten())
        self.lengths.index_copy_(0, slot, self.stage_lengths[: self.staged].flatten())
        self.count = new_count
        self.staged = 0

    def state(self) -> dict[str, torch.Tensor]:
        """The window and the episode count, for a checkpoint (a resumed run reports on from them)."""
        self.flush()
        return {"episodes.returns": self.returns, "episodes.lengths": self.lengths, "episodes.count": self.count}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore `state()`; a checkpoint written before it was saved leaves the window empty."""
        if "episodes.count" not in tensors:
            return
        for name in ("returns", "lengths"):
            saved = tensors[f"episodes.{name}"]
            if saved.shape != getattr(self, name).shape:
                raise ValueError(f"episodes.{name} has shape {tuple(saved.shape)}, "
                                 f"expected {tuple(getattr(self, name).shape)}")
            getattr(self, name).copy_(saved)
        self.count = tensors["episodes.count"].to(self.count.device, self.count.dtype).clone().reshape(())
        self.staged = 0

    def summary(self) -> dict[str, float]:
        """Host values (one sync): mean return and length over the window, episodes so far."""
        self.flush()
        count = int(self.count)
        n = min(count, self.window)
        if n == 0:
            return {"episodes": 0}
        return {"episodes": count, "ep_rew_mean": float(self.returns[:n].mean()),
                "ep_len_mean": float(self.lengths[:n].mean())}


class DeviceMean:
    """The mean of values added on the device since the last `read` (one host sync per read)."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.count = 0

    def add(self, value: torch.Tensor, count: int = 1) -> None:
        """Add `value` (a scalar tensor: one value, or the sum of `count` values)."""
        self.total += value.detach()
        self.count += count

    def read(self) -> float | None:
        """The mean since the last read (None when nothing was added), and start over."""
        if not self.count:
            return None
        mean = float(self.total) / self.count
        self.total.zero_()
        self.count = 0
        return mean
