"""Make the small ONNX pilots the tests use (tests/data/*.onnx), the ways users make them.

    # PyTorch-trained pilots, exported by torch.onnx.export (a venv of its own with torch):
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 onnx numpy
    /tmp/torchenv/bin/python scripts/make_onnx_pilots.py torch tests/data
    # Keras pilots converted by tf2onnx (a venv of its own with tf2onnx, TensorFlow, tf-keras):
    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 \
        tf-keras==2.21.0 tf2onnx==1.17.0 h5py
    /tmp/tfenv/bin/python scripts/make_onnx_pilots.py keras tests/data

torch:
- ``pilotnet.onnx``: NVIDIA's PilotNet (DAVE-2) as PyTorch writes it, NCHW 3x66x200, five
  convolutions with ELU, a max-pool-free head of four Linear layers, one steering value.
- ``resnet18_donkey.onnx``: DonkeyCar's own PyTorch pilot (donkeycar/parts/pytorch/ResNet18.py:
  torchvision's resnet18 with ``fc = Linear(512, 2)``, angle and throttle in one (2,) output), at
  DonkeyCar's camera size 3x120x160. torchvision's layout written out here (its PyPI wheel does
  not import beside the local torch build); every width divided by 8 (8..64 channels instead of
  64..512) so the file is 0.7 MB, not 45 MB: the same ops, kernels, strides, pads and residual
  adds. Untrained, seeded.

keras (tests/model_factory.py's models, Keras 2 files as DonkeyCar saves them, seeded weights):
- ``donkey_categorical.onnx``: DonkeyCar's KerasCategorical (15 angle + 20 throttle bins),
  converted from the .tflite DonkeyCar writes beside the .h5 (``python -m tf2onnx.convert
  --tflite``): the outputs lose their names.
- ``gap_pilot.onnx``: a pilot with 'same' padding, a max pool and a GAP → Dense softmax head.

The tests rebuild the Keras models from the same seed to compare carvis on the .onnx with
carvis on the .h5 (TensorFlow, LiteRT).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SEED = 22
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- PyTorch


def _torch_models() -> dict:
    import torch
    from torch import nn

    class PilotNet(nn.Module):
        """DAVE-2: 5 convs (ELU), flatten, 100-50-10-1."""

        def __init__(self) -> None:
            super().__init__()
            convs = [(3, 24, 5, 2), (24, 36, 5, 2), (36, 48, 5, 2), (48, 64, 3, 1),
                     (64, 64, 3, 1)]
            layers: list[nn.Module] = []
            for cin, cout, k, s in convs:
                layers += [nn.Conv2d(cin, cout, k, stride=s), nn.ELU()]
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 1 * 18, 100), nn.ELU(),
                                      nn.Linear(100, 50), nn.ELU(), nn.Linear(50, 10), nn.ELU(),
                                      nn.Linear(10, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    class BasicBlock(nn.Module):
        """torchvision.models.resnet.BasicBlock."""

        def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride,
                                                          bias=False), nn.BatchNorm2d(planes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        """torchvision.models.resnet18 (layers [2, 2, 2, 2]) with DonkeyCar's fc: 2 outputs."""

        def __init__(self, width: int = 8) -> None:
            super().__init__()
            planes = [64 // width, 128 // width, 256 // width, 512 // width]
            self.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(planes[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes, stages = planes[0], []
            for i, p in enumerate(planes):
                stride = 1 if i == 0 else 2
                stages.append(nn.Sequential(BasicBlock(inplanes, p, stride), BasicBlock(p, p)))
                inplanes = p
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(planes[3], 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return {"pilotnet": (PilotNet, (1, 3, 66, 200)),
            "resnet18_donkey": (ResNet18, (1, 3, 120, 160))}


def make_torch(out: Path) -> None:
    """Export the PyTorch pilots with torch.onnx.export (dynamic batch, eval mode)."""
    import torch

    for name, (cls, shape) in _torch_models().items():
        torch.manual_seed(SEED)
        model = cls().eval()
        with torch.no_grad():  # BatchNorm statistics drawn too: a dropped BN would show
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
        path = out / f"{name}.onnx"
        torch.onnx.export(model, (torch.rand(shape),), str(path), input_names=["image"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}})
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


# --------------------------------------------------------------------------- Keras


def keras_pilot(name: str, folder: Path) -> Path:
    """A Keras 2 pilot of tests/model_factory.py saved as DonkeyCar saves it (.h5), its kernels
    drawn from a seeded numpy generator (Keras' initializers are not seeded): the tests build
    the same file again to compare carvis on the .onnx with carvis on the .h5."""
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    import model_factory

    makers = {"donkey_categorical": model_factory.donkey_categorical,
              "gap_pilot": model_factory.gap_pilot}
    path = makers[name](folder, np.random.default_rng(SEED))
    model = model_factory._tf_keras().models.load_model(path, compile=False)
    rng = np.random.default_rng(SEED)
    weights = []
    for w in model.get_weights():
        if w.ndim >= 2:  # kernels: Glorot-uniform's range, drawn here
            fan_in, fan_out = np.prod(w.shape[:-1]), w.shape[-1]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, w.shape).astype(np.float32)
        weights.append(w)
    model.set_weights(weights)
    model_factory._save(model, path)
    return path


def make_keras(out: Path) -> None:
    """The Keras pilots converted by tf2onnx: DonkeyCar's categorical from the .tflite
    DonkeyCar's training writes beside the .h5, the GAP pilot from a SavedModel."""
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    import model_factory

    tmp = Path(tempfile.mkdtemp(prefix="onnx-pilots-"))
    tflite = model_factory.to_tflite(keras_pilot("donkey_categorical", tmp))
    _tf2onnx(["--tflite", str(tflite)], out / "donkey_categorical.onnx")
    saved = tmp / "gap_saved"
    model = model_factory._tf_keras().models.load_model(keras_pilot("gap_pilot", tmp),
                                                         compile=False)
    model.export(str(saved))
    _tf2onnx(["--saved-model", str(saved)], out / "gap_pilot.onnx")


def _tf2onnx(source: list[str], path: Path) -> None:
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", *source, "--opset", "17",
                    "--output", str(path)], check=True, capture_output=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("torch", "keras"):
        sys.exit(__doc__.split("\n\n")[1])
    target = Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    {"torch": make_torch, "keras": make_keras}[sys.argv[1]](target)
