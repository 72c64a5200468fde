"""kerasflow benchmarks: the pipeline against bare Keras scripts doing the same work (`python -m bench`)."""
