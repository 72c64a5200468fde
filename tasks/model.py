"""Build model: the `model` section of params.yaml to a compiled `keras.Model`.

Sequential specs apply the layers in order; Functional specs wire layers by name
(`inputs: [input]`, `inputs: [branch_a, branch_b]`). The input preprocessing adapted on the
training split comes first (so the model takes raw values), the output layer last, from the
data (the preprocessing state's task and classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerasflow.config import EPOCH_METRICS_BY_TASK, ConfigError, LayerSpec, ModelParams
from kerasflow.layers import LAYER_TYPES
from kerasflow.model_interface import NUMERIC_INPUT, ModelInputs
from kerasflow.records import PreprocessState
from tasks.backbone import backbone_features
from tasks.features import input_graph


def checked(getter: Any, name: str, key: str) -> str:
    """`name` if Keras knows it (a loss, an activation), else a ConfigError naming `key`."""
    try:
        getter(name)
    except (ValueError, TypeError):
        raise ConfigError(f"{key}: Keras does not know {name!r}") from None
    return name


def output_activation(spec: ModelParams, data: PreprocessState) -> str:
    if spec.output_activation != "auto":
        return checked(keras.activations.get, spec.output_activation, "model.output_activation")
    if data.task != "classification":
        return "linear"
    return "softmax" if data.output_units > 1 else "sigmoid"


def default_loss(data: PreprocessState) -> str:
    if data.task != "classification":
        return "mean_squared_error"
    return "sparse_categorical_crossentropy" if data.output_units > 1 else "binary_crossentropy"


def default_metrics(data: PreprocessState) -> list[Any]:
    """The per-epoch metrics of the task (kerasflow.config.EPOCH_METRICS_BY_TASK), as Keras metrics."""
    made = {
        "accuracy": lambda: "accuracy",
        "rmse": lambda: keras.metrics.RootMeanSquaredError(name="rmse"),
        "mae": lambda: keras.metrics.MeanAbsoluteError(name="mae"),
    }
    return [made[name]() for name in EPOCH_METRICS_BY_TASK[data.task]]


def check_loss(spec: ModelParams, data: PreprocessState) -> str:
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
    if loss == "categorical_crossentropy":
        # The tutorials one-hot the labels for it; the pipeline keeps class indices, for which the same
        # loss is sparse_categorical_crossentropy.
        return "sparse_categorical_crossentropy"
    return loss


def weighted_loss(spec: ModelParams, data: PreprocessState) -> tuple[str, float | None]:
    """The loss, and its weight: a regression's output layer learns in standard deviations; weighting the loss to
    match keeps its gradients (and the logged loss) on that scale for every optimizer, while the metrics stay in
    target units."""
    loss = check_loss(spec, data)
    target = data.fitted.target
    power = 2 if loss in ("mean_squared_error", "mse") else 1 if loss in ("mean_absolute_error", "mae") else 0
    return loss, (1.0 / target.std**power if target and power else None)


def make_optimizer(spec: ModelParams, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    options = spec.optimizer
    arguments: dict[str, Any] = {"learning_rate": learning_rate or options.learning_rate}
    if options.weight_decay:
        arguments["weight_decay"] = options.weight_decay
    if options.name == "sgd":
        arguments.update(momentum=options.momentum, nesterov=options.nesterov)
    elif options.name == "rmsprop":
        arguments["momentum"] = options.momentum
    # Keras' own names (model.optimizer.name is one of OptimizerName, so `get` always finds it).
    return keras.optimizers.get({"class_name": options.name, "config": arguments})


def make_layer(layer: LayerSpec, position: str, vocabulary: int | None = None) -> keras.layers.Layer:
    """One Keras layer from its spec; bad arguments raise ConfigError naming the layer.

    An embedding without `input_dim` gets the size of the adapted vocabulary (`vocabulary`).
    """
    arguments = layer.arguments
    if layer.type == "embedding" and "input_dim" not in arguments:
        if vocabulary is None:
            raise ConfigError(f"{position} (embedding): input_dim is required (the data has no text or categories)")
        arguments["input_dim"] = vocabulary
    if layer.l1 or layer.l2:
        arguments["kernel_regularizer"] = keras.regularizers.L1L2(l1=layer.l1, l2=layer.l2)
    if layer.name:
        arguments["name"] = layer.name
    layer_class = layer_type(layer.type)
    if (layer.l1 or layer.l2) and "kernel_regularizer" not in accepted_arguments(layer_class):
        raise ConfigError(f"{position} ({layer.type}): l1 and l2 penalize a layer's kernel; {layer.type} has none")
    check_arguments(layer_class, arguments, f"{position} ({layer.type})")
    try:
        if layer.type == "bidirectional":
            inner = arguments.pop("layer", None)
            if not isinstance(inner, dict):
                raise ValueError("bidirectional needs `layer: {type: lstm, units: ...}`")
            arguments["layer"] = make_layer(LayerSpec(**inner), f"{position}.layer")
        return layer_class(**arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{position} ({layer.type}): {error}") from None


def layer_type(name: str) -> type:
    """The layer class a params layer type names: Keras' own, or one of kerasflow/model_layers.py."""
    from kerasflow import model_layers

    class_name = LAYER_TYPES[name]
    return getattr(keras.layers, class_name, None) or getattr(model_layers, class_name)


def accepted_arguments(layer_class: type) -> set[str]:
    """The keyword arguments a Keras layer class takes (its own and keras.layers.Layer's)."""
    import inspect

    return {
        name
        for cls in (layer_class, keras.layers.Layer)
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and name != "self"
    }


def check_arguments(layer_class: type, arguments: dict[str, Any], where: str) -> None:
    """An argument the Keras layer does not take is a ConfigError naming it (and the closest one it takes)."""
    import difflib

    known = accepted_arguments(layer_class)
    for name in arguments:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown argument {name!r}{hint}; {layer_class.__name__} takes {sorted(known)}")


def compile_model(
    model: keras.Model,
    spec: ModelParams,
    data: PreprocessState,
    jit_compile: bool | str,
    learning_rate: float | None = None,
) -> keras.Model:
    """Compile with the spec's optimizer (optionally at another learning rate), the loss and the task's metrics."""
    loss, weight = weighted_loss(spec, data)
    model.compile(
        optimizer=make_optimizer(spec, learning_rate),
        loss=loss,
        loss_weights=weight,
        metrics=default_metrics(data),
        jit_compile=jit_compile,
    )
    return model


def check_spec(spec: ModelParams) -> None:
    """Every layer of the spec made once, with no data (an embedding gets a stand-in vocabulary size), and the
    output activation and loss looked up: a bad argument is a ConfigError naming its key before any stage runs."""
    for index, layer in enumerate(spec.augmentation):
        make_layer(layer, f"model.augmentation[{index}]")
    for index, layer in enumerate(spec.layers):
        make_layer(layer, f"model.layers[{index}]", vocabulary=1000)
    if spec.output_activation != "auto":
        checked(keras.activations.get, spec.output_activation, "model.output_activation")
    if spec.loss != "auto":
        checked(keras.losses.get, spec.loss, "model.loss")
    if spec.backbone is not None:
        from tasks.backbone import PREPROCESSING

        if spec.backbone.name not in PREPROCESSING:
            raise ConfigError(
                f"model.backbone.name: {spec.backbone.name!r} is not supported; expected one of {sorted(PREPROCESSING)}"
            )


def build_model(spec: ModelParams, data: PreprocessState, jit_compile: bool | str = "auto") -> keras.Model:
    """Build and compile the model described by `spec` for data shaped like `data`.

    The model starts with its input preprocessing (scaling, imputation, lookups, text
    vectorization), then the augmentation and backbone for images, then the spec's layers
    (in order, or wired by name for a functional spec), then an output layer for the task.
    Call it under a distribution strategy's scope to build a replicated model; `jit_compile`
    is passed to `compile` (Keras' "auto" turns XLA on where the model supports it).
    """
    inputs, tensors = input_graph(data.inputs, data.fitted)
    check_spec_fits_data(spec, data, tensors)
    # A backbone does its own input scaling, so it starts from the raw image.
    tensors["input"] = image_stem(spec, inputs if spec.backbone else tensors["input"])
    features = tensors["input"]  # what the wide layer (model.linear_skip) reads, without the input dropout
    if spec.input_dropout:
        tensors["input"] = keras.layers.Dropout(spec.input_dropout, name="input_dropout")(features)
    members = []
    for member in range(spec.ensemble):
        # Each member: the spec's layers made anew (their own weights) on the same input tensors; a named layer
        # gets the member's number in its Keras name.
        layers = [
            make_layer(
                layer.model_copy(update={"name": f"{layer.name}_{member}"}) if layer.name and member else layer,
                f"model.layers[{index}]",
                data.fitted.vocabulary_size((layer.inputs or ["input"])[0]),
            )
            for index, layer in enumerate(spec.layers)
        ]
        members.append(wire_layers(spec, layers, dict(tensors)))
    model = keras.Model(inputs, output_head(spec, data, members, features), name=f"kerasflow_{spec.api}")
    return compile_model(model, spec, data, jit_compile)


def check_spec_fits_data(spec: ModelParams, data: PreprocessState, tensors: dict[str, Any]) -> None:
    """Specs that cannot take this data are a ConfigError naming what to change."""
    if (spec.augmentation or spec.backbone) and "image" not in tensors:
        raise ConfigError("model.augmentation and model.backbone need image data (ingest.image_shape)")
    if spec.api == "sequential" and "text" in tensors and "features" in tensors:
        raise ConfigError(
            "the data has a text column and other columns; a sequential model takes only one of them. Use "
            "api: functional (start branches from 'text' and 'features'), or choose columns with ingest.features"
        )
    features = tensors["input"]
    if spec.input_dropout and "float" not in str(features.dtype):
        raise ConfigError(
            f"model.input_dropout drops numbers of the input; this data's input is {str(features.dtype)} of shape "
            f"{tuple(features.shape)[1:]} (token ids): set model.input_dropout: 0, or a dropout layer after the "
            "embedding in model.layers"
        )
    if spec.linear_skip and (len(features.shape) != 2 or "float" not in str(features.dtype)):
        raise ConfigError(
            "model.linear_skip adds a linear layer on a vector of numbers per example (a table's features, or a "
            f"bag of words); this data's input is {str(features.dtype)} of shape {tuple(features.shape)[1:]} "
            "(an image, or token ids): set model.linear_skip: false"
        )
    if spec.api == "sequential" and data.fitted.categorical_encoding == "integer" and "categorical" in tensors:
        raise ConfigError(
            "preprocess.categorical_encoding 'integer' needs api: functional (embed the 'categorical' tensor)"
        )


def image_stem(spec: ModelParams, tensor: Any) -> Any:
    """The augmentation layers (active in training only), then the pretrained backbone, if any."""
    for index, layer_spec in enumerate(spec.augmentation):
        tensor = make_layer(layer_spec, f"model.augmentation[{index}]")(tensor)
    return backbone_features(spec.backbone, tensor) if spec.backbone else tensor


def wire_layers(spec: ModelParams, layers: list[keras.layers.Layer], tensors: dict[str, Any]) -> Any:
    """Apply the spec's layers in order (sequential) or to the tensors they name (functional).

    The graph is wired symbolically, so a shape error names the layer that caused it.
    """
    current = tensors["input"]
    for index, (layer_spec, layer) in enumerate(zip(spec.layers, layers, strict=True)):
        if spec.api == "functional":
            missing = [name for name in layer_spec.inputs or [] if name not in tensors]
            if missing:
                raise ConfigError(
                    f"model.layers[{index}].inputs names {missing}, which this data does not have; "
                    f"available: {sorted(tensors)}"
                )
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
    return current


def output_head(spec: ModelParams, data: PreprocessState, members: list[Any], features: Any = None) -> Any:
    """The output layer for the task, in float32 (also under mixed precision), one per ensemble member, their
    outputs (probabilities, or values) averaged; with `model.linear_skip`, the members' averaged logits plus a linear
    layer straight on the input `features` (wide and deep). A regression target is mapped back from standard
    deviations to its own units."""
    activation = output_activation(spec, data)
    if spec.linear_skip and features is not None:
        heads = [
            keras.layers.Dense(data.output_units, dtype="float32", name=f"logits_{index}")(member)
            for index, member in enumerate(members)
        ]
        deep = heads[0] if len(heads) == 1 else keras.layers.Average(dtype="float32", name="deep")(heads)
        wide = keras.layers.Dense(data.output_units, dtype="float32", name="wide")(features)
        logits = keras.layers.Add(dtype="float32", name="wide_and_deep")([deep, wide])
        outputs = keras.layers.Activation(activation, dtype="float32", name="output")(logits)
    elif len(members) == 1:
        outputs = keras.layers.Dense(data.output_units, activation=activation, dtype="float32", name="output")(
            members[0]
        )
    else:
        heads = [
            keras.layers.Dense(data.output_units, activation=activation, dtype="float32", name=f"output_{index}")(
                features
            )
            for index, features in enumerate(members)
        ]
        outputs = keras.layers.Average(dtype="float32", name="output")(heads)
    if data.fitted.target:
        target = data.fitted.target
        outputs = keras.layers.Rescaling(target.std, offset=target.mean, name="target_scaling")(outputs)
    return outputs


def export_for_serving(model: keras.Model, path: Path, inputs: ModelInputs) -> None:
    """A TensorFlow SavedModel with one `serve` endpoint for TF Serving, always in inference mode.

    `model.export` would trace the model without `training=False`, and Keras' random augmentation
    layers then default to training mode and alter the images they serve.
    """
    import tensorflow as tf

    if inputs.kind == "image":
        signature: Any = tf.TensorSpec((None, *inputs.shape), tf.float32, name="image")
    else:
        signature = {entry.input: tf.TensorSpec((None, 1), tf.string, entry.input) for entry in inputs.strings}
        if inputs.numeric:
            signature[NUMERIC_INPUT] = tf.TensorSpec((None, len(inputs.numeric)), tf.float32, NUMERIC_INPUT)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda features: model(features, training=False), input_signature=[signature])
    archive.write_out(str(path), verbose=False)


def compiled_loss(model: keras.Model, y: np.ndarray, outputs: np.ndarray) -> float:
    """The compiled loss (weighted as compiled, with the layers' regularization) of `outputs` the model predicted
    for rows labelled `y`: what `model.evaluate` reports, without a second pass of the rows through the model."""
    loss = model.compute_loss(x=None, y=y, y_pred=outputs, training=False)
    return float(keras.ops.convert_to_numpy(loss))
