"""Host-side reference answers for the rlbase/MazeGoTo-v0 tests (test_mazegoto_*.py): a level's
layout as numpy arrays, shortest paths that avoid the other objects, and the grid and pixel
observations drawn on the host."""

from __future__ import annotations

import numpy as np

from rlbase.envs.instructions import COLOURS, OBJECTS
from rlbase.envs.mazegoto import AGENT_CODE, PIXELS, MazeGoToVecEnv, _pixel_squares, paint

from tests.gridpaths import bfs_actions


def layout_np(env: MazeGoToVecEnv, seeds=None) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in env.layout(seeds).items()}


def path_to(size: int, start, goal, avoid) -> list[int]:
    """BFS on the host: the actions of a shortest path from `start` to `goal` through the open
    interior, never stepping on a square of `avoid`."""
    blocked = {tuple(int(x) for x in a) for a in avoid}
    return bfs_actions(start, goal, lambda q: 1 <= q[0] < size - 1 and 1 <= q[1] < size - 1 and q not in blocked)


def grid_obs(size: int, lay: dict[str, np.ndarray], i: int) -> np.ndarray:
    """The grid observation of env i of a layout."""
    obs = np.zeros((2 + len(COLOURS) + len(OBJECTS), size, size), dtype=np.uint8)
    obs[0] = 1
    obs[0, 1:-1, 1:-1] = 0
    obs[1][tuple(lay["agent"][i])] = 1
    for (r, c), colour, kind in zip(lay["objects"][i], lay["colours"][i], lay["types"][i]):
        obs[2 + colour, r, c] = 1
        obs[2 + len(COLOURS) + kind, r, c] = 1
    return obs


def pixel_obs(size: int, lay: dict[str, np.ndarray], i: int) -> np.ndarray:
    """The pixels observation of env i, drawn on the host pixel by pixel with `paint`."""
    codes = np.ones((size, size), dtype=np.int64)
    codes[1:-1, 1:-1] = 0
    for (r, c), colour, kind in zip(lay["objects"][i], lay["colours"][i], lay["types"][i]):
        codes[r, c] = 2 + colour * len(OBJECTS) + kind
    codes[tuple(lay["agent"][i])] += AGENT_CODE
    square, frac = _pixel_squares(size, PIXELS)
    pix = codes[square[:, None], square[None, :]].reshape(-1)
    u = np.repeat(frac, PIXELS)
    v = np.tile(frac, PIXELS)
    return paint(pix, u, v).reshape(PIXELS, PIXELS, 3).transpose(2, 0, 1)
