"""FLTrust: the rule against NumPy, the NaN guard, and the server's own update in the process."""

import collections

import numpy as np
import pytest
import tensorflow_federated as tff

from tests import defense_references as refs
from tests import tiny
from tff_backdoor import aggregators
from tff_backdoor.aggregators import fltrust
from tff_backdoor.attacks import AttackConfig, make_client_data
from tff_backdoor.learning import process as process_lib
from tff_backdoor.learning import update_capture
from tff_backdoor.learning import root_update

SHAPES = ((2, 3), (4,))
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
WEIGHT_TYPE = tff.TensorType(np.float32)
LR = 0.1


def _hand_made(seed=0):
  rng = np.random.default_rng(seed)
  reference = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
  updates = [[(r + 0.3 * rng.normal(size=s)).astype(np.float32) for r, s in zip(reference, SHAPES)]
             for _ in range(5)]
  updates[1] = [(-4.0 * r).astype(np.float32) for r in reference]  # opposed: trust 0
  updates[2] = [(30.0 * r + 0.1).astype(np.float32) for r in reference]  # boosted, aligned
  updates[3] = [np.zeros(s, np.float32) for s in SHAPES]  # zero update: trust 0
  weights = [np.float32(w) for w in (3.0, 1.0, 2.0, 5.0, 0.0)]  # the last does not take part
  return updates, weights, reference


UPDATE_TYPE = tiny.info_update_type(VALUE_TYPE, root_update=True)


def _round(factory, updates, weights, reference):
  process = factory.create(UPDATE_TYPE, WEIGHT_TYPE)
  output = process.next(process.initialize(),
                        tiny.with_info(updates, range(len(updates)), reference), weights)
  return refs.flat_update(output.result), output.measurements


def test_fltrust_matches_numpy_on_hand_made_updates():
  updates, weights, reference = _hand_made()
  result, m = _round(fltrust.FLTrustFactory(), updates, weights, reference)
  np.testing.assert_allclose(result, refs.fltrust(updates, weights, reference), rtol=1e-5,
                             atol=1e-6)
  assert np.linalg.norm(result) <= np.linalg.norm(refs.flat_update(reference)) * (1 + 1e-5)  # boost undone
  assert m['trusted_count'] == 2  # clients 0 and 2
  np.testing.assert_allclose(m['server_update_norm'], np.linalg.norm(refs.flat_update(reference)), rtol=1e-6)
  assert 0.0 < m['mean_trust'] < 1.0


def test_fltrust_behind_the_guard_drops_non_finite_updates_and_a_non_finite_reference():
  updates, weights, reference = _hand_made(1)
  factory = aggregators.build_defense(aggregators.DefenseConfig(name='fltrust'), 5, seed=0)
  bad = [list(u) for u in updates]
  bad[0][0] = np.full(SHAPES[0], np.nan, np.float32)
  result, m = _round(factory, bad, weights, reference)
  keep = [1, 2, 3, 4]
  np.testing.assert_allclose(
      result, refs.fltrust([updates[i] for i in keep], [weights[i] for i in keep], reference),
      rtol=1e-5, atol=1e-6)
  assert m['nonfinite_count'] == 1
  nan_reference = [np.full(s, np.nan, np.float32) for s in SHAPES]
  result, m = _round(factory, updates, weights, nan_reference)
  np.testing.assert_array_equal(result, 0.0)
  assert m['trusted_count'] == 0
  tff.backends.native.compile_to_mergeable_comp_form(factory.create(UPDATE_TYPE, WEIGHT_TYPE).next)


def test_an_update_too_large_for_float32_gets_trust_0_not_a_nan_round():
  # ||g|| ||g0|| overflows: the cosine would be inf / inf = NaN and void the round's sum.
  updates, weights, reference = _hand_made(2)
  huge = [list(u) for u in updates]
  peak = max(np.abs(r).max() for r in reference)
  huge[0] = [(r * np.float32(1e38 / peak)).astype(np.float32) for r in reference]  # finite
  with np.errstate(over='ignore'):
    assert np.isinf(sum(np.sum(h * r) for h, r in zip(huge[0], reference)))  # g . g0 = inf
  result, m = _round(fltrust.FLTrustFactory(), huge, weights, reference)
  keep = [1, 2, 3, 4]
  np.testing.assert_allclose(
      result, refs.fltrust([updates[i] for i in keep], [weights[i] for i in keep], reference),
      rtol=1e-5, atol=1e-6)
  assert m['client_decisions'][0] == 0.0 and m['client_decisions'][4] == -1.0  # 4: weight 0


def _process(root, attack):
  factory = aggregators.build_defense(aggregators.DefenseConfig(name='fltrust'), 3, seed=0)
  return process_lib.build_attacked_fed_avg(
      tiny.model_fn(), tff.learning.optimizers.build_sgdm(LR), attack=attack, batch_size=4,
      model_aggregator=factory, root=root, root_epochs=1, root_seed=3)


def test_process_trains_the_server_update_and_aggregates_against_it():
  root = tiny.arrays(8, seed=7)
  process = _process(root, AttackConfig('boost', boost=5.0))
  empty = tiny.dataset(0, seed=3)
  clients = [make_client_data(tiny.dataset(8, seed=1), empty, False, 1, client_index=0),
             make_client_data(tiny.dataset(8, seed=2), empty, False, 2, client_index=1),
             make_client_data(tiny.dataset(8, seed=1), tiny.dataset(4, seed=5), True, 3,
                              client_index=2)]
  state = process.initialize()
  weights = process.get_model_weights(state)
  g0 = root_update.build_root_update_fn(tiny.model_fn(), tff.learning.optimizers.build_sgdm(LR),
                                        root, batch_size=4, epochs=1, seed=3)(weights)
  work = tiny.client_work(AttackConfig('boost', boost=5.0), LR)  # the same clients, no channel
  updates = update_capture.capture_client_updates(
      work, state, weights, [collections.OrderedDict(c, control=c["control"].map(_without_index)) for c in clients])
  output = process.next(state, clients)
  expected = refs.flat_update(weights.trainable) - refs.fltrust(updates, [1.0] * 3, g0)
  np.testing.assert_allclose(refs.flat_update(process.get_model_weights(output.state).trainable), expected,
                             rtol=1e-5, atol=1e-6)
  m = output.metrics['aggregator']
  np.testing.assert_allclose(m['server_update_norm'], np.linalg.norm(refs.flat_update(g0)), rtol=1e-6)
  assert np.linalg.norm(refs.flat_update(g0)) > 0
  assert 'reference' not in str(state.aggregator)  # g0 is no state: it comes with the updates


def _without_index(control):
  return collections.OrderedDict(is_malicious=control['is_malicious'], seed=control['seed'])


def test_plain_build_weighted_fed_avg_is_refused_in_one_line():
  factory = aggregators.build_defense(aggregators.DefenseConfig(name='fltrust'), 3, seed=0)
  with pytest.raises(ValueError, match=r"^FLTrust needs the server's own update g0 .*"
                                       r"build_attacked_fed_avg\(\.\.\., root=\(x, y\)\)[^\n]*$"):
    tff.learning.algorithms.build_weighted_fed_avg(
        tiny.model_fn(), tff.learning.optimizers.build_sgdm(LR), model_aggregator=factory)
