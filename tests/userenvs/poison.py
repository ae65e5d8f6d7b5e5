"""A user env that turns poisonous: from step `poison_at` on (counted over the env's life), its
observations (`what=observation`) or rewards (`what=reward`) are NaN."""

import gymnasium as gym
import numpy as np


class Poison(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, poison_at: int = 100, what: str = "observation", value: float = float("nan")):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.poison_at, self.what, self.value = poison_at, what, value
        self.steps = 0

    def _obs(self):
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        if self.what == "observation" and self.steps >= self.poison_at:
            obs[1] = self.value
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        reward = float(action == (self.t % 2))
        if self.what == "reward" and self.steps >= self.poison_at:
            reward = self.value
        return self._obs(), reward, False, self.t >= 20, {}


if "poison/Poison-v0" not in gym.registry:
    gym.register("poison/Poison-v0", entry_point=Poison)
