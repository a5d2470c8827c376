"""Our aggregators inside TFF's own `build_weighted_fed_avg`, on a tiny CNN and tiny clients.

The first test is the README example "Using the aggregators in your own TFF project". Each
round's model step is checked against the NumPy reference of its defense
(`tests/test_aggregators.py`) applied to the clients' own updates, which a one-client round
of plain FedAvg gives (server SGD with learning rate 1: the step is the update).
"""
import collections
from typing import List, Sequence

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import test_aggregators as unit
from tff_backdoor import aggregators
from tff_backdoor import models

# Example counts of the clients of the reference test: 1 to 7 local steps of batch 2, so that
# with learning rate 1 the update norms (1.0, 0.84, 2.9, 2.0, 1.2, 4.9, 1.9) straddle the
# references' bounds (clip 3, centered-clip tau 1, adaptive clip's first bound 1).
SIZES = (2, 4, 6, 8, 10, 12, 14)
CLIENT_LR = 1.0
# Defenses that read side information (registry.SIDE_CHANNELS): they refuse a plain
# build_weighted_fed_avg (tests/test_fltrust.py, tests/test_foolsgold.py).
PLAIN = [name for name in aggregators.DEFENSES if name not in ('fltrust', 'foolsgold',
                                                                 'fldetector')]


def model_fn() -> tff.learning.models.VariableModel:
  return tff.learning.models.from_keras_model(
      models.tiny_cnn(input_shape=(8, 8, 1), num_classes=3, seed=0),
      input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 8, 8, 1], tf.float32),
                                         y=tf.TensorSpec([None], tf.int32)),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def datasets(sizes: Sequence[int]) -> List[tf.data.Dataset]:
  """One client per size, random images and labels from one seeded stream, batches of 2."""
  rng = np.random.default_rng(0)
  return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=rng.random((examples, 8, 8, 1)).astype(np.float32),
      y=rng.integers(0, 3, examples).astype(np.int32))).batch(2)
          for examples in sizes]


def client_data(num_clients: int, examples: int = 4) -> List[tf.data.Dataset]:
  return datasets([examples] * num_clients)


def _process(lr: float, aggregator=None) -> tff.learning.templates.LearningProcess:
  return tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(lr),
      model_aggregator=aggregator)


def _step(process, state, data) -> List[np.ndarray]:
  """(new trainable weights - old) after one round on `data`, and the round's output."""
  output = process.next(state, data)
  old, new = (process.get_model_weights(s).trainable for s in (state, output.state))
  return [np.asarray(b, np.float64) - np.asarray(a, np.float64) for a, b in zip(old, new)], output


def client_updates(lr: float, data: Sequence[tf.data.Dataset]) -> List[List[np.ndarray]]:
  """Each client's own update from the initial model: a plain FedAvg round with it alone."""
  process = _process(lr)
  state = process.initialize()
  return [_step(process, state, [d])[0] for d in data]


def test_readme_example_clipping_in_build_weighted_fed_avg():
  learning_process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
      model_aggregator=aggregators.norm_clipping_factory(clip_norm=0.05))
  state = learning_process.initialize()
  output = learning_process.next(state, client_data(2))
  aggregator = output.metrics['aggregator']
  assert aggregator['clipping_norm'] == np.float32(0.05)
  updates = client_updates(0.1, client_data(2))
  norms = [unit._norm(u) for u in updates]
  assert aggregator['clipped_count'] == sum(n > 0.05 for n in norms)
  old, new = (learning_process.get_model_weights(s).trainable for s in (state, output.state))
  expected = unit._weighted_mean([unit._clip(u, 0.05) for u in updates], [4.0, 4.0])
  for a, b, want in zip(old, new, expected):  # Server SGD with lr 1: the step is the clipped mean.
    np.testing.assert_allclose(b - a, want, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope='module')
def updates():
  return client_updates(CLIENT_LR, datasets(SIZES))


@pytest.mark.parametrize('name', PLAIN)
def test_every_registry_defense_moves_the_model_as_its_reference_says(name, updates):
  """One round on clients of unequal sizes: the example-count weights matter."""
  config = aggregators.DefenseConfig(name=name, **unit.OVERRIDES[name])
  factory = aggregators.build_defense(config, clients_per_round=len(SIZES), seed=0)
  process = _process(CLIENT_LR, factory)
  step, output = _step(process, process.initialize(), datasets(SIZES))
  expected = unit.REFERENCES[name](updates, [float(s) for s in SIZES])
  for got, want in zip(step, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  aggregator = output.metrics['aggregator']
  assert aggregator['nonfinite_count'] == 0
  assert aggregator['client_count'] == len(SIZES)
  norms = [unit._norm(u) for u in updates]
  np.testing.assert_allclose(aggregator['client_norm_max'], max(norms), rtol=1e-4)
  np.testing.assert_allclose(aggregator['client_norm_mean'], np.mean(norms), rtol=1e-4)
