"""kerasflow: Keras models from raw data to a registered, reviewable, reproducible model."""

__version__ = "0.1.0"
