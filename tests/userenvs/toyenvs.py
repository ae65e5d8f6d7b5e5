"""Toy user environments for tests/test_user_envs.py, written as a user writes an env module.

The test copies this file into a temporary folder under a fresh module name and names it in an
id, `module:namespace/Counter-v0`, as a user names their own module. Importing it registers each
env under the namespace `<module name>/`. Like much user code, no constructor takes `render_mode`
(except Painter's, which tests that rendering passes it).
"""

import gymnasium as gym
import numpy as np

START = 2  # Counter's Discrete space starts here, so a one-hot that ignored `start` would be off


class Counter(gym.Env):
    """Discrete(5, start=2) observation `START + position`; the position starts at 0, 1 or 2
    (seeded), moves by the action (0 or 1) each step; reaching 4 terminates, step 6 truncates."""

    metadata = {"render_modes": [], "render_fps": 7}

    def __init__(self):
        self.observation_space = gym.spaces.Discrete(5, start=START)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = int(self.np_random.integers(0, 3))
        self.t = 0
        return START + self.pos, {}

    def step(self, action):
        self.pos += int(action)
        self.t += 1
        terminated = self.pos == 4
        return START + self.pos, 1.0, terminated, self.t >= 6 and not terminated, {}


class Bits(gym.Env):
    """MultiBinary((2, 3)) random bits each step; an episode lasts 1 to 4 steps (seeded)."""

    def __init__(self):
        self.observation_space = gym.spaces.MultiBinary((2, 3))
        self.action_space = gym.spaces.Discrete(2)

    def _bits(self):
        return self.np_random.integers(0, 2, (2, 3)).astype(np.int8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = int(self.np_random.integers(1, 5))
        return self._bits(), {}

    def step(self, action):
        self.left -= 1
        return self._bits(), 0.0, self.left == 0, False, {}


class Mixed(gym.Env):
    """Dict observation: a float64 vector, a uint8 frame and a Discrete room; 1 to 4 steps (seeded)."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float64),
            "frame": gym.spaces.Box(0, 255, (2, 2), np.uint8),
            "room": gym.spaces.Discrete(3),
        })
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self):
        return {"pos": self.np_random.uniform(-1.0, 1.0, 2),
                "frame": self.np_random.integers(0, 256, (2, 2)).astype(np.uint8),
                "room": int(self.np_random.integers(0, 3))}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = int(self.np_random.integers(1, 5))
        return self._obs(), {}

    def step(self, action):
        self.left -= 1
        return self._obs(), 0.0, self.left == 0, False, {}


class Pair(gym.Env):
    """A Tuple observation, which rlbase refuses (FlattenObservation would fix it)."""

    def __init__(self):
        self.observation_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(0.0, 1.0, (2,))))
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


class Painter(gym.Env):
    """Renders 4x4 white frames when made with render_mode="rgb_array" (black otherwise)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}

    def render(self):
        return np.full((4, 4, 3), 255 if self.render_mode == "rgb_array" else 0, np.uint8)


for _name in ("Counter", "Bits", "Mixed", "Pair", "Painter"):
    gym.register(f"{__name__}/{_name}-v0", entry_point=f"{__name__}:{_name}")
