"""The defenses of issue 29 (RFA, Bulyan, centered clipping, RLR, FLAME, CRFL) against NumPy.

`tests/test_aggregators.py` runs every registry defense against its reference in
`tests/defense_references.py` (and under the non-finite guard, with all weights 0, mergeable);
here: what each rule reports, its state across rounds, its noise, FLAME's clustering against
scikit-learn's HDBSCAN, and CRFL's server step, alone and inside `build_weighted_fed_avg`.
"""
import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import defense_references as refs
from tests import test_aggregators_learning as learning
from tff_backdoor import aggregators
from tff_backdoor.aggregators import bulyan
from tff_backdoor.aggregators import centered_clipping
from tff_backdoor.aggregators import crfl
from tff_backdoor.aggregators import flame
from tff_backdoor.aggregators import geometric_median
from tff_backdoor.aggregators import hdbscan_rule
from tff_backdoor.aggregators import registry
from tff_backdoor.aggregators import robust_lr

SHAPES = ((2, 3), (5,))
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
WEIGHT_TYPE = tff.TensorType(np.float32)
TOL = dict(rtol=1e-5, atol=1e-5)


def _clients(n, seed, attackers=0, offset=None):
  """n updates around a common direction; the first `attackers` shifted far by `offset`."""
  rng = np.random.default_rng(seed)
  direction = [rng.normal(size=s) for s in SHAPES]
  updates = [[(d + 0.3 * rng.normal(size=s)).astype(np.float32) for d, s in zip(direction, SHAPES)]
             for _ in range(n)]
  for i in range(attackers):
    updates[i] = [(x + o).astype(np.float32) for x, o in zip(updates[i], offset)]
  return updates, [np.float32(w) for w in rng.uniform(1.0, 4.0, n)]


def _run(factory, updates, weights, state=None):
  process = factory.create(VALUE_TYPE, WEIGHT_TYPE)
  output = process.next(process.initialize() if state is None else state, updates, weights)
  return [np.asarray(x) for x in output.result], output.measurements, output.state


def _assert_close(got, want):
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, **TOL)


def test_geomed_resists_a_boosted_client_and_reports_its_distances():
  offset = [np.full(s, 50.0) for s in SHAPES]
  updates, weights = _clients(9, seed=0, attackers=1, offset=offset)
  result, m, _ = _run(geometric_median.GeometricMedianFactory(passes=5, nu=1e-6), updates,
                      weights)
  _assert_close(result, refs.geomed(updates, weights, 5, 1e-6))
  distances = np.linalg.norm(refs.flat(updates) - refs.flat([result]), axis=1)
  np.testing.assert_allclose(m['geomed_max_distance'], distances.max(), rtol=1e-4)
  np.testing.assert_allclose(m['geomed_objective'], np.dot(weights, distances) / np.sum(weights),
                             rtol=1e-4)
  honest_mean = refs.flat(updates[1:]).mean(0)
  mean = refs.flat([refs.geomed(updates, weights, 1)])[0]  # passes=1 is the weighted mean
  assert np.linalg.norm(refs.flat([result])[0] - honest_mean) < 0.2 * np.linalg.norm(
      mean - honest_mean)


def test_bulyan_selects_recursively_and_trims_around_the_median():
  offset = [np.full(s, 3.0) for s in SHAPES]
  updates, weights = _clients(11, seed=1, attackers=2, offset=offset)
  result, m, _ = _run(bulyan.BulyanFactory(num_byzantine=2), updates, weights)
  _assert_close(result, refs.bulyan(updates, 2))
  assert (m['rejected_count'], m['bulyan_kept_per_coordinate']) == (4, 3)  # theta 7, beta 3


def test_bulyan_recursive_krum_recomputes_scores_on_the_remaining_clients():
  # f = 0, five points on a line. All five: scores (3 neighbours) rank 1.1 first, then 1.
  # Once 1.1 is taken, scores on the remaining four (2 neighbours) rank 10 first: a one-shot
  # ranking would take {1, 1.1}, the recursive selection takes {1.1, 10}.
  points = np.array([[0.0], [1.0], [1.1], [10.0], [10.1]])
  rows = tf.constant(points, tf.float32)
  selected = bulyan.recursive_krum(bulyan.squared_distances(rows), 0, tf.constant(2))
  assert selected.numpy().tolist() == [False, False, True, True, False]
  assert refs.krum_pick(points, 0) == 2 and refs.krum_pick(points[[0, 1, 3, 4]], 0) == 2


def test_centered_clipping_keeps_the_last_aggregate_as_state():
  factory = centered_clipping.CenteredClippingFactory(tau=0.5, iterations=2)
  first, _ = _clients(6, seed=2)
  second, _ = _clients(6, seed=3)
  ones = [np.float32(1.0)] * 6
  result1, m1, state = _run(factory, first, ones)
  result2, m2, _ = _run(factory, second, ones, state)
  center = refs.centered_clip(first, np.zeros(11), 0.5, 2)
  _assert_close(result1, refs.unflat(center, first[0]))
  _assert_close(result2, refs.unflat(refs.centered_clip(second, center, 0.5, 2), first[0]))
  last = np.linalg.norm(refs.flat(second) - refs.centered_clip(second, center, 0.5, 1), axis=1)
  assert m2['centered_clipped_count'] == np.sum(last > 0.5)
  assert m1['centered_clipping_norm'] == 0.5 and m1['centered_clipped_count'] >= 1


def test_rlr_flips_the_coordinates_without_sign_agreement():
  updates, weights = _clients(8, seed=4)
  updates[0] = [np.abs(x) for x in updates[0]]
  result, m, _ = _run(robust_lr.RobustLearningRateFactory(threshold=6), updates, weights)
  expected = refs.rlr(updates, weights, 6)
  _assert_close(result, expected)
  agreement = np.abs(np.sign(refs.flat(updates)).sum(0))
  np.testing.assert_allclose(m['rlr_flipped_fraction'], np.mean(agreement < 6), rtol=1e-6)
  assert 0 < m['rlr_flipped_fraction'] < 1 and m['rlr_threshold'] == 6


def _distance_matrices(count, seed):
  """Cosine-distance matrices of random cohorts: clusters, outliers and exact ties."""
  rng = np.random.default_rng(seed)
  for trial in range(count):
    n = int(rng.integers(2, 25))
    x = rng.normal(size=(n, int(rng.integers(2, 6))))
    if trial % 3 == 0:
      x[:n // 3] += 3.0 * rng.normal(size=x.shape[1])  # a minority cluster
    if trial % 4 == 0:
      x = np.round(x)  # repeated vectors: tied distances
    x[np.all(x == 0, axis=1)] = 1.0
    yield refs.cosine_distances(x), int(rng.integers(1, 5))


def test_hdbscan_rule_matches_scikit_learn():
  checked = 0
  for distances, min_samples in _distance_matrices(150, seed=5):
    want = refs.hdbscan_majority(distances, min_samples)
    got = hdbscan_rule.majority_cluster(tf.constant(distances), min_samples).numpy()
    np.testing.assert_array_equal(got, want, err_msg=f'n={len(distances)} ms={min_samples}')
    checked += int(not want.all())
  assert checked > 20  # many of the cases leave someone out of the cluster


def test_flame_drops_the_minority_direction_and_clips_at_the_median():
  offset = [np.full(s, -4.0) for s in SHAPES]
  updates, weights = _clients(10, seed=6, attackers=3, offset=offset)
  result, m, _ = _run(flame.FlameFilterFactory(min_samples=2), updates, weights)
  expected, kept, bound = refs.flame_filter(updates, 2)
  _assert_close(result, expected)
  assert not kept[:3].any() and kept[3:].sum() >= 6  # HDBSCAN may also leave out an honest one
  assert m['rejected_count'] == np.sum(~kept)
  np.testing.assert_allclose(m['clipping_norm'], bound, rtol=1e-5)
  norms = np.linalg.norm(refs.flat(updates), axis=1)
  assert m['clipped_count'] == np.sum(kept & (norms > bound))


# Enough coordinates that a sample std is within 1% (1 / sqrt(2 * 20000)) of the true std.
NOISE_SHAPES = ((20000,),)


def _flame_noise(seed, rounds=2, noise_ratio=0.5, shapes=SHAPES):
  factory = flame.flame_factory(noise_ratio, seed=seed)
  process = factory.create(tff.types.to_type([tff.TensorType(np.float32, s) for s in shapes]),
                           WEIGHT_TYPE)
  updates = [[np.zeros(s, np.float32) + c for s in shapes] for c in (1.0, 1.0, 1.0, 1.0)]
  state, outputs = process.initialize(), []
  for _ in range(rounds):
    output = process.next(state, updates, [np.float32(1.0)] * 4)
    state = output.state
    outputs.append((np.concatenate([np.ravel(x) for x in output.result]) - 1.0,
                    output.measurements))
  return outputs


def test_flame_noise_is_lambda_times_median_norm_and_seeded():
  outputs = _flame_noise(seed=3)
  (noise, measurements), (later, _) = outputs
  norm = np.sqrt(11.0)  # every update is all ones, 11 coordinates
  np.testing.assert_allclose(measurements['noise_stddev'], 0.5 * norm, rtol=1e-6)
  # Fixed seed, 20000 draws: the sample std is lambda * median norm (sqrt(20000)) within 3%.
  (big, big_measurements), = _flame_noise(seed=3, rounds=1, shapes=NOISE_SHAPES)
  big_norm = np.sqrt(20000.0)
  np.testing.assert_allclose(big_measurements['noise_stddev'], 0.5 * big_norm, rtol=1e-6)
  np.testing.assert_allclose(np.std(big), 0.5 * big_norm, rtol=0.03)
  assert abs(np.mean(big)) < 0.03 * 0.5 * big_norm  # centred on the clipped mean
  assert not np.allclose(noise, later)
  np.testing.assert_array_equal(noise, _flame_noise(seed=3, rounds=1)[0][0])
  assert not np.allclose(noise, _flame_noise(seed=4, rounds=1)[0][0])


def _specs():
  return [tf.TensorSpec(s, tf.float32) for s in SHAPES]


def test_crfl_clips_the_model_to_the_growing_bound_then_adds_seeded_noise():
  optimizer = crfl.CrflOptimizer(tff.learning.optimizers.build_sgdm(1.0), sigma=0.0,
                                 clip_base=4.0, clip_slope=0.25, clip_max=4.4)
  state = optimizer.initialize(_specs())
  weights = [tf.fill(s, 3.0) for s in SHAPES]  # norm 3 sqrt(11) = 9.95
  gradient = [tf.fill(s, -1.0) for s in SHAPES]
  for bound in (4.25, 4.4, 4.4):  # rho_t = min(4 + 0.25 t, 4.4)
    state, new = optimizer.next(state, weights, gradient)
    flat = np.concatenate([np.ravel(x) for x in new])
    np.testing.assert_allclose(np.linalg.norm(flat), bound, rtol=1e-6)
    np.testing.assert_allclose(flat, flat[0])  # the direction of w - lr * g is kept

  def noised(seed, shapes=SHAPES):
    noisy = crfl.CrflOptimizer(tff.learning.optimizers.build_sgdm(1.0), sigma=0.1, seed=seed)
    specs = [tf.TensorSpec(s, tf.float32) for s in shapes]
    _, new = noisy.next(noisy.initialize(specs), [tf.zeros(s) for s in shapes],
                        [tf.zeros(s) for s in shapes])
    return np.concatenate([np.ravel(x) for x in new])

  # Fixed seed, 20000 draws: the sample std is sigma = 0.1 within 3%, mean 0.
  np.testing.assert_allclose(np.std(noised(1, NOISE_SHAPES)), 0.1, rtol=0.03)
  assert abs(np.mean(noised(1, NOISE_SHAPES))) < 0.003
  np.testing.assert_array_equal(noised(1), noised(1))
  assert not np.allclose(noised(1), noised(2))


def test_crfl_runs_inside_build_weighted_fed_avg():
  config = aggregators.DefenseConfig(name='crfl', crfl_clip_base=0.5, crfl_clip_slope=0.0,
                                     crfl_sigma=0.001)
  process = tff.learning.algorithms.build_weighted_fed_avg(
      learning.model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
      server_optimizer_fn=registry.build_server_optimizer(
          config, tff.learning.optimizers.build_sgdm(1.0), seed=0),
      model_aggregator=aggregators.build_defense(config, clients_per_round=3, seed=0))
  output = process.next(process.initialize(), learning.client_data(3))
  weights = process.get_model_weights(output.state).trainable
  norm = np.sqrt(sum(np.sum(np.square(w)) for w in weights))
  size = sum(np.size(w) for w in weights)
  assert abs(norm - 0.5) < 4 * 0.001 * np.sqrt(size)  # clipped to 0.5, plus the noise
  assert output.metrics['aggregator']['client_count'] == 3


def test_server_optimizer_is_unchanged_for_other_defenses():
  sgd = tff.learning.optimizers.build_sgdm(1.0)
  assert registry.build_server_optimizer(aggregators.DefenseConfig(name='flame'), sgd) is sgd


@pytest.mark.parametrize('overrides,match', [
    (dict(name='bulyan', bulyan_f=2), 'bulyan_f=2 is too large'),  # 7 < 4 * 2 + 3
    (dict(name='rlr', rlr_threshold=8), 'rlr_threshold=8 exceeds'),
    (dict(name='geomed', geomed_nu=0.0), 'geomed_nu'),
    (dict(name='geomed', geomed_passes=0), 'geomed_passes'),
    (dict(name='centered_clip', cc_tau=-1.0), 'cc_tau'),
    (dict(name='flame', flame_lambda=-0.1), 'flame_lambda'),
    (dict(name='crfl', crfl_clip_max=0.0), 'crfl_clip_max'),
])
def test_new_defenses_reject_bad_values_in_one_line(overrides, match):
  with pytest.raises(ValueError, match=match) as error:
    aggregators.validate_defense(aggregators.DefenseConfig(**overrides), clients_per_round=7)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('build,match', [
    (lambda: bulyan.BulyanFactory(num_byzantine=-1), 'num_byzantine must be an integer >= 0'),
    (lambda: bulyan.BulyanFactory(num_byzantine=1.5), 'num_byzantine must be an integer >= 0'),
    (lambda: centered_clipping.CenteredClippingFactory(iterations=0), 'iterations'),
    (lambda: geometric_median.GeometricMedianFactory(passes=0), 'passes'),
    (lambda: flame.FlameFilterFactory(min_samples=0), 'min_samples')])
def test_new_factories_reject_non_integer_or_too_small_counts(build, match):
  with pytest.raises(ValueError, match=match):
    build()
