"""Division differences (DDifs, Rieger et al., NDSS 2022): a model's outputs against the global's.

For client k and class i, DDif_{k,i} = (1/N) sum_s p(i | x_s; W_k) / p(i | x_s; G), p the
softmax of the model's logits, over N random inputs x_s. W_k is the model the server rebuilds
from the update k reports: G - delta (TFF's sign, delta = initial - trained), the global
model's non-trainable weights unchanged. The inputs (`random_inputs`) are uniform in [0, 1)
(our images' pixel range, as both peers draw them) of the model's input shape; set s of the
`DDifInputs.seeds` sets is keyed by (the run's seed, s), so every client and the global model
see the same inputs, every round. A ratio is exp(log p_k - log p_G): no 0/0 where a softmax
underflows.

Who computes what: the global model's log p_G is the same for every client, so the server
computes it once a round (`build_global_log_probs_fn`, run by the distributor) and sends it
down (ServerInfo `ddif_global_log_probs`, float32 [seeds, samples, classes]); each client
work runs only its rebuilt model (`build_ddif_fn`) and sends its DDifs up. DeepSight clusters
them (`aggregators.deepsight`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

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


def random_batch(inputs: DDifInputs, index: Union[int, tf.Tensor], step: Union[int, tf.Tensor],
                 shape: tuple) -> tf.Tensor:
  """Inputs `step` * BATCH onwards (at most BATCH) of input set `index`: uniform in [0, 1)."""
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([inputs.seed, DDIF_KEY], tf.int64), tf.cast(index, tf.int64))
  size = tf.minimum(BATCH, inputs.samples - tf.cast(step, tf.int32) * BATCH)
  return tf.random.stateless_uniform(
      tf.concat([[size], shape], axis=0),
      tf.random.experimental.stateless_fold_in(key, tf.cast(step, tf.int64)), dtype=tf.float32)


def random_inputs(inputs: DDifInputs, index: int, shape: tuple) -> tf.Tensor:
  """All `inputs.samples` inputs of set `index` (what the DDif functions feed, batch by batch)."""
  return tf.concat([random_batch(inputs, index, step, shape)
                    for step in range(batch_count(inputs))], axis=0)


def log_probs(model: tff.learning.models.VariableModel, x: tf.Tensor) -> tf.Tensor:
  """[batch, P] log-softmax of the model's logits on `x` (inference mode)."""
  return tf.nn.log_softmax(model.predict_on_batch(x, training=False))


def ratio_sums(client_log_probs: tf.Tensor, global_log_probs: tf.Tensor) -> tf.Tensor:
  """[P] sum over the batch of p(i | x; W_k) / p(i | x; G) = exp(log p_k - log p_G)."""
  return tf.reduce_sum(tf.exp(client_log_probs - global_log_probs), axis=0)


def rebuilt_weights(global_weights: tff.learning.models.ModelWeights,
                    delta: Any) -> tff.learning.models.ModelWeights:
  """The model the server rebuilds from a reported `delta`: G - delta, non-trainable kept."""
  trainable = tf.nest.map_structure(tf.subtract, list(global_weights.trainable),
                                    tf.nest.flatten(delta))
  return tff.learning.models.ModelWeights(trainable, list(global_weights.non_trainable))


def _over_batches(inputs: DDifInputs, shape: tuple, body: Callable, initial):
  """Folds `body(index, step, x, value) -> value` over every batch x of every input set."""
  steps = batch_count(inputs)

  def loop(i, value):
    index, step = i // steps, i % steps
    return i + 1, body(index, step, random_batch(inputs, index, step, shape), value)

  return tf.while_loop(lambda i, _: i < inputs.seeds * steps, loop,
                       [tf.constant(0), initial])[1]


def build_global_log_probs(model_fn: Callable[[], tff.learning.models.VariableModel],
                           inputs: DDifInputs) -> Callable:
  """A `tf.function` (global weights) -> float32 [seeds, samples, classes]: log p(. | x; G)
  on every input set. Call it where a model may be built (it makes one of `model_fn`)."""
  model = model_fn()
  shape, steps = input_shape(model), batch_count(inputs)
  classes = model.trainable_variables[-1].shape[-1]  # the output bias, as side_channel's

  @tf.function(autograph=False)
  def global_log_probs(weights):
    tff.learning.models.ModelWeights(
        list(weights.trainable), list(weights.non_trainable)).assign_weights_to(model)
    batches = _over_batches(
        inputs, shape, lambda index, step, x, array: array.write(index * steps + step,
                                                                 log_probs(model, x)),
        tf.TensorArray(tf.float32, size=inputs.seeds * steps, infer_shape=False,
                       element_shape=tf.TensorShape([None, classes])))
    return tf.reshape(batches.concat(), [inputs.seeds, inputs.samples, classes])

  return global_log_probs


def build_global_log_probs_fn(model_fn: Callable[[], tff.learning.models.VariableModel],
                              inputs: DDifInputs, weights_type: tff.Type) -> tff.Computation:
  """The server's computation (model weights of `weights_type`) -> the global model's
  log-probs on the DDif inputs (`build_global_log_probs`), run once a round."""

  @tff.tensorflow.computation(weights_type)
  def ddif_global_log_probs(weights):
    return build_global_log_probs(model_fn, inputs)(weights)

  return ddif_global_log_probs


def build_ddif_fn(model_fn: Callable[[], tff.learning.models.VariableModel],
                  inputs: DDifInputs) -> Callable:
  """A `tf.function` (global weights, reported delta, the global model's log-probs
  [seeds, samples, classes] as the server sent them) -> float32 [seeds, classes] DDifs.

  Call it where a model may be built (inside the client work's computation): it makes one
  model of `model_fn`, the rebuilt client's; the global model's outputs come with the call.
  """
  model = model_fn()
  shape = input_shape(model)

  def accumulate(global_log_probs):
    def body(index, step, x, sums):
      start = step * BATCH
      ratios = ratio_sums(log_probs(model, x),
                          global_log_probs[index, start:start + tf.shape(x)[0]])
      return tf.tensor_scatter_nd_add(sums, [[index]], ratios[tf.newaxis])
    return body

  @tf.function(autograph=False)
  def ddif_fn(global_weights, delta, global_log_probs):
    rebuilt_weights(global_weights, delta).assign_weights_to(model)
    sums = _over_batches(inputs, shape, accumulate(global_log_probs),
                         tf.zeros([inputs.seeds, global_log_probs.shape[-1]]))
    return sums / float(inputs.samples)

  return ddif_fn
