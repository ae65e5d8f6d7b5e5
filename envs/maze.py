"""rlbase/Maze-v0: find the exit of a new random perfect maze every episode.

The maze is a `size` x `size` grid (odd `size`, walls included) whose cells sit at odd coordinates;
the passages between cells form a spanning tree of the cell grid, so there is exactly one path
between any two cells. Each episode plays the level given by its level seed (`level_seeds`): the
maze, the exit cell and the start cell are a pure function of that seed, and the train and eval
splits use disjoint seed halves. The start is at Manhattan distance >= `min_distance` cells from
the exit (`(size - 1) / 2 - 1`: 4 for size 11), so no episode is shorter than `2 * min_distance` steps.

Actions (Discrete(4)): 0 up, 1 down, 2 left, 3 right; a move into a wall leaves the agent in
place. Reaching the exit ends the episode (terminated) with reward `1 - 0.9 * steps / max_steps`;
every other step gives 0. After `max_episode_steps` (default `4 * size**2`) the episode is
truncated. `info["success"]` marks the steps that reached the exit.

Observations (`obs_mode`):
- `grid`: (3, size, size) uint8 one-hot channels wall, agent, exit (values 0/1);
- `pixels`: (3, 64, 64) uint8 RGB top-down view;
- `ego`: (3, 2r+1, 2r+1) uint8 channels wall, agent, exit of the window centred on the agent
  (`view_radius` r); what lies outside the maze reads as wall.

Maze generation is randomized Kruskal (the edges of the cell grid in a uniformly random order;
the same mazes as the minimum spanning tree of i.i.d. random edge weights), batched over all envs
with a fixed sequence of tensor ops (`generate`; no host sync, no data-dependent shapes). It is
too costly to run on every step, so the maze prepares its next episodes (`NativeVecEnv`): each env
keeps two level slots, the level it plays and the one of its next episode, and an env that ends
flips to its other slot (no copy). `refresh_every` is the shortest possible episode (the
start-exit distance bound, or the time limit if smaller). `layout()` gives the walls and
positions, of the current state or of any level seeds (tests, analysis); `set_agent` moves the
agents (datasets).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.native import MASK32, NativeVecEnv, SingleEnv, check_choice, check_int, random_bits

MIN_SIZE, MAX_SIZE = 7, 31
OBS_MODES = ("grid", "pixels", "ego")
PIXELS = 64  # side of the `pixels` observation
RENDER = 256  # side of `render_env` images

# Stream of the counter-based generator (keyed by level seed) for everything in a level.
STREAM_LEVEL = 0x3A7E
RANDOM_CHUNK = 32768  # random numbers per `random_bits` call in `generate` (small temporaries)
EDGE_CHUNK = 64  # about as many edges per block of `generate`'s (edges, B) index work

# RGB colours: floor, wall, exit, agent.
PALETTE = np.array([[235, 235, 225], [40, 44, 52], [60, 190, 80], [220, 60, 50]], dtype=np.uint8)


class MazeVecEnv(NativeVecEnv):
    """A batch of mazes on one device (see the module docstring)."""

    procedural = True  # levels come from per-episode level seeds
    outcome_keys = ("success",)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", *, split: str = "train",
                 num_levels: int = 0, autoreset: bool = True, size: int = 11, obs_mode: str = "grid",
                 view_radius: int = 3, max_episode_steps: int | None = None):
        size = check_int("size", size, MIN_SIZE, MAX_SIZE)
        if size % 2 == 0:
            raise ValueError(f"size must be odd (walls on even coordinates, cells on odd ones), got {size}")
        obs_mode = check_choice("obs_mode", obs_mode, OBS_MODES)
        view_radius = check_int("view_radius", view_radius, 1, size - 1)
        super().__init__("rlbase/Maze-v0", num_envs, device, split=split, num_levels=num_levels,
                         autoreset=autoreset,
                         max_episode_steps=4 * size * size if max_episode_steps is None else max_episode_steps)
        self.size, self.obs_mode, self.view_radius = size, obs_mode, view_radius
        max_episode_steps = self.max_episode_steps
        dev = self.device
        k = (size - 1) // 2  # cells per side
        self._k, self._cells = k, k * k
        # Manhattan distance (in cells) from start to exit, at least: every exit cell has starts
        # that far (a corner is >= k - 1 away from any cell).
        self.min_distance = k - 1
        # Shortest possible episode: each cell-to-cell move takes 2 steps (cell, passage, cell).
        self.refresh_every = max(1, min(2 * self.min_distance, max_episode_steps))

        # Wall storage: the grid padded by `pad` wall squares per side (the ego view's margin).
        pad = view_radius if obs_mode == "ego" else 0
        self._pad, self._side = pad, size + 2 * pad
        n_pad = self._side ** 2
        # Level rows: padded walls, then (grid mode) an all-zero agent channel and the exit channel,
        # so a row is the grid observation without the agent.
        self._row_len = n_pad + (2 * size * size if obs_mode == "grid" else 0)
        # Rows are stored 8-byte aligned, so whole rows move as int64 words (uint8 row copies are slow).
        self._row_stride = -(-self._row_len // 8) * 8

        # Static geometry: cells, edges (u, v, passage square), padded positions.
        ci, cj = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        ci, cj = ci.reshape(-1), cj.reshape(-1)
        cell_pos = (2 * ci + 1 + pad) * self._side + (2 * cj + 1 + pad)
        self._cell_pos = cell_pos.to(dev)
        self._cell_grid = ((2 * ci + 1) * size + (2 * cj + 1)).to(dev)  # unpadded positions
        us, vs, mids = [], [], []
        for c in range(k * k):
            i, j = divmod(c, k)
            if j + 1 < k:
                us.append(c), vs.append(c + 1), mids.append(int(cell_pos[c]) + 1)
            if i + 1 < k:
                us.append(c), vs.append(c + k), mids.append(int(cell_pos[c]) + self._side)
        self._edge_u = torch.tensor(us, dtype=torch.int64, device=dev)
        self._edge_v = torch.tensor(vs, dtype=torch.int64, device=dev)
        self._edge_pos = torch.tensor(mids, dtype=torch.int64, device=dev)
        self._num_edges = e = len(us)
        packed = self._edge_u | self._edge_v << 8 | self._edge_pos << 16  # < 2**30
        self._edge_packed = packed.to(torch.int32)[:, None]
        self._cell_ids = torch.arange(k * k, dtype=torch.uint8, device=dev)[:, None]
        # The E - 1 shuffle steps take `m` choices from each 32-bit random value (see `generate`),
        # as many as keep the bias (~ the product of the choices' ranges / 2**32) below 1e-4.
        m = 1
        while m < 8 and e ** (m + 1) <= 2 ** 18:
            m += 1
        self._choices_per_value = m
        self._shuffle_values = -(-(e - 1) // m)
        self._edge_chunk = m * (EDGE_CHUNK // m)
        steps = torch.arange(self._shuffle_values * m, dtype=torch.int64)
        self._fy_base = steps[:, None].to(dev)  # step t: position t ...
        self._fy_span = (e - steps).clamp(min=1)[:, None].to(dev)  # ... swaps with t + [0, E - t)
        manhattan = (ci[:, None] - ci[None, :]).abs() + (cj[:, None] - cj[None, :]).abs()
        far = manhattan >= self.min_distance  # (exit, cell)
        self._far_count = far.sum(1).to(dev)  # never 0 (the farthest corner)
        # Row x: the cells far from exit x, then padding.
        self._far_cells = torch.sort(~far, dim=1, stable=True).indices.reshape(-1).to(dev)
        template = torch.ones(n_pad, dtype=torch.uint8)
        template[cell_pos] = 0
        self._template = template.to(dev)
        # Moves in padded flat coordinates: up, down, left, right.
        self._moves = torch.tensor([-self._side, self._side, -1, 1], dtype=torch.int64, device=dev)
        self._reward_per_step = 0.9 / max_episode_steps

        # Two level slots per env: row `slot * B + i` of these holds a level of env i.
        b = self.num_envs
        self._arange = torch.arange(b, dtype=torch.int64, device=dev)
        self._levels = torch.zeros(2 * b, self._row_stride, dtype=torch.uint8, device=dev)
        self._workspaces: dict[int, dict[str, torch.Tensor]] = {}
        self._starts = torch.zeros(2 * b, dtype=torch.int64, device=dev)
        self._exits = torch.zeros(2 * b, dtype=torch.int64, device=dev)
        self._slot = torch.zeros(b, dtype=torch.int64, device=dev)  # the slot each env plays
        self._row = self._arange.clone()  # = slot * B + i
        self._row_start = self._row * self._row_stride  # where row `_row` starts in the flat storage
        self._agent_at = self._arange * self._row_len + size * size  # grid obs: start of agent channel
        self.pos = self._cell_pos[:1].repeat(b)  # agent, padded flat position
        self.exit = self._cell_pos[:1].repeat(b)
        self.success = torch.zeros(b, dtype=torch.bool, device=dev)

        if obs_mode == "grid":
            self.single_observation_space = gym.spaces.Box(0, 1, (3, size, size), np.uint8)
        elif obs_mode == "pixels":
            self.single_observation_space = gym.spaces.Box(0, 255, (3, PIXELS, PIXELS), np.uint8)
            self._pixel_src = ((torch.arange(PIXELS) * size) // PIXELS).to(dev)  # pixel -> grid square
            self._palette = torch.from_numpy(PALETTE).to(dev)
        else:
            w = 2 * view_radius + 1
            self.single_observation_space = gym.spaces.Box(0, 1, (3, w, w), np.uint8)
            d = torch.arange(-view_radius, view_radius + 1)
            self._window = (d[:, None] * self._side + d[None, :]).reshape(-1).to(dev)
            centre = torch.zeros(w * w, dtype=torch.uint8)
            centre[w * w // 2] = 1
            self._centre = centre.to(dev)
        self.single_action_space = gym.spaces.Discrete(4)

    # -- level generation --------------------------------------------------------------------
    def _workspace(self, b: int) -> dict[str, torch.Tensor]:
        """Buffers reused by `generate` for a batch of `b` (kept for the env's own batch size): on
        CPU, fresh large temporaries cost a page fault per 4 KiB each time."""
        ws = self._workspaces.get(b)
        if ws is None:
            e, c, dev, n = self._num_edges, self._cells, self.device, self._edge_chunk
            small = torch.int32 if b * max(self._row_stride, c) < 2 ** 31 else torch.int64
            ws = {
                "bits": torch.empty(self._shuffle_values + 1, b, dtype=torch.int64, device=dev),
                "perm": torch.empty(e, b, dtype=torch.int32, device=dev),
                "order": torch.empty(e, b, dtype=torch.int32, device=dev),
                "label": torch.empty(c, b, dtype=torch.uint8, device=dev),
                "differ": torch.empty(e, b, dtype=torch.uint8, device=dev),
                # Walls and channels: only passages and the exit channel change between calls.
                "rows": torch.zeros(b, self._row_stride, dtype=torch.uint8, device=dev),
                # per chunk of edges
                "swap": torch.empty(n, b, dtype=torch.int64, device=dev),
                "frac": torch.empty(n // self._choices_per_value, b, dtype=torch.int64, device=dev),
                # flat indices are computed in int32 where they fit (faster), then widened
                "cells": torch.empty(n, 2, b, dtype=small, device=dev),
                "ends": torch.empty(n, 2, b, dtype=torch.int64, device=dev),
                "passage32": torch.empty(n, b, dtype=small, device=dev),
                "passage": torch.empty(n, b, dtype=torch.int64, device=dev),
                # constants
                "batch": torch.arange(b, dtype=torch.int64, device=dev),
                "batch32": torch.arange(b, dtype=small, device=dev),
                "row_starts32": torch.arange(b, dtype=small, device=dev) * self._row_stride,
                "perm0": self._edge_packed.expand(e, b).contiguous(),
                "label0": self._cell_ids.expand(c, b).contiguous(),
            }
            ws["rows"][:, :self._side ** 2] = self._template
            if b == self.num_envs:
                self._workspaces[b] = ws
        return ws

    def generate(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The levels of `seeds` (B,): (rows (B, row_stride) uint8, start (B,), exit (B,)), positions
        flat in the padded grid. The rows may be a reused buffer: copy them before the next call.

        A pure function of each seed, batched over the seeds with a fixed sequence of tensor ops
        (no host sync): randomized Kruskal (the edges in a uniformly random order, by
        Fisher-Yates; union-find as per-maze component labels), then the exit cell and a start
        cell at least `min_distance` cells (Manhattan) away. Layout (edges or cells, B): the batch
        is the contiguous axis, so elementwise ops vectorise; entry (t, i) of a flattened (T, B)
        tensor is at t * B + i. Long tensors are processed EDGE_CHUNK edges at a time.
        """
        b, c, e = seeds.shape[0], self._cells, self._num_edges
        ws = self._workspace(b)
        # Random numbers: each 32-bit value x gives m choices among n_1, n_2, ... options:
        # floor(x * n_1 / 2**32), then the same from what is left, (x * n_1) mod 2**32, and so on
        # (bias ~ n_1 * n_2 * ... / 2**32, kept below 1e-4).
        m, h = self._choices_per_value, self._shuffle_values
        bits = ws["bits"]  # (h + 1, B): h values for the shuffle, then one for (exit, start)
        zeros = torch.zeros_like(seeds)
        chunk = max(1, RANDOM_CHUNK // (h + 1))  # envs per call: small temporaries
        for i in range(0, b, chunk):
            bits[:, i:i + chunk] = random_bits(seeds[i:i + chunk], zeros[i:i + chunk], STREAM_LEVEL, h + 1).t()

        # Fisher-Yates shuffle of the edges, packed as u | v << 8 | passage << 16: step t swaps
        # position t with position t + (a uniform choice among E - t).
        perm, order = ws["perm"], ws["order"]
        perm.copy_(ws["perm0"])
        flat = perm.view(-1)
        perm_t, order_t = perm.unbind(0), order.unbind(0)
        for t0 in range(0, e - 1, self._edge_chunk):  # t0: a multiple of m
            n = min(self._edge_chunk, e - 1 - t0)
            values = -(-n // m)
            span, base = self._fy_span[t0:t0 + values * m], self._fy_base[t0:t0 + values * m]
            frac, swap = ws["frac"][:values], ws["swap"][:values * m]
            frac.copy_(bits[t0 // m:t0 // m + values])
            for k in range(m):
                frac *= span[k::m]
                torch.bitwise_right_shift(frac, 32, out=swap[k::m])
                frac &= MASK32
            swap += base
            swap *= b
            swap += ws["batch"]  # flat positions in `perm`
            for t in range(t0, t0 + n):
                j = swap[t - t0]
                torch.take(flat, j, out=order_t[t])
                flat.index_copy_(0, j, perm_t[t].clone())
        order_t[e - 1].copy_(perm_t[e - 1])

        # Kruskal: join the two ends of each edge, in that order, unless already connected.
        # Labels are per-maze component ids (C <= 225 fits uint8); joining relabels v's
        # component as u's, with bitwise ops (torch.where is slow on CPU).
        label, differ = ws["label"], ws["differ"]  # differ: lu ^ lv, nonzero where joined
        label.copy_(ws["label0"])
        labels = label.view(-1)
        differ_t = differ.unbind(0)
        for t0 in range(0, e, self._edge_chunk):
            n = min(self._edge_chunk, e - t0)
            cells, ends = ws["cells"][:n], ws["ends"][:n]  # flat positions of the labels of u, v
            torch.bitwise_and(order[t0:t0 + n], 0xFF, out=cells[:, 0])  # int32 math: faster
            torch.bitwise_right_shift(order[t0:t0 + n], 8, out=cells[:, 1])
            cells[:, 1] &= 0xFF
            cells *= b
            cells += ws["batch32"]
            ends.copy_(cells)
            for t in range(t0, t0 + n):
                lu, lv = labels.take(ends[t - t0])
                x = torch.bitwise_xor(lu, lv, out=differ_t[t])
                label ^= (label == lv).view(torch.uint8) * x

        rows = ws["rows"]
        n_pad = self._side ** 2
        flat_rows = rows.view(-1)
        for t0 in range(0, e, self._edge_chunk):  # every passage square: a wall where not joined
            n = min(self._edge_chunk, e - t0)
            passage32, passage = ws["passage32"][:n], ws["passage"][:n]
            torch.bitwise_right_shift(order[t0:t0 + n], 16, out=passage32)
            passage32 += ws["row_starts32"]
            passage.copy_(passage32)
            flat_rows.index_copy_(0, passage.view(-1), (differ[t0:t0 + n] == 0).view(torch.uint8).view(-1))

        frac = bits[h] * c
        exit_cell = frac >> 32
        frac &= MASK32
        # Start: uniform among the cells far enough from the exit (a per-exit table).
        frac *= self._far_count.take(exit_cell)
        start_cell = self._far_cells.take(exit_cell * c + (frac >> 32))
        if self.obs_mode == "grid":
            exits = rows[:, n_pad + self.size ** 2:self._row_len]
            exits.zero_()
            exits.scatter_(1, self._cell_grid[exit_cell][:, None], 1)
        return rows, self._cell_pos[start_cell], self._cell_pos[exit_cell]

    # -- hooks -------------------------------------------------------------------------------
    def _prepare_next(self, episodes: torch.Tensor) -> None:
        """Generate the levels of episode numbers `episodes` (B,) into each env's spare slot. (Their
        first observations are not prepared: observing again is cheaper than selecting them.)"""
        rows, starts, exits = self.generate(self.level_seeds(episodes))
        spare = (1 - self._slot) * self.num_envs + self._arange
        self._levels.view(torch.int64).index_copy_(0, spare, rows.view(torch.int64))
        self._starts.index_copy_(0, spare, starts)
        self._exits.index_copy_(0, spare, exits)

    def _take_next(self, mask: torch.Tensor) -> None:
        self._slot ^= mask.to(torch.int64)  # an ended env plays its spare slot, with no copy
        self._row = self._slot * self.num_envs + self._arange
        self._row_start = self._row * self._row_stride
        self.pos = torch.where(mask, self._starts.take(self._row), self.pos)
        self.exit = self._exits.take(self._row)

    def _reset_envs(self, mask: torch.Tensor) -> None:
        # From outside `step`: the current episodes' levels, built now (into every env's spare
        # slot: the base class rebuilds the next episodes before the next step).
        self._prepare_next(self.episodes)
        self._take_next(mask)

    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        move = self._moves.take(actions.reshape(-1).long())
        target = self.pos + move
        blocked = self._levels.view(-1).take(self._row_start + target)
        self.pos = target - move * blocked
        self.success = self.pos == self.exit
        reward = self.success * (1.0 - self._reward_per_step * (self.elapsed + 1).to(torch.float32))
        return reward, self.success

    def _info(self) -> dict[str, torch.Tensor]:
        return {"success": self.success}

    def _observe(self) -> torch.Tensor:
        b, s = self.num_envs, self.size
        if self.obs_mode == "grid":
            obs = self._levels[:, :self._row_len].index_select(0, self._row)
            obs.view(-1).index_fill_(0, self._agent_at + self.pos, 1)
            return obs.view(b, 3, s, s)
        if self.obs_mode == "ego":
            w2 = self._window.shape[0]
            cells = self.pos[:, None] + self._window  # (B, w2) padded positions around the agent
            obs = torch.empty(b, 3, w2, dtype=torch.uint8, device=self.device)
            obs[:, 0] = self._levels.view(-1).take(self._row_start[:, None] + cells)
            obs[:, 1] = self._centre
            obs[:, 2] = cells == self.exit[:, None]
            w = 2 * self.view_radius + 1
            return obs.view(b, 3, w, w)
        # pixels: colour the grid (floor + wall * (wall colour - floor colour), in wrapping uint8
        # arithmetic), paint the exit and the agent, then upscale.
        walls = self._levels[:, :self._row_len].index_select(0, self._row)  # pad 0: the unpadded grid
        pal = self._palette[:, :, None]  # (4, 3, 1)
        small = pal[0] + walls[:, None, :] * (pal[1] - pal[0])  # (B, 3, size * size)
        for at, colour in ((self.exit, pal[2]), (self.pos, pal[3])):
            small.scatter_(2, at[:, None, None].expand(b, 3, 1), colour.expand(b, 3, 1).contiguous())
        # Nearest-neighbour upscale, columns first: the row pass then moves whole 64-byte rows.
        small = small.view(b, 3, s, s)
        return small.index_select(3, self._pixel_src).index_select(2, self._pixel_src)

    # -- views (tests, rendering, analysis) ------------------------------------------------------
    def layout(self, seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(walls (B, size, size) bool, agent (B, 2), exit (B, 2)) in grid (row, col) coordinates.

        Of the current state, or, given level `seeds`, of those levels at their start.
        """
        if seeds is None:
            rows, pos, exit_ = self._levels.index_select(0, self._row), self.pos, self.exit
        else:
            rows, pos, exit_ = self.generate(torch.as_tensor(seeds, dtype=torch.int64, device=self.device))
        p, s = self._pad, self.size
        walls = rows[:, :self._side ** 2].view(-1, self._side, self._side)[:, p:p + s, p:p + s].bool()

        def coords(flat: torch.Tensor) -> torch.Tensor:
            return torch.stack((torch.div(flat, self._side, rounding_mode="floor"), flat % self._side), 1) - p

        return walls, coords(pos), coords(exit_)

    def set_agent(self, squares: torch.Tensor) -> None:
        """Move each env's agent to grid square (row, col) `squares` (B, 2), as `layout` gives them
        (datasets, tests); the square should be open. The episode goes on from there."""
        squares = torch.as_tensor(squares, dtype=torch.int64, device=self.device) + self._pad
        self.pos = squares[:, 0] * self._side + squares[:, 1]

    def render_env(self, index: int) -> np.ndarray:
        """(256, 256, 3) uint8 RGB top-down view of env `index` (walls, floor, exit, agent)."""
        p, s, side = self._pad, self.size, self._side
        row = self._levels[int(self._row[index])].cpu().numpy()
        codes = row[:side * side].reshape(side, side)[p:p + s, p:p + s].astype(np.uint8)
        for flat, code in ((int(self.exit[index]), 2), (int(self.pos[index]), 3)):
            codes[flat // side - p, flat % side - p] = code
        src = (np.arange(RENDER) * s) // RENDER
        return PALETTE[codes[src[:, None], src[None, :]]]


class MazeEnv(SingleEnv):
    """`gymnasium.make("rlbase/Maze-v0", size=..., obs_mode=...)`: one maze, the same dynamics."""

    vec_cls = MazeVecEnv


__all__ = ["MazeVecEnv", "MazeEnv", "MIN_SIZE", "MAX_SIZE", "OBS_MODES"]
