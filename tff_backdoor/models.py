"""Keras models used by the experiments: the Sun et al. (2019) CNN and a tiny test model.

Every builder is seedable so that the round-0 global model is a pure function of `--seed`.
The Sun CNN's dropout layers are `StatelessDropout`: inside federated training their masks are
a pure function of a seed the client work sets before each batch (from the client's seed), not
of a stateful random op, so they differ between clients and rounds and cannot depend on which
TFF worker ran a client or in which order.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from typing import Any, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_backdoor import metrics_io

# Name of the dense layer FLAIN works on by default (first dense layer after the convolutions).
SUN_CNN_FLAIN_LAYER = 'dense_features'


def _seeded(seed: Optional[int], offset: int) -> Optional[int]:
  return None if seed is None else int(seed) * 1000 + offset


class _SeedSlot:
  """A plain holder, so that the seed variable in it is not tracked as a Keras weight."""

  def __init__(self) -> None:
    self.variable: Optional[tf.Variable] = None


class StatelessDropout(tf.keras.layers.Dropout):
  """`tf.keras.layers.Dropout` whose masks can come from a caller-set seed instead of a state.

  Keras' Dropout draws masks from a stateful op with a fixed seed; in TFF's C++ worker each
  client call starts that op afresh, so every client of every round gets the same masks (a
  function of the batch step only), and the masks hang on how the worker manages op state.
  After `bind_seed(v)` (an int64 variable of shape [2])
  this layer draws its mask with `tf.nn.experimental.stateless_dropout` from `v` folded with
  a constant of the layer's name, so the mask is a pure function of `v`'s value at the call;
  the caller assigns `v` before every forward pass (see `attacks.client_work`). Unbound (e.g.
  under `model.fit`) it is exactly Keras' Dropout. The variable is not a weight of the layer:
  `model.weights`, TFF's `ModelWeights` and saved models are those of a plain Dropout model.
  """

  def __init__(self, rate: float, noise_shape: Any = None, seed: Optional[int] = None,
               **kwargs: Any) -> None:
    super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)
    self._seed_slot = _SeedSlot()

  def bind_seed(self, seed_variable: Optional[tf.Variable]) -> None:
    """Makes masks a function of `seed_variable` (int64, shape [2]); None unbinds."""
    if seed_variable is not None and (seed_variable.dtype != tf.int64 or
                                      seed_variable.shape != (2,)):
      raise ValueError(f'the dropout seed must be an int64 variable of shape [2], found '
                       f'{seed_variable.dtype.name} {seed_variable.shape}')
    self._seed_slot.variable = seed_variable

  def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
    seed = self._seed_slot.variable
    if seed is None or (isinstance(self.rate, (int, float)) and self.rate == 0):
      return super().call(inputs, training=training)
    if training is None:
      training = tf.keras.backend.learning_phase()
    layer_key = zlib.crc32(self.name.encode()) & 0x7FFFFFFF

    def dropped() -> tf.Tensor:
      layer_seed = tf.random.experimental.stateless_fold_in(seed.read_value(), layer_key)
      return tf.nn.experimental.stateless_dropout(
          inputs, rate=self.rate, seed=layer_seed, noise_shape=self._get_noise_shape(inputs))

    return tf.__internal__.smart_cond.smart_cond(training, dropped,
                                                 lambda: tf.identity(inputs))


# Load a saved model with `tf.keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS)`
# (not registered with Keras at import: importing this module changes no global state).
CUSTOM_OBJECTS = {'StatelessDropout': StatelessDropout}


def stateless_dropout_layers(model: Any) -> List[StatelessDropout]:
  """The `StatelessDropout` layers of a Keras model or of a TFF model made by
  `tff.learning.models.from_keras_model` (whose Keras model TFF keeps in `_keras_model`)."""
  keras_model = getattr(model, '_keras_model', model)
  if not isinstance(keras_model, tf.keras.layers.Layer):
    return []
  return [layer for layer in (keras_model, *keras_model.submodules)
          if isinstance(layer, StatelessDropout)]


def sun_cnn(input_shape: Sequence[int] = (28, 28, 1),
            num_classes: int = 10,
            seed: Optional[int] = None) -> tf.keras.Model:
  """The EMNIST CNN of Sun et al. 2019 (METHODS.md section 1), logits output.

  Conv2D(32,3x3,relu) - Conv2D(64,3x3,relu) - MaxPool(2) - Dropout(0.25) - Flatten -
  Dense(128,relu) - Dropout(0.5) - Dense(num_classes). The dropouts are `StatelessDropout`.
  """
  init = lambda k: tf.keras.initializers.GlorotUniform(seed=_seeded(seed, k))
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=tuple(input_shape)),
      tf.keras.layers.Conv2D(32, 3, activation='relu', kernel_initializer=init(1), name='conv1'),
      tf.keras.layers.Conv2D(64, 3, activation='relu', kernel_initializer=init(2), name='conv2'),
      tf.keras.layers.MaxPool2D(2, name='pool'),
      StatelessDropout(0.25, seed=_seeded(seed, 3), name='dropout1'),
      tf.keras.layers.Flatten(name='flatten'),
      tf.keras.layers.Dense(128, activation='relu', kernel_initializer=init(4),
                            name=SUN_CNN_FLAIN_LAYER),
      StatelessDropout(0.5, seed=_seeded(seed, 5), name='dropout2'),
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


def load_weights_file(keras_model: tf.keras.Model, path: str) -> None:
  """`keras_model.load_weights(path)`, but a missing, truncated or foreign file is an OSError
  naming the file and why (h5py's own message names neither). A model that does not fit
  keeps Keras' ValueError."""
  problem = metrics_io.archive_problem(path, '.keras') if path.endswith('.keras') else None
  if problem is None:
    try:
      keras_model.load_weights(path)
      return
    except OSError as e:
      problem = f'{path}: not a readable Keras weights file ({str(e).splitlines()[0]})'
  raise OSError(problem)


def read_weights_npz(path: str) -> List[np.ndarray]:
  """The arrays arr_0, arr_1, ... of an .npz written by `np.savez(path, *weights)`; ValueError
  naming the file and why if it is missing, truncated, pickled or holds other keys."""
  problem = metrics_io.archive_problem(path, '.npz')
  if problem is None:
    try:
      with np.load(path, allow_pickle=False) as npz:
        return [npz[f'arr_{i}'] for i in range(len(npz.files))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
      problem = (f'{path}: not an .npz of weight arrays as np.savez writes them '
                 f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})')
  raise ValueError(problem)
