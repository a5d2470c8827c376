"""FLTrust: the rule against NumPy, the NaN guard, and the server's own update in the process."""

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
from tff_backdoor.learning import server_update

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


def _round(factory, updates, weights, reference):
  process = factory.create(VALUE_TYPE, WEIGHT_TYPE)
  state = fltrust.with_reference(process.initialize(), reference)
  output = process.next(state, updates, weights)
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
  tff.backends.native.compile_to_mergeable_comp_form(factory.create(VALUE_TYPE, WEIGHT_TYPE).next)


def _process_and_server_fn(root, client_work):
  model_fn = tiny.model_fn()
  server_fn = server_update.build_server_update_fn(
      model_fn, tff.learning.optimizers.build_sgdm(LR), root, batch_size=4, epochs=1, seed=3,
      hparams_type=client_work.get_hparams.type_signature.result)
  factory = aggregators.build_defense(aggregators.DefenseConfig(name='fltrust'), 3, seed=0)
  process = process_lib.compose_fed_avg(model_fn, client_work, model_aggregator=factory,
                                        server_update_fn=server_fn)
  return process, server_fn


def test_process_trains_the_server_update_and_aggregates_against_it():
  root = tiny.arrays(8, seed=7)
  work = tiny.client_work(AttackConfig('boost', boost=5.0), LR)
  process, server_fn = _process_and_server_fn(root, work)
  empty = tiny.dataset(0, seed=3)
  clients = [make_client_data(tiny.dataset(8, seed=1), empty, False, 1),
             make_client_data(tiny.dataset(8, seed=2), empty, False, 2),
             make_client_data(tiny.dataset(8, seed=1), tiny.dataset(4, seed=5), True, 3)]
  state = process.initialize()
  weights = process.get_model_weights(state)
  g0 = server_fn(weights, work.get_hparams(state.client_work))
  updates = update_capture.capture_client_updates(work, state, weights, clients)
  output = process.next(state, clients)
  expected = refs.flat_update(weights.trainable) - refs.fltrust(updates, [1.0] * 3, g0)
  np.testing.assert_allclose(refs.flat_update(process.get_model_weights(output.state).trainable), expected,
                             rtol=1e-5, atol=1e-6)
  m = output.metrics['aggregator']
  np.testing.assert_allclose(m['server_update_norm'], np.linalg.norm(refs.flat_update(g0)), rtol=1e-6)
  assert np.linalg.norm(refs.flat_update(g0)) > 0


def test_plain_tff_client_work_composes_with_the_server_update():
  """The documented use outside this package: TFF's own model-delta client work."""
  model_fn = tiny.model_fn()
  work = tff.learning.templates.build_model_delta_client_work(
      model_fn, tff.learning.optimizers.build_sgdm(LR), tff.learning.ClientWeighting.NUM_EXAMPLES)
  process, _ = _process_and_server_fn(tiny.arrays(8, seed=7), work)
  output = process.next(process.initialize(), [tiny.dataset(8, seed=1), tiny.dataset(8, seed=2)])
  m = output.metrics['aggregator']
  assert m['server_update_norm'] > 0 and m['client_count'] == 2


def test_composition_refuses_an_aggregator_without_a_reference():
  work = tiny.client_work(AttackConfig('boost', boost=1.0), LR)
  with pytest.raises(TypeError, match="no 'reference' field"):
    _ = process_lib.compose_fed_avg(
        tiny.model_fn(), work, server_update_fn=tff.tensorflow.computation(
            lambda w, h: w.trainable, process_lib.compose_fed_avg(
                tiny.model_fn(), work).get_model_weights.type_signature.result,
            work.get_hparams.type_signature.result))
