"""The layer types a model spec (`model.layers`, `model.augmentation`) may name.

Adding a layer type: one entry in `LAYER_TYPES`, the params name mapped to the Keras class (keras.layers.<Class>,
or a class of kerasflow/model_layers.py, which travels with each logged model); its arguments are the layer's own.
The params check and the model builder (tasks/model.py) read it here.
"""

from __future__ import annotations

# Layer names a model spec may use, mapped to their Keras class names.
LAYER_TYPES = {
    "dense": "Dense",
    "conv1d": "Conv1D",
    "conv2d": "Conv2D",
    "max_pooling1d": "MaxPooling1D",
    "max_pooling2d": "MaxPooling2D",
    "average_pooling2d": "AveragePooling2D",
    "global_average_pooling1d": "GlobalAveragePooling1D",
    "global_average_pooling2d": "GlobalAveragePooling2D",
    "global_max_pooling1d": "GlobalMaxPooling1D",
    "global_max_pooling2d": "GlobalMaxPooling2D",
    "flatten": "Flatten",
    "reshape": "Reshape",
    "dropout": "Dropout",
    "spatial_dropout1d": "SpatialDropout1D",
    "spatial_dropout2d": "SpatialDropout2D",
    "batch_normalization": "BatchNormalization",
    "layer_normalization": "LayerNormalization",
    "activation": "Activation",
    "embedding": "Embedding",
    "lstm": "LSTM",
    "gru": "GRU",
    "simple_rnn": "SimpleRNN",
    "bidirectional": "Bidirectional",
    "concatenate": "Concatenate",
    "add": "Add",
    "average": "Average",
    "multiply": "Multiply",
    "random_flip": "RandomFlip",
    "random_rotation": "RandomRotation",
    "random_translation": "RandomTranslation",
    "random_zoom": "RandomZoom",
    "random_contrast": "RandomContrast",
    "gaussian_noise": "GaussianNoise",
    # kerasflow/model_layers.py
    "oblivious_trees": "ObliviousTrees",
}
# Layers that take several inputs (the functional API's merges), and those that augment images in training only.
MERGE_LAYERS = ("concatenate", "add", "average", "multiply")
AUGMENTATION_LAYERS = frozenset(name for name in LAYER_TYPES if name.startswith("random_") or name == "gaussian_noise")
