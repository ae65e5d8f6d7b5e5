"""The tracks of rlbase/Driving-v0: the closed road of a level seed, where a car is on it, and the lidar
that measures the road around a car. `DrivingVecEnv` (rlbase.envs.driving) owns the car, its
dynamics, the reward and the observations; this module owns the geometry they read.

Track. The centre line is the polar curve

    r(theta) = track_radius + sum_k a_k cos(k theta + phi_k),   k = 2, 3, 4,

with amplitudes a_k uniform in [0, roughness * (0.20, 0.12, 0.06)[k] * track_radius] and uniform
phases, drawn from the level seed: smooth, always closed, never self-intersecting (a polar
graph), with tight corners and some concave S-bends. The road is the band |rho - r(theta)| <
half_width around it, measured along the radius (so the perpendicular width narrows where the
centre line runs oblique to the radius). In this polar form "on the road", "offset from the centre
line" and "progress along it" are a few tensor ops on (rho, theta): no search for a nearest point.

Ray casting, the costly part of a step, is batched tensor code with the batch as the last,
contiguous axis: each ray is sampled at `lidar_samples` evenly spaced points, a (samples, rays, B)
batch; the offset rho - r(theta) of a point needs no trigonometry (cos/sin of k * theta from the
unit position vector by multiple-angle formulas). The first sample off the road brackets the exit,
a linear interpolation of the signed offset toward the edge it crosses locates it, and one Newton
step on the exact offset refines it (kept only when it stays in the bracket). A ray that clips the
edge only briefly between two samples misses that contact; more samples trade throughput for
fewer misses (accuracy and cost against dense ray marching: BENCHMARKS.md).
"""

from __future__ import annotations

import math

import torch

from rlbase.envs.native import random_uniform

# Track family: centre-line Fourier modes and their largest amplitudes (fractions of track_radius).
MODES = (2, 3, 4)
MODE_SCALE = (0.20, 0.12, 0.06)
STREAM_TRACK = 0x7C4A  # counter-based stream (keyed by level seed) of the track's amplitudes and phases
LIDAR_SAMPLES = 3  # coarse samples per ray


class Workspace:
    """Device tensors reused across steps: 0-dim scalar operands (a Python number operand costs a
    conversion on every op; fused ops such as addcmul take tensors) and float32 work buffers (fresh
    large temporaries cost page faults on CPU every call)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._scalars: dict[float, torch.Tensor] = {}
        self._buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def scalar(self, value: float) -> torch.Tensor:
        """`value` as a cached 0-dim float32 tensor."""
        t = self._scalars.get(value)
        if t is None:
            t = self._scalars[value] = torch.tensor(value, dtype=torch.float32, device=self.device)
        return t

    def buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 work tensor of `shape`, the same one for every call with this name and shape."""
        key = (name, shape)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=self.device)
        return buf


class Track:
    """The track family and lidar of a `DrivingVecEnv`'s keywords, on the workspace's device.

    Tracks are (6, B) coefficient rows ca_2, ca_3, ca_4, sa_2, sa_3, sa_4:
    r = track_radius + sum_k ca_k cos(k theta) + sa_k sin(k theta); cars are (>= 3, B) rows x, y,
    heading. A ValueError names the keywords when the road would reach the centre.
    """

    def __init__(self, track_radius: float, track_width: float, roughness: float, num_rays: int,
                 lidar_range: float, lidar_samples: int, work: Workspace):
        self.track_radius, self.half_width = track_radius, 0.5 * track_width
        self.max_amplitudes = tuple(roughness * s * track_radius for s in MODE_SCALE)
        self.min_radius = track_radius - sum(self.max_amplitudes)  # smallest possible r(theta)
        if self.min_radius - self.half_width < 0.05 * track_radius:
            raise ValueError(
                f"the track would reach the centre: track_radius ({track_radius}) must exceed track_width/2 "
                f"({self.half_width}) plus roughness * {sum(MODE_SCALE):.2f} * track_radius "
                f"({sum(self.max_amplitudes):.2f}) by a margin; lower track_width or roughness")
        self.num_rays, self.lidar_range, self.lidar_samples = num_rays, lidar_range, lidar_samples
        dev, f32 = work.device, torch.float32
        self._s, self._buffer = work.scalar, work.buffer
        self._k = torch.tensor(MODES, dtype=f32, device=dev)[:, None]  # (3, 1)
        self._max_amp = torch.tensor(self.max_amplitudes, dtype=f32, device=dev)
        ray_angles = torch.linspace(-0.5 * math.pi, 0.5 * math.pi, num_rays, dtype=torch.float64) \
            if num_rays > 1 else torch.zeros(1, dtype=torch.float64)
        self.ray_angles = ray_angles.to(f32).to(dev)
        self._ray_cos = ray_angles.cos().to(f32).view(-1, 1).to(dev)  # (R, 1)
        self._ray_sin = ray_angles.sin().to(f32).view(-1, 1).to(dev)
        self._spacing = lidar_range / lidar_samples
        samples = torch.arange(1, lidar_samples + 1, dtype=f32) * self._spacing
        self._t_hi = samples.view(-1, 1, 1).to(dev)  # (M, 1, 1) sample distances
        self._t_lo = (samples - self._spacing).view(-1, 1, 1).to(dev)
        self._minus_one, self._minus_three = self._s(-1.0), self._s(-3.0)
        self._h_tensor, self._spacing_tensor = self._s(self.half_width), self._s(self._spacing)
        self._neg_r0 = self._s(-track_radius)

    def edge_distance(self) -> float:
        """A lower bound on the distance from a point of the centre line to the edge of the road.

        The radial offset e = rho - r(theta) has gradient (1, -r'/rho) in polar coordinates, so
        |grad e| <= sqrt(1 + (max|r'| / (min r - half_width))^2) on the road; it is 0 on the centre
        line and +-half_width at the edge, so the edge is at least half_width / max|grad e| away
        (with a margin for float rounding).
        """
        max_slope = sum(k * a for k, a in zip(MODES, self.max_amplitudes))
        return 0.99 * self.half_width / math.hypot(1.0, max_slope / (self.min_radius - self.half_width))

    def coefficients(self, seeds: torch.Tensor) -> torch.Tensor:
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

    def start_pose(self, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, heading) (B,) of the start of tracks `coef`: on the centre line at theta = 0 (y = 0),
        heading along the track (counter-clockwise)."""
        n = len(MODES)
        r0 = self.track_radius + coef[:n].sum(0)
        slope0 = (coef[n:] * self._k).sum(0)
        return r0, torch.atan2(r0, slope0)  # the tangent is (r', r) in the (radial, tangential) frame

    def frame(self, car: torch.Tensor, coef: torch.Tensor) -> dict[str, torch.Tensor]:
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

    def heading_error(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """Heading minus the track direction, in [-pi, pi]: the tangent is (r', r) in the radial frame."""
        r, slope, cphi, sphi = f["r"], f["slope"], f["cphi"], f["sphi"]
        return torch.atan2(slope * sphi - r * cphi, slope * cphi + r * sphi)

    def band_offset(self, qu: torch.Tensor, qv: torch.Tensor, coef: tuple[torch.Tensor, ...],
                     slope_coef: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
        """Signed radial offset rho - r(theta) of points (qu, qv) given in the cars' radial frames.

        Shapes (..., B), the batch last: per-env (B,) operands then broadcast along the contiguous
        axis (a (B, 1) operand broadcast over a short last axis is a very slow case on CPU). `coef`
        are the rotated coefficients, negated and scaled to the products used below
        (`ray_coefficients`). Returns (offset, 1/rho), plus r' given `slope_coef`, in work buffers
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

    def ray_coefficients(self, f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Operands of `band_offset` for the frames `f`: -R0 and the negated, scaled rotated coefficients."""
        ra, rb = f["ra"], f["rb"]
        return (self._neg_r0, -ra[0], -2.0 * rb[0], -ra[1], -rb[1], -ra[2], -4.0 * rb[2])

    def lidar(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """(R, B) distance along each ray to the first point off the track, in [0, lidar_range].

        In a work buffer, valid until the next call.
        """
        rng, spacing = self.lidar_range, self._spacing
        rho, cphi, sphi = f["rho"], f["cphi"], f["sphi"]
        coef = self.ray_coefficients(f)
        rays = (self.num_rays, rho.shape[0])
        coarse = (self.lidar_samples,) + rays
        buf = self._buffer
        du = torch.mul(self._ray_cos, cphi, out=buf("du", rays)).addcmul_(self._ray_sin, sphi, value=-1.0)
        dv = torch.mul(self._ray_cos, sphi, out=buf("dv", rays)).addcmul_(self._ray_sin, cphi)

        # Coarse samples (M, R, B) at distances spacing * (1..M).
        qu = torch.addcmul(rho, du, self._t_hi, out=buf("qu", coarse))
        qv = torch.mul(dv, self._t_hi, out=buf("qv", coarse))
        off, _ = self.band_offset(qu, qv, coef)
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
        off, inv, slope = self.band_offset(qu, qv, coef, slope_coef)
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
