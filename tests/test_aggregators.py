"""Tests of tff_backdoor.aggregators against NumPy references, on tiny structured updates.

Every defense of the registry is built once (through `build_defense`, so with the non-finite
guard and the norm statistics) for 7 clients whose updates are three tensors of different
shapes, and then checked on several inputs: the NumPy reference, non-finite clients, and a
round in which every weight is 0.
"""
import functools

import numpy as np
import pytest
import tensorflow_federated as tff

from tests import defense_references as refs
from tests import detector_references as detector_refs
from tests import tiny
from tff_backdoor import aggregators
from tff_backdoor.learning import side_channel

SHAPES = ((2, 3), (4, 3), (3,))  # The last two play a Dense output layer (3 classes).
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
WEIGHT_TYPE = tff.TensorType(np.float32)
N = 7
TOL = dict(rtol=1e-5, atol=1e-5)

# Per defense: the config overrides used in these tests (chosen so that each rule does
# something non-trivial on 7 clients).
OVERRIDES = {
    'none': {},
    'clip': {},
    'adaptive_clip': {},
    'zeroing': {},
    'clip_mean': {},
    'weak_dp': {'dp_sigma': 0.0},  # Noise is tested separately.
    'median': {},
    'trimmed_mean': {'trim_fraction': 0.2},  # floor(0.2 * 7) = 1 per end.
    'krum': {},
    'multi_krum': {'krum_m': 3},
    'bias_filter': {},
    'sun_mean': {},
    'sun_dp': {},  # Clip at 3, no noise (the authors' default mul_factor 0).
    'geomed': {},
    'bulyan': {},  # f = 1: 7 = 4f + 3 clients.
    'centered_clip': {'cc_tau': 1.0, 'cc_iterations': 3},  # Clips at the test's norms.
    'rlr': {'rlr_threshold': 3},
    'flame': {'flame_lambda': 0.0},  # Noise is tested separately.
    'crfl': {},  # Its aggregator is the weighted mean; its step is the server optimizer's.
    'fltrust': {},  # The server update g0 sent with the updates is zero: every trust is 0.
    'foolsgold': {'foolsgold_clients': 8},  # weights 1..5 name identities 0..4 (some shared)
    'fldetector': {'fldetector_clients': 8},  # its first round: no history, the plain mean
    'deepsight': {},
}
# Defenses that ignore the weights: (sum of clipped updates + noise) / clients_per_round.
UNWEIGHTED = ('weak_dp', 'sun_mean', 'sun_dp')
# Defenses that read side information (learning.side_channel) with the updates: FLTrust trusts
# the server's update g0 (zero in these tests), FoolsGold and FLDetector read the client's
# identity. Here their updates carry ClientInfo whose identity is round(weight) - 1, so the
# references read a weight as the identity + 1; the weight itself only says who takes part.
IDENTITY_WEIGHTED = ('fltrust', 'foolsgold', 'fldetector')
# DeepSight reads each update's DDifs [seeds, classes] (learning.ddifs): here `_ddifs`, a
# function of the update the reference calls too.
DDIF_SEEDS = 3


def _ddifs(update):
  """Stand-in DDifs of one update: 1 + its output bias, shifted per seed."""
  return np.stack([1.0 + update[-1] + 0.01 * s for s in range(DDIF_SEEDS)])


def _updates(seed: int, n: int = N):
  """n clients: random normal tensors with norms spread around the clipping bound 3."""
  rng = np.random.default_rng(seed)
  scales = np.linspace(0.2, 2.5, n)
  updates = [[(scale * rng.normal(size=s)).astype(np.float32) for s in SHAPES]
             for scale in scales]
  updates[-1][-1] += 25.0  # One client with an outlying bias update.
  weights = rng.uniform(1.0, 5.0, n).astype(np.float32)
  return updates, list(weights)


@functools.lru_cache(maxsize=None)
def _process(name: str, **overrides) -> tff.templates.AggregationProcess:
  factory = aggregators.build_defense(aggregators.DefenseConfig(name=name, **overrides),
                                      clients_per_round=N, seed=0)
  if name == 'deepsight':
    inputs = side_channel.DDifInputs(seeds=DDIF_SEEDS)
    return factory.create(tiny.info_update_type(VALUE_TYPE, ddifs=inputs), WEIGHT_TYPE)
  if name not in IDENTITY_WEIGHTED:
    return factory.create(VALUE_TYPE, WEIGHT_TYPE)
  return factory.create(tiny.info_update_type(VALUE_TYPE, client_info=True,
                                              root_update=name == 'fltrust'), WEIGHT_TYPE)


def _values(name, updates, weights):
  """What `name`'s process takes: the updates, with ClientInfo for IDENTITY_WEIGHTED and
  DeepSight (its DDifs)."""
  if name == 'deepsight':
    return tiny.with_info(updates, [0] * len(updates), ddifs=[_ddifs(u) for u in updates])
  if name not in IDENTITY_WEIGHTED:
    return updates
  ids = [int(round(w)) - 1 if np.isfinite(w) else -1 for w in weights]
  g0 = [np.zeros(s, np.float32) for s in SHAPES] if name == 'fltrust' else None
  return tiny.with_info(updates, ids, g0)


def _run(name, updates, weights, overrides=None):
  process = _process(name, **(OVERRIDES[name] if overrides is None else overrides))
  output = process.next(process.initialize(), _values(name, updates, weights), weights)
  return [np.asarray(x) for x in output.result], output.measurements


# NumPy references. `u` is a list of clients, each a list of arrays; `w` the weights.

def _norm(update):
  return np.sqrt(sum(np.sum(np.square(x.astype(np.float64))) for x in update))


def _clip(update, bound):
  return [x * min(1.0, bound / _norm(update)) for x in update]


def _weighted_mean(u, w):
  w = np.asarray(w, np.float64)
  return [sum(wi * c[j] for wi, c in zip(w, u)) / w.sum() for j in range(len(u[0]))]


def _fldetector_first_round(u, w, population):
  """Its first round has no history: the plain mean of the clients whose weight names one of
  the population (index + 1); a weight above it (an example count in plain FedAvg) drops out.
  Later rounds: tests/test_fldetector.py."""
  known = [c for c, wi in zip(u, w) if 0 < wi <= population]
  return [np.mean(x, axis=0) for x in _stack(known)]


def _stack(u):
  return [np.stack([c[j] for c in u]).astype(np.float64) for j in range(len(u[0]))]


def _unweighted_sum_over_n(u):
  """Sum of the updates / the number of clients (= clients_per_round in these tests)."""
  return [sum(x) / len(u) for x in zip(*u)]


def _foolsgold_first_round(u, w, population=8, tensors=2):
  width = sum(x.size for x in u[0][-tensors:])
  step, _, alpha = refs.foolsgold_round(u, w, np.zeros([population, width]), tensors)
  return refs.ours(step, alpha)


def _trimmed_mean(u, beta):
  k = int(np.floor(beta * len(u)))
  return [np.mean(np.sort(x, axis=0)[k:len(u) - k], axis=0) for x in _stack(u)]


def _krum(u, f, m):
  flat = np.stack([np.concatenate([x.ravel() for x in c]) for c in u]).astype(np.float64)
  n = len(u)
  d = ((flat[:, None] - flat[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  scores = np.sort(d, axis=1)[:, :n - f - 2].sum(1)
  chosen = np.argsort(scores, kind='stable')[:m]
  return [x[chosen].mean(0) for x in _stack(u)], scores


def _bias_scores(u):
  b = np.stack([c[-1] for c in u]).astype(np.float64)
  med = np.median(b, axis=0)
  mad = np.median(np.abs(b - med), axis=0)
  return np.max(np.abs(b - med) / (1.4826 * mad + 1e-12), axis=1)


def _bias_filter(u, w, z=3.5):
  scores = _bias_scores(u)
  keep = scores <= max(z, scores.min())
  return _weighted_mean([c for c, k in zip(u, keep) if k], [x for x, k in zip(w, keep) if k])


# Any number of clients and tensors: tests/test_aggregators_learning.py reuses them.
REFERENCES = {
    'none': _weighted_mean,
    'clip': lambda u, w: _weighted_mean([_clip(c, 3.0) for c in u], w),
    'adaptive_clip': lambda u, w: _weighted_mean([_clip(c, 1.0) for c in u], w),  # Initial.
    'zeroing': lambda u, w: _weighted_mean(
        [c if _norm(c) <= 3.0 else [0 * x for x in c] for c in u], w),
    'clip_mean': lambda u, w: _clip(_weighted_mean(u, w), 3.0),
    'weak_dp': lambda u, w: _unweighted_sum_over_n([_clip(c, 3.0) for c in u]),
    'median': lambda u, w: [np.median(x, axis=0) for x in _stack(u)],
    'trimmed_mean': lambda u, w: _trimmed_mean(u, 0.2),
    'krum': lambda u, w: _krum(u, 1, 1)[0],
    'multi_krum': lambda u, w: _krum(u, 1, 3)[0],
    'bias_filter': _bias_filter,
    'sun_mean': lambda u, w: _unweighted_sum_over_n(u),
    'sun_dp': lambda u, w: _unweighted_sum_over_n([_clip(c, 3.0) for c in u]),
    'geomed': refs.geomed,
    'bulyan': lambda u, w: refs.bulyan(u, 1),
    'centered_clip': lambda u, w: refs.unflat(
        refs.centered_clip(u, np.zeros(refs.flat(u).shape[1]), 1.0, 3), u[0]),
    'rlr': lambda u, w: refs.rlr(u, w, 3),
    'flame': lambda u, w: refs.flame_filter(u)[0],
    'crfl': _weighted_mean,
    'fltrust': lambda u, w: [np.zeros(x.shape) for x in u[0]],  # see tests/test_fltrust.py
    'foolsgold': _foolsgold_first_round,
    'fldetector': lambda u, w: _fldetector_first_round(u, w, OVERRIDES['fldetector'][
        'fldetector_clients']),
    'deepsight': lambda u, w: detector_refs.deepsight(u, ddifs=[_ddifs(c) for c in u])[0],
}


def test_registry_and_references_cover_the_same_defenses():
  assert set(REFERENCES) == set(OVERRIDES) == set(aggregators.DEFENSES)


@pytest.mark.parametrize('name', aggregators.DEFENSES)
def test_matches_numpy_reference(name):
  updates, weights = _updates(seed=1)
  result, measurements = _run(name, updates, weights)
  expected = REFERENCES[name](updates, weights)
  assert [r.shape for r in result] == list(SHAPES)
  for got, want in zip(result, expected):
    np.testing.assert_allclose(got, want, **TOL)
  norms = [_norm(c) for c in updates]
  assert measurements['client_count'] == N
  assert measurements['nonfinite_count'] == 0
  np.testing.assert_allclose(measurements['client_norm_mean'], np.mean(norms), rtol=1e-5)
  np.testing.assert_allclose(measurements['client_norm_max'], np.max(norms), rtol=1e-5)


@pytest.mark.parametrize('name', aggregators.DEFENSES)
def test_compiles_to_mergeable_form(name):
  # One aggregation per round, so TFF can spread the clients over several workers.
  process = _process(name, **OVERRIDES[name])
  tff.backends.native.compile_to_mergeable_comp_form(process.next)


def test_defense_specific_measurements():
  updates, weights = _updates(seed=1)
  norms = np.array([_norm(c) for c in updates])
  m = _run('clip', updates, weights)[1]
  assert (m['clipped_count'], m['clipping_norm']) == (np.sum(norms > 3.0), 3.0)
  m = _run('adaptive_clip', updates, weights)[1]
  assert (m['clipped_count'], m['clipping_norm']) == (np.sum(norms > 1.0), 1.0)
  m = _run('zeroing', updates, weights)[1]
  assert (m['zeroed_count'], m['zeroing_norm']) == (np.sum(norms > 3.0), 3.0)
  m = _run('weak_dp', updates, weights)[1]
  assert (m['clipped_count'], m['clipping_norm'], m['noise_stddev']) == (
      np.sum(norms > 3.0), 3.0, 0.0)
  m = _run('clip_mean', updates, weights)[1]
  mean_norm = _norm(_weighted_mean(updates, weights))
  np.testing.assert_allclose(m['aggregate_norm'], mean_norm, rtol=1e-5)
  assert (m['aggregate_clipping_norm'], m['aggregate_clipped_count']) == (
      3.0, int(mean_norm > 3.0))
  assert _run('trimmed_mean', updates, weights)[1]['trimmed_count'] == 2
  assert _run('krum', updates, weights)[1]['rejected_count'] == N - 1
  m = _run('multi_krum', updates, weights)[1]
  assert m['rejected_count'] == N - 3
  np.testing.assert_allclose(m['krum_score_min'], _krum(updates, 1, 3)[1].min(), rtol=1e-5)
  m = _run('bias_filter', updates, weights)[1]
  scores = _bias_scores(updates)
  assert m['rejected_count'] == np.sum(scores > 3.5) >= 1  # At least the planted outlier.
  np.testing.assert_allclose(m['bias_score_max'], scores.max(), rtol=1e-5)
  assert m['bias_threshold'] == 3.5


@pytest.mark.parametrize('name', aggregators.DEFENSES)
def test_nonfinite_clients_never_reach_the_aggregate(name):
  updates, weights = _updates(seed=2)
  poisoned = [list(c) for c in updates]
  poisoned[1][0] = np.full(SHAPES[0], np.nan, np.float32)
  poisoned[4][2] = np.array([0.0, np.inf, 1.0], np.float32)
  bad_weights = list(weights)
  bad_weights[5] = np.float32(np.nan)
  # The DP defenses with their noise: must match too.
  overrides = {'weak_dp': {}, 'sun_dp': {'sum_noise_stddev': 0.1}}.get(name)
  result, measurements = _run(name, poisoned, bad_weights, overrides)
  keep = [i for i in range(N) if i not in (1, 4, 5)]
  expected, _ = _run(name, [updates[i] for i in keep], [weights[i] for i in keep], overrides)
  assert all(np.all(np.isfinite(r)) for r in result)
  for got, want in zip(result, expected):
    np.testing.assert_allclose(got, want, **TOL)
  assert measurements['nonfinite_count'] == 3
  assert measurements['client_count'] == len(keep)


@pytest.mark.parametrize('name', aggregators.DEFENSES)
def test_round_with_all_weights_zero_is_finite(name):
  updates, _ = _updates(seed=3)
  result, measurements = _run(name, updates, [np.float32(0.0)] * N)
  assert measurements['client_count'] == 0
  if name in UNWEIGHTED:  # Ignore weights: the (noise-free here) clipped unweighted mean.
    expected = REFERENCES[name](updates, None)
  else:
    expected = [np.zeros(s) for s in SHAPES]
  for got, want in zip(result, expected):
    np.testing.assert_allclose(got, want, **TOL)


def test_bias_filter_never_rejects_everyone():
  updates, weights = _updates(seed=4)
  process = aggregators.BiasAnomalyFilterFactory(z_threshold=1e-6).create(VALUE_TYPE,
                                                                          WEIGHT_TYPE)
  output = process.next(process.initialize(), updates, weights)
  best = int(np.argmin(_bias_scores(updates)))
  for got, want in zip(output.result, updates[best]):
    np.testing.assert_allclose(got, want, **TOL)
  assert output.measurements['rejected_count'] == N - 1
  np.testing.assert_allclose(output.measurements['bias_threshold'],
                             _bias_scores(updates).min(), rtol=1e-5)


def test_bias_filter_reads_the_configured_variable():
  updates, weights = _updates(seed=5)
  bias_first = [[c[2], c[1], c[0]] for c in updates]  # The outlying bias is now tensor 0.
  process = aggregators.BiasAnomalyFilterFactory(bias_index=0).create(
      tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES[::-1]]), WEIGHT_TYPE)
  output = process.next(process.initialize(), bias_first, weights)
  expected = _bias_filter(updates, weights)
  assert output.measurements['rejected_count'] >= 1
  for got, want in zip(output.result, expected[::-1]):
    np.testing.assert_allclose(got, want, **TOL)
  with pytest.raises(ValueError, match='bias_index'):
    aggregators.BiasAnomalyFilterFactory(bias_index=3).create(VALUE_TYPE, WEIGHT_TYPE)


def _dp_noise(seed, rounds, sigma=0.1, clients=4):
  """Results of `rounds` rounds of weak DP on all-zero updates: pure noise."""
  value_type = tff.types.to_type([tff.TensorType(np.float32, (40, 25)),
                                  tff.TensorType(np.float32, (1000,))])
  process = aggregators.weak_dp_factory(sigma, clip_norm=1.0, clients_per_round=clients,
                                        seed=seed).create(value_type, WEIGHT_TYPE)
  zeros = [np.zeros((40, 25), np.float32), np.zeros(1000, np.float32)]
  state, noise = process.initialize(), []
  for _ in range(rounds):
    output = process.next(state, [zeros] * clients, [np.float32(1.0)] * clients)
    state = output.state
    noise.append(np.concatenate([np.ravel(x) for x in output.result]))
  return noise


def test_weak_dp_noise_has_std_sigma_and_is_seeded():
  noise = _dp_noise(seed=7, rounds=3)
  samples = np.concatenate(noise)  # 6000 coordinates: std estimated to about 1%.
  assert abs(np.std(samples) / 0.1 - 1.0) < 0.05
  assert abs(np.mean(samples)) < 4 * 0.1 / np.sqrt(samples.size)
  assert not np.allclose(noise[0], noise[1])  # Fresh noise every round.
  again = _dp_noise(seed=7, rounds=2)
  np.testing.assert_array_equal(noise[0], again[0])
  np.testing.assert_array_equal(noise[1], again[1])
  other = _dp_noise(seed=8, rounds=2)
  for a in noise:  # Consecutive seeds share no draw, not even shifted by a round.
    for b in other:
      assert abs(np.corrcoef(a, b)[0, 1]) < 0.1


def test_build_defense_passes_the_seed_to_the_noise():

  def noise(seed):
    factory = aggregators.build_defense(aggregators.DefenseConfig(name='weak_dp'), N, seed)
    process = factory.create(VALUE_TYPE, WEIGHT_TYPE)
    zeros = [np.zeros(s, np.float32) for s in SHAPES]
    output = process.next(process.initialize(), [zeros] * N, [np.float32(1.0)] * N)
    return np.concatenate([np.ravel(x) for x in output.result])

  first = noise(0)
  assert np.std(first) > 0
  np.testing.assert_array_equal(first, noise(0))
  assert not np.allclose(first, noise(1))


def test_adaptive_clip_norm_moves_towards_the_quantile():
  updates, weights = _updates(seed=6)
  process = _process('adaptive_clip')
  state = process.initialize()
  norms = []
  for _ in range(3):
    output = process.next(state, updates, weights)
    state = output.state
    norms.append(float(output.measurements['clipping_norm']))
  median_norm = np.median([_norm(c) for c in updates])  # Well above the initial 1.0.
  assert norms[0] == 1.0 and norms[0] < norms[1] < norms[2] < median_norm


BAD_CONFIGS = [
    (dict(name='fedavg'), 'unknown defense'),
    (dict(name='clip', clip_norm=0.0), 'clip_norm'),
    (dict(name='zeroing', zeroing_norm=-1.0), 'zeroing_norm'),
    (dict(name='adaptive_clip', adaptive_initial_norm=0.0), 'adaptive_initial_norm'),
    (dict(name='adaptive_clip', adaptive_quantile=1.0), 'adaptive_quantile'),
    (dict(name='weak_dp', dp_sigma=-0.1), 'dp_sigma'),
    (dict(name='trimmed_mean', trim_fraction=0.5), 'trim_fraction'),
    (dict(name='trimmed_mean', trim_fraction=-0.1), 'trim_fraction'),
    (dict(name='krum', krum_f=3), 'too large'),  # 7 clients: need 7 > 2f + 2.
    (dict(name='krum', krum_m=2), 'multi_krum'),
    (dict(name='multi_krum', krum_m=7), 'krum_m'),  # m <= n - f = 6.
    (dict(name='multi_krum', krum_m=-1), 'krum_m'),
    (dict(name='multi_krum', krum_f=1.5), 'integer'),
    (dict(name='bias_filter', bias_z_threshold=0.0), 'bias_z_threshold'),
]


@pytest.mark.parametrize('overrides,match', BAD_CONFIGS)
def test_validate_defense_rejects_bad_values_in_one_line(overrides, match):
  with pytest.raises(ValueError, match=match) as error:
    aggregators.validate_defense(aggregators.DefenseConfig(**overrides), clients_per_round=N)
  assert '\n' not in str(error.value)


def test_validate_defense_lists_valid_names_and_accepts_defaults():
  with pytest.raises(ValueError) as error:
    aggregators.validate_defense(aggregators.DefenseConfig(name='fedavg'), N)
  assert all(name in str(error.value) for name in aggregators.DEFENSES)
  for name in aggregators.DEFENSES:
    aggregators.validate_defense(aggregators.DefenseConfig(name=name), N)
  assert aggregators.DefenseConfig(name='multi_krum').krum_selected(N) == N - 1
  assert aggregators.DefenseConfig(name='krum').krum_selected(N) == 1
  with pytest.raises(ValueError, match='clients_per_round'):
    aggregators.validate_defense(aggregators.DefenseConfig(), 0)


def test_build_defense_validates_and_is_weighted():
  with pytest.raises(ValueError, match='too large'):
    aggregators.build_defense(aggregators.DefenseConfig(name='krum', krum_f=2), 6)
  same = [np.full(s, 0.1, np.float32) for s in SHAPES]  # norm 0.46, inside every bound
  weights = list(np.linspace(1.0, 3.0, N, dtype=np.float32))
  for name in aggregators.DEFENSES:
    process = _process(name, **OVERRIDES[name])  # built by build_defense
    # Weighted: the round takes a weight per client, and N equal updates average to that one.
    assert process.next.type_signature.parameter[2] == tff.FederatedType(WEIGHT_TYPE, tff.CLIENTS)
    if name in IDENTITY_WEIGHTED:
      continue
    result = process.next(process.initialize(), _values(name, [same] * N, weights),
                          weights).result
    for got, want in zip(result, same):
      np.testing.assert_allclose(got, want, **TOL)


