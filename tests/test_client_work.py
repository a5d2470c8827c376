"""Attacker client work: the boost algebra, the norm bound, and equality with TFF's FedAvg."""
import numpy as np
import pytest
import tensorflow_federated as tff

from tests import tiny
from tff_backdoor.attacks import AttackConfig, build_attacker_client_work, make_client_data
from tff_backdoor.learning import process as process_lib

LR = 0.1


def _client_work(attack):
  return tiny.client_work(attack, LR)


def _initial_weights():
  return tiny.initial_weights()


def _updates(work, clients):
  out = work.next(work.initialize(), [_initial_weights()] * len(clients), clients)
  return [r.update for r in out.result], [r.update_weight for r in out.result], out.measurements


@pytest.fixture(scope='module')
def data():
  return {'benign': tiny.dataset(12, seed=1), 'malicious': tiny.dataset(5, seed=2, batch_size=5),
          'empty': tiny.dataset(0, seed=3)}


def test_boost_update_is_benign_delta_plus_boosted_malicious_delta(data):
  boost = 3.0
  work = _client_work(AttackConfig('boost', boost=boost))
  updates, weights, measurements = _updates(work, [
      make_client_data(data['benign'], data['empty'], False, 0),      # delta_b
      make_client_data(data['malicious'], data['empty'], False, 0),   # delta_m
      make_client_data(data['benign'], data['malicious'], True, 0),   # the attacker
  ])
  delta_b, delta_m, attacker = updates
  for b, m, a in zip(delta_b, delta_m, attacker):
    np.testing.assert_allclose(a, b + boost * m, rtol=1e-5, atol=1e-6)
  assert np.abs(np.concatenate([m.ravel() for m in delta_m])).max() > 0
  assert weights[2] == 12.0  # weighted by its benign examples, like the authors' code
  assert measurements['num_attackers'] == 1
  assert measurements['mean_malicious_update_norm'] > measurements['mean_honest_update_norm']


@pytest.mark.parametrize('boost,bound', [(1.0, 0.05), (4.0, 0.02)])
def test_norm_bounded_update_norm_is_at_most_boost_times_bound(data, boost, bound):
  work = _client_work(AttackConfig('norm_bounded', boost=boost, norm_bound=bound,
                                   projection_rounds=3))
  updates, _, measurements = _updates(
      work, [make_client_data(data['benign'], data['malicious'], True, 0)])
  norm = np.sqrt(sum(np.sum(np.square(u)) for u in updates[0]))
  assert norm <= boost * bound + 1e-5
  assert norm > 0.5 * boost * bound  # the projection is active, not a zero update
  assert abs(measurements['mean_malicious_update_norm'] - norm) < 1e-4


def test_data_poison_trains_on_the_mixture_with_its_weight(data):
  work = _client_work(AttackConfig('data_poison'))
  updates, weights, _ = _updates(work, [
      make_client_data(data['benign'], data['malicious'], True, 7),
      make_client_data(data['benign'], data['malicious'], True, 7),
      make_client_data(data['benign'], data['empty'], False, 7)])
  assert weights == [17.0, 17.0, 12.0]
  for a, b in zip(updates[0], updates[1]):  # same seed -> same shuffle -> same update
    np.testing.assert_array_equal(a, b)
  assert any(np.abs(a - h).max() > 1e-6 for a, h in zip(updates[0], updates[2]))


def test_round_without_attacker_equals_build_weighted_fed_avg(data):
  clients = [tiny.dataset(12, seed=1), tiny.dataset(7, seed=4)]
  vanilla = tff.learning.algorithms.build_weighted_fed_avg(
      tiny.model_fn(), tff.learning.optimizers.build_sgdm(LR),
      tff.learning.optimizers.build_sgdm(1.0))
  ours = process_lib.build_attacked_fed_avg(
      tiny.model_fn(), tff.learning.optimizers.build_sgdm(LR),
      tff.learning.optimizers.build_sgdm(1.0), batch_size=4,
      attack=AttackConfig('boost', boost=10.0))
  v_out = vanilla.next(vanilla.initialize(), clients)
  o_out = ours.next(ours.initialize(),
                    [make_client_data(c, data['empty'], False, 0) for c in clients])
  v_w = vanilla.get_model_weights(v_out.state).trainable
  o_w = ours.get_model_weights(o_out.state).trainable
  for a, b in zip(v_w, o_w):
    np.testing.assert_array_equal(a, b)
  assert (o_out.metrics['client_work']['train']['loss']
          == v_out.metrics['client_work']['train']['loss'])


def test_non_finite_client_update_is_zeroed_with_zero_weight(data):
  import collections
  import tensorflow as tf
  x, y = tiny.arrays(4, seed=9)
  x[0, 0, 0, 0] = np.nan
  bad = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(4)
  work = _client_work(AttackConfig('boost', boost=1.0))
  updates, weights, measurements = _updates(work, [make_client_data(bad, data['empty'], False, 0)])
  assert weights[0] == 0.0
  assert all(np.all(u == 0) for u in updates[0])
  assert measurements['train']['num_examples'] == 0  # its training metrics are dropped too
  _, _, measurements = _updates(work, [make_client_data(data['benign'], data['empty'], False, 0)])
  assert measurements['train']['num_examples'] == 12


def test_sun_cnn_dropout_is_a_function_of_the_client_seed_not_of_order_or_history():
  """Dropout masks come from each client's seed: same seed and data -> same update, wherever
  and whenever it runs (reversed client order, a second call on the same worker); another
  seed -> other masks. Keras' stateful Dropout gives every client the same masks instead."""
  from tff_backdoor import models  # pylint: disable=g-import-not-at-top
  model_fn = process_lib.keras_model_fn(
      lambda: models.sun_cnn(tiny.SHAPE, tiny.NUM_CLASSES, seed=0), tiny.SHAPE)
  work = build_attacker_client_work(model_fn, tff.learning.optimizers.build_sgdm(LR),
                                    AttackConfig('boost', boost=2.0), batch_size=4)
  fed_avg = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, tff.learning.optimizers.build_sgdm(LR))
  weights = fed_avg.get_model_weights(fed_avg.initialize())
  benign, malicious, empty = (tiny.dataset(8, seed=1), tiny.dataset(4, seed=2),
                              tiny.dataset(0, seed=3))
  clients = [make_client_data(benign, empty, False, 11),
             make_client_data(benign, empty, False, 12),
             make_client_data(benign, malicious, True, 11),
             make_client_data(benign, empty, False, 11)]

  def updates(order):
    out = work.next(work.initialize(), [weights] * len(order), [clients[i] for i in order])
    by_client = dict(zip(order, (r.update for r in out.result)))
    return [np.concatenate([np.ravel(t) for t in by_client[i]]) for i in range(len(clients))]

  first = updates([0, 1, 2, 3])
  for again in (updates([3, 2, 1, 0]), updates([0, 1, 2, 3])):
    for a, b in zip(first, again):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(first[0], first[3])  # Same seed and data.
  assert np.abs(first[0] - first[1]).max() > 1e-4  # Another seed: other masks.
  keras_weights = model_fn()._keras_model.trainable_weights  # pylint: disable=protected-access
  assert len(weights.trainable) == len(keras_weights)  # The mask seed is not a weight.


def test_sun_cnn_with_stateless_dropout_saves_and_loads(tmp_path):
  """final_model.keras stays loadable: same layers, weights and outputs after a round trip."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tff_backdoor import models  # pylint: disable=g-import-not-at-top
  model = models.sun_cnn(tiny.SHAPE, tiny.NUM_CLASSES, seed=0)
  model.save(tmp_path / 'm.keras')
  loaded = tf.keras.models.load_model(tmp_path / 'm.keras', custom_objects=models.CUSTOM_OBJECTS)
  assert [type(l).__name__ for l in loaded.layers].count('StatelessDropout') == 2
  assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
  x, _ = tiny.arrays(3, seed=0)
  np.testing.assert_array_equal(loaded(x), model(x))


def test_invalid_attack_config_is_rejected():
  with pytest.raises(ValueError, match="unknown attack='nope'"):
    AttackConfig('nope').validate()
  with pytest.raises(ValueError, match='norm_bound'):
    AttackConfig('norm_bounded', norm_bound=-1.0).validate()
  for mode in ('boost', 'norm_bounded', 'constrain_scale'):  # unset boost = clients per round
    with pytest.raises(ValueError, match='with_clients_per_round'):
      AttackConfig(mode).validate_for_client_work()
    assert AttackConfig(mode).with_clients_per_round(7).validate_for_client_work().boost == 7.0
  assert AttackConfig('boost', boost=2.5).with_clients_per_round(7).boost == 2.5
  AttackConfig('data_poison').validate_for_client_work()  # no boost needed


def test_every_attack_mode_has_one_attacker():
  from tff_backdoor.attacks import attack_config, client_work  # pylint: disable=g-import-not-at-top
  assert tuple(client_work.ATTACKERS) == attack_config.ATTACK_MODES
  assert set(attack_config.BOOSTED_MODES) | set(attack_config.MIXTURE_MODES) == set(
      attack_config.ATTACK_MODES)
