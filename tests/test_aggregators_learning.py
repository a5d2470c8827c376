"""Our aggregators inside TFF's own `build_weighted_fed_avg`, on a tiny CNN and tiny clients.

The first test is the README example "Using the aggregators in your own TFF project".
"""
import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor import aggregators
from tff_backdoor import models

NUM_CLIENTS = 5


def model_fn() -> tff.learning.models.VariableModel:
  return tff.learning.models.from_keras_model(
      models.tiny_cnn(input_shape=(8, 8, 1), num_classes=3, seed=0),
      input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 8, 8, 1], tf.float32),
                                         y=tf.TensorSpec([None], tf.int32)),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def client_data(num_clients: int, examples: int = 4):
  rng = np.random.default_rng(0)
  return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=rng.random((examples, 8, 8, 1)).astype(np.float32),
      y=rng.integers(0, 3, examples).astype(np.int32))).batch(2)
          for _ in range(num_clients)]


def test_readme_example_clipping_in_build_weighted_fed_avg():
  learning_process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
      model_aggregator=aggregators.norm_clipping_factory(clip_norm=0.05))
  state = learning_process.initialize()
  output = learning_process.next(state, client_data(2))
  aggregator = output.metrics['aggregator']
  assert aggregator['clipping_norm'] == np.float32(0.05)
  assert 0 <= aggregator['clipped_count'] <= 2
  old, new = (learning_process.get_model_weights(s).trainable for s in (state, output.state))
  delta = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(new, old)))
  assert 0 < delta <= 0.05 + 1e-6  # Server SGD with lr 1: the step is the clipped mean.


@pytest.mark.parametrize('name', aggregators.DEFENSES)
def test_every_registry_defense_runs_a_round(name):
  num_clients = 7 if name == 'bulyan' else NUM_CLIENTS  # Bulyan's f = 1 needs 4f + 3.
  population = {f'{name}_clients': 8} if name in ('foolsgold', 'fldetector') else {}  # the run's
  factory = aggregators.build_defense(aggregators.DefenseConfig(name=name, **population),
                                      clients_per_round=num_clients, seed=0)
  learning_process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
      model_aggregator=factory)
  output = learning_process.next(learning_process.initialize(), client_data(num_clients))
  aggregator = output.metrics['aggregator']
  assert aggregator['nonfinite_count'] == 0
  assert aggregator['client_count'] == num_clients
  assert aggregator['client_norm_max'] >= aggregator['client_norm_mean'] > 0
  weights = learning_process.get_model_weights(output.state).trainable
  assert all(np.all(np.isfinite(w)) for w in weights)
