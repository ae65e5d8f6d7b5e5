"""rlbase/MazeGoTo-v0: walk to the object the instruction names ("go to the blue ball").

Room. A `size` x `size` grid whose border squares are walls (`size`, 6 to 16, counts the walls as
in the maze: the default 8 leaves a 6 x 6 open interior). `num_objects` (default 3) objects stand on it,
each a distinct (colour, type) pair of COLOURS x OBJECTS (6 x 3 = 18 combinations); one of them is
the target, which the instruction (`mission`) names, phrased by one of the split's templates. The
other objects (distractors) are drawn uniformly among the 17 other combinations, so they often
share the target's colour or its type and both words matter. The agent starts on a free square.

Placement. The objects stand on one sub-lattice of the interior: rows of one parity and columns of
one parity (drawn per episode, uniformly among the 4 choices), uniformly among its squares. So no
two objects touch, every row or column of the other parity is open, and the target can always be
reached without stepping on a distractor (a shortest path exists, a scripted oracle succeeds every
time). A lattice of the smallest parity has floor((size - 2) / 2)**2 squares, at least
`num_objects`: 6 objects need size >= 8, 4 need size >= 6.

Actions (Discrete(4)): 0 up, 1 down, 2 left, 3 right; a move into a wall leaves the agent in place.
Stepping onto the target ends the episode (terminated) with reward `1 - 0.9 * steps /
max_episode_steps` and `info["success"]` True; stepping onto a distractor ends it with reward 0
(a policy that ignores the instruction succeeds about 1 / num_objects of the time). After
`max_episode_steps` (default `2 * size**2`: 128 for size 8, about ten times its longest shortest
path) the episode is truncated.

Observations: a Dict
- `image`: `obs_mode="grid"` (default): (11, size, size) uint8 one-hot channels (values 0/1):
  wall, agent, then one per colour (COLOURS order) and one per type (OBJECTS order): an object
  lights its colour and its type channel. `obs_mode="pixels"`: (3, 64, 64) uint8 RGB top-down
  view: ball = disc, box = square outline, key = head, shaft and bit, in the object's colour; the
  agent a black diamond (drawn over the object it stepped on, in final observations). At 64 pixels
  the shapes read well up to size ~10 (6+ pixels a square); larger rooms blur them.
- `mission`: (MAX_WORDS,) int64 token ids of the instruction, padded with 0 (the language and its
  tokenizer: rlbase.envs.instructions).
The instruction as text: `MazeGoToVecEnv.instruction(i)`; the single-instance env puts it in
`info["mission"]` of `reset` and `step`.

Train / eval split. Like the maze, each episode is a pure function of its level seed
(`level_seeds`: even seeds train, odd seeds eval; `num_levels` restricts training to a finite set).
The eval split additionally holds out language (rlbase.envs.instructions: paraphrases never used
in training; with `eval_targets="heldout"` only targets never the target in training, with
`eval_targets="trained"` only the training targets, so the two kinds of held-out language can be
measured apart); the train split ignores `eval_targets`. `blank_mission=True` replaces every instruction by padding: the
baseline of a policy that cannot read (it succeeds about 1 / num_objects of the time).

Randomness and speed. A level seed gives a few 32-bit counter-based values (`random_bits`, stream
STREAM_LAYOUT); each yields several choices by multiply-shift (bias below 2**-16), and draws
without replacement (distractor combinations, lattice squares, the agent's square) take the r-th
value not yet taken by stepping over the taken ones in ascending order: a fixed sequence of
O(num_objects**2) elementwise ops on (B,) tensors, no rejection loop, no host sync. That is cheap
enough to run for every env on every step, so autoreset just builds the next episode of all envs
and keeps it where one ended (no prepared episodes as in the maze). A grid observation is then a
copy of the static wall template plus two scatters (objects, agent). `layout()` gives the
positions and combinations of the current episodes or of any level seeds (tests, analysis).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.instructions import (COLOURS, EVAL_TARGETS, MAX_WORDS, NUM_COMBOS, OBJECTS, SPLIT_TEMPLATES,
                                      TOKENIZER, TRAIN_TEMPLATES, instruction_text, mission_table, target_combinations)
from rlbase.envs.native import MASK32, NativeVecEnv, SingleEnv, check_bool, check_choice, check_int, random_bits

MIN_SIZE, MAX_SIZE = 6, 16
MIN_OBJECTS, MAX_OBJECTS = 2, 6
OBS_MODES = ("grid", "pixels")
PIXELS = 64  # side of the `pixels` observation
RENDER = 256  # side of `render_env` images
STREAM_LAYOUT = 0x6070  # counter-based stream (keyed by level seed) of everything in an episode
CHOICE_BITS = 16  # choices share a 32-bit value while the product of their ranges stays below 2**16
CHANNELS = 2 + len(COLOURS) + len(OBJECTS)  # grid: wall, agent, colours, types

# RGB: floor, wall, agent, then the object colours (COLOURS order).
FLOOR_RGB, WALL_RGB, AGENT_RGB = (235, 235, 225), (40, 44, 52), (15, 15, 15)
COLOUR_RGB = np.array([[220, 50, 50], [50, 170, 70], [50, 100, 230], [150, 70, 200], [235, 200, 30],
                       [130, 130, 130]], dtype=np.uint8)
# Square codes of the pictures: 0 floor, 1 wall, 2 + c object combination c; + AGENT_CODE with the agent.
AGENT_CODE = 2 + NUM_COMBOS
NUM_CODES = 2 * AGENT_CODE


def paint(codes: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours of points at fractions (u down, v right) in [0, 1) of squares with `codes`."""
    du, dv = u - 0.5, v - 0.5
    base, agent = codes % AGENT_CODE, codes >= AGENT_CODE
    rgb = np.empty((codes.shape[0], 3), dtype=np.uint8)
    rgb[:] = FLOOR_RGB
    rgb[base == 1] = WALL_RGB
    combo = np.maximum(base - 2, 0)
    kind = combo % len(OBJECTS)
    ball = du ** 2 + dv ** 2 <= 0.38 ** 2
    ring = np.maximum(np.abs(du), np.abs(dv))
    box = (ring <= 0.40) & (ring >= 0.20)
    key = (((u - 0.30) ** 2 + dv ** 2 <= 0.24 ** 2)  # head
           | ((np.abs(dv) <= 0.07) & (u >= 0.30) & (u <= 0.92))  # shaft
           | ((u >= 0.62) & (u <= 0.82) & (v >= 0.5) & (v <= 0.80)))  # bit
    shape = np.where(kind == 0, ball, np.where(kind == 1, box, key))
    drawn = (base >= 2) & shape
    rgb[drawn] = COLOUR_RGB[combo[drawn] // len(OBJECTS)]
    rgb[agent & (np.abs(du) + np.abs(dv) <= 0.32)] = AGENT_RGB
    return rgb


def _pixel_squares(size: int, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel along one axis: the grid square it shows and its fraction within that square."""
    t = (np.arange(pixels) + 0.5) * size / pixels
    square = np.floor(t).astype(np.int64)
    return square, t - square


def _insert(taken: list[torch.Tensor], v: torch.Tensor) -> list[torch.Tensor]:
    """The ascending list `taken` (of (B,) tensors, per env) with `v` (distinct from all) inserted."""
    if not taken:
        return [v]
    out = [torch.minimum(taken[0], v)]
    out += [torch.minimum(taken[j], torch.maximum(taken[j - 1], v)) for j in range(1, len(taken))]
    return out + [torch.maximum(taken[-1], v)]


def _skip_taken(r: torch.Tensor, taken: list[torch.Tensor]) -> torch.Tensor:
    """The r-th (from 0) value not in `taken` (ascending): step over each taken value at or below it."""
    for s in taken:
        r = r + (s <= r)
    return r


class MazeGoToVecEnv(NativeVecEnv):
    """A batch of language-conditioned rooms on one device (see the module docstring)."""

    procedural = True  # episodes come from per-episode level seeds
    outcome_keys = ("success",)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", *, split: str = "train",
                 num_levels: int = 0, size: int = 8, num_objects: int = 3, obs_mode: str = "grid",
                 eval_targets: str = "all", blank_mission: bool = False, max_episode_steps: int | None = None,
                 autoreset: bool = True):
        size = check_int("size", size, MIN_SIZE, MAX_SIZE)
        num_objects = check_int("num_objects", num_objects, MIN_OBJECTS, MAX_OBJECTS)
        n = size - 2  # interior side
        if (n // 2) ** 2 < num_objects:
            need = 2 * int(np.ceil(np.sqrt(num_objects))) + 2
            raise ValueError(f"num_objects={num_objects} needs size >= {need} (objects stand on every other "
                             f"row and column), got size {size}")
        obs_mode = check_choice("obs_mode", obs_mode, OBS_MODES)
        eval_targets = check_choice("eval_targets", eval_targets, EVAL_TARGETS)
        self.blank_mission = check_bool("blank_mission", blank_mission)
        super().__init__("rlbase/MazeGoTo-v0", num_envs, device, split=split, num_levels=num_levels,
                         autoreset=autoreset,
                         max_episode_steps=2 * size * size if max_episode_steps is None else max_episode_steps)
        self.size, self.num_objects, self.obs_mode, self.eval_targets = size, num_objects, obs_mode, eval_targets
        dev, b, k, ss = self.device, self.num_envs, num_objects, size * size
        self._interior = n

        # Language (rlbase.envs.instructions): the targets this env draws, and the token ids of every
        # (template, combination).
        targets = target_combinations(split, eval_targets)
        self._targets = torch.tensor(targets, dtype=torch.int64, device=dev)
        self._templates = SPLIT_TEMPLATES[split]
        self._template_offset = 0 if split == "train" else len(TRAIN_TEMPLATES)  # rows of the table below
        self._missions = mission_table().to(dev)  # (templates * 18, MAX_WORDS)
        if self.blank_mission:  # the language-free baseline: every instruction reads as padding
            self._missions.zero_()

        # Geometry: interior squares (row-major) as flat grid positions; the walls; the lattices.
        rows, cols = np.meshgrid(np.arange(1, size - 1), np.arange(1, size - 1), indexing="ij")
        self._interior_flat = torch.from_numpy((rows * size + cols).reshape(-1)).to(dev)
        walls = np.ones((size, size), dtype=np.int64)
        walls[1:-1, 1:-1] = 0
        self._walls = torch.from_numpy(walls.reshape(-1)).to(dev)
        # Lattice p = 2 * row parity + column parity: its squares as interior indices, row-major
        # (so increasing with the lattice index), padded to the largest lattice.
        lattices = [[r * n + c for r in range(p >> 1, n, 2) for c in range(p & 1, n, 2)] for p in range(4)]
        width = max(len(sq) for sq in lattices)
        self._lattice = torch.tensor([sq + [0] * (width - len(sq)) for sq in lattices],
                                     dtype=torch.int64, device=dev).reshape(-1)
        self._lattice_width = width
        self._lattice_size = torch.tensor([len(sq) for sq in lattices], dtype=torch.int64, device=dev)
        # Grid channels lit by each combination, as offsets of the flat (CHANNELS * size * size) image.
        combos = torch.arange(NUM_COMBOS, dtype=torch.int64)
        self._colour_at = ((2 + combos // len(OBJECTS)) * ss).to(dev)
        self._type_at = ((2 + len(COLOURS) + combos % len(OBJECTS)) * ss).to(dev)

        # The random choices of an episode, in order, packed into 32-bit values (see `generate`).
        ranges = [len(self._templates), len(targets), *(NUM_COMBOS - t for t in range(1, k)), 4,
                  *(width - t for t in range(k)), n * n - k]
        self._slots, product, slot = [], 1, 0
        for r in ranges:
            if product * r > 1 << CHOICE_BITS and product > 1:
                slot, product = slot + 1, 1
            self._slots.append(slot)
            product *= r
        self._num_values = slot + 1

        self._moves = torch.tensor([-size, size, -1, 1], dtype=torch.int64, device=dev)
        self._reward_per_step = 0.9 / self.max_episode_steps
        # Layout rows (the batch is the contiguous axis): agent start, mission row (of `_missions`),
        # object positions (k), combinations (k), then the flat image indices of the objects' colour
        # channels (k) and type channels (k). Object 0 is the target.
        self._rows = {"agent": 0, "mission": 1, "pos": slice(2, 2 + k), "combo": slice(2 + k, 2 + 2 * k),
                      "lit": slice(2 + 2 * k, 2 + 4 * k)}
        self.single_action_space = gym.spaces.Discrete(4)
        mission_space = gym.spaces.Box(0, TOKENIZER.vocab_size - 1, (MAX_WORDS,), np.int64)
        if obs_mode == "grid":
            image_space = gym.spaces.Box(0, 1, (CHANNELS, size, size), np.uint8)
            template = torch.zeros(CHANNELS * ss, dtype=torch.uint8)
            template[:ss] = torch.from_numpy(walls.reshape(-1))
            self._image_template = template.to(dev)
            self._agent_at = torch.arange(b, dtype=torch.int64, device=dev) * (CHANNELS * ss) + ss
        else:
            image_space = gym.spaces.Box(0, 255, (3, PIXELS, PIXELS), np.uint8)
            self._init_sprites(walls)
        self.single_observation_space = gym.spaces.Dict({"image": image_space, "mission": mission_space})

        self.pos = torch.zeros(b, dtype=torch.int64, device=dev)
        self.success = torch.zeros(b, dtype=torch.bool, device=dev)
        self._layout = torch.zeros(2 + 4 * k, b, dtype=torch.int64, device=dev)
        self._reset_envs(self._all)  # a valid state before the first `reset`

    def _init_sprites(self, walls: np.ndarray) -> None:
        """Tables of the `pixels` observation: the background (floor and walls), and for every
        (square code, grid square) the pixels of that square and their colours."""
        size, ss = self.size, self.size * self.size
        square, frac = _pixel_squares(size, PIXELS)
        codes = walls.reshape(-1)[(square[:, None] * size + square[None, :]).reshape(-1)]
        u = np.broadcast_to(frac[:, None], (PIXELS, PIXELS)).reshape(-1)
        v = np.broadcast_to(frac[None, :], (PIXELS, PIXELS)).reshape(-1)
        self._background = torch.from_numpy(paint(codes, u, v).T.copy()).to(self.device)  # (3, P * P)
        # Pixels of each square along an axis, padded to the most by repeating the first (a
        # scatter then writes that pixel twice, with the same colour).
        q = int(np.bincount(square).max())
        along = np.array([np.resize(np.flatnonzero(square == i), q) for i in range(size)])  # (size, q)
        ys = np.repeat(along, q, axis=1)[:, None, :]  # (size, 1, q * q) pixel rows of square (r, c)
        xs = np.tile(along, (1, q))[None, :, :]  # (1, size, q * q) pixel columns
        self._square_pixels = torch.from_numpy((ys * PIXELS + xs).reshape(ss, q * q)).to(self.device)
        uu = np.broadcast_to(frac[ys], (size, size, q * q)).reshape(1, -1)
        vv = np.broadcast_to(frac[xs], (size, size, q * q)).reshape(1, -1)
        all_codes = np.broadcast_to(np.arange(NUM_CODES)[:, None], (NUM_CODES, uu.shape[1]))
        rgb = paint(all_codes.reshape(-1), np.broadcast_to(uu, all_codes.shape).reshape(-1),
                    np.broadcast_to(vv, all_codes.shape).reshape(-1))
        # (codes * squares, 3, q * q): row code * ss + square holds that square's pixels drawn with that code.
        rgb = rgb.reshape(NUM_CODES * ss, q * q, 3).transpose(0, 2, 1)
        self._sprites = torch.from_numpy(rgb.copy()).to(self.device)

    # -- episodes --------------------------------------------------------------------------------
    def generate(self, seeds: torch.Tensor) -> torch.Tensor:
        """(2 + 4 * num_objects, B) int64 layouts of level `seeds` (B,): a pure function of each seed,
        batched with a fixed sequence of elementwise ops (rows: see `_rows`).

        Choices, in order: the template, the target combination, the distractor combinations
        (without replacement), the lattice, the objects' lattice squares (without replacement;
        object 0 is the target), the agent's square among the other interior squares.
        """
        k, n = self.num_objects, self._interior
        fracs = list(random_bits(seeds, torch.zeros_like(seeds), STREAM_LAYOUT, self._num_values).unbind(1))
        slots = iter(self._slots)

        def choose(span: int | torch.Tensor) -> torch.Tensor:
            """Uniform in [0, span): the high word of value * span; the low word feeds the next choice."""
            slot = next(slots)
            x = fracs[slot] * span
            fracs[slot] = x & MASK32
            return x >> 32

        template = choose(len(self._templates))
        combos = [self._targets.take(choose(self._targets.shape[0]))]
        taken = combos[:]
        for t in range(1, k):
            combos.append(_skip_taken(choose(NUM_COMBOS - t), taken))
            taken = _insert(taken, combos[-1])
        lattice = choose(4)
        span = self._lattice_size.take(lattice)
        sites, taken = [], []
        for t in range(k):
            sites.append(_skip_taken(choose(span - t), taken))
            taken = _insert(taken, sites[-1])
        # Lattice squares -> interior squares (increasing, so `taken` stays ascending) -> grid squares.
        base = lattice * self._lattice_width
        occupied = self._lattice.take(torch.stack(taken) + base).unbind(0)
        agent = _skip_taken(choose(n * n - k), occupied)
        squares = torch.stack([agent, *sites])
        squares[1:] += base
        squares[1:] = self._lattice.take(squares[1:])
        pos = self._interior_flat.take(squares)  # (1 + k, B): agent, objects
        mission = (template + self._template_offset) * NUM_COMBOS + combos[0]
        combo = torch.stack(combos)
        obj = pos[1:]
        return torch.cat((pos[:1], mission[None], obj, combo, self._colour_at.take(combo).add_(obj),
                          self._type_at.take(combo).add_(obj)))

    # -- hooks -------------------------------------------------------------------------------------
    def _reset_envs(self, mask: torch.Tensor) -> None:
        fresh = self.generate(self.level_seeds())
        self._layout = torch.where(mask, fresh, self._layout)
        self.pos = torch.where(mask, fresh[0], self.pos)
        self.success = self.success & ~mask

    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        move = self._moves.take(actions.reshape(-1).long())
        target = self.pos + move
        self.pos = target - move * self._walls.take(target)
        hits = self._layout[self._rows["pos"]] == self.pos  # (k, B); object 0 is the target
        self.success = hits[0]
        reward = self.success * (1.0 - self._reward_per_step * (self.elapsed + 1).to(torch.float32))
        return reward, hits.any(0)

    def _info(self) -> dict[str, torch.Tensor]:
        return {"success": self.success}

    def _observe(self) -> dict[str, torch.Tensor]:
        image = self._grid() if self.obs_mode == "grid" else self._pixels()
        # Fresh tensors on every call: callers keep what they were given.
        return {"image": image, "mission": self._missions.index_select(0, self._layout[1])}

    def _grid(self) -> torch.Tensor:
        b, s = self.num_envs, self.size
        image = torch.empty(b, CHANNELS * s * s, dtype=torch.uint8, device=self.device)
        image.copy_(self._image_template)
        image.scatter_(1, self._layout[self._rows["lit"]].t(), 1)
        image.view(-1).index_fill_(0, self._agent_at + self.pos, 1)
        return image.view(b, CHANNELS, s, s)

    def _pixels(self) -> torch.Tensor:
        # The background, then the squares of the objects and of the agent pasted over it.
        b, k, ss = self.num_envs, self.num_objects, self.size * self.size
        obj, combo = self._layout[self._rows["pos"]].t(), self._layout[self._rows["combo"]].t()
        hit = (obj == self.pos[:, None]).long()  # the agent on an object: both squares drawn alike
        codes = torch.cat((combo + 2 + AGENT_CODE * hit, AGENT_CODE + (hit * (combo + 2)).sum(1, keepdim=True)), 1)
        squares = torch.cat((obj, self.pos[:, None]), 1)  # (B, k + 1)
        q2 = self._square_pixels.shape[1]
        src = self._sprites.index_select(0, (codes * ss + squares).view(-1))  # (B * (k + 1), 3, q2)
        src = src.view(b, k + 1, 3, q2).transpose(1, 2).reshape(b, 3, (k + 1) * q2)
        at = self._square_pixels.index_select(0, squares.view(-1)).view(b, 1, (k + 1) * q2).expand(b, 3, -1)
        image = torch.empty(b, 3, PIXELS * PIXELS, dtype=torch.uint8, device=self.device)
        image.copy_(self._background)
        image.scatter_(2, at, src)
        return image.view(b, 3, PIXELS, PIXELS)

    # -- views (tests, rendering, analysis) ------------------------------------------------------------
    def layout(self, seeds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The current episodes (or, given level `seeds`, those levels at their start) in grid terms:
        `agent` (B, 2) and `objects` (B, k, 2) (row, col); `colours`, `types` (B, k) indices into
        COLOURS and OBJECTS (object 0 is the target); `template` (B,) index into this split's templates."""
        if seeds is None:
            lay, agent = self._layout, self.pos
        else:
            lay = self.generate(torch.as_tensor(seeds, dtype=torch.int64, device=self.device))
            agent = lay[0]
        s = self.size

        def coords(flat: torch.Tensor) -> torch.Tensor:
            return torch.stack((torch.div(flat, s, rounding_mode="floor"), flat % s), -1)

        combo = lay[self._rows["combo"]].t()
        return {"agent": coords(agent), "objects": coords(lay[self._rows["pos"]].t()),
                "colours": combo // len(OBJECTS), "types": combo % len(OBJECTS),
                "template": lay[1] // NUM_COMBOS - self._template_offset}

    def instruction(self, index: int) -> str:
        """The instruction of env `index`'s current episode, as text (host-side: not for the step loop)."""
        row = int(self._layout[1, index])
        template, combo = divmod(row, NUM_COMBOS)
        return instruction_text(combo // len(OBJECTS), combo % len(OBJECTS), template - self._template_offset,
                                self.split)

    def render_env(self, index: int) -> np.ndarray:
        """(256, 256, 3) uint8 RGB top-down view of env `index` (walls, floor, objects, agent)."""
        s = self.size
        codes = np.ones(s * s, dtype=np.int64)
        codes[self._interior_flat.cpu().numpy()] = 0
        lay = self._layout[:, index].cpu().numpy()
        codes[lay[self._rows["pos"]]] = 2 + lay[self._rows["combo"]]
        codes[int(self.pos[index])] += AGENT_CODE
        square, frac = _pixel_squares(s, RENDER)
        pix = codes[(square[:, None] * s + square[None, :]).reshape(-1)]
        u = np.broadcast_to(frac[:, None], (RENDER, RENDER)).reshape(-1)
        v = np.broadcast_to(frac[None, :], (RENDER, RENDER)).reshape(-1)
        return paint(pix, u, v).reshape(RENDER, RENDER, 3)


class MazeGoToEnv(SingleEnv):
    """`gymnasium.make("rlbase/MazeGoTo-v0", size=..., obs_mode=...)`: one room, the same dynamics;
    `info["mission"]` holds the instruction as text."""

    vec_cls = MazeGoToVecEnv

    def _host_info(self) -> dict[str, Any]:
        return {"mission": self.vec.instruction(0)}


__all__ = ["MazeGoToVecEnv", "MazeGoToEnv", "MIN_SIZE", "MAX_SIZE", "OBS_MODES"]
