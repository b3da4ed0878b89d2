"""The synthetic track's geometry: the centre line, the car's frame and the pinhole camera.

World units are metres. The track's centre line is the integral of a curvature function
kappa(s) of arc length s; world frame: x east, y north, heading counter-clockwise, so a
positive curvature is a left turn. Car frame: X forward, Y left; the camera sits ~0.2 m up.
"""

from __future__ import annotations

import math

import numpy as np

DS = 0.02  # arc-length step of the centre-line table (m)
_CHUNK = 4096  # table samples added at a time; fixed chunks keep the table order-independent
ZC_NEAR = 0.03  # near plane, as camera depth (m); nearer points are never on screen


class Centreline:
    """A seeded centre line: curvature = kappa_max * tanh(gain * z(s)), z a sum of sines."""

    def __init__(self, rng: np.random.Generator) -> None:
        n = 4  # z has unit variance: n sines of amplitude sqrt(2 / n)
        self._wave_k = 2 * np.pi / rng.uniform(4.0, 12.0, n)
        self._wave_a = np.full(n, math.sqrt(2.0 / n))
        self._wave_p = rng.uniform(0, 2 * np.pi, n)
        self._kappa_max = rng.uniform(0.5, 0.9)
        self._kappa_gain = rng.uniform(1.0, 1.8)
        self._table_s = np.zeros(1)
        self._table = np.zeros((1, 4))  # columns: kappa, theta, x, y

    def kappa(self, s: np.ndarray) -> np.ndarray:
        """Curvature (1/m, left positive) at arc lengths s."""
        z = (self._wave_a * np.sin(np.multiply.outer(s, self._wave_k) + self._wave_p)).sum(-1)
        return self._kappa_max * np.tanh(self._kappa_gain * z)

    def _ensure_table(self, s_max: float) -> None:
        while self._table_s[-1] < s_max:
            k0 = len(self._table_s) - 1
            s = (k0 + np.arange(1, _CHUNK + 1)) * DS
            kappa0, theta0, x0, y0 = self._table[-1]
            kappa = self.kappa(s)
            theta = theta0 + np.cumsum(0.5 * DS * (np.r_[kappa0, kappa[:-1]] + kappa))
            cos_t, sin_t = np.cos(theta), np.sin(theta)
            cos_prev = np.r_[math.cos(theta0), cos_t[:-1]]
            sin_prev = np.r_[math.sin(theta0), sin_t[:-1]]
            x = x0 + np.cumsum(0.5 * DS * (cos_prev + cos_t))
            y = y0 + np.cumsum(0.5 * DS * (sin_prev + sin_t))
            self._table_s = np.concatenate([self._table_s, s])
            self._table = np.concatenate([self._table, np.stack([kappa, theta, x, y], 1)])

    def lookup(self, s: np.ndarray) -> np.ndarray:
        """Interpolated (kappa, theta, x, y) at arc lengths s, shape s.shape + (4,)."""
        self._ensure_table(float(np.max(s)) + DS)
        u = np.asarray(s) / DS
        k = np.floor(u).astype(np.int64)
        t = (u - k)[..., None]
        return self._table[k] * (1 - t) + self._table[k + 1] * t


class ToCar:
    """World to car-frame transform (X forward, Y left) for one car pose."""

    def __init__(self, x: float, y: float, heading: float) -> None:
        self.x, self.y, self.heading = x, y, heading
        self.c, self.s = math.cos(heading), math.sin(heading)

    def __call__(self, wx: np.ndarray, wy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = wx - self.x, wy - self.y
        return self.c * dx + self.s * dy, -self.s * dx + self.c * dy

    def track_points(self, line: np.ndarray, lateral: float) -> tuple[np.ndarray, np.ndarray]:
        """Car-frame points at a lateral offset (left positive) from looked-up track samples."""
        theta = line[..., 1]
        return self(line[..., 2] - np.sin(theta) * lateral, line[..., 3] + np.cos(theta) * lateral)


class GroundCamera:
    """A pinhole camera over the floor, pitched down so the horizon sits at ~40% of the height."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.cam_h = rng.uniform(0.17, 0.21)  # height above the floor (m)
        self.f = 0.55 * width
        self.cx, self.cy = (width - 1) / 2, (height - 1) / 2
        pitch = math.atan(rng.uniform(0.09, 0.11) * height / self.f)
        self.cos_p, self.sin_p = math.cos(pitch), math.sin(pitch)
        self.horizon = self.cy - self.f * math.tan(pitch)  # row of the horizon (px)

    def depth(self, x: np.ndarray) -> np.ndarray:
        """Camera depth of ground points x metres ahead of the car."""
        return x * self.cos_p + self.cam_h * self.sin_p

    def project(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground points (car frame) to int32 image points in 1/16 px, shape (..., 2)."""
        zc = np.maximum(self.depth(x), ZC_NEAR)  # points behind the near plane are unused
        u = self.cx - self.f * y / zc
        v = self.cy + self.f * (self.cam_h * self.cos_p - x * self.sin_p) / zc
        return np.round(np.stack([u, v], -1) * 16).astype(np.int32)

    def clip_project(self, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Project a convex ground polygon, clipped to the near plane; None if all behind."""
        zc = self.depth(x)
        inside = zc > ZC_NEAR
        if inside.all():
            return self.project(x, y)
        if not inside.any():
            return None
        px, py = [], []
        n = len(x)
        for a in range(n):
            b = (a + 1) % n
            if inside[a]:
                px.append(x[a])
                py.append(y[a])
            if inside[a] != inside[b]:
                t = (ZC_NEAR * 1.0001 - zc[a]) / (zc[b] - zc[a])
                px.append(x[a] + t * (x[b] - x[a]))
                py.append(y[a] + t * (y[b] - y[a]))
        return self.project(np.array(px), np.array(py))
