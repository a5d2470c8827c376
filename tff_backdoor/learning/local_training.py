"""Honest local training: the local SGD every party of a round runs.

Honest clients, attackers (whose modes in `attacks.client_work` are built from these steps)
and the server training FLTrust's root update (`learning.root_update`) all train with
`LocalTraining`: exactly the local SGD of `tff.learning.templates.build_model_delta_client_work`
(one optimizer step a batch, TFF's reduce loop), with the model's `models.StatelessDropout`
masks keyed by the party's seed, the training pass and the batch step.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple, Union

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor import models as models_lib

DROPOUT_KEY = 0x0D0F  # Second word of a party's dropout key: [seed, DROPOUT_KEY].

ModelFn = Callable[[], tff.learning.models.VariableModel]


def dropout_key(seed: tf.Tensor) -> tf.Tensor:
  """[2] int64: the key of a party's dropout masks, from its int64 `seed`."""
  return tf.stack([seed, tf.constant(DROPOUT_KEY, tf.int64)])


def pass_key(key: tf.Tensor, index: Union[int, tf.Tensor]) -> tf.Tensor:
  """Key of a party's `index`-th training pass (distinct per pass of one party)."""
  return tf.random.experimental.stateless_fold_in(key, index)


def zero_if_any_non_finite(structure: Any) -> Tuple[Any, tf.Tensor]:
  """(structure, 0), or (zeros like it, 1) if any value is NaN or Inf.

  What TFF's client work does to an update before it leaves the client (its own
  `tensor_utils.zero_all_if_any_non_finite`, which TFF does not export), in public TF.
  """
  flat = tf.nest.flatten(structure)
  if not flat:
    return structure, tf.constant(0)
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in flat])
  return tf.cond(finite, lambda: (structure, tf.constant(0)),
                 lambda: (tf.nest.map_structure(tf.zeros_like, structure), tf.constant(1)))


class LocalTraining:
  """A party's model with local SGD, reset and delta: the steps every update is made of."""

  def __init__(self, model_fn: ModelFn, optimizer: tff.learning.optimizers.Optimizer):
    self.model = model_fn()
    self.weights = tff.learning.models.ModelWeights.from_model(self.model)
    self.optimizer = optimizer
    dropout_layers = models_lib.stateless_dropout_layers(self.model)
    # Set before every forward pass; not a model weight (see models.StatelessDropout).
    self.mask_seed = (tf.Variable(tf.zeros([2], tf.int64), trainable=False,
                                  name='dropout_mask_seed') if dropout_layers else None)
    for layer in dropout_layers:
      layer.bind_seed(self.mask_seed)

  def _step(self, key, transform, state, batch):
    """One SGD step (TFF's reduce loop body); batch `step` masks with fold_in(key, step).

    `transform(gradients, trainable)`, if given, changes the gradients before the step.
    """
    num_examples, optimizer_state, step = state
    trainable = self.weights.trainable
    set_seed = [] if self.mask_seed is None else [self.mask_seed.assign(
        tf.random.experimental.stateless_fold_in(key, step))]
    with tf.control_dependencies(set_seed), tf.GradientTape() as tape:
      output = self.model.forward_pass(batch, training=True)
    gradients = tape.gradient(output.loss, trainable)
    if transform is not None:
      gradients = transform(gradients, trainable)
    optimizer_state, updated = self.optimizer.next(
        optimizer_state, tuple(tf.nest.flatten(trainable)), tuple(tf.nest.flatten(gradients)))
    updated = tf.nest.pack_sequence_as(trainable, updated)
    tf.nest.map_structure(lambda v, t: v.assign(t), trainable, updated)
    if output.num_examples is None:
      num_examples += tf.shape(output.predictions, out_type=tf.int64)[0]
    else:
      num_examples += tf.cast(output.num_examples, tf.int64)
    return num_examples, optimizer_state, step + 1

  def train(self, data: tf.data.Dataset, optimizer_hparams: Any, key: tf.Tensor,
            transform: Optional[Callable] = None) -> tf.Tensor:
    """Local SGD over `data` from the current weights; returns the number of examples.

    `key` ([2] int64, `pass_key`) keys this pass's dropout masks; `transform` see `_step`.
    """
    specs = tuple(tf.TensorSpec(v.shape, v.dtype)
                  for v in tf.nest.flatten(self.weights.trainable))
    optimizer_state = self.optimizer.set_hparams(self.optimizer.initialize(specs),
                                                 optimizer_hparams)
    num_examples, _, _ = data.reduce(
        (tf.zeros([], tf.int64), optimizer_state, tf.zeros([], tf.int64)),
        functools.partial(self._step, key, transform))
    return num_examples

  def reset(self, initial_weights: tff.learning.models.ModelWeights) -> None:
    tf.nest.map_structure(lambda v, t: v.assign(t), self.weights, initial_weights)

  def delta(self, initial_weights: tff.learning.models.ModelWeights) -> Any:
    """`initial - trained` (TFF's sign: the server optimizer applies it as a gradient)."""
    return tf.nest.map_structure(tf.subtract, initial_weights.trainable, self.weights.trainable)

  def honest_update(self, initial_weights: tff.learning.models.ModelWeights,
                    data: tf.data.Dataset, optimizer_hparams: Any,
                    key: tf.Tensor) -> Tuple[Any, tf.Tensor]:
    """(delta, number of examples) of one honest pass over `data` from `initial_weights`."""
    self.reset(initial_weights)
    num_examples = self.train(data, optimizer_hparams, pass_key(key, 0))
    return self.delta(initial_weights), num_examples
