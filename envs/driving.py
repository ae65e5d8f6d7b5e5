"""rlbase/Driving-v0 and rlbase/DrivingDiscrete-v0: race a car around a new random closed track.

Track. Every episode drives a new closed loop given by its level seed (`level_seeds`; the train
and eval splits use disjoint seed halves). The centre line is the polar curve

    r(theta) = track_radius + sum_k a_k cos(k theta + phi_k),   k = 2, 3, 4,

with amplitudes a_k uniform in [0, roughness * (0.20, 0.12, 0.06)[k] * track_radius] and uniform
phases: smooth, always closed, never self-intersecting (a polar graph), with corners down to a
radius of about 11 and some concave S-bends. The road is the band |rho - r(theta)| < track_width/2
around it, measured along the radius (so the perpendicular width dips to ~75% of `track_width`
where the centre line runs oblique to the radius). In this polar form "inside the track", "offset
from the centre line" and "progress along it" are a few tensor ops on (rho, theta). The car starts
on the centre line at theta = 0 (the start/finish line), at rest, heading along the track; the
track runs counter-clockwise.

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

Ray casting (the costly part; all of it batched tensor code with the batch as the last, contiguous
axis): each ray is sampled at `lidar_samples` (3) evenly spaced points, a (samples, rays, B) batch;
the offset rho - r(theta) of a point needs no trigonometry (cos/sin of k * theta from the unit
position vector by multiple-angle formulas). The first sample off the road brackets the exit, a
linear interpolation of the signed offset toward the edge it crosses locates it, and one Newton
step on the exact offset refines it (kept only when it stays in the bracket). Against dense ray
marching, on poses from driving (default fan of 9 rays): median error 0.005 units, 99th percentile
0.06; a ray that clips the edge only briefly between two samples misses that contact: 0.4% of rays
are off by more than 0.5 units (0.2% with `lidar_samples=4`, 0.1% with 5, at ~10% / ~20% lower
throughput).

Resets without a host sync. Drawing a track, its start pose and its first observation is too costly
to do for every env on every step, so each env keeps a prepared *spare* episode: the track, start
state and first observation of its next episode. An ended env takes its spare (one `torch.where`),
and every `refresh_every` steps the spares of all envs are rebuilt in bulk. `refresh_every` is a
lower bound on the length of any episode (`shortest_offtrack_episode`: a car starting at rest needs
7 steps, with the defaults, to cover the least distance from the start line to the edge, bounded
from the track family; the time limit bounds it too; a lap takes far longer), so no env can end
twice between two refreshes and every episode plays exactly the track of its level seed. Resets
from outside `step` (`reset`, `start_next_episode`) build their episodes directly.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.native import NativeVecEnv, SingleEnv, check_int, level_seeds, random_uniform

OBS_MODES = ("lidar", "pixels")

# Track family: centre-line Fourier modes and their largest amplitudes (fractions of track_radius).
MODES = (2, 3, 4)
MODE_SCALE = (0.20, 0.12, 0.06)
STREAM_TRACK = 0x7C4A  # counter-based stream (keyed by level seed) of the track's amplitudes and phases

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

# Ray casting: coarse samples per ray.
LIDAR_SAMPLES = 3

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


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class DrivingVecEnv(NativeVecEnv):
    """A batch of cars, each on its own random track, on one device (see the module docstring)."""

    # How far the car got, whether it left the road, and how fast it was going when the episode ended.
    outcome_keys = ("progress", "laps", "offtrack", "speed")

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", *, split: str = "train",
                 num_levels: int = 0, autoreset: bool = True, discrete: bool = False, obs_mode: str = "lidar",
                 max_episode_steps: int = 1000, laps: int = 1, track_radius: float = 25.0,
                 track_width: float = 6.0, roughness: float = 1.0, num_rays: int = 9,
                 lidar_range: float = 20.0, lidar_samples: int = LIDAR_SAMPLES, max_speed: float = 15.0,
                 lap_reward: float = 100.0, offtrack_penalty: float = 10.0):
        num_envs = check_int("num_envs", num_envs, 1)
        if not isinstance(discrete, (bool, np.bool_)):
            raise ValueError(f"discrete must be True or False, got {discrete!r}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {', '.join(OBS_MODES)}, got {obs_mode!r}")
        max_episode_steps = check_int("max_episode_steps", max_episode_steps, 1)
        num_levels = check_int("num_levels", num_levels, 0)
        self.laps = check_int("laps", laps, 0)
        self.track_radius = _positive("track_radius", track_radius)
        self.track_width = _positive("track_width", track_width)
        self.roughness = _non_negative("roughness", roughness)
        self.num_rays = check_int("num_rays", num_rays, 1, 64)
        self.lidar_range = _positive("lidar_range", lidar_range)
        self.lidar_samples = check_int("lidar_samples", lidar_samples, 2, 64)
        self.max_speed = _positive("max_speed", max_speed)
        self.lap_reward = _positive("lap_reward", lap_reward)
        self.offtrack_penalty = _non_negative("offtrack_penalty", offtrack_penalty)
        self.half_width = 0.5 * self.track_width
        self.max_amplitudes = tuple(self.roughness * s * self.track_radius for s in MODE_SCALE)
        self.min_radius = self.track_radius - sum(self.max_amplitudes)  # smallest possible r(theta)
        if self.min_radius - self.half_width < 0.05 * self.track_radius:
            raise ValueError(
                f"the track would reach the centre: track_radius ({track_radius}) must exceed track_width/2 "
                f"({self.half_width}) plus roughness * {sum(MODE_SCALE):.2f} * track_radius "
                f"({sum(self.max_amplitudes):.2f}) by a margin; lower track_width or roughness")
        env_id = "rlbase/DrivingDiscrete-v0" if discrete else "rlbase/Driving-v0"
        super().__init__(env_id, num_envs, device, max_episode_steps=max_episode_steps, split=split,
                         num_levels=num_levels, autoreset=autoreset)
        self.discrete, self.obs_mode = bool(discrete), obs_mode
        dev, f32 = self.device, torch.float32
        self.refresh_every = max(1, min(self.shortest_offtrack_episode(), max_episode_steps))

        self._k = torch.tensor(MODES, dtype=f32, device=dev)[:, None]  # (3, 1)
        self._max_amp = torch.tensor(self.max_amplitudes, dtype=f32, device=dev)
        self._drag = ACCEL / self.max_speed
        self._l_rear = 0.5 * WHEELBASE
        ray_angles = torch.linspace(-0.5 * math.pi, 0.5 * math.pi, self.num_rays, dtype=torch.float64) \
            if self.num_rays > 1 else torch.zeros(1, dtype=torch.float64)
        self.ray_angles = ray_angles.to(f32).to(dev)
        self._ray_cos = ray_angles.cos().to(f32).view(-1, 1).to(dev)  # (R, 1)
        self._ray_sin = ray_angles.sin().to(f32).view(-1, 1).to(dev)
        self._spacing = self.lidar_range / self.lidar_samples
        samples = torch.arange(1, self.lidar_samples + 1, dtype=f32) * self._spacing
        self._t_hi = samples.view(-1, 1, 1).to(dev)  # (M, 1, 1) sample distances
        self._t_lo = (samples - self._spacing).view(-1, 1, 1).to(dev)
        self._actions = torch.tensor(DISCRETE_ACTIONS, dtype=f32, device=dev)
        self._colours = torch.from_numpy(COLOURS).to(dev)
        # Scalar operands of fused ops (addcmul takes tensors).
        scalar = lambda v: torch.tensor(v, dtype=f32, device=dev)  # noqa: E731
        self._minus_one, self._minus_three, self._one = scalar(-1.0), scalar(-3.0), scalar(1.0)
        self._h_tensor, self._spacing_tensor, self._dt = scalar(self.half_width), scalar(self._spacing), scalar(DT)
        self._brake = scalar(BRAKE)
        self._neg_r0 = scalar(-self.track_radius)
        self._buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self._scalars: dict[float, torch.Tensor] = {}
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
        b = num_envs
        self.car = torch.zeros(6, b, dtype=f32, device=dev)
        self.coef = torch.zeros(2 * len(MODES), b, dtype=f32, device=dev)
        self.coef_next = self.coef.clone()
        self.car_next = self.car.clone()
        self.obs_next: torch.Tensor | None = None
        self.offtrack = torch.zeros(b, dtype=torch.bool, device=dev)
        self._frame: dict[str, torch.Tensor] | None = None
        self._obs: torch.Tensor | None = None
        self._spare_stale = True
        self._since_refresh = 0

    # -- parameters ---------------------------------------------------------------------------
    def shortest_offtrack_episode(self) -> int:
        """A lower bound on the steps a car starting at rest on the start line needs to leave the track.

        The radial offset e = rho - r(theta) has gradient (1, -r'/rho) in polar coordinates, so
        |grad e| <= sqrt(1 + (max|r'| / (min r - half_width))^2) on the road; it is 0 at the start and
        +-half_width at the edge, so the edge is at least half_width / max|grad e| away. The speed
        grows by at most ACCEL * DT a step from rest, so n steps cover at most
        sum_{i<=n} min(max_speed, i * ACCEL * DT) * DT. Margins keep float rounding on the safe side.
        """
        max_slope = sum(k * a for k, a in zip(MODES, self.max_amplitudes))
        reach = 0.99 * self.half_width / math.hypot(1.0, max_slope / (self.min_radius - self.half_width))
        travelled, n = 0.0, 0
        while travelled < reach:
            n += 1
            travelled += min(self.max_speed, n * ACCEL * DT) * DT * 1.001
        return n

    def level_seeds_of(self, episodes: torch.Tensor) -> torch.Tensor:
        """(B,) level seeds of episode numbers `episodes` (`level_seeds()`: of the current ones)."""
        return level_seeds(self.keys, episodes, self.split, self.num_levels)

    # -- tracks -------------------------------------------------------------------------------
    def track_coefficients(self, seeds: torch.Tensor) -> torch.Tensor:
        """(6, B) centre-line coefficients (ca_2, ca_3, ca_4, sa_2, sa_3, sa_4) of level `seeds` (B,)."""
        n = len(MODES)
        u = random_uniform(seeds, torch.zeros_like(seeds), STREAM_TRACK, 2 * n).t()
        amp = u[:n] * self._max_amp[:, None]
        phase = u[n:] * (2.0 * math.pi)
        # a cos(k th + phi) = a cos(phi) cos(k th) - a sin(phi) sin(k th)
        return torch.cat((amp * torch.cos(phase), -amp * torch.sin(phase)))

    def centre_line(self, coef: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Radius r and slope dr/dtheta of centre lines `coef` (6, B) at angles `theta` (..., B)."""
        n = len(MODES)
        r = torch.full_like(theta, self.track_radius)
        slope = torch.zeros_like(theta)
        for j, k in enumerate(MODES):
            c, s = torch.cos(k * theta), torch.sin(k * theta)
            r = r + coef[j] * c + coef[j + n] * s
            slope = slope + k * (coef[j + n] * c - coef[j] * s)
        return r, slope

    def _start_car(self, coef: torch.Tensor) -> torch.Tensor:
        """(6, B) car rows at the start of tracks `coef`: on the centre line at theta = 0, at rest."""
        n = len(MODES)
        r0 = self.track_radius + coef[:n].sum(0)
        slope0 = (coef[n:] * self._k).sum(0)
        car = torch.zeros(6, coef.shape[1], dtype=coef.dtype, device=coef.device)
        car[0] = r0
        car[2] = torch.atan2(r0, slope0)  # the tangent is (r', r) in the (radial, tangential) frame
        return car

    def _prepare(self, episodes: torch.Tensor,
                 with_obs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Track, start car and (optionally) first observation of episode numbers `episodes`."""
        coef = self.track_coefficients(self.level_seeds_of(episodes))
        car = self._start_car(coef)
        obs = self._observation(self._car_frame(car, coef), car[3]) if with_obs else None
        return coef, car, obs

    def _write_spare(self) -> None:
        self.coef_next, self.car_next, self.obs_next = self._prepare(self.episodes + 1, with_obs=True)
        self._spare_stale, self._since_refresh = False, 0

    # -- geometry -----------------------------------------------------------------------------
    def _car_frame(self, car: torch.Tensor, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        """Where each car is relative to its track, from car rows (6, B) and coefficients (6, B).

        The *radial frame* of a car has its first axis along the car's position vector (outwards)
        and its second axis counter-clockwise; in it the centre line near the car is
        r(theta_c + d) = R0 + sum_k ra_k cos(k d) + rb_k sin(k d) (coefficients rotated by k theta_c).
        """
        n = len(MODES)
        x, y, heading = car[0], car[1], car[2]
        rho = torch.hypot(x, y)
        inv = rho.clamp_min(1e-6).reciprocal_()
        c1, s1 = x * inv, y * inv
        c2, s2 = torch.addcmul(c1 * c1, s1, s1, value=-1.0), 2.0 * c1 * s1
        c3, s3 = torch.addcmul(c2 * c1, s2, s1, value=-1.0), torch.addcmul(s2 * c1, c2, s1)
        c4, s4 = torch.addcmul(c2 * c2, s2, s2, value=-1.0), 2.0 * c2 * s2
        ck = torch.stack((c2, c3, c4))  # (3, B) cos(k theta_c)
        sk = torch.stack((s2, s3, s4))
        ca, sa = coef[:n], coef[n:]
        ra = torch.addcmul(ca * ck, sa, sk)
        rb = torch.addcmul(sa * ck, ca, sk, value=-1.0)
        r = ra.sum(0).add_(self.track_radius)
        slope = (rb * self._k).sum(0)
        theta = torch.remainder(torch.atan2(y, x), 2.0 * math.pi)
        # int_0^theta r = R0 theta + sum_k (ca_k sin(k theta) + sa_k (1 - cos(k theta))) / k
        swept = torch.addcmul(ca * sk, sa, 1.0 - ck).div_(self._k).sum(0).add_(theta, alpha=self.track_radius)
        ch, sh = torch.cos(heading), torch.sin(heading)
        cphi, sphi = torch.addcmul(ch * c1, sh, s1), torch.addcmul(sh * c1, ch, s1, value=-1.0)  # heading, radial frame
        return {"rho": rho, "ra": ra, "rb": rb, "r": r, "slope": slope, "offset": rho - r,
                "fraction": swept.div_(2.0 * math.pi * self.track_radius), "cphi": cphi, "sphi": sphi,
                "c1": c1, "s1": s1}

    def _heading_error(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """Heading minus the track direction, in [-pi, pi]: the tangent is (r', r) in the radial frame."""
        r, slope, cphi, sphi = f["r"], f["slope"], f["cphi"], f["sphi"]
        return torch.atan2(slope * sphi - r * cphi, slope * cphi + r * sphi)

    def _s(self, value: float) -> torch.Tensor:
        """`value` as a cached 0-dim tensor: a Python number operand costs a conversion on every op."""
        t = self._scalars.get(value)
        if t is None:
            t = self._scalars[value] = torch.tensor(value, dtype=torch.float32, device=self.device)
        return t

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reusable float32 work tensor (fresh large temporaries cost page faults on CPU every call)."""
        key = (name, shape)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=self.device)
        return buf

    def _band_offset(self, qu: torch.Tensor, qv: torch.Tensor, coef: tuple[torch.Tensor, ...],
                     slope_coef: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
        """Signed radial offset rho - r(theta) of points (qu, qv) given in the cars' radial frames.

        Shapes (..., B), the batch last: per-env (B,) operands then broadcast along the contiguous
        axis (a (B, 1) operand broadcast over a short last axis is a very slow case on CPU). `coef`
        are the rotated coefficients, negated and scaled to the products used below
        (`_ray_coefficients`). Returns (offset, 1/rho), plus r' given `slope_coef`, in work buffers
        valid until the next call with this shape; `qu` and `qv` are overwritten. cos/sin of 2d,
        3d, 4d come from the unit vector (c, s) by multiple-angle formulas: ~22 elementwise ops,
        no trigonometric function.
        """
        shape = tuple(qu.shape)
        rr = torch.mul(qu, qu, out=self._buffer("rr", shape)).addcmul_(qv, qv)
        inv = torch.rsqrt(rr, out=self._buffer("inv", shape))
        c = qu.mul_(inv)
        s = qv.mul_(inv)
        c2 = torch.addcmul(self._minus_one, c, c, value=2.0, out=self._buffer("c2", shape))  # cos 2d
        w = torch.mul(c, s, out=self._buffer("w", shape))  # sin 2d / 2
        u = torch.addcmul(self._minus_three, c, c, value=4.0, out=self._buffer("u", shape))  # 4c^2 - 3
        c3 = c.mul_(u)  # cos 3d
        s3 = u.add_(self._s(2.0)).mul_(s)  # sin 3d = s (4c^2 - 1)
        c4 = torch.addcmul(self._minus_one, c2, c2, value=2.0, out=s)  # cos 4d
        wc2 = torch.mul(w, c2, out=self._buffer("wc2", shape))  # sin 4d / 4
        neg_r0, na2, nb2, na3, nb3, na4, nb4 = coef
        neg_r = torch.addcmul(neg_r0, na2, c2, out=self._buffer("r", shape))
        neg_r.addcmul_(nb2, w).addcmul_(na3, c3).addcmul_(nb3, s3).addcmul_(na4, c4).addcmul_(nb4, wc2)
        offset = neg_r.addcmul_(rr, inv)  # rho - r
        if slope_coef is None:
            return offset, inv
        p2, q2, p3, q3, p4, q4 = slope_coef  # r' = sum_k k (rb_k cos kd - ra_k sin kd)
        slope = torch.mul(p2, c2, out=self._buffer("slope", shape))
        slope.addcmul_(q2, w).addcmul_(p3, c3).addcmul_(q3, s3).addcmul_(p4, c4).addcmul_(q4, wc2)
        return offset, inv, slope

    def _ray_coefficients(self, f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Operands of `_band_offset` for the frames `f`: -R0 and the negated, scaled rotated coefficients."""
        ra, rb = f["ra"], f["rb"]
        return (self._neg_r0, -ra[0], -2.0 * rb[0], -ra[1], -rb[1], -ra[2], -4.0 * rb[2])

    def _lidar(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """(R, B) distance along each ray to the first point off the track, in [0, lidar_range].

        In a work buffer, valid until the next call.
        """
        rng, spacing = self.lidar_range, self._spacing
        rho, cphi, sphi = f["rho"], f["cphi"], f["sphi"]
        coef = self._ray_coefficients(f)
        rays = (self.num_rays, rho.shape[0])
        coarse = (self.lidar_samples,) + rays
        buf = self._buffer
        du = torch.mul(self._ray_cos, cphi, out=buf("du", rays)).addcmul_(self._ray_sin, sphi, value=-1.0)
        dv = torch.mul(self._ray_cos, sphi, out=buf("dv", rays)).addcmul_(self._ray_sin, cphi)

        # Coarse samples (M, R, B) at distances spacing * (1..M).
        qu = torch.addcmul(rho, du, self._t_hi, out=buf("qu", coarse))
        qv = torch.mul(dv, self._t_hi, out=buf("qv", coarse))
        off, _ = self._band_offset(qu, qv, coef)
        prev = buf("prev", coarse)
        prev[0].copy_(f["offset"].expand(rays))
        prev[1:].copy_(off[:-1])
        # Where the offset crosses the edge it heads to (sign(off) * h) between the previous
        # sample and this one, by linear interpolation; samples still on the track get +1e30, so
        # the smallest candidate is the crossing bracketed by the first sample off the track.
        h_, big = self._h_tensor, self._s(1e30)
        cand = torch.sign(off, out=qu).mul_(h_).sub_(prev)
        cand.div_(torch.sub(off, prev, out=prev)).nan_to_num_(0.0, 0.0, 0.0).clamp_(0.0, 1.0)  # in (0, 1] there
        cand.mul_(self._spacing_tensor).add_(self._t_lo)
        cand.add_(torch.sub(h_, off.abs_(), out=off).mul_(big).clamp_(0.0, 1e30))  # (comparisons are slow on CPU)
        t = torch.amin(cand, 0, out=buf("t", rays)).clamp_max_(rng)  # rng: every sample on the track

        # One Newton step on the exact offset: d(offset)/dt = (rho du + t) / rho - r' rho dv / rho^2.
        ra, rb = f["ra"], f["rb"]
        slope_coef = tuple(c * self._s(k) for c, k in ((rb[0], 2.0), (ra[0], -4.0), (rb[1], 3.0), (ra[1], -3.0),
                                                        (rb[2], 4.0), (ra[2], -16.0)))
        qu = torch.addcmul(rho, du, t, out=buf("qu", rays))
        qv = torch.mul(dv, t, out=buf("qv", rays))
        off, inv, slope = self._band_offset(qu, qv, coef, slope_coef)
        rate = torch.addcmul(t, rho, du, out=buf("rate", rays)).mul_(inv)
        rate.addcmul_(slope, torch.mul(dv, rho, out=qv).mul_(inv).mul_(inv), value=-1.0)
        side = torch.sign(off, out=qu)
        t_new = off.addcmul_(side, h_, value=-1.0).div_(rate).neg_().add_(t)
        t_new.nan_to_num_(1e30, 1e30, -1e30)  # rate 0: rejected below
        # Accept a step toward an exit crossing (|offset| growing there) that stays in the bracket;
        # otherwise (a grazing ray, or the offset turning back) keep the interpolated distance.
        # The tests are 0/1 factors from clamped products (comparisons and `where` are slow on CPU).
        mid = torch.mul(t, self._s(1.0 / spacing), out=buf("mid", rays)).floor_().add_(self._s(0.5))
        accept = mid.mul_(self._spacing_tensor).sub_(t_new).abs_().sub_(self._s(0.5 * spacing))
        accept.mul_(self._s(-1e30)).clamp_(0.0, 1.0)  # in the bracket
        accept.mul_(side.mul_(rate).mul_(big).clamp_(0.0, 1.0))  # |offset| growing
        accept.mul_(torch.sub(self._s(rng), t, out=side).mul_(big).clamp_(0.0, 1.0))  # a hit within range
        return t.addcmul_(accept, t_new.sub_(t)).clamp_(0.0, rng)

    # -- observations -------------------------------------------------------------------------
    def _observation(self, f: dict[str, torch.Tensor], speed: torch.Tensor) -> torch.Tensor:
        if self.obs_mode == "pixels":
            return self._pixels(f)
        n = self.num_rays
        obs = torch.empty(f["rho"].shape[0], n + 2, dtype=torch.float32, device=self.device)
        rows = obs.t()  # (R + 2, B) view: rays, speed, heading error
        dist = self._lidar(f).div_(self._s(self.lidar_range))
        torch.mul(dist, f["offset"].abs() < self.half_width, out=rows[:n])  # all 0 off the track
        torch.div(speed, self.max_speed, out=rows[n])
        torch.div(self._heading_error(f), math.pi, out=rows[n + 1]).clamp_(-1.0, 1.0)
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
        off, _ = self._band_offset(qu, qv, self._ray_coefficients(f))
        idx = self._classify(off, x, y)
        idx.masked_fill_(self._pix_car, 5)
        idx.masked_fill_(self._pix_front, 6)
        return self._colours[idx.long()].permute(1, 2, 0)  # (P, n, 3) -> (n, 3, P)

    # -- hooks --------------------------------------------------------------------------------
    def _reset_envs(self, mask: torch.Tensor) -> None:
        if self.in_step:  # autoreset inside `step`: ended envs take their spare episode
            obs = self._observe()  # of the ended episodes (already computed for final_obs)
            self.coef = torch.where(mask, self.coef_next, self.coef)
            self.car = torch.where(mask, self.car_next, self.car)
            self._obs = torch.where(mask.view((-1,) + (1,) * (obs.dim() - 1)), self.obs_next, obs)
            self._frame = None  # of the ended cars; `_advance` computes the next one
            return
        coef, car, _ = self._prepare(self.episodes, with_obs=False)
        self.coef = torch.where(mask, coef, self.coef)
        self.car = torch.where(mask, car, self.car)
        self.offtrack = self.offtrack & ~mask
        self._frame, self._obs = None, None
        self._spare_stale = True  # rebuilt (for the new episode numbers) before the next step

    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.autoreset and (self._spare_stale or self._since_refresh >= self.refresh_every):
            self._write_spare()
        self._since_refresh += 1
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
        f = self._car_frame(torch.stack((x, y, heading)), self.coef)
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
                self._frame = self._car_frame(self.car, self.coef)
            self._obs = self._observation(self._frame, self.car[3])
        return self._obs

    def _info(self) -> dict[str, torch.Tensor]:
        return {"progress": self.car[4], "laps": torch.floor(self.car[5]).clamp_min_(0.0).to(torch.int64),
                "speed": self.car[3], "offtrack": self.offtrack}

    # -- views (tests, scripted driving, rendering) -----------------------------------------------
    def _current_frame(self) -> dict[str, torch.Tensor]:
        if self._frame is None:
            self._frame = self._car_frame(self.car, self.coef)
        return self._frame

    def track_state(self) -> dict[str, torch.Tensor]:
        """Per-env (B,) geometry of the current state: `offset` (radial, from the centre line),
        `heading_error` (rad, heading minus track direction, positive = pointing left of it),
        `fraction` (of the lap at the car's polar angle, in [0, 1)), `theta` (polar angle) and
        `radius` (centre-line r at theta)."""
        f = self._current_frame()
        return {"offset": f["offset"], "heading_error": self._heading_error(f), "fraction": f["fraction"],
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
        extent = self.track_radius + sum(self.max_amplitudes) + self.half_width + 2.0
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
