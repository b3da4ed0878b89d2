"""Profiles: the shipped ones parse; every bad value is one line naming key, value, range."""

from __future__ import annotations

import pytest

from carvis import layerspec
from carvis import profile as prof
from carvis.errors import CarvisError


def test_axionaut_profile_is_the_seed():
    p = prof.load(prof.MODELS_DIR / "axionaut.yaml")
    assert p.crop.pixels(1080, 1920) == (600, 1080, 0, 1800)
    assert (p.input_size, p.interpolation, p.smooth) == ((250, 70), "lanczos", 2)
    assert (p.color, p.scale, p.offset) == ("bgr", 1.0, 0.0)
    assert (p.layer, p.channel, p.normalize) == ("maxpooling2d_2", 1, "minmax")
    assert (p.threshold, p.colormap, p.output) == (80, "inferno", "roi")


def test_fraction_crop_adapts_to_frame_size():
    p = prof.parse({"preprocess": {"crop": {"top": 0.5}}})
    assert p.crop.pixels(480, 640) == (240, 480, 0, 640)
    assert p.crop.pixels(1080, 1920) == (540, 1080, 0, 1920)


def test_crop_outside_frame_is_one_line():
    p = prof.load(prof.MODELS_DIR / "axionaut.yaml")
    with pytest.raises(CarvisError) as e:
        p.crop.pixels(480, 640)
    msg = str(e.value)
    assert "\n" not in msg and "600:1080" in msg and "640x480" in msg


@pytest.mark.parametrize("data, words", [
    ({"threshold": 300}, ["threshold", "300", "0..255"]),
    ({"threshold": "high"}, ["threshold", "'high'", "number"]),
    ({"colormap": "rainbowz"}, ["colormap", "rainbowz", "inferno"]),
    ({"preprocess": {"interpolation": "bilinear"}}, ["interpolation", "bilinear", "lanczos"]),
    ({"preprocess": {"color": "hsv"}}, ["color", "hsv", "bgr"]),
    ({"preprocess": {"smooth": -1}}, ["smooth", "-1", "0..31"]),
    ({"preprocess": {"input_size": [250]}}, ["input_size", "[250]", "width, height"]),
    ({"preprocess": {"crop": {"top": 1.5}}}, ["crop.top", "1.5", "fraction"]),
    ({"preprocess": {"crop": {"middle": 3}}}, ["crop.middle", "top, bottom"]),
    ({"output": "window"}, ["output", "window", "roi, frame"]),
    ({"normalize": "zscore"}, ["normalize", "zscore", "minmax"]),
    ({"normalize": "fixed"}, ["fixed", "range"]),
    ({"channel": "median"}, ["channel", "median", "mean"]),
    ({"layer": "conv:0"}, ["conv:0", "from 1"]),
    ({"thresh": 3}, ["unknown key 'thresh'", "threshold"]),
    ({"camera": {"rotate": 45}}, ["camera.rotate", "45", "90"]),
])
def test_bad_values_are_one_line(data, words):
    with pytest.raises(CarvisError) as e:
        prof.parse(data, source="car.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("car.yaml")
    for w in words:
        assert w in msg


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("threshold: 80\ncolormap: [inferno\n")
    with pytest.raises(CarvisError, match=r"bad.yaml: line \d"):
        prof.load(bad)


def test_missing_profile_file():
    with pytest.raises(CarvisError, match="profile 'nope.yaml' not found"):
        prof.load("nope.yaml")


def test_model_path_is_relative_to_the_profile(tmp_path):
    f = tmp_path / "car.yaml"
    f.write_text("model: car.h5\n")
    assert prof.load(f).model == tmp_path / "car.h5"


def test_replace_overrides_and_validates():
    p = prof.generic().replace(threshold=120, layer="conv:3", channel="2")
    assert (p.threshold, p.layer, p.channel) == (120, "conv:3", 2)
    with pytest.raises(CarvisError, match="threshold"):
        p.replace(threshold=-5)


@pytest.mark.parametrize("spec, parsed", [("3", 3), ("-1", -1), ("conv:2", "conv:2"),
                                          ("CONV:4", "conv:4"), ("dense_1", "dense_1"), (5, 5)])
def test_layer_specs(spec, parsed):
    assert layerspec.parse(spec) == parsed


def test_conv_n_on_a_model_without_conv_layers_says_so():
    """A dense-only model (a linear pilot) has no conv:N: one line that says what to give."""
    from types import SimpleNamespace

    rows = [SimpleNamespace(name="flatten", is_conv=False),
            SimpleNamespace(name="steering", is_conv=False)]
    with pytest.raises(CarvisError) as err:
        layerspec.find(rows, "conv:2", "linear.onnx")
    assert str(err.value) == ("layer spec 'conv:2': model 'linear.onnx' has no conv layers; "
                              "give --layer a name or index (`carvis layers MODEL` lists them)")
