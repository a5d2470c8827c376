"""Division differences (DDifs, Rieger et al., NDSS 2022): a model's outputs against the global's.

For client k and class i, DDif_{k,i} = (1/N) sum_s p(i | x_s; W_k) / p(i | x_s; G), p the
softmax of the model's logits, over N random inputs x_s. W_k is the model the server rebuilds
from the update k reports: G - delta (TFF's sign, delta = initial - trained), the global
model's non-trainable weights unchanged. The inputs (`random_inputs`) are uniform in [0, 1)
(our images' pixel range, as both peers draw them) of the model's input shape; set s of the
`DDifInputs.seeds` sets is keyed by (the run's seed, s), so every client and the global model
see the same inputs, every round. A ratio is exp(log p_k - log p_G): no 0/0 where a softmax
underflows. DeepSight clusters the DDifs (`aggregators.deepsight`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.learning.side_channel import DDifInputs

BATCH = 500  # random inputs per forward pass: bounds the activations' memory, not the numbers
DDIF_KEY = 0xDD1F  # second word of an input set's key: [seed, DDIF_KEY], folded with s


def input_shape(model: tff.learning.models.VariableModel) -> tuple:
  """One input's shape (without the batch axis) from the model's `input_spec` (x, or first)."""
  spec = model.input_spec
  x = spec['x'] if isinstance(spec, Mapping) else tf.nest.flatten(spec)[0]
  return tuple(x.shape[1:])


def batch_count(inputs: DDifInputs) -> int:
  """Forward passes per input set: ceil(samples / BATCH)."""
  return -(-inputs.samples // BATCH)


def random_batch(inputs: DDifInputs, index, step, shape: tuple) -> tf.Tensor:
  """Inputs `step` * BATCH onwards (at most BATCH) of input set `index`: uniform in [0, 1)."""
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([inputs.seed, DDIF_KEY], tf.int64), tf.cast(index, tf.int64))
  size = tf.minimum(BATCH, inputs.samples - tf.cast(step, tf.int32) * BATCH)
  return tf.random.stateless_uniform(
      tf.concat([[size], shape], axis=0),
      tf.random.experimental.stateless_fold_in(key, tf.cast(step, tf.int64)), dtype=tf.float32)


def random_inputs(inputs: DDifInputs, index: int, shape: tuple) -> tf.Tensor:
  """All `inputs.samples` inputs of set `index` (what `build_ddif_fn` feeds, batch by batch)."""
  return tf.concat([random_batch(inputs, index, step, shape)
                    for step in range(batch_count(inputs))], axis=0)


def ratio_sums(client_logits: tf.Tensor, global_logits: tf.Tensor) -> tf.Tensor:
  """[P] sum over the batch of p(i | x; W_k) / p(i | x; G), from logits [batch, P]."""
  log_ratio = tf.nn.log_softmax(client_logits) - tf.nn.log_softmax(global_logits)
  return tf.reduce_sum(tf.exp(log_ratio), axis=0)


def rebuilt_weights(global_weights, delta) -> tff.learning.models.ModelWeights:
  """The model the server rebuilds from a reported `delta`: G - delta, non-trainable kept."""
  trainable = tf.nest.map_structure(tf.subtract, list(global_weights.trainable),
                                    tf.nest.flatten(delta))
  return tff.learning.models.ModelWeights(trainable, list(global_weights.non_trainable))


def build_ddif_fn(model_fn: Callable[[], tff.learning.models.VariableModel],
                  inputs: DDifInputs) -> Callable:
  """A `tf.function` (global weights, reported delta) -> float32 [seeds, classes] DDifs.

  Call it where the models may be built (inside the client work's computation): it makes two
  models of `model_fn`, the global one and the rebuilt client's.
  """
  client_model, global_model = model_fn(), model_fn()
  shape = input_shape(client_model)
  steps = batch_count(inputs)

  def accumulate(i, sums):
    index, step = i // steps, i % steps
    x = random_batch(inputs, index, step, shape)
    ratios = ratio_sums(client_model.predict_on_batch(x, training=False),
                        global_model.predict_on_batch(x, training=False))
    return i + 1, tf.tensor_scatter_nd_add(sums, [[index]], ratios[tf.newaxis])

  @tf.function(autograph=False)
  def ddif_fn(global_weights, delta):
    tff.learning.models.ModelWeights(
        list(global_weights.trainable),
        list(global_weights.non_trainable)).assign_weights_to(global_model)
    rebuilt_weights(global_weights, delta).assign_weights_to(client_model)
    classes = client_model.predict_on_batch(random_batch(inputs, 0, 0, shape)[:1],
                                            training=False).shape[-1]
    _, sums = tf.while_loop(lambda i, _: i < inputs.seeds * steps, accumulate,
                            [tf.constant(0), tf.zeros([inputs.seeds, classes])])
    return sums / float(inputs.samples)

  return ddif_fn
