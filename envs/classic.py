"""CartPole-v1 and Pendulum-v1 as native envs: Gymnasium's dynamics as batched tensor code.

Same constants, Euler integration, termination thresholds, rewards, time limits (as truncation)
and spaces as Gymnasium's `classic_control` envs, with two differences that do not change the
task: the state is float32 (Gymnasium keeps a float64 state and returns float32 observations), and
the start states come from rlbase's counter-based randomness rather than NumPy's generator. They
have no levels: both splits play the same start-state distribution, and `num_levels` is refused.

CartPole is written for speed at large batch sizes on the CPU, where every elementwise op costs a
few microseconds of dispatch no matter how small: one (B, 4) state updated in place, constants
folded, fused ops (`addcmul`), and a start-state draw of a dozen integer ops (`NativeVecEnv.episode_bits`).
Pendulum is written plainly.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.native import NativeVecEnv, SingleEnv

# ---------------------------------------------------------------------------------- drawing


def _canvas(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 255, dtype=np.uint8)


def _pixel_grid(img: np.ndarray, x0: float, x1: float, y0: float, y1: float):
    """Pixel-centre coordinates (x right, y *up*, as Gymnasium draws before its final flip) of the
    part of `img` inside the box [x0, x1] x [y0, y1], with the matching slices of `img`."""
    h, w = img.shape[:2]
    c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, w)
    r0, r1 = max(int(math.floor(h - y1)) - 1, 0), min(int(math.ceil(h - y0)) + 1, h)
    if c0 >= c1 or r0 >= r1:
        return None
    xs = np.arange(c0, c1) + 0.5
    ys = h - (np.arange(r0, r1) + 0.5)
    return xs[None, :], ys[:, None], (slice(r0, r1), slice(c0, c1))


def _fill_polygon(img: np.ndarray, points: np.ndarray, color: tuple[int, int, int]) -> None:
    """Fill a convex polygon given by its corners (N, 2) in y-up pixel coordinates."""
    grid = _pixel_grid(img, points[:, 0].min(), points[:, 0].max(), points[:, 1].min(), points[:, 1].max())
    if grid is None:
        return
    xs, ys, region = grid
    # Inside a convex polygon = on the same side of every edge (either winding order).
    sides = []
    for (ax, ay), (bx, by) in zip(points, np.roll(points, -1, axis=0)):
        sides.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax))
    sides = np.stack(np.broadcast_arrays(*sides))
    inside = (sides >= 0).all(0) | (sides <= 0).all(0)
    img[region][inside] = color


def _fill_circle(img: np.ndarray, cx: float, cy: float, radius: float, color: tuple[int, int, int]) -> None:
    grid = _pixel_grid(img, cx - radius, cx + radius, cy - radius, cy + radius)
    if grid is None:
        return
    xs, ys, region = grid
    img[region][(xs - cx) ** 2 + (ys - cy) ** 2 <= radius * radius] = color


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (N, 2) points counter-clockwise by `angle` radians (pygame's `rotate_rad`)."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


# ---------------------------------------------------------------------------------- CartPole


class CartPoleVecEnv(NativeVecEnv):
    """Gymnasium's CartPole-v1, batched: push the cart left (0) or right (1) to keep the pole up.

    Reward 1 every step (the terminating one included); terminated when |x| > 2.4 or
    |theta| > 12 degrees; truncated after `max_episode_steps` (500). Start states are uniform in
    [-0.05, 0.05) per state variable, as in Gymnasium (on a 2**-16 grid, see `_start_states`).
    """

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02  # seconds per step (Euler integration)
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", *, split: str = "train",
                 autoreset: bool = True, max_episode_steps: int = 500):
        super().__init__("rlbase/CartPole-v1", num_envs, device, max_episode_steps=max_episode_steps,
                         split=split, autoreset=autoreset)
        high = np.array([self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.state = torch.zeros(num_envs, 4, dtype=torch.float32, device=self.device)
        # Constants of the fused ops, as 0-dim tensors on the device (addcmul's `input` must be a tensor).
        t = lambda v: torch.tensor(v, dtype=torch.float32, device=self.device)  # noqa: E731
        self._force_left = t(-self.force_mag / self.total_mass)
        self._den_const = t(self.length * 4.0 / 3.0)

    def _start_states(self) -> torch.Tensor:
        """(B, 4) float32 start states, uniform in [-0.05, 0.05) on a 2**-16 grid."""
        # The 64 bits as four int16 (the signed range [-32768, 32767]), scaled to [-0.05, 0.05).
        halves = self.episode_bits().view(torch.int16).view(self.num_envs, 4)
        return halves.to(torch.float32).mul_(0.05 / 32768)

    def _reset_envs(self, mask: torch.Tensor) -> None:
        fresh = self._start_states()
        if self.device.type == "mps":  # no 128-bit dtype there
            self.state.copy_(torch.where(mask[:, None], fresh, self.state))
            return
        # Each env's 4 float32 (16 bytes) viewed as one complex128: a (B,) masked copy instead of a
        # (B, 4) one broadcasting the mask, which is several times slower on the CPU.
        rows = self.state.view(torch.complex128).view(self.num_envs)
        torch.where(mask, fresh.view(torch.complex128).view(self.num_envs), rows, out=rows)

    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.state
        x, x_dot, theta, theta_dot = s.unbind(1)  # views into the state
        sin, cos = theta.sin(), theta.cos()
        # Gymnasium:  temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
        # with force = +-force_mag: force / total_mass in one op on the action (0 or 1).
        force = torch.add(self._force_left, actions.reshape(self.num_envs),
                          alpha=2 * self.force_mag / self.total_mass)
        temp = torch.addcmul(force, theta_dot.square(), sin, value=self.polemass_length / self.total_mass)
        # thetaacc = (g * sin - cos * temp) / (length * (4/3 - masspole * cos**2 / total_mass))
        den = torch.addcmul(self._den_const, cos, cos, value=-self.length * self.masspole / self.total_mass)
        thetaacc = torch.addcmul(sin.mul_(self.gravity), cos, temp, value=-1.0).div_(den)  # (sin is used up here)
        # xacc = temp - polemass_length * thetaacc * cos / total_mass
        xacc = torch.addcmul(temp, thetaacc, cos, value=-self.polemass_length / self.total_mass)
        # Euler: positions first, with the old velocities (x and theta, columns 0 and 2, in one op).
        s[:, 0::2].add_(s[:, 1::2], alpha=self.tau)
        x_dot.add_(xacc, alpha=self.tau)
        theta_dot.add_(thetaacc, alpha=self.tau)
        terminated = (x.abs() > self.x_threshold).logical_or_(theta.abs() > self.theta_threshold_radians)
        rewards = torch.ones(self.num_envs, dtype=torch.float32, device=self.device)
        return rewards, terminated

    def _observe(self) -> torch.Tensor:
        return self.state.clone()  # the state is updated in place: hand out a copy

    def render_env(self, index: int) -> np.ndarray:
        """Env `index` as a (400, 600, 3) uint8 frame, drawn like Gymnasium's CartPole."""
        x, _, theta, _ = self.state[index].tolist()
        width, height = 600, 400
        scale = width / (self.x_threshold * 2)
        pole_width, pole_len = 10.0, scale * 2 * self.length
        cart_w, cart_h, axle_offset, cart_y = 50.0, 30.0, 30.0 / 4.0, 100.0
        cart_x = x * scale + width / 2.0
        img = _canvas(height, width)
        img[height - 1 - int(cart_y), :] = 0  # the track
        cart = np.array([[-cart_w / 2, -cart_h / 2], [-cart_w / 2, cart_h / 2],
                         [cart_w / 2, cart_h / 2], [cart_w / 2, -cart_h / 2]])
        _fill_polygon(img, cart + [cart_x, cart_y], (0, 0, 0))
        pole = np.array([[-pole_width / 2, -pole_width / 2], [-pole_width / 2, pole_len - pole_width / 2],
                         [pole_width / 2, pole_len - pole_width / 2], [pole_width / 2, -pole_width / 2]])
        _fill_polygon(img, _rotate(pole, -theta) + [cart_x, cart_y + axle_offset], (202, 152, 101))
        _fill_circle(img, cart_x, cart_y + axle_offset, pole_width / 2, (129, 132, 203))
        return img


class CartPoleEnv(SingleEnv):
    """`gymnasium.make("rlbase/CartPole-v1")`: the native CartPole as a single-instance env."""

    vec_cls = CartPoleVecEnv
    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}


# ---------------------------------------------------------------------------------- Pendulum


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """Angle in [-pi, pi) (Gymnasium's `angle_normalize`; `remainder` is a floor modulo like NumPy's `%`)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class PendulumVecEnv(NativeVecEnv):
    """Gymnasium's Pendulum-v1, batched: swing the pendulum up and keep it upright with a torque in [-2, 2].

    Observation (cos th, sin th, thdot); reward -(angle_normalize(th)**2 + 0.1 thdot**2 + 0.001 u**2)
    with u the clipped torque; never terminates, truncated after `max_episode_steps` (200). Start
    states: th uniform in [-pi, pi), thdot uniform in [-1, 1).
    """

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    m = 1.0
    l = 1.0  # noqa: E741

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", *, split: str = "train",
                 autoreset: bool = True, max_episode_steps: int = 200, g: float = 10.0):
        super().__init__("rlbase/Pendulum-v1", num_envs, device, max_episode_steps=max_episode_steps,
                         split=split, autoreset=autoreset)
        self.g = float(g)
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Box(-self.max_torque, self.max_torque, shape=(1,), dtype=np.float32)
        self.state = torch.zeros(num_envs, 2, dtype=torch.float32, device=self.device)  # (th, thdot)
        # Start states: u in [0, 1) mapped to th in [-pi, pi), thdot in [-1, 1). Made once: a tensor
        # built from host values at every reset would be a host-to-device copy per step on CUDA.
        self._start_scale = torch.tensor([2 * math.pi, 2.0], device=self.device)
        self._start_shift = torch.tensor([math.pi, 1.0], device=self.device)

    def _reset_envs(self, mask: torch.Tensor) -> None:
        # 64 random bits per env (see NativeVecEnv.episode_bits) as two uniforms on a 2**-24 grid.
        halves = self.episode_bits().view(torch.int32).view(self.num_envs, 2)
        u = (halves >> 8).to(torch.float32).mul_(1.0 / (1 << 24)).add_(0.5)  # [-0.5, 0.5) -> [0, 1)
        fresh = u.mul_(self._start_scale).sub_(self._start_shift)  # th in [-pi, pi), thdot in [-1, 1)
        if self.device.type == "mps":  # no complex dtype there
            self.state = torch.where(mask[:, None], fresh, self.state)
            return
        # Each env's (th, thdot) viewed as one complex64: a (B,) masked select instead of a
        # broadcast (B, 2) one, which is several times slower on the CPU.
        rows = torch.where(mask, fresh.view(torch.complex64).view(self.num_envs),
                           self.state.view(torch.complex64).view(self.num_envs))
        self.state = torch.view_as_real(rows)

    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        th, thdot = self.state.unbind(1)
        u = actions.reshape(self.num_envs).to(torch.float32).clamp(-self.max_torque, self.max_torque)
        costs = angle_normalize(th).square() + 0.1 * thdot.square() + 0.001 * u.square()
        newthdot = thdot + (3 * self.g / (2 * self.l) * th.sin() + 3.0 / (self.m * self.l**2) * u) * self.dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * self.dt
        self.state = torch.stack([newth, newthdot], 1)  # a new tensor: no in-place update to guard
        return -costs, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def _observe(self) -> torch.Tensor:
        th, thdot = self.state.unbind(1)
        return torch.stack([th.cos(), th.sin(), thdot], 1)

    def render_env(self, index: int) -> np.ndarray:
        """Env `index` as a (500, 500, 3) uint8 frame, drawn like Gymnasium's Pendulum (without the torque arrow)."""
        th = float(self.state[index, 0])
        size, bound = 500, 2.2
        scale = size / (bound * 2)
        offset = size / 2
        rod_len, rod_w = 1.0 * scale, 0.2 * scale
        img = _canvas(size, size)
        # Gymnasium draws the rod along +x rotated by th + pi/2, then flips the image vertically;
        # drawing the same in a y-up frame gives the same picture: th = 0 points up.
        rod = np.array([[0, -rod_w / 2], [0, rod_w / 2], [rod_len, rod_w / 2], [rod_len, -rod_w / 2]])
        angle = th + math.pi / 2
        _fill_polygon(img, _rotate(rod, angle) + offset, (204, 77, 77))
        _fill_circle(img, offset, offset, rod_w / 2, (204, 77, 77))
        end = _rotate(np.array([[rod_len, 0.0]]), angle)[0] + offset
        _fill_circle(img, end[0], end[1], rod_w / 2, (204, 77, 77))
        _fill_circle(img, offset, offset, 0.05 * scale, (0, 0, 0))  # the axle
        return img


class PendulumEnv(SingleEnv):
    """`gymnasium.make("rlbase/Pendulum-v1")`: the native Pendulum as a single-instance env."""

    vec_cls = PendulumVecEnv
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
