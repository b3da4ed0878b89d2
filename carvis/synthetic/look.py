"""The synthetic track's look: tape colours, floor texture, room panorama, lighting, noise.

Each function draws from the track's generator in the order the track calls it, so a seed
always gives the same pictures.
"""

from __future__ import annotations

import cv2
import numpy as np

from carvis.synthetic.geometry import GroundCamera

TEXEL = 0.012  # floor texture texel at mip level 0 (m)
_TEX = 512  # floor texture size at mip level 0 (texels); the floor repeats every 6.1 m
_MAX_LEVEL = 6
NOISE_FRAMES = 7  # distinct sensor-noise windows, cycled by frame index
GAIN_ONE = 128  # lighting gain map value that means x1.0

TAPE_COLOURS = {  # BGR, all bright so tapes stand out of the floor
    "white": (236, 238, 240),
    "yellow": (40, 215, 240),
    "blue": (235, 185, 90),
    "orange": (40, 150, 250),
    "green": (120, 225, 120),
    "pink": (190, 150, 250),
}

Colour = tuple[int, int, int]


def tape_colours(rng: np.random.Generator) -> tuple[tuple[Colour, Colour], Colour]:
    """(left, right) lane tape colours and the centre-dash colour."""
    style = rng.uniform()
    names = list(TAPE_COLOURS)
    if style < 0.55:
        left = right = "white"
    elif style < 0.8:
        left = right = names[rng.integers(1, len(names))]
    else:
        left, right = rng.choice(names, 2, replace=False)
    tapes = (TAPE_COLOURS[str(left)], TAPE_COLOURS[str(right)])
    return tapes, TAPE_COLOURS["yellow" if rng.uniform() < 0.5 else "white"]


def floor_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """The floor's mean BGR colour: a grey with a slight tint."""
    grey = rng.uniform(85, 140)
    tint = rng.normal(0, 1, 3) * np.array([10.0, 5.0, 8.0])
    return tuple(float(c) for c in np.clip(grey + tint, 40, 200))


def floor_texture(rng: np.random.Generator, floor_rgb: tuple[float, float, float]
                  ) -> list[np.ndarray]:
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
    tex = np.asarray(floor_rgb, np.float32) + lum * chroma.astype(np.float32)
    mips = [np.clip(tex, 0, 255).astype(np.uint8)]
    while len(mips) <= _MAX_LEVEL:
        mips.append(cv2.resize(mips[-1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    return mips


def floor_bands(camera: GroundCamera, width: int, height: int, first_row: int,
                mips: list[np.ndarray]) -> list:
    """Per-band floor pixel ground coordinates (car frame), in texels of the band's mip."""
    cam = camera
    rows = np.arange(first_row, height, dtype=np.float64)
    ry = (rows - cam.cy) / cam.f
    t = cam.cam_h / (ry * cam.cos_p + cam.sin_p)
    fwd = np.minimum(t * (cam.cos_p - ry * cam.sin_p), 80.0)  # ground distance per row
    # Mip level from the pixel footprint (geometric mean of across and along the row).
    along = np.abs(np.gradient(fwd))
    across = fwd / cam.f
    level = np.clip(np.round(np.log2(np.sqrt(along * across) / TEXEL)), 0, _MAX_LEVEL)
    level = level.astype(int)
    rx = (np.arange(width) - cam.cx) / cam.f
    bands = []
    start = 0
    for r in range(1, len(rows) + 1):
        if r == len(rows) or level[r] != level[start]:
            lv = int(level[start])
            scale = TEXEL * 2**lv
            tt = t[start:r, None]
            y = -tt * rx[None, :]
            x = np.broadcast_to(fwd[start:r, None], y.shape)
            # The texture is padded by wrapping so the per-frame maps never leave it
            # (remap's own BORDER_WRAP is several times slower).
            loc_x, loc_y = x / scale, y / scale
            pad = int(np.ceil(np.hypot(loc_x, loc_y).max())) + 2
            mip = mips[lv]
            tex = np.pad(mip, ((pad, pad), (pad, pad), (0, 0)), mode="wrap")
            bands.append((
                (first_row + start, first_row + r),
                tex,
                np.ascontiguousarray(loc_x, np.float32),
                np.ascontiguousarray(loc_y, np.float32),
                scale,
                mip.shape[0],
                pad,
            ))
            start = r
    return bands


def panorama(rng: np.random.Generator, f: float, width: int, rows: int
             ) -> tuple[np.ndarray, int]:
    """A 360-degree strip of room wall above the horizon and its period (px) in columns."""
    period = max(round(2 * np.pi * f), width)
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
    return np.ascontiguousarray(np.concatenate([pano, pano[:, :width]], 1)), period


def gain_map(rng: np.random.Generator, camera: GroundCamera, width: int, height: int
             ) -> np.ndarray:
    """Static lighting: a sideways gradient, a top-to-bottom gradient and a vignette."""
    u = (np.arange(width) - camera.cx) / width
    v = (np.arange(height) - camera.cy) / height
    side, depth = rng.uniform(-0.25, 0.25), rng.uniform(-0.15, 0.1)
    g = 1.0 + side * u[None, :] + depth * v[:, None]
    g *= 1.0 - 0.35 * (u[None, :] ** 2 + v[:, None] ** 2)
    g = np.clip(np.round(g * GAIN_ONE), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(g[..., None], 3, 2))


def sensor_noise(rng: np.random.Generator, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sensor noise, split into +/- uint8 parts; frames take shifted windows of it."""
    shape = (height + NOISE_FRAMES, width + NOISE_FRAMES, 3)
    n = np.round(rng.standard_normal(shape, np.float32) * 2.5)
    return np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)
