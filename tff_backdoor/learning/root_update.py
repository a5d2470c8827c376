"""The server's own update on its root set each round: FLTrust's g0 (Cao et al., NDSS 2021).

`build_root_update_fn` is the honest local training of every client (`local_training`) on a
root set held as constants of the computation, from the round's global model, with the client
optimizer and its initial hyperparameters (the clients' learning rate). The distributor runs
it at the server and sends g0 down with the model (`learning.distributor`); each client hands
it on to the aggregator in its ClientInfo (`learning.side_channel`), where
`aggregators.fltrust` reads it.
"""
from __future__ import annotations

import collections
from typing import Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.learning import local_training


def root_batches(root: tuple, batch_size: int, epochs: int,
                 seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """(x, y) of `epochs` passes over `root` = (x, y) in a seeded order, drawn once."""
  x, y = np.asarray(root[0], np.float32), np.asarray(root[1], np.int32)
  if len(y) == 0:
    raise ValueError('FLTrust needs a non-empty root set (the server split is empty)')
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(y)) for _ in range(epochs)])
  return x[order], y[order]


def build_root_update_fn(model_fn: local_training.ModelFn,
                         optimizer: tff.learning.optimizers.Optimizer,
                         root: tuple, batch_size: int, epochs: int,
                         seed: int) -> tff.Computation:
  """(model weights) -> the server's update on `root` = (x, y).

  `epochs` passes over the root set in a seeded order, drawn once (every round trains on the
  same batches), batches of `batch_size`; dropout keyed by `seed` as a client's by its seed.
  The update is `initial - trained`, as the clients', zeroed if not finite. FLTrust's paper
  samples the root batches anew each round; a fixed order keeps the computation free of state.
  """
  x, y = root_batches(root, batch_size, epochs, seed)
  hparams = optimizer.get_hparams(optimizer.initialize(tf.TensorSpec((), tf.float32)))
  with tf.Graph().as_default():
    weights_type = tff.learning.models.weights_type_from_model(model_fn())

  @tff.tensorflow.computation(weights_type)
  def root_update(weights):
    local = local_training.LocalTraining(model_fn, optimizer)

    @tf.function(autograph=False)  # ordered variable reads and writes, as a client's
    def train(weights):
      data = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
          x=tf.constant(x), y=tf.constant(y))).batch(batch_size)
      key = local_training.dropout_key(tf.constant(seed, tf.int64))
      update, _ = local.honest_update(weights, data, hparams, key)
      return local_training.zero_if_any_non_finite(update)[0]

    return train(weights)

  return root_update
