"""Transfer learning: a `keras.applications` network as the base of an image model.

The backbone takes the raw image (0-255 pixels); each family's own input preprocessing
is rebuilt from built-in Keras layers, so the saved model still loads with
`safe_mode=True`. Weights come from a local file, or from ImageNet when the machine
can download them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from kerasflow.config import BackboneParams, ConfigError
from kerasflow.errors import ExpectedError

# How each supported backbone wants its RGB input (keras.applications' `preprocess_input` modes):
# tf scales to [-1, 1]; torch to [0, 1] then ImageNet mean / std; "included" models rescale inside.
PREPROCESSING = {
    "MobileNet": "tf",
    "MobileNetV2": "tf",
    "NASNetMobile": "tf",
    "Xception": "tf",
    "InceptionV3": "tf",
    "InceptionResNetV2": "tf",
    "ResNet50V2": "tf",
    "ResNet101V2": "tf",
    "DenseNet121": "torch",
    "DenseNet169": "torch",
    "MobileNetV3Small": "included",
    "MobileNetV3Large": "included",
    "EfficientNetB0": "included",
    "EfficientNetB1": "included",
    "EfficientNetV2B0": "included",
    "ConvNeXtTiny": "included",
}
MIN_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/"


class BackboneWeightsError(ExpectedError, RuntimeError):
    """The backbone's weights could not be loaded; `transient` when a download may work on a retry."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _preprocessing(mode: str, tensor: Any) -> Any:
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="backbone_scaling")(tensor)
    if mode == "torch":
        tensor = keras.layers.Rescaling(1 / 255.0, name="backbone_scaling")(tensor)
        variance = [value**2 for value in IMAGENET_STD]
        return keras.layers.Normalization(mean=IMAGENET_MEAN, variance=variance, name="backbone_normalization")(tensor)
    return tensor


def make_backbone(spec: BackboneParams, input_shape: tuple[int, int, int]) -> keras.Model:
    """The backbone without its classifier, pooled to one vector per image, frozen unless `trainable`."""
    if spec.name not in PREPROCESSING:
        raise ConfigError(
            f"model.backbone.name: {spec.name!r} is not supported; expected one of {sorted(PREPROCESSING)}"
        )
    weights = spec.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ConfigError(f"model.backbone.weights: {weights}: file not found (a .weights.h5 file, 'imagenet' or null)")
    factory = getattr(keras.applications, spec.name)
    try:
        base = factory(
            include_top=False, weights=weights, input_shape=input_shape, pooling=spec.pooling, name="backbone"
        )
    except ValueError as error:
        raise ConfigError(f"model.backbone: {spec.name} with weights {weights!r}: {error}") from None
    except Exception as error:  # Keras raises URLError, OSError or a bare Exception when a download fails.
        if weights == "imagenet":
            raise BackboneWeightsError(
                f"model.backbone: could not download the ImageNet weights of {spec.name} from {WEIGHTS_ORIGIN} "
                f"({error}). Download the no-top weights file where there is network and set "
                "model.backbone.weights to its local path.",
                transient=True,
            ) from error
        raise BackboneWeightsError(f"model.backbone.weights: {weights}: could not be loaded: {error}") from error
    base.trainable = spec.trainable
    return base


def backbone_features(spec: BackboneParams, image: Any) -> Any:
    """Raw images through the backbone's own preprocessing and the backbone; one feature vector per image."""
    height, width, channels = (int(size) for size in image.shape[1:])
    tensor = image
    if channels == 1:
        tensor = keras.layers.Concatenate(name="grayscale_to_rgb")([tensor, tensor, tensor])
    elif channels != 3:
        raise ConfigError(f"model.backbone: images have {channels} channels; a backbone takes 1 (grayscale) or 3 (RGB)")
    if min(height, width) < MIN_SIZE:
        height, width = max(height, MIN_SIZE), max(width, MIN_SIZE)
        tensor = keras.layers.Resizing(height, width, name="backbone_resizing")(tensor)
    tensor = _preprocessing(PREPROCESSING[spec.name], tensor)
    base = make_backbone(spec, (height, width, 3))
    # Frozen-then-fine-tuned backbones keep BatchNormalization in inference mode (the Keras transfer-learning guide).
    return base(tensor, training=False)


def unfreeze(model: keras.Model, last_layers: int | None) -> int:
    """Make the backbone (or its last `last_layers` layers, BatchNormalization excepted) trainable;
    return how many layers now train."""
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise ConfigError("train.fine_tune.epochs needs a model.backbone to fine-tune") from None
    backbone.trainable = True
    layers = backbone.layers
    first = len(layers) - last_layers if last_layers else 0
    for position, layer in enumerate(layers):
        # BatchNormalization stays frozen: Keras 3 runs an unfrozen one on batch statistics inside fit even
        # where the backbone was called with training=False (keras-team/keras#20285).
        layer.trainable = position >= first and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in layers if layer.trainable and layer.weights)
