"""Host-side shortest paths on grids (reference answers for the maze tests)."""

from __future__ import annotations

from collections import deque
from typing import Callable

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # the maze actions: up, down, left, right


def bfs_actions(start, goal, is_open: Callable[[tuple[int, int]], bool]) -> list[int]:
    """The actions of a shortest path from `start` to `goal` (row, col) over squares where `is_open`."""
    start, goal = tuple(int(x) for x in start), tuple(int(x) for x in goal)
    prev: dict = {start: None}
    queue = deque([start])
    while queue:
        p = queue.popleft()
        if p == goal:
            break
        for a, (dr, dc) in enumerate(MOVES):
            q = (p[0] + dr, p[1] + dc)
            if q not in prev and is_open(q):
                prev[q] = (p, a)
                queue.append(q)
    assert goal in prev, "unreachable"
    actions, p = [], goal
    while prev[p] is not None:
        p, a = prev[p]
        actions.append(a)
    return actions[::-1]
