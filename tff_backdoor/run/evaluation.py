"""Evaluation of the global model on the main-task and backdoor sets, in the parent process.

`Evaluator` gives `model.evaluate`'s numbers in one compiled loop a set; the rounds before the
last evaluate a fixed, seeded subset of the test set (`between_rounds_eval_sets`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.data import ArrayPair
from tff_backdoor.data import partition as partition_lib

if TYPE_CHECKING:
  from tff_backdoor.run.setup import ExperimentSetup

_EVAL_SUBSET_KEY = 0xE7A1  # second word of the eval subset's seed: [seed, _EVAL_SUBSET_KEY]


def between_rounds_eval_sets(setup: 'ExperimentSetup') -> Dict[str, ArrayPair]:
  """The evaluation sets of the rounds before the last: `test` cut to `--eval_subset` images.

  The subset is class-stratified and drawn once from `--seed` (the same images every round
  and in every run with that seed, so curves and paired comparisons stay smooth); the
  backdoor sets stay whole, and the last round uses `setup.eval_sets` as they are.
  """
  n = setup.config.run.eval_subset
  x, y = setup.eval_sets['test']
  if not n or n >= len(y):
    return setup.eval_sets
  keep, _ = partition_lib.stratified_holdout(y, n,
                                             seed=[setup.config.run.seed, _EVAL_SUBSET_KEY])
  return {**setup.eval_sets, 'test': (x[keep], y[keep])}


class Evaluator:
  """Evaluation of the global (Keras) model on the named evaluation sets, in the parent process.

  `evaluate` gives exactly what `model.evaluate(x, y, batch_size)` gives (tests compare them
  bit for bit): the same batches in order, each batch's mean loss weighted by its size and
  the correct argmax predictions, summed in float32 in the same order. It runs one compiled
  loop over a whole set instead, without Keras' per-call data adapter, callbacks and
  per-batch Python steps: about 15-20% less time on the Sun CNN (bench/eval_share.py).
  """

  def __init__(self, keras_builder: Callable[[], tf.keras.Model], batch_size: int):
    self.model = keras_builder()
    self._loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    self.model.compile(loss=self._loss, metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
    self.batch_size = batch_size
    self._sums = tf.function(self._set_sums, input_signature=(  # one trace for every set
        tf.TensorSpec([None, *self.model.input_shape[1:]], tf.float32),
        tf.TensorSpec([None], tf.int64)))

  def load(self, weights: tff.learning.models.ModelWeights) -> tf.keras.Model:
    """The evaluation model with `weights` assigned (e.g. the process state's global model)."""
    weights.assign_weights_to(self.model)
    return self.model

  def _set_sums(self, x: tf.Tensor, y: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(mean loss, accuracy) over (x, y), batch by batch as Keras' test loop computes them."""
    size = self.batch_size
    num_batches = (tf.shape(y)[0] + size - 1) // size

    def body(i, loss_sum, correct, count):
      xb, yb = x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]
      logits = self.model(xb, training=False)
      n = tf.cast(tf.shape(yb)[0], tf.float32)
      loss = self._loss(yb, logits)
      if self.model.losses:  # regularization, as Keras adds it to the reported loss
        loss += tf.add_n(self.model.losses)
      hits = tf.equal(yb, tf.argmax(logits, axis=-1))
      return (i + 1, loss_sum + loss * n, correct + tf.reduce_sum(tf.cast(hits, tf.float32)),
              count + n)

    zero = tf.constant(0.0)
    _, loss_sum, correct, count = tf.while_loop(
        lambda i, *_: i < num_batches, body, (tf.constant(0), zero, zero, zero))
    return tf.math.divide_no_nan(loss_sum, count), tf.math.divide_no_nan(correct, count)

  def evaluate(self, eval_sets: Dict[str, ArrayPair]) -> Dict[str, float]:
    """`{name}_accuracy` and `{name}_loss` of every non-empty set."""
    out = {}
    for name, (x, y) in eval_sets.items():
      if len(y) == 0:
        continue
      # Keras casts the same way (float inputs to the layers' float32, labels to int64).
      loss, acc = self._sums(tf.cast(x, tf.float32), tf.cast(np.reshape(y, [-1]), tf.int64))
      out[f'{name}_accuracy'] = float(acc)
      out[f'{name}_loss'] = float(loss)
    return out
