"""Per-frame numbers for the review timeline, for every frame at once (numpy, no loop per frame):
the mask's area, the map's left/right balance, two models' disagreement, the frames to look at.
"""

from __future__ import annotations

import numpy as np

from carvis.composer import Composer
from carvis.review.replay import TrackMaps


def normalized(track_maps: TrackMaps) -> np.ndarray:
    """Every row's map on 0..255 under the track maps' normalisation, float32 (N, h, w)."""
    maps = track_maps.track.maps.astype(np.float32)
    lo = track_maps.lo.astype(np.float32)[:, None, None]
    span = (track_maps.hi - track_maps.lo).astype(np.float32)[:, None, None]
    scale = np.divide(np.float32(255.0), span, out=np.zeros_like(span), where=span > 0)
    maps -= lo
    maps *= scale
    return np.clip(maps, 0.0, 255.0, out=maps)


def map_stats(track_maps: TrackMaps, threshold: float) -> dict[str, np.ndarray]:
    """Mask area (share of the map above the threshold) and left/right balance of the masked
    map, -1 (all on the left) .. +1 (all on the right), per row, at map resolution."""
    norm = normalized(track_maps)
    mask = norm > threshold
    lit = np.where(mask, norm, 0.0)
    w = lit.shape[2]
    left = lit[:, :, : w // 2].sum(axis=(1, 2))
    right = lit[:, :, (w + 1) // 2:].sum(axis=(1, 2))
    total = left + right
    balance = np.divide(right - left, total, out=np.zeros_like(total), where=total > 0)
    return {"area": mask.mean(axis=(1, 2)), "balance": balance, "mask": mask}


def disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 − IoU of two models' masks per row (0 where both are empty), at the smaller map's
    size (nearest sampling of the larger)."""
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
    a, b = (m[:, (np.arange(h) * m.shape[1]) // h][:, :, (np.arange(w) * m.shape[2]) // w]
            for m in (a, b))
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return 1.0 - np.divide(inter, union, out=np.ones(len(a)), where=union > 0)


def worst(error: np.ndarray, n: int = 8, spacing: int = 10) -> list[int]:
    """The n rows where error is largest, each at least spacing rows from the others."""
    order = np.argsort(-np.nan_to_num(error, nan=-np.inf), kind="stable")
    picked: list[int] = []
    for row in order:
        if not np.isfinite(error[row]) or len(picked) >= n:
            break
        if all(abs(int(row) - p) >= spacing for p in picked):
            picked.append(int(row))
    return sorted(picked)


def _series(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, None where a value is missing."""
    return [None if not np.isfinite(v) else round(float(v), 4) for v in values]


def timeline(track_maps: list[TrackMaps], composers: list[Composer], spacing: int = 10
             ) -> dict:
    """The chart's data: per model its predicted angle, mask area and balance; the recorded
    angle; the models' disagreement; and the frames to look at (recorded vs predicted, else
    model vs model)."""
    first = track_maps[0].track
    out: dict = {"frame": [int(i) for i in first.index], "time": _series(first.time),
                 "models": []}
    masks = []
    for maps, composer in zip(track_maps, composers, strict=True):
        s = map_stats(maps, composer.overlay.threshold)
        masks.append(s.pop("mask"))
        out["models"].append({"angle": _series(maps.track.angle),
                              "area": _series(s["area"]), "balance": _series(s["balance"])})
    error = None
    if first.has_recorded:
        out["recorded"] = _series(first.recorded_angle)
        error = np.abs(first.recorded_angle - first.angle)
    if len(track_maps) > 1:
        out["disagreement"] = _series(disagreement(masks[0], masks[1]))
        if error is None:
            error = np.abs(track_maps[1].track.angle - first.angle)
    out["marks"] = [] if error is None else worst(error, spacing=spacing)
    out["marked_by"] = ("recorded vs predicted" if first.has_recorded else
                        "model vs model" if len(track_maps) > 1 else None)
    return out
