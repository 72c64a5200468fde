"""Build model: the `model` section of params.yaml to a compiled `keras.Model`.

Sequential specs apply the layers in order; Functional specs wire layers by name
(`inputs: [input]`, `inputs: [branch_a, branch_b]`). The output layer is added from
the data (classes, task), and the scaling fitted in preprocess becomes the first
layer, so the model takes raw values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from kerasflow.config import LAYER_TYPES, ConfigError, LayerSpec, ModelParams

OPTIMIZER_CLASSES = {
    "sgd": keras.optimizers.SGD,
    "adam": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "adagrad": keras.optimizers.Adagrad,
    "adadelta": keras.optimizers.Adadelta,
}


@dataclass(frozen=True)
class DataSpec:
    """What the model needs to know about its data (from the preprocessing state)."""

    input_shape: tuple[int, ...]
    task: str
    n_classes: int = 0
    scaling: dict[str, Any] | None = None

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DataSpec:
        classes = state.get("classes") or []
        return cls(tuple(state["input_shape"]), state["task"], len(classes), state.get("scaling"))

    @property
    def output_units(self) -> int:
        return self.n_classes if self.task == "classification" and self.n_classes > 2 else 1


def checked(getter: Any, name: str, key: str) -> str:
    """`name` if Keras knows it (a loss, an activation), else a ConfigError naming `key`."""
    try:
        getter(name)
    except (ValueError, TypeError):
        raise ConfigError(f"{key}: Keras does not know {name!r}") from None
    return name


def output_activation(spec: ModelParams, data: DataSpec) -> str:
    if spec.output_activation != "auto":
        return checked(keras.activations.get, spec.output_activation, "model.output_activation")
    if data.task != "classification":
        return "linear"
    return "softmax" if data.output_units > 1 else "sigmoid"


def default_loss(data: DataSpec) -> str:
    if data.task != "classification":
        return "mean_squared_error"
    return "sparse_categorical_crossentropy" if data.output_units > 1 else "binary_crossentropy"


def default_metrics(data: DataSpec) -> list[Any]:
    if data.task != "classification":
        return [keras.metrics.RootMeanSquaredError(name="rmse"), keras.metrics.MeanAbsoluteError(name="mae")]
    return ["accuracy"]


def check_loss(spec: ModelParams, data: DataSpec) -> str:
    """The loss to compile with; one that cannot fit the labels is a ConfigError naming both."""
    if spec.loss == "auto":
        return default_loss(data)
    loss = checked(keras.losses.get, spec.loss, "model.loss")
    if data.task == "classification" and data.output_units > 1 and "binary" in spec.loss:
        raise ConfigError(f"model.loss {spec.loss!r} needs 2 classes, but the data has {data.n_classes}")
    if data.task == "classification" and data.output_units == 1 and "categorical" in spec.loss:
        raise ConfigError(f"model.loss {spec.loss!r} needs 3 or more classes; the data has 2 (use binary_crossentropy)")
    if data.task == "regression" and "crossentropy" in spec.loss:
        raise ConfigError(f"model.loss {spec.loss!r} is for classification, but the target is a regression target")
    return loss


def make_optimizer(spec: ModelParams) -> keras.optimizers.Optimizer:
    options = spec.optimizer
    arguments: dict[str, Any] = {"learning_rate": options.learning_rate}
    if options.name == "sgd":
        arguments.update(momentum=options.momentum, nesterov=options.nesterov)
    elif options.name == "rmsprop":
        arguments["momentum"] = options.momentum
    return OPTIMIZER_CLASSES[options.name](**arguments)


def make_layer(layer: LayerSpec, position: str) -> keras.layers.Layer:
    """One Keras layer from its spec; bad arguments raise ConfigError naming the layer."""
    arguments = layer.arguments
    if layer.l1 or layer.l2:
        arguments["kernel_regularizer"] = keras.regularizers.L1L2(l1=layer.l1, l2=layer.l2)
    if layer.name:
        arguments["name"] = layer.name
    try:
        if layer.type == "bidirectional":
            inner = arguments.pop("layer", None)
            if not isinstance(inner, dict):
                raise ValueError("bidirectional needs `layer: {type: lstm, units: ...}`")
            arguments["layer"] = make_layer(LayerSpec(**inner), f"{position}.layer")
        return getattr(keras.layers, LAYER_TYPES[layer.type])(**arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{position} ({layer.type}): {error}") from None


def scaling_layer(scaling: dict[str, Any] | None, input_shape: tuple[int, ...]) -> keras.layers.Layer | None:
    if not scaling or scaling["kind"] == "none":
        return None
    if scaling["kind"] == "max":
        return keras.layers.Rescaling(scaling["scale"], name="scaling")
    mean = np.asarray(scaling["mean"], dtype="float32").reshape(input_shape)
    variance = np.asarray(scaling["variance"], dtype="float32").reshape(input_shape)
    # One mean and variance per input position (per column, or per pixel).
    axes = tuple(range(1, len(input_shape) + 1))
    return keras.layers.Normalization(axis=axes, mean=mean, variance=variance, name="scaling")


def build_model(spec: ModelParams, data: DataSpec, jit_compile: bool | str = "auto") -> keras.Model:
    """Build and compile the model described by `spec` for data shaped like `data`.

    Call it under a distribution strategy's scope to build a replicated model; `jit_compile`
    is passed to `compile` (Keras' "auto" turns XLA on where the model supports it).
    """
    if not spec.layers:
        raise ConfigError("model.layers: at least one layer is required (e.g. {type: dense, units: 64})")
    layers = [make_layer(layer, f"model.layers[{index}]") for index, layer in enumerate(spec.layers)]
    scaler = scaling_layer(data.scaling, data.input_shape)
    head = keras.layers.Dense(
        data.output_units, activation=output_activation(spec, data), dtype="float32", name="output"
    )

    # Wire the graph symbolically first, so a shape error names the layer that caused it.
    inputs = keras.Input(shape=data.input_shape, name="input")
    tensors: dict[str, Any] = {"input": scaler(inputs) if scaler else inputs}
    current = tensors["input"]
    for index, (layer_spec, layer) in enumerate(zip(spec.layers, layers, strict=True)):
        sources = [tensors[name] for name in layer_spec.inputs or []] or [current]
        try:
            current = layer(sources if len(sources) > 1 else sources[0])
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model.layers[{index}] ({layer_spec.type}): {error}") from None
        if layer_spec.name:
            tensors[layer_spec.name] = current
    if len(current.shape) != 2:
        raise ConfigError(
            f"model.layers: the last layer outputs shape {tuple(current.shape)}; add a flatten or global "
            "pooling layer so the output layer gets one vector per example"
        )
    outputs = head(current)

    name = f"kerasflow_{spec.api}"
    if spec.api == "sequential":
        stack = [scaler, *layers, head] if scaler else [*layers, head]
        model: keras.Model = keras.Sequential([keras.Input(shape=data.input_shape, name="input"), *stack], name=name)
    else:
        model = keras.Model(inputs, outputs, name=name)
    model.compile(
        optimizer=make_optimizer(spec),
        loss=check_loss(spec, data),
        metrics=default_metrics(data),
        jit_compile=jit_compile,
    )
    return model
