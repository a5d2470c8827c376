"""FoolsGold: the reference code's weights in TF, histories across rounds, sybils given 0."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import defense_references as refs
from tests import tiny
from tff_backdoor import aggregators
from tff_backdoor.aggregators import foolsgold
from tff_backdoor.attacks import AttackConfig, make_client_data

SHAPES = ((3, 2), (4,), (2,))
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
WEIGHT_TYPE = tff.TensorType(np.float32)
POPULATION = 9


def test_weights_match_the_reference_code_on_random_histories():
  rng = np.random.default_rng(0)
  for n in (1, 2, 5, 8):
    histories = rng.normal(size=(n, 6))
    histories[n // 2] = histories[0] * 2.0 + 0.01 * rng.normal(size=6)  # a near-twin
    got = foolsgold.foolsgold_weights(tf.constant(histories, tf.float32), 1.0).numpy()
    np.testing.assert_allclose(got, refs.foolsgold_weights(histories), atol=1e-5)


def _round_updates(rng, sybil_direction):
  """Clients 0-3 honest and diverse; clients 6 and 7 sybils sending the same direction."""
  updates = {c: [rng.normal(size=s).astype(np.float32) for s in SHAPES] for c in range(4)}
  for c in (6, 7):
    updates[c] = [(d + 0.01 * rng.normal(size=d.shape)).astype(np.float32)
                  for d in sybil_direction]
  ids = sorted(updates)
  return [updates[c] for c in ids], [np.float32(c + 1) for c in ids]


def test_two_rounds_match_numpy_and_the_sybils_get_weight_zero():
  factory = aggregators.build_defense(
      aggregators.DefenseConfig(name='foolsgold', foolsgold_clients=POPULATION), 6, seed=0)
  process = factory.create(VALUE_TYPE, WEIGHT_TYPE)
  rng = np.random.default_rng(1)
  direction = [rng.normal(size=s) for s in SHAPES]
  state, history = process.initialize(), np.zeros([POPULATION, 6])
  for _ in range(2):
    updates, weights = _round_updates(rng, direction)
    output = process.next(state, updates, weights)
    expected, history, wv = refs.foolsgold_round(updates, weights, history)
    for got, want in zip(output.result, expected):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(output.state['history'], history, rtol=1e-5, atol=1e-5)
    state = output.state
  assert list(wv[-2:]) == [0.0, 0.0] and np.all(wv[:4] > 0)
  assert output.measurements['zero_weight_count'] == 2
  tff.backends.native.compile_to_mergeable_comp_form(process.next)


def test_identity_travels_as_the_weight_of_the_client_work():
  work = tiny.client_work(AttackConfig('boost', boost=1.0), identify_clients=True)
  empty = tiny.dataset(0, seed=3)
  clients = [make_client_data(tiny.dataset(8, seed=1), empty, False, 1, client_index=4),
             make_client_data(tiny.dataset(8, seed=2), empty, False, 2, client_index=0)]
  out = work.next(work.initialize(), [tiny.initial_weights()] * 2, clients)
  assert [r.update_weight for r in out.result] == [5.0, 1.0]


def test_population_size_is_required():
  with pytest.raises(ValueError, match='population size'):
    aggregators.build_defense(aggregators.DefenseConfig(name='foolsgold'), 6, seed=0)
