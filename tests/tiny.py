"""Tiny models and synthetic client data shared by the unit tests (fast on 2 CPU cores)."""
import collections

import numpy as np
import tensorflow as tf

from tff_backdoor import models
from tff_backdoor import process

SHAPE = (8, 8, 1)
NUM_CLASSES = 3


def model_fn(seed: int = 1):
  return process.keras_model_fn(
      lambda: models.tiny_cnn(SHAPE, NUM_CLASSES, seed=seed), SHAPE)


def arrays(n: int, seed: int):
  rng = np.random.default_rng(seed)
  return (rng.random((n, *SHAPE)).astype(np.float32),
          rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def batches(x, y, batch_size: int = 4) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(batch_size)


def dataset(n: int, seed: int, batch_size: int = 4) -> tf.data.Dataset:
  return batches(*arrays(n, seed), batch_size=batch_size)
