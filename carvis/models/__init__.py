"""Car models: load any Keras 1/2/3 file as a Keras 3 functional model, list and pick layers.

``files`` tells what a file is, ``load`` loads it (``legacy`` rebuilds what Keras 3 refuses),
``layers`` is the layer table of a loaded model and ``config_table`` the same table read from
the file alone, without TensorFlow.
"""

from carvis.models.config_table import format_layer_table_from_file, layer_table_from_file
from carvis.models.files import is_tflite
from carvis.models.layers import (
    LayerInfo,
    format_layer_table,
    format_rows,
    image_input,
    layer_info,
    layer_table,
    resolve_layer,
    truncated_model,
)
from carvis.models.load import LAMBDA_POLICIES, load_model

__all__ = [
    "LAMBDA_POLICIES",
    "LayerInfo",
    "format_layer_table",
    "format_layer_table_from_file",
    "format_rows",
    "image_input",
    "is_tflite",
    "layer_info",
    "layer_table",
    "layer_table_from_file",
    "load_model",
    "resolve_layer",
    "truncated_model",
]
