"""`carvis layers`, `inspect` and `export`: one model, one frame, one file for the car."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from carvis.cli.common import add_backend_args
from carvis.errors import CarvisError


def add_inspect(sub: Any) -> None:
    """The `inspect` subcommand's flags."""
    ins = sub.add_parser("inspect", help="one frame: a layer's channels as a grid + the first "
                         "layer's filters, as a PNG",
                         description="All channels of a layer for one frame, tiled with labels, "
                         "and the first conv layer's filters as images below.")
    ins.add_argument("model", help="model file (.h5, .keras, or a .tflite: its one layer)")
    ins.add_argument("frame", help="an image file (JPEG, PNG) from the car's camera, or a "
                     "video, tub or folder with --frame N")
    ins.add_argument("--frame", dest="position", metavar="N", help="which frame of a video, "
                     "tub or folder: an index (120) or a time (12.5s)")
    ins.add_argument("-o", "--output", required=True, help="OUT.png (or .jpg)")
    ins.add_argument("--profile", "-p", help="YAML profile for the preprocessing and the layer "
                     "(default: a generic one)")
    ins.add_argument("--layer", "-l", help="layer: a name, an index, or conv:N")
    ins.add_argument("--colormap", help="OpenCV colormap name (default: the profile's)")
    add_backend_args(ins)


def add_layers(sub: Any) -> None:
    """The `layers` subcommand's flags."""
    la = sub.add_parser("layers", help="list a model's layers (conv layers marked)",
                        description="Index, name, type and output shape of every layer, with "
                        "conv:N marked: what --layer takes. A .h5 needs no TensorFlow (its "
                        "config is read with h5py); a .tflite shows what it holds.")
    la.add_argument("model", help="model file (.h5, .keras, .onnx, or a .tflite: carvis' "
                    "export or a car's own model file)")
    add_backend_args(la, backend=False)


def add_export(sub: Any) -> None:
    """The `export` subcommand's flags."""
    ex = sub.add_parser("export", help="write what the car needs as one .tflite (LiteRT)",
                        description="Layers, and what the HUD, vbp and cam need, in one .tflite "
                        "that carvis runs on LiteRT without TensorFlow (gradient modes: no).")
    ex.add_argument("model", help="model file (.h5 from Keras 1/2/3, .keras)")
    ex.add_argument("-o", "--output", required=True, help="OUT.tflite")
    ex.add_argument("--profile", "-p", help="take the layer from this YAML profile")
    ex.add_argument("--layer", "-l", help="layer: a name, an index, or conv:N (wins over the "
                    "profile's)")
    ex.add_argument("--layers", help="more layers, comma-separated: conv:1,conv:2,pool_2")
    ex.add_argument("--all-conv", action="store_true", help="every spatial conv layer")
    ex.add_argument("--with", dest="modes", metavar="hud,vbp,cam", help="what these need: the "
                    "steering output, VisualBackProp's path, CAM's Dense weights")
    ex.add_argument("--car", action="store_true", help="every conv layer, hud, vbp, and cam "
                    "if the head allows")
    add_backend_args(ex, backend=False)


def cmd_layers(args: argparse.Namespace) -> int:
    from carvis import models
    from carvis.backends import litert, tensorflow_available

    if models.is_tflite(args.model):
        print(litert.describe(args.model))
        return 0
    if str(args.model).lower().endswith(".onnx"):
        from carvis.backends import onnx

        print(onnx.describe_file(args.model))
        return 0
    # The file's own config is JSON: h5py alone reads the table, in a fraction of a second,
    # with or without TensorFlow installed (importing it took 4.3 s); a file whose config
    # the table cannot read is loaded where TensorFlow is.
    try:
        print(models.format_layer_table_from_file(args.model))
        return 0
    except CarvisError:
        if not tensorflow_available():
            raise
    model = models.load_model(args.model, lambda_policy=args.lambda_policy)
    print(models.format_layer_table(model))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from carvis import profile as prof
    from carvis.explain.export import export_flags

    layer = args.layer or (prof.load(args.profile).layer if args.profile else None)
    meta, diff = export_flags(args.model, args.output, layer, args.layers, args.modes,
                              args.all_conv, args.car, args.lambda_policy)
    check = f"; max |LiteRT - TensorFlow| = {diff:.1e} on a test input" if diff is not None else ""
    print(f"carvis: wrote {args.output}: {meta.describe()}{check}", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from carvis import inspection
    from carvis import profile as prof
    from carvis.session import ModelSession

    inspection.check_output(args.output)  # before the model's seconds of loading
    p = prof.load(args.profile) if args.profile else prof.generic()
    p = p.replace(layer=args.layer, colormap=args.colormap)
    frame = inspection.load_frame(args.frame, args.position)
    session = ModelSession(args.model, backend=args.backend, lambda_policy=args.lambda_policy)
    image = inspection.inspect_frame(session, frame, p)
    inspection.write_png(args.output, image)
    print(f"carvis: wrote {args.output} ({image.shape[1]}x{image.shape[0]})", file=sys.stderr)
    return 0
