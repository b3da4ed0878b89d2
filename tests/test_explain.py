"""Explainers against hand computations: VisualBackProp, Grad-CAM, saliency, guided backprop,
CAM; targets' signs; every mode on the real Axionaut model; steadier masks on the race clip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import seed_reference

from carvis import explain, models
from carvis import overlay as ov
from carvis.errors import CarvisError

# --------------------------------------------------------------------------- numpy references


def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, stride: int = 1,
           padding: str = "valid") -> np.ndarray:
    """TF-convention cross-correlation in float64, explicit over kernel offsets."""
    kh, kw, _, cout = kernel.shape
    h, w = x.shape[:2]
    if padding == "same":
        oh, ow = -(-h // stride), -(-w // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - w, 0)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((oh, ow, cout))
    for a in range(kh):
        for b in range(kw):
            patch = x[a:a + (oh - 1) * stride + 1:stride, b:b + (ow - 1) * stride + 1:stride]
            out += patch @ kernel[a, b].astype(np.float64)
    return out + (0 if bias is None else bias)


def conv2d_backward(g: np.ndarray, kernel: np.ndarray, in_hw: tuple[int, int],
                    stride: int = 1) -> np.ndarray:
    """Gradient of a 'valid' conv w.r.t. its input, one output pixel at a time."""
    kh, kw, cin, _ = kernel.shape
    out = np.zeros(in_hw + (cin,))
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            out[i * stride:i * stride + kh, j * stride:j * stride + kw] += kernel @ g[i, j]
    return out


def transposed_ones(y: np.ndarray, out_hw: tuple[int, int], size: tuple[int, int],
                    stride: tuple[int, int], pad: tuple[int, int] = (0, 0)) -> np.ndarray:
    """VisualBackProp's deconvolution with an all-ones kernel, by explicit loops: every
    output pixel (i, j) adds its value to each input pixel its window read."""
    out = np.zeros(out_hw)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            for a in range(size[0]):
                for b in range(size[1]):
                    u = i * stride[0] - pad[0] + a
                    v = j * stride[1] - pad[1] + b
                    if 0 <= u < out_hw[0] and 0 <= v < out_hw[1]:
                        out[u, v] += y[i, j]
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def weights_of(layer) -> list[np.ndarray]:
    return [np.asarray(w, np.float64) for w in layer.get_weights()]


def randomize(model, rng: np.random.Generator, scale: float = 0.4) -> None:
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.normal(0.0, scale, w.shape).astype(np.float32) for w in ws])


# --------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


@pytest.fixture(scope="module")
def vbp_model(keras):
    """Stride 2 and 'valid' padding that lose a row and a column, a pool that loses one,
    a linear conv followed by BatchNormalization → ReLU (its tap is the ReLU)."""
    L = keras.layers
    x_in = keras.Input((16, 18, 2), name="img")
    x = L.Conv2D(3, 3, strides=2, activation="relu", name="c1")(x_in)       # 7x8
    x = L.Dropout(0.2, name="drop")(x)
    x = L.Conv2D(4, 2, name="c2")(x)                                        # 6x7
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.MaxPooling2D(2, name="pool")(x)                                   # 3x3
    x = L.Conv2D(2, 3, padding="same", activation="relu", name="c3")(x)     # 3x3
    x = L.Flatten()(x)
    out = L.Dense(1, name="angle")(x)
    model = keras.Model(x_in, out, name="tiny_vbp")
    randomize(model, np.random.default_rng(3))
    bn = model.get_layer("bn")
    bn.set_weights([np.ones(4, np.float32), np.full(4, 0.3, np.float32),
                    np.zeros(4, np.float32), np.ones(4, np.float32)])
    return model


@pytest.fixture(scope="module")
def bins_model(keras):
    """conv → conv (stride 2) → flatten → dense(5) → softmax: Grad-CAM / saliency checks."""
    L = keras.layers
    x_in = keras.Input((9, 11, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x_in)
    x = L.Conv2D(3, 3, strides=2, activation="relu", name="c2")(x)          # 4x5x3
    x = L.Flatten()(x)
    x = L.Dense(5, name="logits")(x)
    out = L.Activation("softmax", name="probs")(x)
    model = keras.Model(x_in, out, name="tiny_bins")
    randomize(model, np.random.default_rng(5))
    return model


@pytest.fixture(scope="module")
def regression_model(keras):
    """conv → conv (stride 2) → flatten → dense(6) ReLU → dense(1): guided backprop check."""
    L = keras.layers
    x_in = keras.Input((8, 10, 3), name="img")
    x = L.Conv2D(4, 3, activation="relu", name="c1")(x_in)                  # 6x8
    x = L.Conv2D(3, 2, strides=2, activation="relu", name="c2")(x)          # 3x4
    x = L.Flatten()(x)
    x = L.Dense(6, activation="relu", name="d1")(x)
    out = L.Dense(1, name="steer")(x)
    model = keras.Model(x_in, out, name="tiny_regression")
    randomize(model, np.random.default_rng(7))
    return model


@pytest.fixture(scope="module")
def gap_model(keras):
    L = keras.layers
    x_in = keras.Input((10, 12, 3), name="img")
    x = L.Conv2D(4, 3, activation="relu", name="c1")(x_in)
    x = L.Conv2D(6, 3, activation="relu", name="last")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.1)(x)
    out = L.Dense(5, activation="softmax", name="bins")(x)
    model = keras.Model(x_in, out, name="tiny_gap")
    randomize(model, np.random.default_rng(11))
    return model


def tiny_input(model, seed: int = 0) -> np.ndarray:
    shape = (1,) + tuple(int(d) for d in model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


def sub_output(model, x: np.ndarray, name: str) -> np.ndarray:
    import keras

    sub = keras.Model(model.inputs[0], model.get_layer(name).output)
    return np.asarray(sub(x, training=False), np.float64)[0]


# --------------------------------------------------------------------------- VisualBackProp


def test_transposed_ones_loops_match_tensorflow_conv2d_transpose():
    import tensorflow as tf

    y = np.random.default_rng(0).uniform(0, 1, (7, 8))
    for out_hw, size, stride, pad, padding in (((16, 18), (3, 3), (2, 2), (0, 0), "VALID"),
                                               ((6, 7), (2, 2), (2, 2), (0, 0), "VALID"),
                                               ((7, 8), (3, 3), (1, 1), (1, 1), "SAME")):
        if padding == "SAME":
            n = (-(-out_hw[0] // stride[0]), -(-out_hw[1] // stride[1]))
        else:
            n = ((out_hw[0] - size[0]) // stride[0] + 1, (out_hw[1] - size[1]) // stride[1] + 1)
        yy = y[: n[0], : n[1]]
        ref = tf.nn.conv2d_transpose(yy[None, :, :, None], tf.ones(size + (1, 1), tf.float64),
                                     (1,) + out_hw + (1,), stride, padding).numpy()[0, :, :, 0]
        np.testing.assert_allclose(transposed_ones(yy, out_hw, size, stride, pad), ref)


@pytest.mark.parametrize("op", [
    explain.AxisOp(16, 7, size=3, stride=2),                 # valid, loses the last row
    explain.AxisOp(9, 5, size=3, stride=2, pad=1),           # same, stride 2
    explain.AxisOp(9, 9, size=3, stride=1, dilation=2, pad=2),
    explain.AxisOp(6, 9, pad=2),                             # zero padding 2 before, 1 after
    explain.AxisOp(9, 6, pad=-2),                            # cropping 2 before, 1 after
    explain.AxisOp(4, 12, repeat=3),                         # nearest upsampling x3
])
def test_axis_adjoint_is_the_transposed_reading_pattern(op):
    y = np.random.default_rng(1).uniform(0, 1, (op.n_out, 5)).astype(np.float32)
    np.testing.assert_allclose(op.adjoint(y), op.matrix().T @ y, rtol=1e-6)


@pytest.mark.parametrize("fields", [
    (62, 31, 2, 10 ** 30, 0),       # a byte-flipped stride
    (62, 31, 10 ** 9, 2, 0),        # a window of a billion rows
    (62, 0, 2, 2, 0),
    (62, 31, 2, 2, 10 ** 6),        # a pad far outside the map
    (62, 31, 2.5, 2, 0),
])
def test_a_window_no_layer_has_is_refused_before_any_buffer(fields):
    with pytest.raises(ValueError, match="no layer reads|wider than"):
        explain.AxisOp(*fields[:4], pad=fields[4])


def test_a_damaged_vbp_path_is_one_line(vbp_model):
    from carvis.explain.vbp import plan_from_chain, vbp_chain

    path = vbp_chain(vbp_model)
    path["chain"][0]["config"]["strides"] = [10 ** 30, 2]
    with pytest.raises(CarvisError, match="vbp path is damaged at layer 'c1'") as caught:
        plan_from_chain(path, "model.tflite")
    assert "\n" not in str(caught.value)


def test_vbp_plan_of_tiny_model_taps_and_shapes(vbp_model):
    plan = explain.vbp_plan(vbp_model)
    assert plan.taps == ("c1", "relu2", "c3")  # the linear conv's tap is its ReLU
    assert plan.tap_hw == ((7, 8), (6, 7), (3, 3))
    assert plan.input_hw == (16, 18)


def test_vbp_matches_hand_computation_on_tiny_stride2_valid_model(vbp_model):
    x = tiny_input(vbp_model, 1) * 3
    m1 = sub_output(vbp_model, x, "c1").mean(-1)
    m2 = sub_output(vbp_model, x, "relu2").mean(-1)
    m3 = sub_output(vbp_model, x, "c3").mean(-1)
    assert m1.std() > 0 and m2.std() > 0 and m3.std() > 0
    up = transposed_ones(m3, (3, 3), (3, 3), (1, 1), (1, 1))          # c3: 3x3 same
    up = transposed_ones(up, (6, 7), (2, 2), (2, 2)) * m2             # pool: 6x7 → lost col
    up = transposed_ones(up, (7, 8), (2, 2), (1, 1)) * m1             # c2: 2x2 valid
    ref = transposed_ones(up, (16, 18), (3, 3), (2, 2))               # c1: stride 2 valid
    assert np.all(ref[15] == 0) and np.all(ref[:, 17] == 0)           # the lost row / column
    got = explain.make_explainer("vbp", vbp_model)(x).map
    assert got.shape == (16, 18)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_vbp_matches_hand_computation_on_real_axionaut(axionaut_model_path, axionaut_frames):
    weights = seed_reference.load_weights(axionaut_model_path)
    model = models.load_model(axionaut_model_path)
    vbp = explain.make_explainer("vbp", model)
    assert vbp.plan.taps == tuple(f"convolution2d_{k}" for k in range(1, 5))
    for name in ("frame3556.jpg", "frame3868.jpg"):
        x = seed_reference.preprocess(cv2.imread(str(axionaut_frames / name)))
        x = x.astype(np.float32)
        means = [c.mean(-1) for c in seed_reference.conv_outputs(weights, x)]
        up = means[3]
        for k in (2, 1, 0):  # conv (3x3 same, stride 1), then the 2x2 pool before it
            up = transposed_ones(up, up.shape, (3, 3), (1, 1), (1, 1))
            up = transposed_ones(up, means[k].shape, (2, 2), (2, 2)) * means[k]
        ref = transposed_ones(up, (70, 250), (3, 3), (1, 1), (1, 1))
        result = vbp(x[None])
        assert result.map.shape == (70, 250)
        np.testing.assert_allclose(result.map, ref, rtol=1e-3, atol=1e-4 * ref.max())
        np.testing.assert_allclose(result.prediction, seed_reference.predict(weights, x),
                                   atol=1e-5)


def test_vbp_runs_from_a_foreign_forward_part(vbp_model, keras):
    """The forward part can be any backend returning the taps (e.g. a multi-output LiteRT)."""
    plan = explain.vbp_plan(vbp_model)
    sub = keras.Model(vbp_model.inputs[0], [vbp_model.get_layer(t).output for t in plan.taps])
    calls = []

    def forward(batch):
        calls.append(batch.shape)
        return dict(zip(plan.taps, [np.asarray(a) for a in sub(batch)], strict=True))

    x = tiny_input(vbp_model, 2)
    ours = explain.make_explainer("vbp", vbp_model, forward=forward)(x)
    ref = explain.make_explainer("vbp", vbp_model)(x)
    assert calls == [(1, 16, 18, 2)] and ours.prediction is None
    np.testing.assert_allclose(ours.map, ref.map, rtol=1e-5)
    again = explain.VBPPlan.from_json(plan.to_json())
    np.testing.assert_allclose(again.backproject(forward(x)), ref.map, rtol=1e-5)


def test_vbp_refuses_a_branching_model(keras):
    L = keras.layers
    x_in = keras.Input((8, 8, 3))
    a = L.Conv2D(2, 3, padding="same", activation="relu")(x_in)
    b = L.Conv2D(2, 1, activation="relu")(x_in)
    out = L.Dense(1)(L.Flatten()(L.Add(name="merge")([a, b])))
    with pytest.raises(CarvisError, match="'merge'.*2 inputs.*gradcam"):
        explain.vbp_plan(keras.Model(x_in, out))


# --------------------------------------------------------------------------- Grad-CAM


def head_score(a: np.ndarray, dense: list[np.ndarray], bins: tuple[int, ...]) -> float:
    return float(softmax(a.reshape(-1) @ dense[0] + dense[1])[list(bins)].sum())


def test_gradcam_weights_match_finite_differences(bins_model):
    x = tiny_input(bins_model, 3)
    cam = explain.make_explainer("gradcam", bins_model, layer="c2", target="left")
    result = cam(x)
    a = result.outputs["c2"][0].astype(np.float64)
    dense = weights_of(bins_model.get_layer("logits"))
    bins = (0, 1)
    grads = np.zeros_like(a)
    eps = 1e-4
    for idx in np.ndindex(a.shape):
        hi, lo = a.copy(), a.copy()
        hi[idx] += eps
        lo[idx] -= eps
        grads[idx] = (head_score(hi, dense, bins) - head_score(lo, dense, bins)) / (2 * eps)
    weights = grads.mean(axis=(0, 1))
    assert np.abs(weights).max() > 1e-4
    np.testing.assert_allclose(result.outputs["@weights"], weights, rtol=1e-3,
                               atol=1e-4 * np.abs(weights).max())
    expected = np.maximum((a * weights).sum(-1), 0)
    np.testing.assert_allclose(result.map, expected, rtol=1e-3, atol=1e-4 * expected.max())
    assert result.map.shape == (4, 5)


def test_gradcam_left_and_right_weights_are_opposite_on_a_regression(regression_model):
    x = tiny_input(regression_model, 4)
    left = explain.make_explainer("gradcam", regression_model, layer="c2", target="left")(x)
    right = explain.make_explainer("gradcam", regression_model, layer="c2", target="right")(x)
    assert np.abs(right.outputs["@weights"]).max() > 0
    np.testing.assert_allclose(left.outputs["@weights"], -right.outputs["@weights"], rtol=1e-6)


def test_gradcam_defaults_to_the_last_conv_layer(bins_model):
    assert explain.make_explainer("gradcam", bins_model).layer == "c2"


# --------------------------------------------------------------------------- saliency


def bins_forward(model, x: np.ndarray) -> np.ndarray:
    c1 = weights_of(model.get_layer("c1"))
    c2 = weights_of(model.get_layer("c2"))
    dense = weights_of(model.get_layer("logits"))
    a = np.maximum(conv2d(x, c1[0], c1[1], padding="same"), 0)
    a = np.maximum(conv2d(a, c2[0], c2[1], stride=2), 0)
    return softmax(a.reshape(-1) @ dense[0] + dense[1])


def test_numpy_forward_agrees_with_keras(bins_model):
    x = tiny_input(bins_model, 5)
    np.testing.assert_allclose(bins_forward(bins_model, x[0].astype(np.float64)),
                               np.asarray(bins_model(x))[0], rtol=1e-5)


@pytest.mark.parametrize("target,bins", [("left", (0, 1)), ("straight", (2,)),
                                         ("right", (3, 4))])
def test_saliency_matches_finite_differences(bins_model, target, bins):
    x = tiny_input(bins_model, 6)
    result = explain.make_explainer("saliency", bins_model, target=target)(x)
    x0 = x[0].astype(np.float64)
    grads = np.zeros_like(x0)
    eps = 1e-5
    for idx in np.ndindex(x0.shape):
        hi, lo = x0.copy(), x0.copy()
        hi[idx] += eps
        lo[idx] -= eps
        grads[idx] = (bins_forward(bins_model, hi)[list(bins)].sum()
                      - bins_forward(bins_model, lo)[list(bins)].sum()) / (2 * eps)
    expected = np.abs(grads).max(axis=-1)
    assert result.map.shape == (9, 11) and expected.max() > 0
    np.testing.assert_allclose(result.map, expected, rtol=2e-3, atol=1e-3 * expected.max())


def test_saliency_of_a_layer_target_is_the_gradient_of_its_mean(bins_model):
    x = tiny_input(bins_model, 8)
    result = explain.make_explainer("saliency", bins_model, target="layer", layer="c1")(x)
    c1 = weights_of(bins_model.get_layer("c1"))
    x0 = x[0].astype(np.float64)
    z = conv2d(x0, c1[0], c1[1], padding="same")
    # d mean(relu(z)) / dx = conv backward of (z > 0) / size, with 'same' padding of 1
    g = (z > 0) / z.size
    padded = conv2d_backward(g, c1[0], (11, 13))
    expected = np.abs(padded[1:-1, 1:-1]).max(-1)
    np.testing.assert_allclose(result.map, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_smoothgrad_is_one_batched_call_averaging_noisy_gradients(bins_model):
    x = tiny_input(bins_model, 9)
    n, sigma, seed = 6, 0.15, 42
    smooth = explain.make_explainer("saliency", bins_model, target="left",
                                    smoothgrad=(n, sigma), seed=seed)
    calls = []
    run = smooth._forward
    smooth._forward = lambda batch: calls.append(batch.shape) or run(batch)
    result = smooth(x)
    assert calls == [(n + 1, 9, 11, 3)]
    # The same noise, one copy at a time through the plain saliency explainer.
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n,) + x.shape[1:], dtype=np.float32)
    span = float(x.max() - x.min())
    plain = explain.make_explainer("saliency", bins_model, target="left")
    grads = [plain(x + noise[i:i + 1] * np.float32(sigma * span)).outputs["@grad:input"][0]
             for i in range(n)]
    expected = np.abs(np.stack(grads)).mean(0).max(-1)
    np.testing.assert_allclose(result.map, expected, rtol=1e-4, atol=1e-6 * expected.max())
    # The prediction is the clean frame's.
    np.testing.assert_allclose(result.prediction, plain(x).prediction, rtol=1e-5)


# --------------------------------------------------------------------------- guided


def guided_reference(model, x: np.ndarray, sign: float) -> np.ndarray:
    """Guided backpropagation by hand: at every ReLU, pass g only where g > 0 and z > 0."""
    k1, b1 = weights_of(model.get_layer("c1"))
    k2, b2 = weights_of(model.get_layer("c2"))
    w3, b3 = weights_of(model.get_layer("d1"))
    w4, _ = weights_of(model.get_layer("steer"))
    z1 = conv2d(x, k1, b1)
    a1 = np.maximum(z1, 0)
    z2 = conv2d(a1, k2, b2, stride=2)
    a2 = np.maximum(z2, 0)
    z3 = a2.reshape(-1) @ w3 + b3

    def guide(g: np.ndarray, z: np.ndarray) -> np.ndarray:
        return g * (g > 0) * (z > 0)

    g = guide(w4[:, 0] * sign, z3)
    g = guide((w3 @ g).reshape(z2.shape), z2)
    g = guide(conv2d_backward(g, k2, z1.shape[:2], stride=2), z1)
    g = conv2d_backward(g, k1, x.shape[:2])
    return np.abs(g).max(-1)


@pytest.mark.parametrize("target,sign", [("right", 1.0), ("left", -1.0)])
def test_guided_backprop_matches_manual_backward_pass(regression_model, target, sign):
    x = tiny_input(regression_model, 10)
    expected = guided_reference(regression_model, x[0].astype(np.float64), sign)
    got = explain.make_explainer("guided", regression_model, target=target)(x).map
    assert expected.max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * expected.max())
    plain = explain.make_explainer("saliency", regression_model, target=target)(x).map
    assert not np.allclose(plain, got, rtol=0.05), "guided must differ from plain gradients"


def test_guided_leaves_the_users_model_untouched(regression_model):
    layers = list(regression_model.layers)
    before = [w.copy() for w in regression_model.get_weights()]
    x = tiny_input(regression_model, 11)
    y0 = np.asarray(regression_model(x))
    explain.make_explainer("guided", regression_model)(x)
    assert list(regression_model.layers) == layers
    assert regression_model.get_layer("c1").get_config()["activation"] == "relu"
    for a, b in zip(before, regression_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(regression_model(x)), y0)
    models.truncated_model(regression_model, "c2")  # each layer still has one output


def test_guided_gradcam_is_the_product(regression_model):
    x = tiny_input(regression_model, 12)
    gg = explain.make_explainer("guided-gradcam", regression_model, layer="c2",
                                target="right")(x).map
    guided = explain.make_explainer("guided", regression_model, target="right")(x).map
    cam = explain.make_explainer("gradcam", regression_model, layer="c2", target="right")(x).map
    up = cv2.resize(cam, (10, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(gg, guided * up, rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------- CAM


@pytest.mark.parametrize("target", ["left", "right", "straight", "predicted"])
def test_cam_weights_the_last_map_by_the_dense_columns(gap_model, target):
    x = tiny_input(gap_model, 13)
    result = explain.make_explainer("cam", gap_model, target=target)(x)
    a = sub_output(gap_model, x, "last")
    kernel = weights_of(gap_model.get_layer("bins"))[0]
    cols = {"left": [0, 1], "straight": [2], "right": [3, 4],
            "predicted": [int(np.argmax(result.prediction))]}[target]
    expected = a @ kernel[:, cols].sum(1)
    np.testing.assert_allclose(result.map, expected, rtol=1e-4, atol=1e-6)


def test_cam_refuses_the_axionaut_head(axionaut_model_path):
    model = models.load_model(axionaut_model_path)
    with pytest.raises(CarvisError) as info:
        explain.make_explainer("cam", model)
    text = str(info.value)
    assert "\n" not in text
    assert "GlobalAveragePooling2D" in text and "--mode gradcam" in text


# --------------------------------------------------------------------------- targets


def test_side_bins_bin_zero_is_hard_left():
    assert explain.side_bins(5) == {"left": (0, 1), "straight": (2,), "right": (3, 4)}
    assert explain.side_bins(3) == {"left": (0,), "straight": (1,), "right": (2,)}
    assert explain.side_bins(4) == {"left": (0, 1), "straight": (1, 2), "right": (2, 3)}
    assert explain.side_bins(15)["straight"] == (7,)


def test_target_scores_and_signs():
    import tensorflow as tf

    bins = explain.SteeringHead(0, "out", 5, True)
    reg = explain.SteeringHead(0, "out", 1, False)
    p = tf.constant([[0.1, 0.2, 0.3, 0.15, 0.25]])
    scores = {name: float(explain.make_target(name, bins)(p)[0])
              for name in ("left", "right", "straight", "predicted", "bin:3")}
    assert scores == pytest.approx({"left": 0.3, "right": 0.4, "straight": 0.3,
                                    "predicted": 0.3, "bin:3": 0.15})
    y = tf.constant([[-0.4]])
    assert float(explain.make_target("left", reg)(y)[0]) == pytest.approx(0.4)
    assert float(explain.make_target("right", reg)(y)[0]) == pytest.approx(-0.4)
    assert float(explain.make_target("predicted", reg)(y)[0]) == pytest.approx(0.4)
    course = explain.make_target("course", reg)
    assert float(course(y)[0]) == pytest.approx(-0.4)
    g = np.array([0.5, -0.01, 0.0], np.float32)
    np.testing.assert_allclose(course.modify(g), np.abs(1 / (g + 1e-7)), rtol=1e-6)
    assert explain.make_target("left", reg).coefficients(np.array([0.2])) == [-1.0]
    assert explain.make_target("predicted", reg).coefficients(np.array([-0.2])) == [-1.0]


@pytest.mark.parametrize("spec,head,match", [
    ("straight", explain.SteeringHead(0, "angle", 1, False), "needs steering bins"),
    ("bin:7", explain.SteeringHead(0, "p", 5, True), "out of range"),
    ("upwards", explain.SteeringHead(0, "p", 5, True), "choose one of"),
])
def test_bad_targets_are_one_line_errors(spec, head, match):
    with pytest.raises(CarvisError, match=match) as info:
        explain.make_target(spec, head)
    assert "\n" not in str(info.value)


def test_steering_output_of_a_two_headed_model_is_the_angle(keras):
    L = keras.layers
    x_in = keras.Input((8, 8, 3))
    x = L.Flatten()(L.Conv2D(2, 3, activation="relu")(x_in))
    model = keras.Model(x_in, [L.Dense(1, name="throttle_out")(x),
                               L.Dense(1, name="angle_out")(x)])
    head = explain.steering_head(model)
    assert (head.index, head.layer, head.kind) == (1, "angle_out", "regression")
    result = explain.make_explainer("saliency", model, target="left")(tiny_input(model))
    assert result.prediction.shape == (1,) and np.isfinite(result.map).all()


def test_a_gradient_mode_refuses_a_forward_without_gradients(bins_model):
    with pytest.raises(CarvisError, match="needs gradients.*--backend tensorflow") as info:
        explain.make_explainer("gradcam", bins_model, forward=lambda b: {})
    assert "\n" not in str(info.value)


def test_smoothgrad_only_for_saliency_and_guided(bins_model):
    with pytest.raises(CarvisError, match="smoothgrad applies to saliency and guided"):
        explain.make_explainer("gradcam", bins_model, smoothgrad=(4, 0.1))


# --------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def axionaut(axionaut_model_path):
    return models.load_model(axionaut_model_path)


@pytest.fixture(scope="module")
def axionaut_input(axionaut_frames):
    frame = cv2.imread(str(axionaut_frames / "frame3556.jpg"))
    return seed_reference.preprocess(frame).astype(np.float32)[None]


@pytest.mark.parametrize("mode,kwargs,shape", [
    ("activation", {"layer": "maxpooling2d_2", "channel": 1}, (17, 62)),
    ("vbp", {}, (70, 250)),
    ("gradcam", {"layer": "convolution2d_3", "target": "left"}, (17, 62)),
    ("saliency", {"target": "right"}, (70, 250)),
    ("saliency", {"target": "layer", "layer": "conv:3", "smoothgrad": (4, 0.1)}, (70, 250)),
    ("guided", {"target": "straight"}, (70, 250)),
    ("guided-gradcam", {"layer": "convolution2d_4"}, (70, 250)),
])
def test_each_mode_runs_on_the_real_axionaut_model(axionaut, axionaut_input, axionaut_model_path,
                                                   mode, kwargs, shape):
    weights = seed_reference.load_weights(axionaut_model_path)
    result = explain.make_explainer(mode, axionaut, **kwargs)(axionaut_input)
    assert result.map.shape == shape and result.map.dtype == np.float32
    assert np.isfinite(result.map).all() and result.map.std() > 0
    np.testing.assert_allclose(result.prediction,
                               seed_reference.predict(weights, axionaut_input[0]), atol=1e-5)


def test_activation_mode_is_the_seed_map(axionaut, axionaut_input, axionaut_model_path):
    weights = seed_reference.load_weights(axionaut_model_path)
    ref = seed_reference.maxpooling2d_2(weights, axionaut_input[0])[:, :, 1]
    got = explain.make_explainer("activation", axionaut, layer="maxpooling2d_2",
                                 channel=1)(axionaut_input).map
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def mask_flicker(maps: list[np.ndarray], normalizer: ov.MapNormalizer,
                 size: tuple[int, int] = (1800, 480), threshold: float = 80) -> float:
    """Mean fraction of mask pixels that flip between consecutive frames."""
    prev, changes = None, []
    for amap in maps:
        mask = ov.threshold_mask(ov.upsample(normalizer(amap), size), threshold)
        if prev is not None:
            changes.append(float(np.mean(mask != prev)))
        prev = mask
    return float(np.mean(changes))


@pytest.mark.slow
def test_smoothing_steadies_the_mask_on_the_race_clip(axionaut, race_clip):
    from conftest import REPO

    from carvis import profile as prof
    from carvis.preprocess import Preprocessor

    profile = prof.load(REPO / "models" / "axionaut.yaml")
    pre = Preprocessor(profile, (250, 70), 3)
    act = explain.make_explainer("activation", axionaut, layer=profile.layer,
                                 channel=profile.channel)
    cap = cv2.VideoCapture(str(race_clip))
    maps = []
    while len(maps) < 60:
        ok, frame = cap.read()
        assert ok, "the race clip has at least 60 frames"
        maps.append(act(pre(pre.roi(frame))).map)
    cap.release()
    minmax = mask_flicker(maps, ov.MapNormalizer("minmax"))
    running = mask_flicker(maps, ov.MapNormalizer("running", decay=0.98))
    ema = mask_flicker(maps, ov.MapNormalizer("minmax", ema=0.7))
    both = mask_flicker(maps, ov.MapNormalizer("running", decay=0.98, ema=0.7))
    assert minmax > 0.005, "the clip moves: the per-frame mask changes"
    assert ema < 0.8 * minmax
    assert both < 0.8 * minmax
    assert running < minmax
