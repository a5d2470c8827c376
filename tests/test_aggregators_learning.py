"""Our aggregators inside TFF's own `build_weighted_fed_avg`, on a tiny CNN and tiny clients.

The first test is the README example "Using the aggregators in your own TFF project". Each
round's model step is checked against the NumPy reference of its defense
(`tests/test_aggregators.py`) applied to the clients' own updates, which a one-client round
of plain FedAvg gives (server SGD with learning rate 1: the step is the update, in model
space: minus TFF's delta, which the references, odd functions of the updates, do not mind).
The defenses that read side information (their spec's `reads`) refuse a plain
`build_weighted_fed_avg` in one line, and work in `build_attacked_fed_avg` with the channel.
"""
import collections
import functools
import re
from typing import List, Sequence

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import test_aggregators as unit
from tests import defense_references as refs
from tff_backdoor import aggregators
from tff_backdoor import models
from tff_backdoor.aggregators import registry
from tff_backdoor.attacks import AttackConfig, make_client_data
from tff_backdoor.learning import process as process_lib
from tff_backdoor.learning import root_update

# Example counts of the clients of the reference test: 1 to 7 local steps of batch 2, so that
# with learning rate 1 the update norms (1.0, 0.84, 2.9, 2.0, 1.2, 4.9, 1.9) straddle the
# references' bounds (clip 3, centered-clip tau 1, adaptive clip's first bound 1).
SIZES = (2, 4, 6, 8, 10, 12, 14)
# The bar test's clients: all of one size (so a weight cannot tell them apart), 7 for Bulyan.
EQUAL = (6,) * 7
CLIENT_LR = 1.0
# Defenses that refuse a plain build_weighted_fed_avg -> the start of their one-line error.
REFUSALS = {'fltrust': "FLTrust needs the server's own update g0",
            'foolsgold': "FoolsGold needs each client's identity",
            'fldetector': "FLDetector needs each client's identity",
            'deepsight': "DeepSight needs each update's DDifs"}
PLAIN = [name for name in aggregators.DEFENSES if name not in REFUSALS]


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


@functools.lru_cache(maxsize=None)
def _plain_process(lr: float) -> tff.learning.templates.LearningProcess:
  """Plain FedAvg (TFF's mean), built once per learning rate: it gives the clients' updates."""
  return _process(lr)


def _step(process, state, data) -> List[np.ndarray]:
  """(new trainable weights - old) after one round on `data`, and the round's output."""
  output = process.next(state, data)
  old, new = (process.get_model_weights(s).trainable for s in (state, output.state))
  return [np.asarray(b, np.float64) - np.asarray(a, np.float64) for a, b in zip(old, new)], output


def client_updates(lr: float, data: Sequence[tf.data.Dataset],
                   weights=None) -> List[List[np.ndarray]]:
  """Each client's own update from `weights` (default: the initial model), as a model step:
  a plain FedAvg round with it alone."""
  process = _plain_process(lr)
  state = process.initialize()
  if weights is not None:
    state = process.set_model_weights(state, weights)
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


def _round_reference(name, updates, weights, previous_step, aggregator):
  """The step `name` takes on `updates` in a round after `previous_step` (None: the first)."""
  if name == 'adaptive_clip':  # the bound it adapted to, as it reports it
    bound = float(aggregator['clipping_norm'])
    return unit._weighted_mean([unit._clip(c, bound) for c in updates], weights)
  if name == 'centered_clip' and previous_step is not None:  # centred at the last aggregate
    center = np.concatenate([np.ravel(x) for x in previous_step])
    return refs.unflat(refs.centered_clip(updates, center, 1.0, 3), updates[0])
  return unit.REFERENCES[name](updates, weights)


@pytest.mark.parametrize('name', aggregators.DEFENSES)
def test_bar_each_defense_in_plain_build_weighted_fed_avg_two_rounds_or_one_line_refusal(name):
  """TFF's own FedAvg with `registry.build_defense` as the model aggregator, clients of equal
  size: two rounds move the model as the defense's NumPy reference says, or the process
  refuses to build with one line saying what the defense needs and how to supply it."""
  config = aggregators.DefenseConfig(name=name, **unit.OVERRIDES[name])
  factory = registry.build_defense(config, len(EQUAL), seed=0)
  if name in REFUSALS:
    one_line = f'^{re.escape(REFUSALS[name])}[^\n]*build_attacked_fed_avg[^\n]*$'
    with pytest.raises(ValueError, match=one_line):
      _process(CLIENT_LR, factory)
    return
  process = _process(CLIENT_LR, factory)
  state, data, previous = process.initialize(), datasets(EQUAL), None
  for _ in range(2):
    updates = client_updates(CLIENT_LR, data, process.get_model_weights(state))
    step, output = _step(process, state, data)
    expected = _round_reference(name, updates, [float(s) for s in EQUAL], previous,
                                output.metrics['aggregator'])
    for got, want in zip(step, expected):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert output.metrics['aggregator']['client_count'] == len(EQUAL)
    state, previous = output.state, step


def _side_channel_process(name):
  """`build_attacked_fed_avg` with the side channel `name` needs, its client data (equal sizes,
  population indices 0..6) and, for FLTrust, the server's root update function."""
  config = aggregators.DefenseConfig(name=name, **unit.OVERRIDES[name])
  sgd = tff.learning.optimizers.build_sgdm(CLIENT_LR)
  root = root_fn = None
  if name == 'fltrust':
    rng = np.random.default_rng(9)
    root = (rng.random((6, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 6).astype(np.int32))
    root_fn = root_update.build_root_update_fn(model_fn, sgd, root, 2, 1, 0)
  process = process_lib.build_attacked_fed_avg(
      model_fn, sgd, batch_size=2, model_aggregator=registry.build_defense(config, len(EQUAL), 0),
      client_info=name != 'fltrust', root=root, root_epochs=1, root_seed=0)
  empty = datasets([0])[0]
  data = [make_client_data(d, empty, False, seed=i, client_index=i)
          for i, d in enumerate(datasets(EQUAL))]
  return process, data, root_fn


# DeepSight with its DDifs in build_attacked_fed_avg: tests/test_deepsight.py.
@pytest.mark.parametrize('name', sorted(set(REFUSALS) - {'deepsight'}))
def test_side_channel_defenses_tell_equal_clients_apart_in_our_composition(name):
  """FoolsGold, FLDetector (identities) and FLTrust (g0) through `build_attacked_fed_avg`:
  two rounds as their references say, each client its own identity though all weigh the same."""
  process, data, root_fn = _side_channel_process(name)
  identities = [float(i + 1) for i in range(len(EQUAL))]  # the references' identity + 1
  state, history = process.initialize(), None
  for _ in range(2):
    weights = process.get_model_weights(state)
    updates = client_updates(CLIENT_LR, datasets(EQUAL), weights)
    if history is None:  # FoolsGold keeps the last 2 tensors of 8 clients' updates
      history = np.zeros([8, sum(x.size for x in updates[0][-2:])])
    step, output = _step(process, state, data)
    if name == 'foolsgold':
      ref_step, history, alpha = refs.foolsgold_round(updates, identities, history, 2)
      expected = refs.ours(ref_step, alpha)
      shared = unit._foolsgold_first_round(updates, [float(EQUAL[0])] * len(EQUAL))
      assert not all(np.allclose(a, b, atol=1e-5) for a, b in zip(shared, expected))
    elif name == 'fldetector':  # no detection before its window of rounds: the plain mean
      expected = [np.mean(x, axis=0) for x in unit._stack(updates)]
      assert output.metrics['aggregator']['client_count'] == len(EQUAL)
    else:
      g0_step = [-np.asarray(x) for x in root_fn(weights)]  # as a model step, like `updates`
      expected = refs.unflat(refs.fltrust(updates, [1.0] * len(EQUAL), g0_step), updates[0])
      assert output.metrics['aggregator']['server_update_norm'] > 0
    for got, want in zip(step, expected):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    state = output.state
