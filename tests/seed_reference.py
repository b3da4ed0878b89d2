"""An independent implementation of the seed notebook's method for the Axionaut model.

No carvis code and no TensorFlow: the network's first layers are computed by hand in numpy
from the weights in the HDF5 file, and the overlay is built from OpenCV primitives the way the
seed wrote them (crop, Lanczos, filter2D mean, min–max, INTER_CUBIC, threshold, AND, add).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np


def load_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """Layer name → [kernel, bias] read straight from a Keras 1 HDF5 file."""
    out = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for name in group:
            names = [n.decode() if isinstance(n, bytes) else n
                     for n in group[name].attrs["weight_names"]]
            out[name] = [np.array(group[name][n]) for n in names]
    return out


def conv_same_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3×3 'same' cross-correlation (TF convention) + bias + ReLU; x (H, W, Cin)."""
    kh, kw, _, cout = kernel.shape
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    h, w = x.shape[:2]
    out = np.zeros((h, w, cout), np.float64)
    for i in range(kh):
        for j in range(kw):
            out += xp[i:i + h, j:j + w, :] @ kernel[i, j].astype(np.float64)
    return np.maximum(out + bias, 0.0)


def maxpool2(x: np.ndarray) -> np.ndarray:
    """2×2 max pooling, stride 2, 'valid' (drops an odd last row/col)."""
    h, w, c = x.shape
    x = x[: h // 2 * 2, : w // 2 * 2]
    return x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def preprocess(frame: np.ndarray) -> np.ndarray:
    """The seed's pre_process: crop, Lanczos to 250×70, 2×2 mean via filter2D."""
    img = frame[600:1080, 0:1800]
    img = cv2.resize(img, (250, 70), interpolation=cv2.INTER_LANCZOS4)
    return cv2.filter2D(img, -1, np.ones((2, 2), np.float32) / 4)


def maxpooling2d_2(weights: dict, model_input: np.ndarray) -> np.ndarray:
    """Activation after conv1 → pool1 → conv2 → pool2 (dropout is identity at inference)."""
    x = model_input.astype(np.float64)
    x = maxpool2(conv_same_relu(x, *weights["convolution2d_1"]))
    return maxpool2(conv_same_relu(x, *weights["convolution2d_2"]))


def seed_overlay(frame: np.ndarray, weights: dict, channel: int = 1, threshold: float = 80,
                 colormap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    """The seed's merged 1800×480 image, with cv2's inferno in place of the matplotlib canvas."""
    roi = frame[600:1080, 0:1800]
    act = maxpooling2d_2(weights, preprocess(frame).astype(np.float32))[:, :, channel]
    norm = (act - act.min()) / (act.max() - act.min()) * 255
    up = cv2.resize(norm.astype(np.float32), (1800, 480), interpolation=cv2.INTER_CUBIC)
    up8 = np.clip(np.rint(up), 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(up8, threshold, 255, cv2.THRESH_BINARY)
    colored = cv2.applyColorMap(up8, colormap)
    return cv2.add(cv2.bitwise_and(colored, colored, mask=mask), roi)


def conv_outputs(weights: dict, model_input: np.ndarray) -> list[np.ndarray]:
    """Post-ReLU outputs of the four conv layers (pool after each; dropout is identity)."""
    x = model_input.astype(np.float64)
    outs = []
    for k in range(1, 5):
        x = conv_same_relu(x, *weights[f"convolution2d_{k}"])
        outs.append(x)
        x = maxpool2(x)
    return outs


def predict(weights: dict, model_input: np.ndarray) -> np.ndarray:
    """The 5 steering-bin probabilities: convs, flatten, dense → ReLU → dense → softmax."""
    x = maxpool2(conv_outputs(weights, model_input)[-1]).reshape(-1)
    h = np.maximum(x @ weights["dense_1"][0] + weights["dense_1"][1], 0.0)
    z = h @ weights["dense_2"][0] + weights["dense_2"][1]
    e = np.exp(z - z.max())
    return e / e.sum()
