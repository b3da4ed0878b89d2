"""A deterministic synthetic RC-car track, seen from the car's camera, as a video of frames."""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np

# World units are metres. The track's centre line is the integral of a curvature function
# kappa(s) of arc length s; world frame: x east, y north, heading counter-clockwise, so a
# positive curvature is a left turn. Car frame: X forward, Y left; the camera sits ~0.2 m up.

_DS = 0.02  # arc-length step of the centre-line table (m)
_CHUNK = 4096  # table samples added at a time; fixed chunks keep the table order-independent
_S0 = 2.0  # arc length of the car at frame 0 (m), so the table never needs negative s
_ZC_NEAR = 0.03  # near plane, as camera depth (m); nearer points are never on screen
_KAPPA_REF = 0.8  # curvature (1/m) that maps to a full steering lock of +-1
_LOOKAHEAD = 0.8  # pure-pursuit look-ahead along the track (m) for the steering label
_TEXEL = 0.012  # floor texture texel at mip level 0 (m)
_TEX = 512  # floor texture size at mip level 0 (texels); the floor repeats every 6.1 m
_MAX_LEVEL = 6
_NOISE_FRAMES = 7  # distinct sensor-noise windows, cycled by frame index
_GAIN_ONE = 128  # lighting gain map value that means x1.0

# Centre-line sample offsets ahead of the car: fine near the camera, coarse far away.
_OFFSETS = np.concatenate([np.arange(-0.4, 2.0, 0.03), np.arange(2.0, 10.0 + 1e-9, 0.1)])

_TAPE_COLOURS = {  # BGR, all bright so tapes stand out of the floor
    "white": (236, 238, 240),
    "yellow": (40, 215, 240),
    "blue": (235, 185, 90),
    "orange": (40, 150, 250),
    "green": (120, 225, 120),
    "pink": (190, 150, 250),
}


class SyntheticTrack:
    """Frames of a seeded random RC-car track, filmed by a camera on a car driving along it."""

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        seed: int = 0,
        num_frames: int | None = None,
    ) -> None:
        """Build the track, camera, textures and per-pixel floor maps for one seed."""
        if int(width) != width or int(height) != height or width < 16 or height < 16:
            raise ValueError(f"width and height must be integers >= 16, got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if num_frames is not None and (int(num_frames) != num_frames or num_frames < 1):
            raise ValueError(f"num_frames must be None or an integer >= 1, got {num_frames}")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.seed = int(seed)
        self.num_frames = None if num_frames is None else int(num_frames)
        rng = np.random.default_rng([self.seed, 0x7AC])

        # Track shape: curvature = kappa_max * tanh(gain * z(s)), z a unit-variance sum of sines.
        n = 4
        self._wave_k = 2 * np.pi / rng.uniform(4.0, 12.0, n)
        self._wave_a = np.full(n, math.sqrt(2.0 / n))
        self._wave_p = rng.uniform(0, 2 * np.pi, n)
        self._kappa_max = rng.uniform(0.5, 0.9)
        self._kappa_gain = rng.uniform(1.0, 1.8)
        # The car wobbles around the centre line: lateral offset d(s), heading error atan(d').
        self._wob_k = 2 * np.pi / rng.uniform(2.5, 7.0, 2)
        self._wob_a = rng.uniform(0.02, 0.05, 2)
        self._wob_p = rng.uniform(0, 2 * np.pi, 2)
        self._speed = rng.uniform(1.2, 1.8)  # m/s

        # Track and tape dimensions and colours.
        self._half_width = rng.uniform(0.30, 0.40)  # centre line to tape centre (m)
        self._tape_w = rng.uniform(0.035, 0.055)
        self._dash_len, self._dash_gap = rng.uniform(0.10, 0.16), rng.uniform(0.15, 0.30)
        self._dash_w = rng.uniform(0.03, 0.05)
        style = rng.uniform()
        names = list(_TAPE_COLOURS)
        if style < 0.55:
            left = right = "white"
        elif style < 0.8:
            left = right = names[rng.integers(1, len(names))]
        else:
            left, right = rng.choice(names, 2, replace=False)
        self._tape_colour = (_TAPE_COLOURS[str(left)], _TAPE_COLOURS[str(right)])
        self._dash_colour = _TAPE_COLOURS["yellow" if rng.uniform() < 0.5 else "white"]

        # Pinhole camera, pitched down so the horizon sits at ~40% of the frame height.
        self._cam_h = rng.uniform(0.17, 0.21)
        self._f = 0.55 * self.width
        self._cx, self._cy = (self.width - 1) / 2, (self.height - 1) / 2
        self._pitch = math.atan(rng.uniform(0.09, 0.11) * self.height / self._f)
        self._cos_p, self._sin_p = math.cos(self._pitch), math.sin(self._pitch)
        self.horizon = self._cy - self._f * math.tan(self._pitch)  # row of the horizon (px)

        # Distractors: shadows, sun patches and floor stains placed along the track.
        self._distractor_spacing = rng.uniform(1.2, 3.0)
        self._distractor_chunks: dict[int, tuple[np.ndarray, ...]] = {}

        self._floor_rgb = self._pick_floor_colour(rng)
        self._mips = self._make_floor_texture(rng)
        self._first_floor_row = math.floor(self.horizon) + 1
        self._panorama = self._make_panorama(rng)
        self._bands = self._make_floor_bands()
        self._gain = self._make_gain(rng)
        self._noise = self._make_noise(rng)

        self._table_s = np.zeros(1)
        self._table = np.zeros((1, 4))  # columns: kappa, theta, x, y
        self._last_geometry: tuple[int, dict] | None = None

    # ------------------------------------------------------------------ public API

    def frame(self, i: int) -> np.ndarray:
        """The BGR uint8 camera frame number i, shape (height, width, 3)."""
        geo = self._geometry(i)
        img = np.empty((self.height, self.width, 3), np.uint8)
        r0 = self._first_floor_row
        col = round(-geo["heading"] * self._f) % self._panorama_period
        img[:r0] = self._panorama[:, col : col + self.width]
        c, s = math.cos(geo["heading"]), math.sin(geo["heading"])
        for (a0, a1), tex, loc_x, loc_y, scale, period, pad in self._bands:
            ox = (geo["x"] / scale) % period + pad
            oy = (geo["y"] / scale) % period + pad
            map_x = cv2.addWeighted(loc_x, c, loc_y, -s, ox)
            map_y = cv2.addWeighted(loc_x, s, loc_y, c, oy)
            cv2.remap(
                tex, map_x, map_y, cv2.INTER_LINEAR, dst=img[a0:a1], borderMode=cv2.BORDER_REPLICATE
            )
        for poly, colour in geo["stains"]:
            cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, shift=4)
        for poly, colour in zip(geo["tapes"], self._tape_colour):
            if poly is not None:
                cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, shift=4)
        if geo["dashes"]:
            cv2.fillPoly(img, geo["dashes"], self._dash_colour, cv2.LINE_AA, shift=4)
        gain = self._gain
        if geo["shades"]:
            gain = gain.copy()
            for poly, g in geo["shades"]:
                cv2.fillPoly(gain, [poly], (g, g, g), cv2.LINE_AA, shift=4)
        cv2.multiply(img, gain, dst=img, scale=1.0 / _GAIN_ONE)
        a, b = i % _NOISE_FRAMES, (3 * i) % _NOISE_FRAMES
        window = (slice(a, a + self.height), slice(b, b + self.width))
        cv2.add(img, self._noise[0][window], dst=img)
        cv2.subtract(img, self._noise[1][window], dst=img)
        return img

    def steering(self, i: int) -> float:
        """The steering label of frame i in [-1, 1], left negative (pure pursuit on the track)."""
        geo = self._geometry(i)
        x, y = geo["lookahead"]
        kappa = 2.0 * y / (x * x + y * y)  # = 2 sin(alpha) / distance
        return float(np.clip(-kappa / _KAPPA_REF, -1.0, 1.0))

    def lane_mask(self, i: int) -> np.ndarray:
        """A uint8 0/255 mask of the lane tapes and centre-line dashes in frame i."""
        geo = self._geometry(i)
        mask = np.zeros((self.height, self.width), np.uint8)
        polys = [p for p in geo["tapes"] if p is not None] + geo["dashes"]
        if polys:
            cv2.fillPoly(mask, polys, 255, cv2.LINE_8, shift=4)
        return mask

    def curvature(self, i: int) -> float:
        """The track's curvature (1/m, left positive) under the car at frame i."""
        s = self._car_s(i)
        return float(self._kappa(np.array([s]))[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames 0, 1, 2, ... (forever when num_frames is None)."""
        i = 0
        while self.num_frames is None or i < self.num_frames:
            yield self.frame(i)
            i += 1

    # ------------------------------------------------------------------ track

    def _kappa(self, s: np.ndarray) -> np.ndarray:
        z = (self._wave_a * np.sin(np.multiply.outer(s, self._wave_k) + self._wave_p)).sum(-1)
        return self._kappa_max * np.tanh(self._kappa_gain * z)

    def _ensure_table(self, s_max: float) -> None:
        while self._table_s[-1] < s_max:
            k0 = len(self._table_s) - 1
            s = (k0 + np.arange(1, _CHUNK + 1)) * _DS
            kappa0, theta0, x0, y0 = self._table[-1]
            kappa = self._kappa(s)
            theta = theta0 + np.cumsum(0.5 * _DS * (np.r_[kappa0, kappa[:-1]] + kappa))
            cos_t, sin_t = np.cos(theta), np.sin(theta)
            cos_prev = np.r_[math.cos(theta0), cos_t[:-1]]
            sin_prev = np.r_[math.sin(theta0), sin_t[:-1]]
            x = x0 + np.cumsum(0.5 * _DS * (cos_prev + cos_t))
            y = y0 + np.cumsum(0.5 * _DS * (sin_prev + sin_t))
            self._table_s = np.concatenate([self._table_s, s])
            self._table = np.concatenate([self._table, np.stack([kappa, theta, x, y], 1)])

    def _lookup(self, s: np.ndarray) -> np.ndarray:
        """Interpolated (kappa, theta, x, y) at arc lengths s, shape s.shape + (4,)."""
        self._ensure_table(float(np.max(s)) + _DS)
        u = np.asarray(s) / _DS
        k = np.floor(u).astype(np.int64)
        t = (u - k)[..., None]
        return self._table[k] * (1 - t) + self._table[k + 1] * t

    def _car_s(self, i: int) -> float:
        if int(i) != i or i < 0 or (self.num_frames is not None and i >= self.num_frames):
            raise IndexError(f"frame index {i} out of range (num_frames={self.num_frames})")
        return _S0 + self._speed * int(i) / self.fps

    def _geometry(self, i: int) -> dict:
        """Car pose and every polygon of frame i, projected to the image (cached for one i)."""
        if self._last_geometry is not None and self._last_geometry[0] == i:
            return self._last_geometry[1]
        s_car = self._car_s(i)
        phase = s_car * self._wob_k + self._wob_p
        offset = float((self._wob_a * np.sin(phase)).sum())
        heading_err = math.atan(float((self._wob_a * self._wob_k * np.cos(phase)).sum()))
        _, theta, x, y = self._lookup(np.array([s_car]))[0]
        car_x, car_y = x - math.sin(theta) * offset, y + math.cos(theta) * offset
        heading = theta + heading_err
        to_car = _ToCar(car_x, car_y, heading)

        # Tapes: strips along the track, from the first point in front of the camera
        # to the first point (if any) where the track turns back behind it.
        line = self._lookup(s_car + _OFFSETS)
        tapes = []
        for side in (1.0, -1.0):
            edges = [
                to_car.track_points(line, side * self._half_width + e * self._tape_w / 2)
                for e in (-1.0, 1.0)
            ]
            zc = np.minimum(self._depth(edges[0][0]), self._depth(edges[1][0]))
            valid = zc > _ZC_NEAR
            if not valid.any():
                tapes.append(None)
                continue
            start = int(np.argmax(valid))
            stop = start + (
                int(np.argmin(valid[start:])) if not valid[start:].all() else len(valid) - start
            )
            if stop - start < 2:
                tapes.append(None)
                continue
            a = self._project(*(c[start:stop] for c in edges[0]))
            b = self._project(*(c[start:stop] for c in edges[1]))
            tapes.append(np.concatenate([a, b[::-1]]))

        # Centre-line dashes, anchored to the track so they flow past the car.
        period = self._dash_len + self._dash_gap
        k = np.arange(math.ceil((s_car - 0.4) / period), math.floor((s_car + 7.0) / period) + 1)
        ends = self._lookup(np.stack([k * period, k * period + self._dash_len], 1))
        dashes = []
        if len(k):
            hw = self._dash_w / 2
            (xa, ya), (xb, yb) = (to_car.track_points(ends, -hw), to_car.track_points(ends, hw))
            qx = np.stack([xa[:, 0], xa[:, 1], xb[:, 1], xb[:, 0]], 1)
            qy = np.stack([ya[:, 0], ya[:, 1], yb[:, 1], yb[:, 0]], 1)
            keep = (self._depth(qx) > _ZC_NEAR).all(1)
            if keep.any():
                quads = self._project(qx[keep], qy[keep])
                dashes = list(quads)

        stains, shades = self._distractors(s_car, to_car)
        look = to_car.track_points(self._lookup(np.array([s_car + _LOOKAHEAD])), 0.0)
        geo = {
            "x": car_x,
            "y": car_y,
            "heading": heading,
            "tapes": tapes,
            "dashes": dashes,
            "stains": stains,
            "shades": shades,
            "lookahead": (float(look[0][0]), float(look[1][0])),
        }
        self._last_geometry = (i, geo)
        return geo

    def _distractors(self, s_car: float, to_car: _ToCar) -> tuple[list, list]:
        """Floor stains (colour polygons) and shadows / sun patches (gain polygons) in view."""
        sp = self._distractor_spacing
        k0 = max(0, math.floor((s_car - 1.5) / sp))
        k1 = math.ceil((s_car + 9.0) / sp)
        chunks = [self._distractor_chunk(c) for c in range(k0 // 256, (k1 - 1) // 256 + 1)]
        first = (k0 // 256) * 256
        sel = slice(k0 - first, k1 - first)
        kind, gain, colour, wx, wy = (np.concatenate(a)[sel] for a in zip(*chunks))
        x, y = to_car(wx, wy)  # (n, 2 rings, points)
        inside = self._depth(x) > _ZC_NEAR
        projected = self._project(x, y)  # only used where a ring is all inside
        stains, shades = [], []
        for j in range(len(kind)):
            for ring in (0, 1) if kind[j] < 2 else (1,):
                if inside[j, ring].all():
                    poly = projected[j, ring]
                elif inside[j, ring].any():
                    poly = self._clip_project(x[j, ring], y[j, ring])
                else:
                    continue
                if kind[j] < 2:
                    shades.append((poly, int(gain[j, ring])))
                else:
                    stains.append((poly, tuple(int(c) for c in colour[j])))
        return stains, shades

    def _distractor_chunk(self, chunk: int) -> tuple[np.ndarray, ...]:
        """Distractors 256*chunk ... 256*chunk+255: kind, gains, colour, world polygons."""
        if chunk not in self._distractor_chunks:
            rng = np.random.default_rng([self.seed, 0xD15, chunk])
            n = 256
            kind = rng.choice(3, n, p=[0.45, 0.2, 0.35])  # 0 shadow, 1 sun patch, 2 stain
            value = np.where(kind == 0, rng.uniform(60, 100, n), rng.uniform(150, 175, n))
            # Ring 0 is a soft half-strength penumbra around ring 1.
            gain = np.round(np.stack([(_GAIN_ONE + value) / 2, value], 1)).astype(int)
            tint = rng.uniform(-35, 25, (n, 1)) + rng.uniform(-12, 12, (n, 3))
            colour = np.clip(np.asarray(self._floor_rgb)[None, :] + tint, 0, 255).astype(int)
            size = rng.uniform(0.05, 0.30, n)
            rx, ry = size * rng.uniform(1.0, 4.0, n), size
            ang = rng.uniform(0, np.pi, n)
            s_k = (chunk * n + np.arange(n) + rng.uniform(0, 1, n)) * self._distractor_spacing
            lat = rng.uniform(-1.3, 1.3, n)
            _, theta, x, y = np.moveaxis(self._lookup(s_k), -1, 0)
            cx, cy = x - np.sin(theta) * lat, y + np.cos(theta) * lat
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            ring = np.array([1.25, 1.0])[None, :, None]
            ex = ring * rx[:, None, None] * np.cos(t)
            ey = ring * ry[:, None, None] * np.sin(t)
            c, s = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
            wx = cx[:, None, None] + ex * c - ey * s
            wy = cy[:, None, None] + ex * s + ey * c
            self._distractor_chunks[chunk] = (kind, gain, colour, wx, wy)
        return self._distractor_chunks[chunk]

    # ------------------------------------------------------------------ camera

    def _depth(self, x: np.ndarray) -> np.ndarray:
        return x * self._cos_p + self._cam_h * self._sin_p

    def _project(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground points (car frame) to int32 image points in 1/16 px, shape (..., 2)."""
        zc = np.maximum(self._depth(x), _ZC_NEAR)  # points behind the near plane are unused
        u = self._cx - self._f * y / zc
        v = self._cy + self._f * (self._cam_h * self._cos_p - x * self._sin_p) / zc
        return np.round(np.stack([u, v], -1) * 16).astype(np.int32)

    def _clip_project(self, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Project a convex ground polygon, clipped to the near plane; None if all behind."""
        zc = self._depth(x)
        inside = zc > _ZC_NEAR
        if inside.all():
            return self._project(x, y)
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
                t = (_ZC_NEAR * 1.0001 - zc[a]) / (zc[b] - zc[a])
                px.append(x[a] + t * (x[b] - x[a]))
                py.append(y[a] + t * (y[b] - y[a]))
        return self._project(np.array(px), np.array(py))

    # ------------------------------------------------------------------ precomputed images

    @staticmethod
    def _pick_floor_colour(rng: np.random.Generator) -> tuple[float, float, float]:
        grey = rng.uniform(85, 140)
        tint = rng.normal(0, 1, 3) * np.array([10.0, 5.0, 8.0])
        return tuple(float(c) for c in np.clip(grey + tint, 40, 200))

    def _make_floor_texture(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Seamless floor texture (spectral noise: mottling + grain) and its mip levels."""
        white = np.fft.rfft2(rng.standard_normal((_TEX, _TEX), np.float32))
        fy = np.fft.fftfreq(_TEX)[:, None]
        fx = np.fft.rfftfreq(_TEX)[None, :]
        f = np.hypot(fx, fy)
        f[0, 0] = 1.0
        mottle = np.fft.irfft2(white * f**-1.5 * (f > 1.5 / _TEX), s=(_TEX, _TEX))
        grain = np.fft.irfft2(white * np.exp(-((f / 0.18) ** 2)), s=(_TEX, _TEX))
        mottle /= mottle.std()
        grain /= grain.std()
        contrast = rng.uniform(6, 14)
        lum = contrast * mottle + rng.uniform(3, 7) * grain
        chroma = rng.uniform(0.3, 1.0, 3)
        lum = lum.astype(np.float32)[..., None]
        tex = np.asarray(self._floor_rgb, np.float32) + lum * chroma.astype(np.float32)
        mips = [np.clip(tex, 0, 255).astype(np.uint8)]
        while len(mips) <= _MAX_LEVEL:
            mips.append(cv2.resize(mips[-1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
        return mips

    def _make_floor_bands(self) -> list:
        """Per-band floor pixel ground coordinates (car frame), in texels of the band's mip."""
        rows = np.arange(self._first_floor_row, self.height, dtype=np.float64)
        ry = (rows - self._cy) / self._f
        t = self._cam_h / (ry * self._cos_p + self._sin_p)
        fwd = np.minimum(t * (self._cos_p - ry * self._sin_p), 80.0)  # ground distance per row
        # Mip level from the pixel footprint (geometric mean of across and along the row).
        along = np.abs(np.gradient(fwd))
        across = fwd / self._f
        level = np.clip(np.round(np.log2(np.sqrt(along * across) / _TEXEL)), 0, _MAX_LEVEL)
        level = level.astype(int)
        rx = (np.arange(self.width) - self._cx) / self._f
        bands = []
        start = 0
        for r in range(1, len(rows) + 1):
            if r == len(rows) or level[r] != level[start]:
                lv = int(level[start])
                scale = _TEXEL * 2**lv
                tt = t[start:r, None]
                y = -tt * rx[None, :]
                x = np.broadcast_to(fwd[start:r, None], y.shape)
                a0 = self._first_floor_row + start
                a1 = self._first_floor_row + r
                # The texture is padded by wrapping so the per-frame maps never leave it
                # (remap's own BORDER_WRAP is several times slower).
                loc_x, loc_y = x / scale, y / scale
                pad = int(np.ceil(np.hypot(loc_x, loc_y).max())) + 2
                mip = self._mips[lv]
                tex = np.pad(mip, ((pad, pad), (pad, pad), (0, 0)), mode="wrap")
                bands.append(
                    (
                        (a0, a1),
                        tex,
                        np.ascontiguousarray(loc_x, np.float32),
                        np.ascontiguousarray(loc_y, np.float32),
                        scale,
                        mip.shape[0],
                        pad,
                    )
                )
                start = r
        return bands

    def _make_panorama(self, rng: np.random.Generator) -> np.ndarray:
        """A 360-degree strip of room wall above the horizon, sliced by the car's heading."""
        rows = self._first_floor_row
        period = max(round(2 * np.pi * self._f), self.width)
        self._panorama_period = period
        wall = np.array([rng.uniform(170, 225)] * 3) + rng.normal(0, 6, 3)
        pano = np.empty((max(rows, 1), period, 3), np.float32)
        grad = np.linspace(1.05, 0.9, pano.shape[0])[:, None, None]
        pano[:] = wall * grad
        base = max(2, rows // 40)
        for _ in range(int(rng.integers(8, 16))):  # furniture, doors, windows
            w = int(rng.uniform(0.02, 0.12) * period)
            x0 = int(rng.integers(0, period))
            top = int(rows * rng.uniform(0.0, 0.75))
            bottom = rows if rng.uniform() < 0.7 else int(rows * rng.uniform(0.3, 0.9))
            colour = rng.uniform(30, 250, 3) if rng.uniform() < 0.6 else np.full(3, 250.0)
            xs = np.arange(x0, x0 + w) % period
            pano[top:bottom, xs] = colour
        for _ in range(int(rng.integers(10, 30))):  # legs and poles
            x0 = int(rng.integers(0, period))
            w = int(rng.integers(2, 7))
            top = int(rows * rng.uniform(0.2, 0.9))
            pano[top:, np.arange(x0, x0 + w) % period] = rng.uniform(20, 200, 3)
        pano[rows - base :] = wall * 0.6  # skirting board along the floor
        pano += rng.standard_normal(pano.shape, np.float32) * 3
        pano = cv2.GaussianBlur(pano, (0, 0), 1.0)
        pano = np.clip(pano, 0, 255).astype(np.uint8)[:rows]
        return np.ascontiguousarray(np.concatenate([pano, pano[:, : self.width]], 1))

    def _make_gain(self, rng: np.random.Generator) -> np.ndarray:
        """Static lighting: a sideways gradient, a top-to-bottom gradient and a vignette."""
        u = (np.arange(self.width) - self._cx) / self.width
        v = (np.arange(self.height) - self._cy) / self.height
        side, depth = rng.uniform(-0.25, 0.25), rng.uniform(-0.15, 0.1)
        g = 1.0 + side * u[None, :] + depth * v[:, None]
        g *= 1.0 - 0.35 * (u[None, :] ** 2 + v[:, None] ** 2)
        g = np.clip(np.round(g * _GAIN_ONE), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, 2))

    def _make_noise(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sensor noise, split into +/- uint8 parts; frames take shifted windows of it."""
        shape = (self.height + _NOISE_FRAMES, self.width + _NOISE_FRAMES, 3)
        n = np.round(rng.standard_normal(shape, np.float32) * 2.5)
        return np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)


class _ToCar:
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
