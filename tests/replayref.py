"""The naive reference the ReplayBuffer tests (test_buffers.py) check against.

A scripted stream of envs emits observations whose newest frame carries a unique id, so every
observation the buffer hands back can be traced to the exact transition it must come from. The
reference keeps, per env, a plain Python list of the real transitions (obs, action, reward,
terminal, done, next observation) and computes n-step targets with a plain loop; the helpers feed a
buffer from the stream and check one sampled transition against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from rlbase.buffers import ReplayBuffer

GAMMA = 0.9
HW = 8  # tiny frames for the stacked case
VEC_DIM = 4  # vector observation: [id, env, episode, step]


@dataclass
class Transition:
    env: int
    obs: np.ndarray  # observation the action was taken in
    action: int
    reward: float
    terminal: bool  # training terminal: terminated or life lost
    done: bool  # real episode end: terminated or truncated
    next: np.ndarray  # next observation of the same episode (the final one when `done`)


class ScriptedEnvs:
    """Naive reference env stream with identifiable frames and per-env transition records."""

    def __init__(self, num_envs: int, frame_stack: int, seed: int, p_end: float = 0.08, p_life: float = 0.05):
        self.num_envs = num_envs
        self.frame_stack = frame_stack
        self.rng = np.random.default_rng(seed)
        self.p_end = p_end
        self.p_life = p_life
        self.next_id = 1
        self.episode = [0] * num_envs
        self.frames: list[list[np.ndarray]] = [[] for _ in range(num_envs)]  # frames of the current episode
        self.records: list[list[Transition]] = [[] for _ in range(num_envs)]
        self.by_id: dict[int, tuple[int, int]] = {}  # newest-frame id of an obs -> (env, record index)
        for e in range(num_envs):
            self._new_frame(e)

    # -- frames and observations
    @property
    def obs_shape(self) -> tuple[int, ...]:
        return (self.frame_stack, HW, HW) if self.frame_stack > 1 else (VEC_DIM,)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.frame_stack > 1 else torch.float32

    def _new_frame(self, e: int) -> None:
        fid = self.next_id
        self.next_id += 1
        step = len(self.frames[e])
        if self.frame_stack > 1:
            frame = np.empty((HW, HW), dtype=np.uint8)
            flat = frame.reshape(-1)
            flat[:] = (np.arange(HW * HW) * 7 + fid * 13) % 250 + 1  # never 0: zero frames are padding
            flat[0], flat[1], flat[2] = fid % 251 + 1, (fid // 251) % 251 + 1, e + 1
        else:
            frame = np.array([fid, e, self.episode[e], step], dtype=np.float32)
        self.frames[e].append(frame)

    def current_obs(self, e: int) -> np.ndarray:
        frames = self.frames[e]
        if self.frame_stack == 1:
            return frames[-1].copy()
        last = frames[-self.frame_stack:]
        pad = [np.zeros((HW, HW), dtype=np.uint8)] * (self.frame_stack - len(last))
        return np.stack(pad + last)

    def obs_tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.current_obs(e) for e in range(self.num_envs)]))

    def decode(self, obs: np.ndarray) -> int:
        """Unique id of the newest frame of an observation."""
        if self.frame_stack == 1:
            return int(obs[0])
        newest = obs[-1].reshape(-1)
        assert newest[0] != 0, "newest frame of a sampled observation is a zero (padding) frame"
        return int(newest[0]) - 1 + 251 * (int(newest[1]) - 1)

    def lookup(self, obs: np.ndarray) -> Transition:
        key = self.decode(obs)
        assert key in self.by_id, f"observation with newest frame {key} is not the obs of any real transition"
        e, i = self.by_id[key]
        return self.records[e][i]

    # -- stepping
    def step(self):
        n = self.num_envs
        actions = np.zeros(n, dtype=np.int64)
        rewards = np.zeros(n, dtype=np.float32)
        terminal = np.zeros(n, dtype=bool)
        dones = np.zeros(n, dtype=bool)
        finals = []
        for e in range(n):
            obs = self.current_obs(e)
            action = int(self.rng.integers(4))
            reward = float(np.float32(np.round(self.rng.normal(), 3)))
            end = self.rng.random() < self.p_end
            terminated = end and self.rng.random() < 0.5
            life_lost = (not end) and self.rng.random() < self.p_life  # terminal=True, done=False
            self._new_frame(e)
            final = self.current_obs(e)
            rec = Transition(e, obs, action, reward, terminated or life_lost, end, final)
            self.by_id[self.decode(obs)] = (e, len(self.records[e]))
            self.records[e].append(rec)
            if end:  # same-step autoreset: next episode starts at once
                self.episode[e] += 1
                self.frames[e] = []
                self._new_frame(e)
            actions[e], rewards[e], terminal[e], dones[e] = action, reward, rec.terminal, end
            finals.append(final)
        next_obs = self.obs_tensor()
        final_obs = torch.from_numpy(np.stack(finals))
        # As the envs do: rows that did not end repeat `obs` in final_obs.
        final_obs = torch.where(torch.from_numpy(dones).view(-1, *[1] * len(self.obs_shape)), final_obs, next_obs)
        return (torch.from_numpy(actions), torch.from_numpy(rewards), torch.from_numpy(terminal),
                torch.from_numpy(dones), next_obs, final_obs)

    def reset_all(self) -> None:
        """Abandon the running episodes (as a resumed run does): they end truncated at the current obs."""
        for e in range(self.num_envs):
            if self.records[e] and not self.records[e][-1].done:
                last = self.records[e][-1]
                last.done = True  # truncated: bootstrap from `last.next`, the current obs
            self.episode[e] += 1
            self.frames[e] = []
            self._new_frame(e)

    def naive_n_step(self, rec: Transition, n: int, gamma: float):
        """(return, discount, next obs) by a plain loop, or None when the look-ahead is not written yet."""
        records = self.records[rec.env]
        i = self.by_id[self.decode(rec.obs)][1]
        ret = 0.0
        for j in range(n):
            if i + j >= len(records):
                return None
            tr = records[i + j]
            ret += gamma ** j * tr.reward
            if tr.terminal:
                return ret, 0.0, tr.next
            if tr.done:
                return ret, gamma ** (j + 1), tr.next
        return ret, gamma ** n, records[i + n - 1].next


def make_buffer(stream: ScriptedEnvs, capacity: int, n_step: int, prioritized: bool = False) -> ReplayBuffer:
    return ReplayBuffer(capacity, stream.num_envs, stream.obs_shape, stream.dtype, torch.device("cpu"),
                        frame_stack=stream.frame_stack, n_step=n_step, gamma=GAMMA, prioritized=prioritized)


def feed(stream: ScriptedEnvs, buffer: ReplayBuffer, steps: int, start: bool = True) -> None:
    if start:
        buffer.start(stream.obs_tensor())
    for _ in range(steps):
        buffer.add(*stream.step())


def check_transition(stream: ScriptedEnvs, n: int, obs, action, ret, next_obs, discount) -> Transition:
    """Assert that one (obs, action, return, next_obs, discount) is a real, unmixed n-step transition."""
    obs, next_obs = obs.numpy(), next_obs.numpy()
    rec = stream.lookup(obs)
    np.testing.assert_array_equal(obs, rec.obs)
    assert int(action) == rec.action
    expected = stream.naive_n_step(rec, n, GAMMA)
    assert expected is not None, "sampled a transition whose n-step look-ahead was not written yet"
    exp_ret, exp_disc, exp_next = expected
    assert float(ret) == pytest.approx(exp_ret, abs=1e-4)
    assert float(discount) == pytest.approx(exp_disc, abs=1e-5)
    np.testing.assert_array_equal(next_obs, exp_next)
    return rec


def sampleable_rows(buffer: ReplayBuffer, e: int) -> list[int]:
    head = int(buffer.pos[e])
    rows = []
    for age in range(buffer.n_step, min(head, buffer.max_age) + 1):
        t = head - age
        if bool(buffer.has_next[t % buffer.slots, e]):
            rows.append(t)
    return rows
