"""Frame → model input → activation map of one layer, through a backend built once.

A backend takes the preprocessed input, shape (1, H, W, C) float32, and returns the chosen
layer's raw float activation, shape (h, w, c). Normalisation and colour are overlay's job.

Backends: ``tensorflow`` (the Keras model truncated at the layer, one ``tf.function``) and
``litert`` (a .tflite of the truncated model on ai-edge-litert). ``auto`` picks LiteRT when it
is installed: a Keras model is converted once per (file content, layer) and cached (see
:mod:`carvis.export`), so later runs import neither TensorFlow nor Keras.

A .tflite model holds one layer: its output. A layer spec given with it must name that
layer (its name, or the index / conv:N it had in the source model, as recorded by
``carvis export``); another layer is an error that says how to export it. The channel (an
index, mean or max) picks among the output's channels as for any layer.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from carvis import export
from carvis.errors import CarvisError
from carvis.profile import Profile

INTERPOLATION_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


class Preprocessor:
    """Crop → resize → k×k mean → colour order → scale/offset, into a reused float32 buffer."""

    def __init__(self, profile: Profile, input_size: tuple[int, int], channels: int = 3) -> None:
        self.profile = profile
        self.input_size = input_size  # (width, height)
        self.channels = channels
        self.interpolation = INTERPOLATION_FLAGS[profile.interpolation]
        k = profile.smooth
        self.kernel = np.ones((k, k), np.float32) / (k * k) if k > 1 else None
        w, h = input_size
        self.batch = np.empty((1, h, w, channels), np.float32)
        self._small = np.empty((h, w, 3), np.uint8)
        self._smooth = np.empty((h, w, 3), np.uint8)
        self._rgb = np.empty((h, w, 3), np.uint8)
        self._crop_for: tuple[int, int] | None = None
        self._crop_px: tuple[int, int, int, int] = (0, 0, 0, 0)

    def crop_box(self, frame: np.ndarray) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the ROI for this frame size (cached per size)."""
        h, w = frame.shape[:2]
        if self._crop_for != (h, w):
            crop = self.profile.crop
            self._crop_px = crop.pixels(h, w) if crop is not None else (0, h, 0, w)
            self._crop_for = (h, w)
        return self._crop_px

    def roi(self, frame: np.ndarray) -> np.ndarray:
        """The region of interest of a frame (a view, no copy)."""
        t, b, lft, r = self.crop_box(frame)
        return frame[t:b, lft:r]

    def __call__(self, roi: np.ndarray) -> np.ndarray:
        """Model input for an ROI, shape (1, H, W, C) float32; the returned array is reused."""
        small = cv2.resize(roi, self.input_size, dst=self._small,
                           interpolation=self.interpolation)
        if self.kernel is not None:
            # The seed's cv2.filter2D mean filter, kept in uint8 as it was.
            small = cv2.filter2D(small, -1, self.kernel, dst=self._smooth)
        if self.profile.color == "rgb":
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=self._rgb)
        if self.channels == 1:
            gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            np.multiply(gray, np.float32(self.profile.scale), out=self.batch[0, :, :, 0])
        else:
            np.multiply(small, np.float32(self.profile.scale), out=self.batch[0])
        if self.profile.offset:
            np.add(self.batch, np.float32(self.profile.offset), out=self.batch)
        return self.batch


BACKENDS = ("auto", "tensorflow", "litert")
LITERT_HELP = "install it with: pip install ai-edge-litert"


class Backend(Protocol):
    """Runs the truncated model: (1, H, W, C) float32 → (h, w, c) float32."""

    name: str
    layer_name: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TensorFlowBackend:
    """The model truncated at one layer, run through one tf.function with a fixed signature."""

    name = "tensorflow"

    def __init__(self, model: Any, layer: Any) -> None:
        import tensorflow as tf

        from carvis import models

        self.model = model
        self.layer = layer
        self.layer_name = layer.name
        self.truncated = models.truncated_model(model, layer)
        shape = tuple(int(d) for d in self.truncated.inputs[0].shape[1:])
        self.input_shape = shape
        self.output_shape = tuple(int(d) for d in self.truncated.outputs[0].shape[1:])
        truncated = self.truncated

        @tf.function(input_signature=[tf.TensorSpec((1,) + shape, tf.float32)],
                     reduce_retracing=True)
        def run(x):
            return truncated(x, training=False)

        self._run = run

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch).numpy()[0]


def litert_available() -> bool:
    """True if ai-edge-litert is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec("ai_edge_litert") is not None
    except (ImportError, ValueError):
        return False


class LiteRTBackend:
    """A .tflite (one input, one output: the layer) on the LiteRT interpreter; no TensorFlow."""

    name = "litert"

    def __init__(self, flatbuffer: bytes, meta: export.LayerMeta | None = None,
                 source: str = "<tflite>", num_threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise CarvisError(f"{source}: the LiteRT backend needs ai-edge-litert; "
                              f"{LITERT_HELP}") from None
        self.source = source
        self.meta = meta
        self._flatbuffer = flatbuffer  # the interpreter reads from this buffer: keep it alive
        log: list[str] = []
        try:
            # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" and the like on fd 2
            with export.held_stderr() as log:
                self.interpreter = Interpreter(model_content=flatbuffer,
                                               num_threads=num_threads)
                self._prepare(source)
        except (ValueError, RuntimeError) as exc:
            raise CarvisError(f"{source}: LiteRT cannot load this model "
                              f"({str(exc).strip().splitlines()[0][:160]})") from None
        finally:
            for line in log:
                if not line.startswith("INFO: "):
                    print(line, file=sys.stderr)
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.output_shape = tuple(int(d) for d in out["shape"][1:])
        self.layer_name = meta.layer if meta else _signature_output(self.interpreter, out)
        self._in = inp["index"]
        self._out = out["index"]
        self._in_quant = _quant(inp)
        self._out_quant = _quant(out)
        self._in_dtype = inp["dtype"]
        for kind, q, dtype in (("input", self._in_quant, inp["dtype"]),
                               ("output", self._out_quant, out["dtype"])):
            if q is None and dtype != np.float32:
                raise CarvisError(f"{source}: {kind} type {np.dtype(dtype).name} is not "
                                  "supported (float32, or int8/uint8 with quantization)")

    def _prepare(self, source: str) -> None:
        """Check for one (1, H, W, C) input and one output; allocate with a batch of 1."""
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise CarvisError(f"{source}: has {len(inputs)} input(s) and {len(outputs)} "
                              "output(s); carvis needs one of each, the output being the layer "
                              "to show (carvis export MODEL --layer L -o OUT.tflite)")
        shape = [int(d) for d in inputs[0]["shape_signature"]]
        if len(shape) != 4:
            raise CarvisError(f"{source}: input shape {tuple(shape)} is not (1, H, W, C)")
        if shape[0] != 1:
            self.interpreter.resize_tensor_input(inputs[0]["index"], [1] + shape[1:],
                                                 strict=False)
        self.interpreter.allocate_tensors()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._in_quant is not None:
            scale, zero = self._in_quant
            info = np.iinfo(self._in_dtype)
            batch = np.clip(np.rint(batch / scale + zero), info.min, info.max
                            ).astype(self._in_dtype)
        self.interpreter.set_tensor(self._in, batch)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._out)[0]  # a copy: safe past the next invoke
        if self._out_quant is not None:
            scale, zero = self._out_quant
            out = (out.astype(np.float32) - zero) * np.float32(scale)
        return out


def _quant(details: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized int8/uint8 tensor, else None."""
    scale, zero = details.get("quantization", (0.0, 0))
    if details["dtype"] in (np.int8, np.uint8) and scale:
        return float(scale), int(zero)
    return None


def _signature_output(interpreter: Any, out: dict) -> str:
    """The name of the model's one output: its signature key if it has one, else the tensor's."""
    try:
        for signature in interpreter.get_signature_list().values():
            if len(signature.get("outputs", [])) == 1:
                return str(signature["outputs"][0])
    except (ValueError, RuntimeError):
        pass
    return str(out["name"])


def _quiet_tensorflow() -> None:
    """Import TensorFlow now, without its C++ start-up chatter (never on the LiteRT path)."""
    from carvis.tfquiet import import_tensorflow

    import_tensorflow()


class ModelSession:
    """One model and the backends for its layers (tensorflow, litert, auto), built once each."""

    # auto = LiteRT when ai-edge-litert is installed, else TensorFlow. A .tflite model always
    # runs on LiteRT, never imports TensorFlow, and holds one layer (see the module docstring).

    def __init__(self, path: str | Path, backend: str = "auto", lambda_policy: str = "error",
                 num_threads: int = 1) -> None:
        self.path = Path(path)
        if backend not in BACKENDS:
            raise CarvisError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if not self.path.exists():
            raise CarvisError(f"{path}: model file not found; check the path")
        self.requested = backend
        self.lambda_policy = lambda_policy
        self.num_threads = num_threads
        self.is_tflite = self.path.is_file() and export.is_tflite(self.path)
        self.conversions = 0  # .tflite conversions this session did (0 if all were cached)
        self._backends: dict[str, Backend] = {}
        self._model: Any = None
        self._sha256: str | None = None
        self._tflite: LiteRTBackend | None = None
        # Only settings here: importing TensorFlow (quietly) is models.load_model's business;
        # a .tflite, or a layer LiteRT finds in the cache, must not pull it in at all.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        if self.is_tflite:
            if backend == "tensorflow":
                raise CarvisError(f"{self.path.name} is a .tflite model: it runs on LiteRT only; "
                                  "use --backend litert (or auto), or give the .h5/.keras "
                                  "model for --backend tensorflow")
            if not litert_available():
                raise CarvisError(f"{self.path.name}: .tflite models need ai-edge-litert; "
                                  f"{LITERT_HELP}")
            data = export.read_tflite(self.path)
            self._tflite = LiteRTBackend(data, export.read_meta(data), self.path.name,
                                         num_threads)
            self.backend_name = "litert"
        elif backend == "litert" and not litert_available():
            raise CarvisError(f"--backend litert needs ai-edge-litert; {LITERT_HELP}, "
                              "or use --backend tensorflow")
        elif backend == "tensorflow" or (backend == "auto" and not litert_available()):
            self.backend_name = "tensorflow"
            _ = self.model  # load now: a bad model file fails before any frame is read
        else:
            self.backend_name = "litert"

    @property
    def model(self) -> Any:
        """The Keras model, loaded on first use (None for a .tflite, which has none)."""
        if self.is_tflite:
            return None
        if self._model is None:
            from carvis import models

            try:
                self._model = models.load_model(self.path, lambda_policy=self.lambda_policy)
            except ImportError as exc:
                raise CarvisError(f"{self.path.name}: reading a Keras model needs TensorFlow "
                                  f"({exc.name or exc}): pip install tensorflow, or export a "
                                  ".tflite where TensorFlow is (carvis export MODEL --layer L "
                                  "-o OUT.tflite) and run that") from None
        return self._model

    def input_shape(self) -> tuple[int, int, int]:
        """The model's input (H, W, C)."""
        built = next(iter(self._backends.values()), None) or self._tflite
        if built is not None:
            return tuple(built.input_shape)
        return tuple(int(d) for d in self.model.inputs[0].shape[1:])

    def conv_layers(self) -> list[str]:
        """Names of the model's spatial conv layers, in order (for 'next layer' keys)."""
        if self._tflite is not None:
            return [self._tflite.layer_name]
        if self._model is None:
            for built in self._backends.values():
                meta = getattr(built, "meta", None)
                if meta is not None and meta.conv_layers:
                    return list(meta.conv_layers)
        from carvis import models

        return [info.name for info in models.layer_table(self.model)
                if info.is_conv and info.is_spatial]

    def layer_names(self) -> list[str]:
        """All layer names in model order, without loading Keras when LiteRT has them."""
        if self._tflite is not None:
            meta = self._tflite.meta
            return list(meta.layer_names) if meta and meta.layer_names else [
                self._tflite.layer_name]
        if self._model is None:
            for built in self._backends.values():
                meta = getattr(built, "meta", None)
                if meta is not None and meta.layer_names:
                    return list(meta.layer_names)
        return [layer.name for layer in self.model.layers]

    def backend(self, layer_spec: str | int) -> Backend:
        """The backend for a layer spec (name, index or conv:N), built on first use."""
        key = str(layer_spec).strip()
        if key not in self._backends:
            if self._tflite is not None:
                self._check_tflite_layer(layer_spec)
                built: Backend = self._tflite
            elif self.backend_name == "litert":
                try:
                    built = self._litert(layer_spec)
                except export.ConversionError as exc:
                    if self.requested != "auto":
                        raise
                    print(f"carvis: note: {exc}; running this layer on TensorFlow instead",
                          file=sys.stderr)
                    built = self._tensorflow(layer_spec)
            else:
                built = self._tensorflow(layer_spec)
            self._backends[key] = built
        return self._backends[key]

    # -- per backend --------------------------------------------------------------------------
    def _check_tflite_layer(self, spec: str | int) -> None:
        tfl = self._tflite
        meta = tfl.meta
        if meta is not None and meta.matches(spec):
            return
        if meta is None and str(spec).strip() == tfl.layer_name:
            return
        what = meta.describe() if meta else f"output {tfl.layer_name!r}"
        raise CarvisError(f"{self.path.name} holds one layer, its {what}; it cannot show layer "
                          f"{str(spec)!r}: pass --layer {tfl.layer_name}, or export that layer "
                          f"with carvis export MODEL --layer {spec} -o OUT.tflite")

    def _tensorflow(self, spec: str | int) -> Backend:
        from carvis import models

        layer = models.resolve_layer(self.model, spec)
        for built in self._backends.values():
            if built.name == "tensorflow" and built.layer_name == layer.name:
                return built
        return TensorFlowBackend(self.model, layer)

    def _litert(self, spec: str | int) -> Backend:
        if self._sha256 is None:
            self._sha256 = export.file_sha256(self.path)
        cached = export.cache_path(self._sha256, spec, self.lambda_policy)
        if cached.is_file():
            try:
                data = cached.read_bytes()
                meta = export.read_meta(data)
                if meta is not None and meta.model_sha256 == self._sha256:
                    return LiteRTBackend(data, meta, f"{self.path.name} (cached {cached.name})",
                                         self.num_threads)
            except (OSError, CarvisError):
                pass  # unreadable or stale: convert again below
        from carvis import models

        layer = models.resolve_layer(self.model, spec)
        meta = export.layer_meta(self.model, layer, self.path, self._sha256)
        data = export.convert(self.model, layer, meta)
        self.conversions += 1
        export.write_cached(cached, data)
        return LiteRTBackend(data, meta, self.path.name, self.num_threads)
