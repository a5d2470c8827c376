"""Neurotoxin (mask of the last global update) and constrain-and-scale (anomaly term, gamma)."""
import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import tiny
from tff_backdoor.attacks import AttackConfig, make_client_data
from tff_backdoor.attacks import gradient_transforms
from tff_backdoor.learning import process as process_lib
from tff_backdoor.learning import update_capture
from tff_backdoor.learning.side_channel import SideChannel

LR = 0.1
MASKED = 0.3


def _client_work(attack):
  return tiny.client_work(attack, LR,
                          channel=SideChannel(global_update=attack.reads_global_update))


def _sent(weights, global_update, has_global_update):
  """What a global-update side channel sends a client (`learning.side_channel`)."""
  return collections.OrderedDict(model=weights, server=collections.OrderedDict(
      global_update=global_update, has_global_update=has_global_update))


def _initial_weights():
  return tiny.initial_weights()


def _flat(structure):
  return np.concatenate([np.ravel(np.asarray(t)) for t in structure])


@pytest.fixture(scope='module')
def data():
  return {'benign': tiny.dataset(12, seed=1), 'malicious': tiny.dataset(5, seed=2),
          'empty': tiny.dataset(0, seed=3)}


def _attacker(data, seed=5):
  return make_client_data(data['benign'], data['malicious'], True, seed)


def test_neurotoxin_update_is_exactly_zero_on_the_top_coordinates_of_the_global_update(data):
  weights = _initial_weights()
  rng = np.random.default_rng(0)
  last = [rng.normal(size=np.shape(t)).astype(np.float32) for t in weights.trainable]
  work = _client_work(AttackConfig('neurotoxin', mask_fraction=MASKED))
  sent = _sent(weights, last, True)
  out = work.next(work.initialize(), [sent], [_attacker(data)])
  update = _flat(out.result[0].update)
  magnitude = np.abs(_flat(last))
  k = int(np.floor(MASKED * magnitude.size))
  top = np.argsort(-magnitude)[:k]
  np.testing.assert_array_equal(update[top], 0.0)
  rest = np.setdiff1d(np.arange(update.size), top)
  assert np.mean(update[rest] != 0.0) > 0.5  # it did train on the other coordinates
  assert out.measurements['num_attackers'] == 1


def test_neurotoxin_without_a_previous_update_is_data_poison(data):
  weights = _initial_weights()
  zeros = [np.zeros(np.shape(t), np.float32) for t in weights.trainable]
  work = _client_work(AttackConfig('neurotoxin', mask_fraction=MASKED))
  sent = _sent(weights, zeros, False)
  toxic = work.next(work.initialize(), [sent], [_attacker(data)]).result[0].update
  poison = _client_work(AttackConfig('data_poison'))
  plain = poison.next(poison.initialize(), [weights], [_attacker(data)]).result[0].update
  np.testing.assert_array_equal(_flat(toxic), _flat(plain))


def test_bottom_coordinates_mask_counts_and_ties_to_no_mask():
  update = [tf.constant([[3.0, -1.0], [0.5, -4.0]]), tf.constant([2.0, 0.1])]
  keep = gradient_transforms.bottom_coordinates_mask(update, 0.5, tf.constant(True))
  np.testing.assert_array_equal(_flat(keep), [0, 1, 1, 0, 0, 1])  # |4|, |3|, |2| masked
  none = gradient_transforms.bottom_coordinates_mask(update, 0.5, tf.constant(False))
  np.testing.assert_array_equal(_flat(none), np.ones(6))
  zero = gradient_transforms.bottom_coordinates_mask(
      [tf.zeros([2, 2]), tf.zeros([2])], 0.5, tf.constant(True))
  np.testing.assert_array_equal(_flat(zero), np.ones(6))


def test_process_hands_the_attacker_the_last_global_update(data):
  """Round 1's attacker is masked on the top coordinates of w1 - w0, computed by the process's
  own distributor; round 0 has no update; the reference re-run sees the same broadcast."""
  process = process_lib.build_attacked_fed_avg(
      tiny.model_fn(), tff.learning.optimizers.build_sgdm(LR), batch_size=4,
      attack=AttackConfig('neurotoxin', mask_fraction=MASKED))
  clients = [make_client_data(data['benign'], data['empty'], False, 1), _attacker(data)]
  state0 = process.initialize()
  out0 = process.next(state0, clients)
  assert out0.metrics['distributor']['last_update_norm'] == 0.0
  w0 = _flat(process.get_model_weights(state0).trainable)
  w1 = _flat(process.get_model_weights(out0.state).trainable)
  out1 = process.next(out0.state, clients)
  np.testing.assert_allclose(out1.metrics['distributor']['last_update_norm'],
                             np.linalg.norm(w1 - w0), rtol=1e-5)
  work = _client_work(AttackConfig('neurotoxin', mask_fraction=MASKED))
  distributor = process_lib.build_distributor(tiny.model_fn(), SideChannel(global_update=True))
  updates = update_capture.capture_client_updates(
      work, out0.state, process.get_model_weights(out0.state), clients, distributor)
  attacker = np.concatenate([np.ravel(u) for u in updates[1]])
  top = np.argsort(-np.abs(w1 - w0))[:int(np.floor(MASKED * w0.size))]
  np.testing.assert_array_equal(attacker[top], 0.0)
  assert np.abs(attacker).max() > 0


def test_constrain_scale_anomaly_term_lowers_the_distance_and_gamma_scales(data):
  weights = _initial_weights()

  def update(alpha, boost):
    work = _client_work(AttackConfig('constrain_scale', alpha=alpha, boost=boost))
    return _flat(work.next(work.initialize(), [weights], [_attacker(data)]).result[0].update)

  task_only, constrained, scaled = update(1.0, 1.0), update(0.3, 1.0), update(0.3, 4.0)
  poison = _client_work(AttackConfig('data_poison'))
  plain = _flat(poison.next(poison.initialize(), [weights], [_attacker(data)]).result[0].update)
  np.testing.assert_allclose(task_only, plain, rtol=1e-6, atol=1e-7)  # alpha = 1: no term
  assert np.linalg.norm(constrained) < 0.9 * np.linalg.norm(task_only)
  np.testing.assert_allclose(scaled, 4.0 * constrained, rtol=1e-5, atol=1e-7)


def test_distance_term_gradient_matches_numpy():
  g, w, w0 = [tf.constant([1.0, 2.0])], [tf.constant([3.0, 4.0])], [tf.constant([0.0, 0.0])]
  out = gradient_transforms.with_distance_term(g, w, w0, 0.25)
  np.testing.assert_allclose(out[0], 0.25 * np.array([1, 2]) + 0.75 * np.array([3, 4]) / 5.0,
                             rtol=1e-6)
  at_start = gradient_transforms.with_distance_term(g, w0, w0, 0.25)
  np.testing.assert_allclose(at_start[0], [0.25, 0.5])  # no NaN at distance 0


def test_invalid_new_attack_parameters_are_rejected():
  with pytest.raises(ValueError, match='mask_fraction'):
    AttackConfig('neurotoxin', mask_fraction=1.0).validate()
  with pytest.raises(ValueError, match='alpha'):
    AttackConfig('constrain_scale', alpha=0.0).validate()


def test_neurotoxin_asks_for_the_global_update_side_channel_explicitly():
  assert AttackConfig('neurotoxin').reads_global_update
  assert not AttackConfig('constrain_scale', boost=1.0).reads_global_update
  with pytest.raises(ValueError, match='reads the last global update'):
    tiny.client_work(AttackConfig('neurotoxin'), LR)