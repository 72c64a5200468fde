"""A bare Keras multi-worker training, run by tests/unit/test_keras_multiworker.py as one process per worker.

python tests/unit/multiworker_script.py INDEX PORTS MODE OUT: MODE is "single" (one process, every worker's
shard in each global batch), "patched" (kerasflow's workaround installed) or "bare" (Keras as it is).
Writes the history and the weights' sha256 to OUT as JSON.
"""

import json
import os
import sys

index, ports, mode, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
if mode != "single":
    addresses = [f"127.0.0.1:{port}" for port in ports]
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()
strategy = tf.distribute.MultiWorkerMirroredStrategy() if mode != "single" else tf.distribute.get_strategy()
if mode == "patched":
    from tasks import keras_multiworker

    keras_multiworker.install()
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8)).astype("float32")
y = (x.sum(axis=1) > 0).astype("int64")
PER_REPLICA = 16


def shard(worker: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x[worker::2], y[worker::2])).batch(PER_REPLICA, drop_remainder=True)


if mode == "single":
    # Global batch i = worker 0's batch i then worker 1's: what the two workers see together.
    data = tf.data.Dataset.zip(shard(0), shard(1)).map(lambda a, b: tuple(tf.concat([a[i], b[i]], 0) for i in (0, 1)))
else:
    data = strategy.distribute_datasets_from_function(lambda context: shard(context.input_pipeline_id))
with strategy.scope():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(data, epochs=3, verbose=0)
weights = np.concatenate([np.ravel(values) for values in model.get_weights()])
with open(out, "w") as file:
    json.dump({"history": history.history, "weights": weights.tolist()}, file)
