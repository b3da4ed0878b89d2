"""Every explainer mode on the real race clip: one README picture per mode, and the per-frame
cost of each, measured in the same run (needs ../shared/data beside the checkout).

    .venv/bin/python scripts/modes_readme.py                # pictures + timing table
    .venv/bin/python scripts/modes_readme.py --frames 200 --videos /tmp/modes

Timing: each of the clip's first --frames frames is decoded once, then every configuration
processes it in turn (round robin, so a busy machine slows them all alike). Reported medians:
the map (the renderer's "model" stage: forward pass, gradients, back-projection), the whole
Renderer.render (preprocess + map + overlay), and that plus the frame's decode and a JPEG
encode of the output (the full per-frame cost of a render or a stream).

CAM needs a head GlobalAveragePooling2D → Dense, which the Axionaut net does not have (carvis
refuses it, pointing at gradcam). For its picture the script gives Axionaut's own conv layers a
GAP → Dense head fitted by least squares to Axionaut's logits on the clip (built on the fly,
never saved in the repo).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
AXIONAUT = REPO.parent / "shared" / "data" / "axionaut"
DOCS = REPO / "docs"

# (picture / row name, mode, backend, profile changes, caption)
CONFIGS = [
    ("activation", "activation", "litert", {}, "activation: maxpooling2d_2, channel 1 (the seed)"),
    ("vbp", "vbp", "litert", {}, "vbp: VisualBackProp over the 4 conv layers"),
    ("cam", "cam", "litert", {"threshold": 150},
     "cam: Axionaut's convs + a fitted GAP -> Dense head, threshold 150"),
    ("activation-tf", "activation", "tensorflow", {}, ""),
    ("vbp-tf", "vbp", "tensorflow", {}, ""),
    ("gradcam", "gradcam", "tensorflow", {"layer": "conv:3"},
     "gradcam: convolution2d_3, target = predicted bin"),
    ("saliency", "saliency", "tensorflow", {}, "saliency: |d p(predicted bin) / d pixel|"),
    ("smoothgrad", "saliency", "tensorflow", {"smoothgrad": [16, 0.15]},
     "saliency + SmoothGrad 16 x 15 %"),
    ("guided", "guided", "tensorflow", {}, "guided backpropagation, target = predicted bin"),
    ("guided-gradcam", "guided-gradcam", "tensorflow", {"layer": "conv:3"},
     "guided Grad-CAM (convolution2d_3)"),
    ("saliency-layer", "saliency", "tensorflow", {"target": "layer", "layer": "conv:3"},
     "saliency of convolution2d_3's mean activation"),
    ("cam-tf", "cam", "tensorflow", {}, ""),
]


def read_frames(clip: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """Some frames of the clip, by index."""
    cap = cv2.VideoCapture(str(clip))
    frames, i = {}, 0
    while i <= max(indices):
        ok, frame = cap.read()
        if not ok:
            break
        if i in indices:
            frames[i] = frame
        i += 1
    cap.release()
    return frames


def fitted_gap_model(model_path: Path, clip: Path, profile, out: Path, step: int = 5) -> Path:
    """Axionaut's conv stack with a GAP → Dense(5, softmax) head fitted to its logits."""
    import keras

    from carvis import models
    from carvis.preprocess import Preprocessor

    base = models.load_model(model_path)
    pre = Preprocessor(profile, (250, 70), 3)
    cap = cv2.VideoCapture(str(clip))
    inputs, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            inputs.append(pre(pre.roi(frame)).copy())
        i += 1
    cap.release()
    batch = np.concatenate(inputs)
    conv4 = keras.Model(base.inputs[0], base.get_layer("convolution2d_4").output)
    logits = keras.Model(base.inputs[0], base.get_layer("dense_2").output)
    feats = np.asarray(conv4.predict(batch, verbose=0)).mean(axis=(1, 2))
    target = np.asarray(logits.predict(batch, verbose=0))
    a = np.hstack([feats, np.ones((len(feats), 1))])
    coef, *_ = np.linalg.lstsq(a, target, rcond=None)
    x = keras.Input((70, 250, 3), name="img_in")
    y = x
    for name in ("convolution2d_1", "maxpooling2d_1", "convolution2d_2", "maxpooling2d_2",
                 "convolution2d_3", "maxpooling2d_3", "convolution2d_4"):
        layer = base.get_layer(name)
        clone = layer.__class__.from_config(layer.get_config())
        y = clone(y)
        clone.set_weights(layer.get_weights())
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    dense = keras.layers.Dense(5, activation="softmax", name="bins")
    y = dense(y)
    dense.set_weights([coef[:4].astype(np.float32), coef[4].astype(np.float32)])
    path = out / "axionaut_gap.keras"
    keras.Model(x, y, name="axionaut_gap").save(path)
    return path


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """A caption strip above the picture."""
    strip = np.full((30, image.shape[1], 3), 24, np.uint8)
    cv2.putText(strip, text, (8, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (235, 235, 235), 1,
                cv2.LINE_AA)
    return np.vstack([strip, image])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(AXIONAUT / "race.mp4"))
    parser.add_argument("--model", default=str(AXIONAUT / "autopilot.hdf5"))
    parser.add_argument("--frames", type=int, default=150, help="frames timed per mode")
    parser.add_argument("--picture", type=int, default=120, help="clip frame of the pictures")
    parser.add_argument("--width", type=int, default=1200, help="picture width (pixels)")
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--videos", help="also render the whole clip per mode into this folder")
    args = parser.parse_args()
    if not Path(args.model).is_file():
        print(f"needs the real Axionaut assets at {AXIONAUT}", file=sys.stderr)
        return 1
    from carvis.tfquiet import quiet_environment

    quiet_environment()
    from carvis import pipeline
    from carvis import profile as prof
    from carvis.frame import Frame
    from carvis.session import ModelSession

    base = prof.load(REPO / "models" / "axionaut.yaml")
    frames = read_frames(Path(args.clip), {0, 1, 2, args.picture})
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="carvis-modes-"))
    gap = None
    if any(c[1] == "cam" for c in configs):
        gap = fitted_gap_model(Path(args.model), Path(args.clip), base, tmp)
    sessions: dict[tuple[str, str], ModelSession] = {}
    renderers = {}
    for name, mode, backend, changes, _ in configs:
        model = gap if mode == "cam" else Path(args.model)
        key = (str(model), backend)
        if key not in sessions:
            sessions[key] = ModelSession(model, backend=backend)
        renderers[name] = pipeline.make_renderer(sessions[key],
                                                base.replace(mode=mode, **changes))
    for renderer in renderers.values():  # warm up: graphs traced, buffers sized
        for i in (0, 1, 2):
            renderer.render(Frame(frames[i].copy(), i, 0.0))
    cost = {name: [] for name in renderers}
    full = {name: [] for name in renderers}
    cap = cv2.VideoCapture(args.clip)
    for _ in range(args.frames):
        t0 = time.perf_counter()
        ok, frame = cap.read()  # the H.264 decode every configuration needs, timed once
        decode = time.perf_counter() - t0
        if not ok:
            break
        for name, renderer in renderers.items():
            image = frame.copy()
            t1 = time.perf_counter()
            out = renderer.render(Frame(image, 0, 0.0))
            t2 = time.perf_counter()
            cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 80])  # what a sink does
            t3 = time.perf_counter()
            cost[name].append(t2 - t1)
            full[name].append(decode + (t3 - t1))
    cap.release()
    ref = {"litert": "activation", "tensorflow": "activation-tf"}
    print(f"{len(cost['activation' if 'activation' in cost else next(iter(cost))])} frames of "
          f"{Path(args.clip).name}, same run, medians:\n")
    print("| mode | backend | map ms | process ms/frame | × activation | + decode, encode ms "
          "| × |")
    print("|---|---|---|---|---|---|---|")
    for name, mode, backend, _, _ in configs:
        med = 1e3 * float(np.median(cost[name]))
        fmed = 1e3 * float(np.median(full[name]))
        r = ref[backend]
        ratio = med / (1e3 * float(np.median(cost[r]))) if r in cost else float("nan")
        fratio = fmed / (1e3 * float(np.median(full[r]))) if r in full else float("nan")
        model = renderers[name].times.median_ms().get("model", float("nan"))
        print(f"| {name} | {backend} | {model:.2f} | {med:.2f} | {ratio:.2f} | {fmed:.2f} "
              f"| {fratio:.2f} |")
    DOCS.mkdir(exist_ok=True)
    for name, _, backend, _, text in configs:
        if not text:
            continue
        renderers[name].apply({"hud": True})
        out = renderers[name].render(Frame(frames[args.picture].copy(), 0, 0.0))
        h = round(out.shape[0] * args.width / out.shape[1])
        small = cv2.resize(out, (args.width, h), interpolation=cv2.INTER_AREA)
        path = DOCS / f"mode_{name}.jpg"
        cv2.imwrite(str(path), caption(small, f"{text} [{backend}]"),
                    [cv2.IMWRITE_JPEG_QUALITY, 82])
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} kB)")
    if args.videos:
        from carvis import sources
        from carvis.sinks.table import SinkOptions, open_sink

        Path(args.videos).mkdir(parents=True, exist_ok=True)
        for name, renderer in renderers.items():
            source = sources.open_source(args.clip)
            with source, open_sink(str(Path(args.videos) / f"{name}.avi"),
                                   SinkOptions(source.fps)) as sink:
                n = pipeline.render(iter(source), renderer, sink)
            print(f"rendered {n} frames: {Path(args.videos) / (name + '.avi')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
