"""The federated learning process: FedAvg composed from attacker client work and any aggregator.

`build_backdoor_process` is `tff.learning.algorithms.build_weighted_fed_avg` with its client
work swapped for `attacks.build_attacker_client_work`, assembled with
`tff.learning.templates.compose_learning_process`; everything else is TFF's own
(broadcast distributor, `MeanFactory` default aggregator, SGD apply-optimizer finalizer).
"""
from __future__ import annotations

import collections
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.attacks.client_work import AttackConfig, build_attacker_client_work

ModelFn = Callable[[], tff.learning.models.VariableModel]


def keras_model_fn(keras_builder: Callable[[], tf.keras.Model],
                   input_shape: Sequence[int]) -> ModelFn:
  """Wraps a Keras builder (logits output) as a TFF model_fn with batches of OrderedDict(x, y)."""
  input_spec = collections.OrderedDict(
      x=tf.TensorSpec([None, *input_shape], tf.float32),
      y=tf.TensorSpec([None], tf.int32))

  def model_fn() -> tff.learning.models.VariableModel:
    return tff.learning.models.from_keras_model(
        keras_builder(),
        input_spec=input_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

  return model_fn


def build_backdoor_process(
    model_fn: ModelFn,
    *,
    client_learning_rate: float,
    server_learning_rate: float,
    batch_size: int,
    attack: AttackConfig = AttackConfig(),
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = None,
    client_work: Optional[tff.learning.templates.ClientWorkProcess] = None,
) -> tff.learning.templates.LearningProcess:
  """FedAvg (client SGD, server SGD) whose clients may attack and whose aggregator is pluggable.

  Client data per client: `attacks.client_data_type` (benign batches, malicious batches,
  is_malicious, seed). With no malicious client it computes exactly what
  `build_weighted_fed_avg(model_fn, build_sgdm(client_lr), build_sgdm(server_lr))` does.
  Pass `client_work` (from `build_client_work`) to keep a handle on it, e.g. for capture.
  """
  if client_learning_rate <= 0 or server_learning_rate <= 0:
    raise ValueError('learning rates must be positive')

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  weights_type = initial_model_weights_fn.type_signature.result
  distributor = tff.learning.templates.build_broadcast_process(weights_type)
  if client_work is None:
    client_work = build_client_work(model_fn, client_learning_rate=client_learning_rate,
                                    batch_size=batch_size, attack=attack)
  factory = model_aggregator if model_aggregator is not None else tff.aggregators.MeanFactory()
  if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
    raise TypeError('model_aggregator must be a tff.aggregators.WeightedAggregationFactory '
                    '(wrap unweighted ones with tff.aggregators.as_weighted_aggregator)')
  aggregator = factory.create(weights_type.trainable, tff.TensorType(np.float32))
  finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
      tff.learning.optimizers.build_sgdm(server_learning_rate), weights_type)
  return tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, distributor, client_work, aggregator, finalizer)


def build_client_work(model_fn: ModelFn, *, client_learning_rate: float, batch_size: int,
                      attack: AttackConfig = AttackConfig()
                      ) -> tff.learning.templates.ClientWorkProcess:
  """The attacker client work with client SGD, as `build_backdoor_process` uses it."""
  return build_attacker_client_work(
      model_fn, tff.learning.optimizers.build_sgdm(client_learning_rate), attack, batch_size)


def capture_client_updates(client_work: tff.learning.templates.ClientWorkProcess,
                           state: tff.learning.templates.LearningAlgorithmState,
                           model_weights: tff.learning.models.ModelWeights,
                           client_data: Sequence) -> list:
  """Each client's update (a list of arrays, in `client_data` order) for this round's inputs.

  Runs the process's own client work again on the same inputs, so training is untouched;
  the client computation is deterministic for fixed inputs, hence the captured updates are
  the ones the aggregator received (tests check their weighted mean against the round).
  """
  output = client_work.next(state.client_work, [model_weights] * len(client_data), client_data)
  return [[np.asarray(t) for t in result.update] for result in output.result]


def client_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
  """A client's batched OrderedDict(x, y) dataset, cheap to send to TFF's worker.

  TFF serializes a client dataset with its tensors as constants. Images that are exactly
  k/255 in float32 (all idx/MNIST-style data, and triggers of value 0 or 1) travel as uint8
  and are cast back in the pipeline, bit-identical and 4x smaller; anything else goes as is.
  """
  x = np.asarray(x, np.float32)
  quantized = np.rint(x * 255.0)
  exact = (quantized.size > 0 and quantized.min() >= 0 and quantized.max() <= 255 and
           np.array_equal(quantized.astype(np.uint8).astype(np.float32) / np.float32(255), x))
  if not exact:
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(x=x, y=y)).batch(batch_size)
  dataset = tf.data.Dataset.from_tensor_slices((quantized.astype(np.uint8), y)).batch(batch_size)
  return dataset.map(lambda u, labels: collections.OrderedDict(
      x=tf.cast(u, tf.float32) / 255.0, y=labels))
