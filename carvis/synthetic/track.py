"""SyntheticTrack: a seeded track, a car driving along it, and the frames its camera films."""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np

from carvis.synthetic import look
from carvis.synthetic.geometry import ZC_NEAR, Centreline, GroundCamera, ToCar

_S0 = 2.0  # arc length of the car at frame 0 (m), so the table never needs negative s
_KAPPA_REF = 0.8  # curvature (1/m) that maps to a full steering lock of +-1
_LOOKAHEAD = 0.8  # pure-pursuit look-ahead along the track (m) for the steering label

# Centre-line sample offsets ahead of the car: fine near the camera, coarse far away.
_OFFSETS = np.concatenate([np.arange(-0.4, 2.0, 0.03), np.arange(2.0, 10.0 + 1e-9, 0.1)])


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
        # Every draw below comes from this one generator, in this order: keep it.
        rng = np.random.default_rng([self.seed, 0x7AC])

        self._line = Centreline(rng)
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
        self._tape_colour, self._dash_colour = look.tape_colours(rng)

        self._cam = GroundCamera(rng, self.width, self.height)
        self.horizon = self._cam.horizon  # row of the horizon (px)

        # Distractors: shadows, sun patches and floor stains placed along the track.
        self._distractor_spacing = rng.uniform(1.2, 3.0)
        self._distractor_chunks: dict[int, tuple[np.ndarray, ...]] = {}

        self._floor_rgb = look.floor_colour(rng)
        mips = look.floor_texture(rng, self._floor_rgb)
        self._first_floor_row = math.floor(self.horizon) + 1
        self._panorama, self._panorama_period = look.panorama(
            rng, self._cam.f, self.width, self._first_floor_row)
        self._bands = look.floor_bands(self._cam, self.width, self.height,
                                       self._first_floor_row, mips)
        self._gain = look.gain_map(rng, self._cam, self.width, self.height)
        self._noise = look.sensor_noise(rng, self.width, self.height)
        self._last_geometry: tuple[int, dict] | None = None

    # ------------------------------------------------------------------ public API

    def frame(self, i: int) -> np.ndarray:
        """The BGR uint8 camera frame number i, shape (height, width, 3)."""
        geo = self._geometry(i)
        img = np.empty((self.height, self.width, 3), np.uint8)
        r0 = self._first_floor_row
        col = round(-geo["heading"] * self._cam.f) % self._panorama_period
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
        cv2.multiply(img, gain, dst=img, scale=1.0 / look.GAIN_ONE)
        a, b = i % look.NOISE_FRAMES, (3 * i) % look.NOISE_FRAMES
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
        return float(self._line.kappa(np.array([s]))[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames 0, 1, 2, ... (forever when num_frames is None)."""
        i = 0
        while self.num_frames is None or i < self.num_frames:
            yield self.frame(i)
            i += 1

    # ------------------------------------------------------------------ geometry of a frame

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
        _, theta, x, y = self._line.lookup(np.array([s_car]))[0]
        car_x, car_y = x - math.sin(theta) * offset, y + math.cos(theta) * offset
        heading = theta + heading_err
        to_car = ToCar(car_x, car_y, heading)
        stains, shades = self._distractors(s_car, to_car)
        look_ahead = to_car.track_points(self._line.lookup(np.array([s_car + _LOOKAHEAD])), 0.0)
        geo = {
            "x": car_x,
            "y": car_y,
            "heading": heading,
            "tapes": self._tapes(s_car, to_car),
            "dashes": self._dashes(s_car, to_car),
            "stains": stains,
            "shades": shades,
            "lookahead": (float(look_ahead[0][0]), float(look_ahead[1][0])),
        }
        self._last_geometry = (i, geo)
        return geo

    def _tapes(self, s_car: float, to_car: ToCar) -> list[np.ndarray | None]:
        """Left and right tape polygons (None where a tape is out of view)."""
        # Strips along the track, from the first point in front of the camera to the first
        # point (if any) where the track turns back behind it.
        cam = self._cam
        line = self._line.lookup(s_car + _OFFSETS)
        tapes = []
        for side in (1.0, -1.0):
            edges = [
                to_car.track_points(line, side * self._half_width + e * self._tape_w / 2)
                for e in (-1.0, 1.0)
            ]
            zc = np.minimum(cam.depth(edges[0][0]), cam.depth(edges[1][0]))
            valid = zc > ZC_NEAR
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
            a = cam.project(*(c[start:stop] for c in edges[0]))
            b = cam.project(*(c[start:stop] for c in edges[1]))
            tapes.append(np.concatenate([a, b[::-1]]))
        return tapes

    def _dashes(self, s_car: float, to_car: ToCar) -> list[np.ndarray]:
        """Centre-line dash quads, anchored to the track so they flow past the car."""
        period = self._dash_len + self._dash_gap
        k = np.arange(math.ceil((s_car - 0.4) / period), math.floor((s_car + 7.0) / period) + 1)
        ends = self._line.lookup(np.stack([k * period, k * period + self._dash_len], 1))
        if not len(k):
            return []
        hw = self._dash_w / 2
        (xa, ya), (xb, yb) = (to_car.track_points(ends, -hw), to_car.track_points(ends, hw))
        qx = np.stack([xa[:, 0], xa[:, 1], xb[:, 1], xb[:, 0]], 1)
        qy = np.stack([ya[:, 0], ya[:, 1], yb[:, 1], yb[:, 0]], 1)
        keep = (self._cam.depth(qx) > ZC_NEAR).all(1)
        if not keep.any():
            return []
        return list(self._cam.project(qx[keep], qy[keep]))

    def _distractors(self, s_car: float, to_car: ToCar) -> tuple[list, list]:
        """Floor stains (colour polygons) and shadows / sun patches (gain polygons) in view."""
        sp = self._distractor_spacing
        k0 = max(0, math.floor((s_car - 1.5) / sp))
        k1 = math.ceil((s_car + 9.0) / sp)
        chunks = [self._distractor_chunk(c) for c in range(k0 // 256, (k1 - 1) // 256 + 1)]
        first = (k0 // 256) * 256
        sel = slice(k0 - first, k1 - first)
        kind, gain, colour, wx, wy = (np.concatenate(a)[sel] for a in zip(*chunks))
        x, y = to_car(wx, wy)  # (n, 2 rings, points)
        inside = self._cam.depth(x) > ZC_NEAR
        projected = self._cam.project(x, y)  # only used where a ring is all inside
        stains, shades = [], []
        for j in range(len(kind)):
            for ring in (0, 1) if kind[j] < 2 else (1,):
                if inside[j, ring].all():
                    poly = projected[j, ring]
                elif inside[j, ring].any():
                    poly = self._cam.clip_project(x[j, ring], y[j, ring])
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
            gain = np.round(np.stack([(look.GAIN_ONE + value) / 2, value], 1)).astype(int)
            tint = rng.uniform(-35, 25, (n, 1)) + rng.uniform(-12, 12, (n, 3))
            colour = np.clip(np.asarray(self._floor_rgb)[None, :] + tint, 0, 255).astype(int)
            size = rng.uniform(0.05, 0.30, n)
            rx, ry = size * rng.uniform(1.0, 4.0, n), size
            ang = rng.uniform(0, np.pi, n)
            s_k = (chunk * n + np.arange(n) + rng.uniform(0, 1, n)) * self._distractor_spacing
            lat = rng.uniform(-1.3, 1.3, n)
            _, theta, x, y = np.moveaxis(self._line.lookup(s_k), -1, 0)
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
