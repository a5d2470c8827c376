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
from tff_backdoor.learning.side_channel import SideChannel

SHAPES = ((3, 2), (4,), (2,))
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
UPDATE_TYPE = tiny.info_update_type(VALUE_TYPE, client_info=True)
WEIGHT_TYPE = tff.TensorType(np.float32)
POPULATION = 9


def test_weights_match_the_reference_code_on_random_histories():
  rng = np.random.default_rng(0)
  for n in (1, 2, 5, 8):
    histories = rng.normal(size=(n, 6))
    histories[n // 2] = histories[0] * 2.0 + 0.01 * rng.normal(size=6)  # a near-twin
    got = foolsgold.foolsgold_weights(tf.constant(histories, tf.float32), 1.0).numpy()
    np.testing.assert_allclose(got, refs.foolsgold_weights(histories), atol=1e-5)


def test_the_paper_and_the_authors_code_give_the_same_weights():
  """Algorithm 1 as written (tests/defense_references.foolsgold_paper_weights) and the
  authors' `foolsgold` (with its 0.99 for the largest alpha) agree at kappa = 1."""
  rng = np.random.default_rng(2)
  for n in (1, 2, 5, 8):
    histories = rng.normal(size=(n, 6))
    histories[n // 2] = histories[0] * 3.0 + 0.01 * rng.normal(size=6)
    np.testing.assert_allclose(refs.foolsgold_paper_weights(histories),
                               refs.foolsgold_weights(histories), atol=1e-9)


def test_the_step_is_the_papers_divided_by_the_sum_of_the_weights():
  """Fung et al.: w += sum_i alpha_i Delta_i; this package divides by sum_i alpha_i (the
  departure docs/DEFENSES.md gives). Three diverse clients and a fourth near-copy of one."""
  factory = foolsgold.FoolsGoldFactory(num_clients=4, history_tensors=0)
  process = factory.create(UPDATE_TYPE, WEIGHT_TYPE)
  rng = np.random.default_rng(5)
  updates = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(3)]
  updates.append([(x * 2.0 + 0.01).astype(np.float32) for x in updates[0]])
  weights = [np.float32(c + 1) for c in range(4)]
  result = process.next(process.initialize(), tiny.with_info(updates, range(4)),
                        [np.float32(8)] * 4).result
  width = sum(int(np.prod(s)) for s in SHAPES)
  step, _, alpha = refs.foolsgold_round(updates, weights, np.zeros([4, width]), tensors=0)
  assert list(alpha) == [0.0, 1.0, 1.0, 0.0]  # the copied pair: 0; sum(alpha) = 2
  for got, paper in zip(result, step):
    np.testing.assert_allclose(got, paper / np.sum(alpha), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, paper, rtol=0.05)  # the paper's step is twice as large


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
  process = factory.create(UPDATE_TYPE, WEIGHT_TYPE)
  rng = np.random.default_rng(1)
  direction = [rng.normal(size=s) for s in SHAPES]
  state, history = process.initialize(), np.zeros([POPULATION, 6])
  for _ in range(2):
    updates, weights = _round_updates(rng, direction)
    ids = [int(w) - 1 for w in weights]  # the references' weights are the identities + 1
    output = process.next(state, tiny.with_info(updates, ids), [np.float32(5)] * len(ids))
    step, history, wv = refs.foolsgold_round(updates, weights, history)
    for got, want in zip(output.result, refs.ours(step, wv)):  # ours: step / sum(alpha)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(output.state['history'], history, rtol=1e-5, atol=1e-5)
    state = output.state
  assert list(wv[-2:]) == [0.0, 0.0] and np.all(wv[:4] > 0)
  assert output.measurements['zero_weight_count'] == 2
  tff.backends.native.compile_to_mergeable_comp_form(process.next)


def test_identity_travels_in_the_client_info_and_the_weight_is_the_examples():
  work = tiny.client_work(AttackConfig('boost', boost=1.0), channel=SideChannel(client_info=True))
  empty = tiny.dataset(0, seed=3)
  clients = [make_client_data(tiny.dataset(8, seed=1), empty, False, 1, client_index=4),
             make_client_data(tiny.dataset(6, seed=2), empty, False, 2, client_index=0)]
  out = work.next(work.initialize(), [tiny.initial_weights()] * 2, clients)
  assert [r.update['info']['client'] for r in out.result] == [4, 0]
  assert [r.update_weight for r in out.result] == [8.0, 6.0]


def test_plain_build_weighted_fed_avg_is_refused_in_one_line():
  factory = aggregators.build_defense(
      aggregators.DefenseConfig(name='foolsgold', foolsgold_clients=POPULATION), 6, seed=0)
  with pytest.raises(ValueError, match=r"^FoolsGold needs each client's identity: .*"
                                       r"client_info=True[^\n]*$"):
    tff.learning.algorithms.build_weighted_fed_avg(
        tiny.model_fn(), tff.learning.optimizers.build_sgdm(0.1), model_aggregator=factory)


def test_population_size_is_required():
  with pytest.raises(ValueError, match='population size'):
    aggregators.build_defense(aggregators.DefenseConfig(name='foolsgold'), 6, seed=0)
