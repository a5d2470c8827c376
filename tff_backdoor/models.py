"""Keras models used by the experiments: the Sun et al. (2019) CNN and a tiny test model.

Every builder is seedable so that the round-0 global model is a pure function of `--seed`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

# Name of the dense layer FLAIN works on by default (first dense layer after the convolutions).
SUN_CNN_FLAIN_LAYER = 'dense_features'


def _seeded(seed: Optional[int], offset: int) -> Optional[int]:
  return None if seed is None else int(seed) * 1000 + offset


def sun_cnn(input_shape: Sequence[int] = (28, 28, 1),
            num_classes: int = 10,
            seed: Optional[int] = None) -> tf.keras.Model:
  """The EMNIST CNN of Sun et al. 2019 (METHODS.md section 1), logits output.

  Conv2D(32,3x3,relu) - Conv2D(64,3x3,relu) - MaxPool(2) - Dropout(0.25) - Flatten -
  Dense(128,relu) - Dropout(0.5) - Dense(num_classes).
  """
  init = lambda k: tf.keras.initializers.GlorotUniform(seed=_seeded(seed, k))
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=tuple(input_shape)),
      tf.keras.layers.Conv2D(32, 3, activation='relu', kernel_initializer=init(1), name='conv1'),
      tf.keras.layers.Conv2D(64, 3, activation='relu', kernel_initializer=init(2), name='conv2'),
      tf.keras.layers.MaxPool2D(2, name='pool'),
      tf.keras.layers.Dropout(0.25, seed=_seeded(seed, 3), name='dropout1'),
      tf.keras.layers.Flatten(name='flatten'),
      tf.keras.layers.Dense(128, activation='relu', kernel_initializer=init(4),
                            name=SUN_CNN_FLAIN_LAYER),
      tf.keras.layers.Dropout(0.5, seed=_seeded(seed, 5), name='dropout2'),
      tf.keras.layers.Dense(num_classes, kernel_initializer=init(6), name='logits'),
  ], name='sun_cnn')


def tiny_cnn(input_shape: Sequence[int] = (28, 28, 1),
             num_classes: int = 10,
             seed: Optional[int] = None) -> tf.keras.Model:
  """A very small CNN with the same layer roles as `sun_cnn` (conv, flatten, dense, logits).

  Meant for unit tests: a few hundred parameters, so TFF rounds take well under a second.
  """
  init = lambda k: tf.keras.initializers.GlorotUniform(seed=_seeded(seed, k))
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=tuple(input_shape)),
      tf.keras.layers.Conv2D(2, 3, strides=2, activation='relu', kernel_initializer=init(1),
                             name='conv1'),
      tf.keras.layers.MaxPool2D(2, name='pool'),
      tf.keras.layers.Flatten(name='flatten'),
      tf.keras.layers.Dense(8, activation='relu', kernel_initializer=init(4),
                            name=SUN_CNN_FLAIN_LAYER),
      tf.keras.layers.Dense(num_classes, kernel_initializer=init(6), name='logits'),
  ], name='tiny_cnn')


MODEL_BUILDERS = {'sun_cnn': sun_cnn, 'tiny_cnn': tiny_cnn}


def build_model(name: str, input_shape: Sequence[int], num_classes: int,
                seed: Optional[int] = None) -> tf.keras.Model:
  """Builds a registered model by name; raises ValueError for an unknown name."""
  if name not in MODEL_BUILDERS:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(MODEL_BUILDERS)}')
  return MODEL_BUILDERS[name](input_shape=input_shape, num_classes=num_classes, seed=seed)
