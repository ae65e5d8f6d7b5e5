"""Replay buffer on the device: frames stored once, n-step returns, optional proportional priorities.

Layout. Storage is a ring of `slots` rows per env, `(slots + 1, num_envs, ...)`; row `slots` is a
scratch row that absorbs writes that must not land anywhere (see `add`). Each env has its own
timeline, so a transition's neighbours in time are the rows above and below it in its column,
and frame stacks and n-step returns are rebuilt by looking along that column.

One row holds one *frame*: the newest frame of an observation (Atari: one 84x84 uint8 image of
the stack of 4), or the whole observation when nothing is stacked (`frame_stack == 1`). With
the row's action, training reward and flags:

    first        the frame is the first of an episode: frames before it belong to another episode
    has_next     the row is a complete transition (its action, reward and next frame are stored)
    terminal     the transition ended in a terminal state for training (no bootstrap)
    episode_end  the episode ended there (terminated or truncated): the next row is its final frame

When an episode ends at row `t`, row `t+1` holds the frame of `info["final_obs"]` (no action,
`has_next` false) and row `t+2` the first frame of the next episode. So a truncated episode
bootstraps from its real last observation, and nothing ever reads across an episode boundary:
stacks stop at `first`, n-step sums stop at `terminal` or `episode_end`.

A row is sampled only when it is a complete transition whose n-step look-ahead is written
(age >= n behind the write head) and whose stack look-back has not been overwritten yet.
Atari: 84*84 + 4 (action) + 4 (reward) + 4 flags = 7,068 bytes per transition, so 1M transitions
take 7.1 GB (prioritized replay adds a float64 sum tree: about 17 bytes per transition at 1M).

Dict observations (an image and an instruction) are stored key by key, each in its own dtype:
`obs_shape` and `obs_dtype` are then dicts, and nothing is frame-stacked (`frame_stack == 1`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlbase.obs import Obs, obs_map


class ReplaySample(NamedTuple):
    obs: Obs  # (batch, *obs_shape), the storage dtype (uint8 for pixels); a dict of them for Dict observations
    actions: torch.Tensor  # (batch,) int64
    returns: torch.Tensor  # (batch,) n-step discounted sum of training rewards
    next_obs: Obs  # (batch, *obs_shape): observation to bootstrap from
    discounts: torch.Tensor  # (batch,) gamma**k, 0 when a terminal state came within the n steps
    weights: torch.Tensor  # (batch,) importance-sampling weights (ones without priorities)
    indices: torch.Tensor  # (batch,) flat row*num_envs+env index, for `update_priorities`

    def split(self, size: int) -> list["ReplaySample"]:
        """Cut a large sample into batches of `size` (views, no copies)."""
        def pieces(field: Obs) -> list[Obs]:
            if isinstance(field, dict):
                return [dict(zip(field, parts)) for parts in zip(*(value.split(size) for value in field.values()))]
            return list(field.split(size))

        return [ReplaySample(*parts) for parts in zip(*(pieces(field) for field in self))]


class SumTree:
    """Binary sum tree over `size` leaves, as a flat tensor on the device (root at index 1)."""

    def __init__(self, size: int, device: torch.device):
        self.leaves = 1 << max(0, (size - 1).bit_length())
        self.depth = self.leaves.bit_length() - 1
        # float64: sums over a million priorities must not lose the small ones.
        self.tree = torch.zeros(2 * self.leaves, dtype=torch.float64, device=device)

    @property
    def total(self) -> torch.Tensor:
        return self.tree[1]

    def get(self, index: torch.Tensor) -> torch.Tensor:
        return self.tree[index + self.leaves]

    def set(self, index: torch.Tensor, values: torch.Tensor) -> None:
        node = index + self.leaves
        self.tree[node] = values.to(self.tree.dtype)
        pairs = self.tree.view(-1, 2)  # row k: the children 2k and 2k + 1 of node k
        for _ in range(self.depth):  # recompute parents from children, level by level
            node = node // 2
            self.tree[node] = pairs[node].sum(dim=1)

    def find(self, mass: torch.Tensor) -> torch.Tensor:
        """Leaf index where the prefix sum of priorities reaches `mass` (batched descent)."""
        node = torch.ones_like(mass, dtype=torch.long)
        mass = mass.to(self.tree.dtype)
        pairs = self.tree.view(-1, 2)  # row k: the children 2k and 2k + 1 of node k
        for _ in range(self.depth):
            children = pairs[node]
            left_sum = children[:, 0]
            # Never step into an empty subtree, whatever the rounding of `mass`.
            go_right = (mass >= left_sum) & (children[:, 1] > 0)
            mass = torch.where(go_right, mass - left_sum, mass)
            node = 2 * node + go_right
        return node - self.leaves


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...] | dict[str, tuple[int, ...]],
                 obs_dtype: torch.dtype | dict[str, torch.dtype], device: torch.device, *, frame_stack: int = 1,
                 n_step: int = 1, gamma: float = 0.99, prioritized: bool = False, alpha: float = 0.6,
                 priority_eps: float = 1e-6):
        self.slots = capacity // num_envs
        self.num_envs = num_envs
        keyed = isinstance(obs_shape, dict)
        if keyed and frame_stack != 1:
            raise ValueError("Dict observations are stored without frame stacking (frame_stack must be 1)")
        self.obs_shape = {k: tuple(v) for k, v in obs_shape.items()} if keyed else tuple(obs_shape)
        self.frame_stack = frame_stack
        self.n_step = n_step
        self.gamma = gamma
        self.device = device
        self.prioritized = prioritized
        self.alpha = alpha
        self.priority_eps = priority_eps
        # Oldest sampleable age: the look-back of `frame_stack` frames (and the two rows that an
        # episode end writes at once) must not reach rows that were overwritten.
        self.max_age = self.slots - frame_stack - 2
        if self.max_age < n_step + 1:
            raise ValueError(f"replay capacity {capacity} is too small for {num_envs} envs, "
                             f"frame stack {frame_stack} and n-step {n_step}")
        rows = self.slots + 1  # + scratch row
        if keyed:  # one tensor per key, in the key's dtype
            self.frames: Obs = {key: torch.zeros((rows, num_envs, *shape), dtype=obs_dtype[key], device=device)
                                for key, shape in self.obs_shape.items()}
        else:
            frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape
            self.frames = torch.zeros((rows, num_envs, *frame_shape), dtype=obs_dtype, device=device)
        self.actions = torch.zeros((rows, num_envs), dtype=torch.int32, device=device)
        self.rewards = torch.zeros((rows, num_envs), dtype=torch.float32, device=device)
        self.first = torch.zeros((rows, num_envs), dtype=torch.bool, device=device)
        self.has_next = torch.zeros((rows, num_envs), dtype=torch.bool, device=device)
        self.terminal = torch.zeros((rows, num_envs), dtype=torch.bool, device=device)
        self.episode_end = torch.zeros((rows, num_envs), dtype=torch.bool, device=device)
        self.pos = torch.zeros(num_envs, dtype=torch.long, device=device)  # absolute row of the current obs
        self.envs = torch.arange(num_envs, device=device)
        # n-step constants: the look-ahead offsets, gamma**j and gamma**k for k steps taken.
        self.lookahead = torch.arange(n_step, device=device)
        self.powers = gamma ** torch.arange(n_step, device=device, dtype=torch.float32)
        self.discount_of_steps = torch.pow(gamma, torch.arange(n_step + 1, device=device, dtype=torch.float32))
        self.transitions_added = 0  # host counter, for learning_starts
        if prioritized:
            self.tree = SumTree(self.slots * num_envs + 1, device)  # last leaf: dummy, always 0
            self.dummy_leaf = self.slots * num_envs
            self.max_priority = torch.ones((), dtype=torch.float64, device=device)
            self.stale_offsets = torch.arange(frame_stack + 2, device=device).unsqueeze(1)
            self.stale_zeros = torch.zeros((frame_stack + 2) * num_envs, dtype=torch.float64, device=device)

    # ------------------------------------------------------------------ writing
    def _newest_frame(self, obs: Obs) -> Obs:
        return obs[:, -1] if self.frame_stack > 1 else obs

    def _flat(self, rows: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """Flat indices of (row, env) pairs into the (rows, num_envs) fields viewed as one dimension:
        one index tensor per read or write instead of two (fewer, cheaper indexing ops)."""
        return rows * self.num_envs + env

    def _write_frame(self, rows: torch.Tensor, frames: Obs, first: bool) -> None:
        flat = self._flat(rows, self.envs)
        if isinstance(self.frames, dict):
            for key, stored in self.frames.items():
                stored.flatten(0, 1)[flat] = frames[key]
        else:
            self.frames.flatten(0, 1)[flat] = frames
        self.first.view(-1).index_fill_(0, flat, first)
        for field in (self.has_next, self.terminal, self.episode_end):
            field.view(-1).index_fill_(0, flat, False)

    def start(self, obs: torch.Tensor) -> None:
        """Record the first observation of every env (after `env.reset`, or after a resume)."""
        resumed = self.transitions_added > 0
        if resumed:
            # Resumed with a saved buffer: the interrupted episodes end here. Their last observation
            # (the head row) stays as a final frame, so their last transition bootstraps from it,
            # as for a truncation; the new episodes start on the next row.
            self.episode_end[(self.pos - 1) % self.slots, self.envs] = True
            self.pos += 1
        self._write_frame(self.pos % self.slots, self._newest_frame(obs), first=True)
        if resumed and self.prioritized:  # moving the head made one more row old enough to sample
            row = (self.pos - self.n_step) % self.slots
            self.tree.set(row * self.num_envs + self.envs,
                          torch.where(self.has_next[row, self.envs], self.max_priority, 0.0))

    def add(self, actions: torch.Tensor, rewards: torch.Tensor, terminal: torch.Tensor, dones: torch.Tensor,
            next_obs: Obs, final_obs: Obs) -> None:
        """Complete the current transition of every env and record the next observation.

        `rewards`/`terminal` are the training signal, `dones` the real episode ends, `next_obs`
        the env's returned observation (already the next episode's where `dones`), and
        `final_obs` the last observation of the ended episodes.
        """
        flat = self._flat(self.pos % self.slots, self.envs)
        self.actions.view(-1)[flat] = actions.to(torch.int32)
        self.rewards.view(-1)[flat] = rewards
        self.terminal.view(-1)[flat] = terminal
        self.episode_end.view(-1)[flat] = dones
        self.has_next.view(-1).index_fill_(0, flat, True)

        new_frame = self._newest_frame(next_obs)
        final_frame = self._newest_frame(final_obs)

        def ended_or_new(new: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
            return torch.where(dones.view(-1, *([1] * (new.dim() - 1))), final, new)

        if isinstance(new_frame, dict):
            last = {key: ended_or_new(new_frame[key], final_frame[key]) for key in new_frame}
        else:
            last = ended_or_new(new_frame, final_frame)
        self._write_frame((self.pos + 1) % self.slots, last, first=False)
        # Ended envs also start the next episode one row further; the others write to scratch.
        scratch = torch.full_like(self.pos, self.slots)
        self._write_frame(torch.where(dones, (self.pos + 2) % self.slots, scratch), new_frame, first=True)
        self.pos += 1 + dones.long()
        self.transitions_added += self.num_envs
        if self.prioritized:
            self._refresh_priorities(dones)

    def _refresh_priorities(self, dones: torch.Tensor) -> None:
        head = self.pos
        # Rows just overwritten, or whose look-back now reaches overwritten rows: never sample (0).
        # Rows that just became old enough for their n-step look-ahead enter with max priority;
        # an env whose episode ended advanced two rows, so two rows matured for it (for the others
        # the second goes to the dummy leaf, with 0). The rows are distinct (the ring is longer than
        # n_step + frame_stack + 2), so one tree update writes them all.
        stale = self._flat((head + self.stale_offsets) % self.slots, self.envs).flatten()
        matured = self._flat((head - self.n_step) % self.slots, self.envs)
        also = self._flat((head - self.n_step - 1) % self.slots, self.envs)
        ready = self.has_next.view(-1)[torch.cat([matured, also])]
        ready[self.num_envs:] &= dones
        leaves = torch.cat([stale, matured, torch.where(dones, also, torch.full_like(also, self.dummy_leaf))])
        values = torch.cat([self.stale_zeros, torch.where(ready, self.max_priority, 0.0)])
        self.tree.set(leaves, values)

    # ------------------------------------------------------------------ reading
    def stack(self, t: torch.Tensor, env: torch.Tensor) -> Obs:
        """Observations at absolute rows `t` of envs `env`, frame stacks rebuilt (zeros before `first`)."""
        if self.frame_stack == 1:
            flat = self._flat(t % self.slots, env)
            return obs_map(lambda frames: frames.flatten(0, 1).index_select(0, flat), self.frames)
        frames = []
        same_episode = torch.ones_like(t, dtype=torch.bool)
        stored, first = self.frames.flatten(0, 1), self.first.view(-1)
        for lag in range(self.frame_stack):
            if lag > 0:  # the frame `lag` rows back is ours only if no episode started in between
                same_episode = same_episode & ~first[self._flat((t - lag + 1) % self.slots, env)]
            frame = stored.index_select(0, self._flat((t - lag) % self.slots, env))
            mask = same_episode.view(-1, *([1] * (frame.dim() - 1)))
            frames.append(torch.where(mask, frame, torch.zeros_like(frame)))
        return torch.stack(frames[::-1], dim=1)

    def n_step_return(self, t: torch.Tensor, env: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(returns, discounts, steps) of the n-step look-ahead from rows `t`, cut at episode ends."""
        if self.n_step == 1:  # the common case, without the look-ahead machinery
            flat = self._flat(t % self.slots, env)
            terminal = self.terminal.view(-1)[flat]
            return (self.rewards.view(-1)[flat], torch.where(terminal, 0.0, self.gamma),
                    torch.ones_like(t))
        flat = self._flat((t.unsqueeze(1) + self.lookahead) % self.slots, env.unsqueeze(1))  # (batch, n)
        terminal = self.terminal.view(-1)[flat]
        stop = terminal | self.episode_end.view(-1)[flat]
        # Step j counts only if no episode end came at an earlier step of the look-ahead.
        running = (torch.cumsum(stop.int(), dim=1) - stop.int()) == 0
        returns = (running * self.powers * self.rewards.view(-1)[flat]).sum(dim=1)
        steps = running.sum(dim=1)
        hit_terminal = (running & terminal).any(dim=1)
        discounts = torch.where(hit_terminal, 0.0, self.discount_of_steps[steps])
        return returns, discounts, steps

    def can_sample(self) -> bool:
        return self.transitions_added >= self.num_envs * (self.n_step + self.frame_stack + 1)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, beta: float = 0.4) -> ReplaySample:
        if self.prioritized:
            t, env, weights = self._sample_prioritized(batch_size, generator, beta)
        else:
            t, env = self._sample_uniform(batch_size, generator)
            weights = torch.ones(batch_size, device=self.device)
        returns, discounts, steps = self.n_step_return(t, env)
        indices = self._flat(t % self.slots, env)
        return ReplaySample(
            obs=self.stack(t, env),
            actions=self.actions.view(-1)[indices].long(),
            returns=returns,
            next_obs=self.stack(t + steps, env),
            discounts=discounts,
            weights=weights,
            indices=indices,
        )

    def _sample_uniform(self, batch_size: int, generator: torch.Generator | None,
                        candidates: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        # Draw a few candidate rows per sample and keep the first complete transition: only the
        # final-frame rows of ended episodes are incomplete, so all candidates failing is
        # vanishingly rare; then the row before (the episode's last transition) is used.
        n = batch_size * candidates
        env = torch.randint(self.num_envs, (n,), device=self.device, generator=generator)
        head = self.pos[env]
        oldest = torch.clamp(head, max=self.max_age)
        span = (oldest - self.n_step + 1).clamp(min=1)
        age = self.n_step + (torch.rand(n, device=self.device, generator=generator) * span).long().clamp(max=span - 1)
        t = head - age
        ok = self.has_next.view(-1)[self._flat(t % self.slots, env)].view(batch_size, candidates)
        pick = ok.int().argmax(dim=1)  # first complete candidate (0 when none)
        take = torch.arange(batch_size, device=self.device) * candidates + pick
        t, env = t[take], env[take]
        t = torch.where(ok.any(dim=1), t, t - 1)
        return t, env

    def _sample_prioritized(self, batch_size: int, generator: torch.Generator | None,
                            beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        total = self.tree.total
        # Stratified: one draw from each of `batch_size` equal slices of the priority mass.
        u = torch.rand(batch_size, device=self.device, generator=generator, dtype=torch.float64)
        mass = (torch.arange(batch_size, device=self.device, dtype=torch.float64) + u) * (total / batch_size)
        leaf = self.tree.find(mass)
        priority = self.tree.get(leaf)
        # w_i = (N * P(i))^-beta normalised by the largest weight in the batch: N cancels out.
        weights = (priority / priority.min().clamp(min=1e-12)).pow(-beta).to(torch.float32)
        row, env = leaf // self.num_envs, leaf % self.num_envs
        head = self.pos[env]
        t = head - ((head - row) % self.slots)  # absolute row from the ring row
        return t, env, weights

    def update_priorities(self, indices: torch.Tensor, td_errors: torch.Tensor) -> None:
        priority = (td_errors.detach().abs().to(torch.float64) + self.priority_eps).pow(self.alpha)
        self.tree.set(indices, priority)
        self.max_priority = torch.maximum(self.max_priority, priority.max())

    # ------------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {name: getattr(self, name) for name in
                 ("actions", "rewards", "first", "has_next", "terminal", "episode_end", "pos")}
        if isinstance(self.frames, dict):
            state.update({f"frames.{key}": value for key, value in self.frames.items()})
        else:
            state["frames"] = self.frames
        state["transitions_added"] = torch.tensor(self.transitions_added)
        if self.prioritized:
            state["tree"] = self.tree.tree
            state["max_priority"] = self.max_priority
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            if name == "done":  # buffers saved before the field was named episode_end
                name = "episode_end"
            if name == "transitions_added":
                self.transitions_added = int(value)
            elif name == "tree":
                self.tree.tree.copy_(value)
            elif name == "max_priority":
                self.max_priority = value.to(self.device, torch.float64)
            else:
                if name.startswith("frames.") and isinstance(self.frames, dict):
                    target = self.frames.get(name[len("frames."):])
                else:
                    target = getattr(self, name, None)
                if not torch.is_tensor(target):
                    raise ValueError(f"replay buffer has no field {name}")
                if target.shape != value.shape:
                    raise ValueError(f"replay buffer field {name} has shape {tuple(value.shape)}, "
                                     f"expected {tuple(target.shape)}")
                if target.dtype != value.dtype:
                    raise ValueError(f"replay buffer field {name} is {value.dtype}, expected {target.dtype}")
                target.copy_(value)
