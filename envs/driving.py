"""rlbase/Driving-v0 and rlbase/DrivingDiscrete-v0: race a car around a new random closed track.

Track. Every episode drives a new closed loop given by its level seed (`level_seeds`; the train
and eval splits use disjoint seed halves): a polar curve around the origin with random Fourier
modes, so a track is always closed and never crosses itself, and "on the road", "offset from the
centre line" and "progress along it" are a few tensor ops (the geometry and the lidar:
rlbase.envs.track). The car starts on the centre line at theta = 0 (the start/finish line), at
rest, heading along the track; the track runs counter-clockwise.

Car: a kinematic bicycle (position of the centre of mass, heading, speed), dt = 0.1 s, wheelbase
2.5 (centre of mass mid-way). Actions are (steering, throttle) in [-1, 1]^2 (continuous, Box):
steering +1 is full left (counter-clockwise); throttle > 0 accelerates (6 units/s^2 at full), < 0
brakes (12 units/s^2 at full), and a linear drag makes `max_speed` the top speed; the car never
reverses. The steering angle is at most 0.5 rad and, for grip, at most the angle whose lateral
acceleration v^2 tan(delta) / wheelbase reaches 8 units/s^2: fast corners need braking first.
`discrete=True` (DrivingDiscrete-v0) gives Discrete(5): 0 coast, 1 accelerate, 2 brake,
3 left + half throttle, 4 right + half throttle (half throttle settles at half the top speed, slow
enough for the tightest corners).

Reward: `lap_reward` (100) times the progress along the centre line this step, as a fraction of
the lap, signed: driving backwards costs what driving forwards pays, so no back-and-forth over the
start line earns anything. Progress is the radius-weighted angle int_0^theta r / int_0^2pi r of the
car's radial projection onto the centre line (exactly proportional to arc length where r' = 0; an
analytic function of theta); it is unwrapped at the start/finish line, so a lap is 1.0 and every
completed lap is counted once (`laps` = whole laps of the furthest progress reached). Leaving the
track (centre of mass outside the band) terminates the episode with `-offtrack_penalty`.
Completing `laps` laps (default 1; 0 = never) terminates it too; `max_episode_steps` (default
1000) truncates it. `info` has per-env `progress` (laps driven as a fraction, negative behind the
start), `laps` (completed laps, int64), `speed` and `offtrack` (bool).

Observations (`obs_mode`):
- `lidar` (default): float32 (num_rays + 2,): distances to the track edge along `num_rays` (9) rays
  fanned evenly from -90 deg (right) to +90 deg (left) of the heading, divided by `lidar_range`
  (1.0 = nothing within range; all 0 when the car is off the track), then the speed / `max_speed`
  and the heading relative to the track direction / pi (positive = pointing left of it).
- `pixels`: uint8 (3, 64, 64) egocentric top-down RGB view, 0.5 units per pixel: the car is fixed
  at column 32, row 44, facing up; the world rotates around it.

Resets without a host sync. Drawing a track, its start pose and its first observation is too costly
to do for every env on every step, so each env keeps a prepared next episode (`NativeVecEnv`'s
prepared episodes). `refresh_every` is a lower bound on the length of any episode: the steps a car
starting at rest needs to cover the least distance from the start line to the edge, bounded from
the track family (`shortest_offtrack_episode`), or the time limit if shorter; a lap takes far longer.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.native import NativeVecEnv, SingleEnv, check_bool, check_choice, check_int, check_number
from rlbase.envs.track import LIDAR_SAMPLES, MODES, Track, Workspace

OBS_MODES = ("lidar", "pixels")

# Car.
DT = 0.1
WHEELBASE = 2.5
MAX_STEER = 0.5  # rad
ACCEL = 6.0  # units/s^2 at full throttle
BRAKE = 12.0  # units/s^2 at full brake
GRIP = 8.0  # largest lateral acceleration, units/s^2
CAR_LENGTH, CAR_WIDTH = 4.0, 2.0  # drawing only

# Discrete actions: (steering, throttle).
DISCRETE_ACTIONS = ((0.0, 0.0), (0.0, 1.0), (0.0, -1.0), (1.0, 0.5), (-1.0, 0.5))
ACTION_NAMES = ("coast", "accelerate", "brake", "left", "right")

# Pictures.
PIXELS = 64  # side of the `pixels` observation
PIXEL_SCALE = 0.5  # world units per pixel
PIXEL_CHUNK = 512  # envs drawn at a time (work memory ~ 16 MB per float temporary)
CAR_ROW, CAR_COL = 44, 32  # where the car sits in the `pixels` observation
RENDER = 256  # side of `render_env` images
COLOURS = np.array([
    [52, 140, 60],     # 0 grass
    [96, 96, 100],     # 1 road
    [235, 235, 235],   # 2 edge line
    [250, 250, 250],   # 3 start line (white squares)
    [20, 20, 20],      # 4 start line (black squares)
    [220, 40, 40],     # 5 car
    [250, 210, 60],    # 6 car front
], dtype=np.uint8)
EDGE_LINE = 0.35  # width of the painted edge lines, world units


class DrivingVecEnv(NativeVecEnv):
    """A batch of cars, each on its own random track, on one device (see the module docstring)."""

    procedural = True  # every episode drives the track of its level seed
    # How far the car got, whether it left the road, and how fast it was going when the episode ended.
    outcome_keys = ("progress", "laps", "offtrack", "speed")

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", *, split: str = "train",
                 num_levels: int = 0, autoreset: bool = True, discrete: bool = False, obs_mode: str = "lidar",
                 max_episode_steps: int = 1000, laps: int = 1, track_radius: float = 25.0,
                 track_width: float = 6.0, roughness: float = 1.0, num_rays: int = 9,
                 lidar_range: float = 20.0, lidar_samples: int = LIDAR_SAMPLES, max_speed: float = 15.0,
                 lap_reward: float = 100.0, offtrack_penalty: float = 10.0):
        discrete = check_bool("discrete", discrete)
        obs_mode = check_choice("obs_mode", obs_mode, OBS_MODES)
        self.laps = check_int("laps", laps, 0)
        self.track_radius = check_number("track_radius", track_radius, positive=True)
        self.track_width = check_number("track_width", track_width, positive=True)
        self.roughness = check_number("roughness", roughness)
        self.num_rays = check_int("num_rays", num_rays, 1, 64)
        self.lidar_range = check_number("lidar_range", lidar_range, positive=True)
        self.lidar_samples = check_int("lidar_samples", lidar_samples, 2, 64)
        self.max_speed = check_number("max_speed", max_speed, positive=True)
        self.lap_reward = check_number("lap_reward", lap_reward, positive=True)
        self.offtrack_penalty = check_number("offtrack_penalty", offtrack_penalty)
        self.half_width = 0.5 * self.track_width
        env_id = "rlbase/DrivingDiscrete-v0" if discrete else "rlbase/Driving-v0"
        super().__init__(env_id, num_envs, device, max_episode_steps=max_episode_steps, split=split,
                         num_levels=num_levels, autoreset=autoreset)
        self.discrete, self.obs_mode = discrete, obs_mode
        dev, f32 = self.device, torch.float32
        work = Workspace(dev)
        self._s = work.scalar  # scalar operands of fused ops, as cached 0-dim tensors
        self.track = Track(self.track_radius, self.track_width, self.roughness, self.num_rays, self.lidar_range,
                           self.lidar_samples, work)
        self.ray_angles = self.track.ray_angles  # (R,) of each ray from the heading, rad (+ = left)
        self.refresh_every = max(1, min(self.shortest_offtrack_episode(), self.max_episode_steps))

        self._drag = ACCEL / self.max_speed
        self._l_rear = 0.5 * WHEELBASE
        self._actions = torch.tensor(DISCRETE_ACTIONS, dtype=f32, device=dev)
        self._colours = torch.from_numpy(COLOURS).to(dev)
        self._one, self._dt, self._brake = self._s(1.0), self._s(DT), self._s(BRAKE)
        if obs_mode == "pixels":
            rows = torch.arange(PIXELS, dtype=f32)
            fwd = (CAR_ROW - rows) * PIXEL_SCALE  # the car's centre is the centre of pixel (CAR_ROW, CAR_COL)
            left = (CAR_COL - rows) * PIXEL_SCALE
            self._pix_fwd = fwd[:, None].expand(PIXELS, PIXELS).reshape(-1, 1).to(dev)  # (P, 1)
            self._pix_left = left[None, :].expand(PIXELS, PIXELS).reshape(-1, 1).to(dev)
            car = (self._pix_fwd.abs() <= 0.5 * CAR_LENGTH) & (self._pix_left.abs() <= 0.5 * CAR_WIDTH)
            self._pix_car = car
            self._pix_front = car & (self._pix_fwd > 0.25 * CAR_LENGTH)
            self.single_observation_space = gym.spaces.Box(0, 255, (3, PIXELS, PIXELS), np.uint8)
        else:
            low = np.zeros(self.num_rays + 2, dtype=np.float32)
            low[-1] = -1.0
            self.single_observation_space = gym.spaces.Box(low, np.ones_like(low), dtype=np.float32)
        if self.discrete:
            self.single_action_space = gym.spaces.Discrete(len(DISCRETE_ACTIONS))
        else:
            self.single_action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

        # State, batch last (per-env operands broadcast along the contiguous axis: fast on CPU).
        # Car: (6, B) rows x, y, heading, speed, progress (unwrapped laps), best progress.
        # Track: (6, B) rows ca_2, ca_3, ca_4, sa_2, sa_3, sa_4: r = R0 + sum_k ca_k cos(k th) + sa_k sin(k th).
        b = self.num_envs
        self.car = torch.zeros(6, b, dtype=f32, device=dev)
        self.coef = torch.zeros(2 * len(MODES), b, dtype=f32, device=dev)
        self.coef_next = self.coef.clone()  # the prepared next episodes: tracks and start cars
        self.car_next = self.car.clone()
        self.offtrack = torch.zeros(b, dtype=torch.bool, device=dev)
        self._frame: dict[str, torch.Tensor] | None = None
        self._obs: torch.Tensor | None = None

    # -- parameters ---------------------------------------------------------------------------
    def shortest_offtrack_episode(self) -> int:
        """A lower bound on the steps a car starting at rest on the start line needs to leave the track.

        The edge is at least `Track.edge_distance` from the start (on the centre line). The speed
        grows by at most ACCEL * DT a step from rest, so n steps cover at most
        sum_{i<=n} min(max_speed, i * ACCEL * DT) * DT. Margins keep float rounding on the safe side.
        """
        reach = self.track.edge_distance()
        travelled, n = 0.0, 0
        while travelled < reach:
            n += 1
            travelled += min(self.max_speed, n * ACCEL * DT) * DT * 1.001
        return n

    # -- tracks (geometry: rlbase.envs.track) ----------------------------------------------------
    def track_coefficients(self, seeds: torch.Tensor) -> torch.Tensor:
        """(6, B) centre-line coefficients (ca_2, ca_3, ca_4, sa_2, sa_3, sa_4) of level `seeds` (B,)."""
        return self.track.coefficients(seeds)

    def centre_line(self, coef: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Radius r and slope dr/dtheta of centre lines `coef` (6, B) at angles `theta` (..., B)."""
        return self.track.centre_line(coef, theta)

    def _prepare(self, episodes: torch.Tensor,
                 with_obs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Track, start car (on the start line, at rest) and (optionally) first observation of episode
        numbers `episodes`."""
        coef = self.track.coefficients(self.level_seeds(episodes))
        car = torch.zeros(6, coef.shape[1], dtype=coef.dtype, device=coef.device)
        car[0], car[2] = self.track.start_pose(coef)
        obs = self._observation(self.track.frame(car, coef), car[3]) if with_obs else None
        return coef, car, obs

    # -- observations -------------------------------------------------------------------------
    def _observation(self, f: dict[str, torch.Tensor], speed: torch.Tensor) -> torch.Tensor:
        if self.obs_mode == "pixels":
            return self._pixels(f)
        n = self.num_rays
        obs = torch.empty(f["rho"].shape[0], n + 2, dtype=torch.float32, device=self.device)
        rows = obs.t()  # (R + 2, B) view: rays, speed, heading error
        dist = self.track.lidar(f).div_(self._s(self.lidar_range))
        torch.mul(dist, f["offset"].abs() < self.half_width, out=rows[:n])  # all 0 off the track
        torch.div(speed, self.max_speed, out=rows[n])
        torch.div(self.track.heading_error(f), math.pi, out=rows[n + 1]).clamp_(-1.0, 1.0)
        return obs

    def _classify(self, offset: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Colour index (grass, road, edge line, start squares) of world points (x, y) at radial `offset`."""
        dist = offset.abs()
        road = dist < self.half_width
        idx = road.to(torch.uint8) + (road & (dist > self.half_width - EDGE_LINE)).to(torch.uint8)
        line = road & (y.abs() < 0.6) & (x > 0)
        white = (torch.floor(x / 0.6) + torch.floor(y / 0.6 + 1.0)).remainder(2.0) == 0
        return torch.where(line, 4 - white.to(torch.uint8), idx)

    def _pixels(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3, 64, 64) uint8 egocentric views, `PIXEL_CHUNK` envs at a time (bounded memory)."""
        b = f["rho"].shape[0]
        out = torch.empty(b, 3, PIXELS * PIXELS, dtype=torch.uint8, device=self.device)
        for lo in range(0, b, PIXEL_CHUNK):
            part = {k: v[..., lo:lo + PIXEL_CHUNK] for k, v in f.items()}
            out[lo:lo + PIXEL_CHUNK] = self._pixel_chunk(part)
        return out.view(b, 3, PIXELS, PIXELS)

    def _pixel_chunk(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, 3, P) colours: the world points of the pixels, classified, coloured."""
        rho, cphi, sphi, c1, s1 = f["rho"], f["cphi"], f["sphi"], f["c1"], f["s1"]
        fwd, left = self._pix_fwd, self._pix_left
        qu = torch.addcmul(rho, fwd, cphi).addcmul_(left, sphi, value=-1.0)  # radial frame (P, n)
        qv = torch.addcmul(fwd * sphi, left, cphi)
        x = torch.addcmul(qu * c1, qv, s1, value=-1.0)  # world coordinates
        y = torch.addcmul(qu * s1, qv, c1)
        off, _ = self.track.band_offset(qu, qv, self.track.ray_coefficients(f))
        idx = self._classify(off, x, y)
        idx.masked_fill_(self._pix_car, 5)
        idx.masked_fill_(self._pix_front, 6)
        return self._colours[idx.long()].permute(1, 2, 0)  # (P, n, 3) -> (n, 3, P)

    # -- hooks --------------------------------------------------------------------------------
    def _prepare_next(self, episodes: torch.Tensor) -> torch.Tensor:
        self.coef_next, self.car_next, obs = self._prepare(episodes, with_obs=True)
        return obs

    def _take_next(self, mask: torch.Tensor) -> None:
        self.coef = torch.where(mask, self.coef_next, self.coef)
        self.car = torch.where(mask, self.car_next, self.car)
        self._frame, self._obs = None, None  # of the ended cars; `_advance` computes the next ones

    def _reset_envs(self, mask: torch.Tensor) -> None:
        coef, car, _ = self._prepare(self.episodes, with_obs=False)
        self.coef = torch.where(mask, coef, self.coef)
        self.car = torch.where(mask, car, self.car)
        self.offtrack = self.offtrack & ~mask
        self._frame, self._obs = None, None

    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        actions = actions.to(self.device)
        if self.discrete:
            steer, throttle = self._actions.index_select(0, actions.reshape(-1).long()).t()
        else:
            steer, throttle = actions.reshape(-1, 2).to(torch.float32).clamp(-1.0, 1.0).t()
        x, y, heading, speed, progress, best = self.car
        accel = torch.addcmul(throttle.clamp_min(0.0).mul_(self._s(ACCEL)), throttle.clamp_max(0.0), self._brake)
        accel.addcmul_(speed, self._s(-self._drag))
        speed = torch.addcmul(speed, accel, self._dt).clamp_(0.0, self.max_speed)
        # Steering: tan(delta) = steer * min(tan(MAX_STEER), GRIP * WHEELBASE / v^2); the slip angle
        # beta at the centre of mass (mid-way between the axles) has tan(beta) = tan(delta) / 2.
        tan_beta = torch.addcmul(self._s(1e-6), speed, speed).reciprocal_().mul_(self._s(GRIP * WHEELBASE))
        tan_beta.clamp_max_(math.tan(MAX_STEER)).mul_(steer).mul_(self._s(0.5))
        cos_beta = torch.addcmul(self._one, tan_beta, tan_beta).rsqrt_()
        sin_beta = tan_beta.mul_(cos_beta)
        ch, sh = torch.cos(heading), torch.sin(heading)
        step = speed * self._dt  # the course is heading + beta
        x = torch.addcmul(x, step, torch.addcmul(ch * cos_beta, sh, sin_beta, value=-1.0))
        y = torch.addcmul(y, step, torch.addcmul(sh * cos_beta, ch, sin_beta))
        heading = torch.addcmul(heading, step, sin_beta, value=1.0 / self._l_rear)
        heading = heading.add_(self._s(math.pi)).remainder_(2.0 * math.pi).sub_(self._s(math.pi))
        f = self.track.frame(torch.stack((x, y, heading)), self.coef)
        delta = f["fraction"] - progress
        delta.sub_(torch.round(delta))  # wrapped at the start/finish line (a step is far below half a lap)
        progress = progress + delta
        best = torch.maximum(best, progress)
        self.car = torch.stack((x, y, heading, speed, progress, best))
        self._frame, self._obs = f, None
        self.offtrack = f["offset"].abs() >= self.half_width
        reward = delta.mul_(self.lap_reward).sub_(self.offtrack.to(torch.float32), alpha=self.offtrack_penalty)
        terminated = self.offtrack | (best >= self.laps) if self.laps > 0 else self.offtrack
        return reward, terminated

    def _observe(self) -> torch.Tensor:
        if self._obs is None:
            if self._frame is None:
                self._frame = self.track.frame(self.car, self.coef)
            self._obs = self._observation(self._frame, self.car[3])
        return self._obs

    def _info(self) -> dict[str, torch.Tensor]:
        return {"progress": self.car[4], "laps": torch.floor(self.car[5]).clamp_min_(0.0).to(torch.int64),
                "speed": self.car[3], "offtrack": self.offtrack}

    # -- views (tests, scripted driving, rendering) -----------------------------------------------
    def _current_frame(self) -> dict[str, torch.Tensor]:
        if self._frame is None:
            self._frame = self.track.frame(self.car, self.coef)
        return self._frame

    def track_state(self) -> dict[str, torch.Tensor]:
        """Per-env (B,) geometry of the current state: `offset` (radial, from the centre line),
        `heading_error` (rad, heading minus track direction, positive = pointing left of it),
        `fraction` (of the lap at the car's polar angle, in [0, 1)), `theta` (polar angle) and
        `radius` (centre-line r at theta)."""
        f = self._current_frame()
        return {"offset": f["offset"], "heading_error": self.track.heading_error(f), "fraction": f["fraction"],
                "theta": torch.atan2(f["s1"], f["c1"]), "radius": f["r"]}

    def autopilot(self, target_speed: float = 6.0, lookahead: float = 6.0) -> torch.Tensor:
        """Scripted centre-line follower (pure pursuit), batched and sync-free: actions for the current state.

        Steers toward the centre-line point about `lookahead` units ahead and holds `target_speed`.
        Continuous envs get (B, 2) actions; discrete ones (B,) indices (coast/accelerate/brake when
        going straight, left/right when the wanted steering exceeds a quarter of the lock).
        """
        f = self._current_frame()
        x, y, heading, speed = self.car[0], self.car[1], self.car[2], self.car[3]
        theta = torch.atan2(f["s1"], f["c1"]) + lookahead / f["r"]
        r, _ = self.centre_line(self.coef, theta)
        tx, ty = r * torch.cos(theta) - x, r * torch.sin(theta) - y
        bearing = torch.atan2(ty, tx) - heading
        bearing = torch.atan2(torch.sin(bearing), torch.cos(bearing))
        # Pure pursuit: curvature 2 sin(bearing) / distance; steering is a fraction of the allowed tan(delta).
        dist = torch.hypot(tx, ty).clamp_min(1e-3)
        tan_wanted = WHEELBASE * 2.0 * torch.sin(bearing) / dist
        tan_limit = torch.clamp_max(GRIP * WHEELBASE / (speed * speed + 1e-6), math.tan(MAX_STEER))
        steer = (tan_wanted / tan_limit).clamp(-1.0, 1.0)
        throttle = ((target_speed - speed) * 0.5).clamp(-1.0, 1.0)
        if not self.discrete:
            return torch.stack((steer, throttle), 1)
        act = torch.where(speed > target_speed, 2, 1)
        act = torch.where(steer > 0.25, 3, torch.where(steer < -0.25, 4, act))
        return act.to(torch.int64)

    def set_car(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                heading: torch.Tensor | None = None, speed: torch.Tensor | None = None) -> None:
        """Move the cars (tests, scripted starts); the progress counters stay as they are."""
        car = self.car.clone()
        for row, value in enumerate((x, y, heading, speed)):
            if value is not None:
                car[row] = torch.as_tensor(value, dtype=torch.float32, device=self.device)
        self.car, self._frame, self._obs = car, None, None

    def render_env(self, index: int) -> np.ndarray:
        """(256, 256, 3) uint8 top-down view of env `index`: the whole track and the car."""
        dev = self.device
        coef = self.coef[:, index:index + 1]
        car = self.car[:, index]
        extent = self.track_radius + sum(self.track.max_amplitudes) + self.half_width + 2.0
        axis = (torch.arange(RENDER, dtype=torch.float32, device=dev) + 0.5) * (2 * extent / RENDER) - extent
        y = -axis[:, None].expand(RENDER, RENDER).reshape(-1, 1)  # image rows run downwards
        x = axis[None, :].expand(RENDER, RENDER).reshape(-1, 1)
        r, _ = self.centre_line(coef, torch.atan2(y, x))
        idx = self._classify(torch.hypot(x, y) - r, x, y)
        ch, sh = torch.cos(car[2]), torch.sin(car[2])
        dx, dy = x - car[0], y - car[1]
        fwd, left = dx * ch + dy * sh, dy * ch - dx * sh
        body = (fwd.abs() <= 0.5 * CAR_LENGTH) & (left.abs() <= 0.5 * CAR_WIDTH)
        idx.masked_fill_(body, 5)
        idx.masked_fill_(body & (fwd > 0.25 * CAR_LENGTH), 6)
        return COLOURS[idx.view(RENDER, RENDER).cpu().numpy()]


class DrivingEnv(SingleEnv):
    """`gymnasium.make("rlbase/Driving-v0")` (or DrivingDiscrete-v0): one car, the same dynamics."""

    vec_cls = DrivingVecEnv
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": round(1 / DT)}


__all__ = ["DrivingVecEnv", "DrivingEnv", "DISCRETE_ACTIONS", "ACTION_NAMES", "OBS_MODES"]
