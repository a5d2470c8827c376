"""The aggregation of Sun et al.'s script ('sun_mean', 'sun_dp') against TF-Privacy's query.

Their loop aggregates with `tfp.GaussianAverageQuery(l2_norm_clip, sum_stddev, n)`: clip each
update, sum, add noise of std sum_stddev to the sum, divide by n (unweighted). These tests
compare one round with a NumPy reference of that query, with TF-Privacy's own composition of
it (`GaussianAverageQuery` was `NormalizedQuery(GaussianSumQuery)`, the form TF-Privacy 0.9
keeps; noise-free), and, inside `build_weighted_fed_avg`, with TFF's
`DifferentiallyPrivateFactory.gaussian_fixed`, which is the same query when the noise is 0.
"""
import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

from tff_backdoor import aggregators
from tff_backdoor import models

SHAPES = ((3, 2), (5,))
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
WEIGHT_TYPE = tff.TensorType(np.float32)
N = 5


def _updates(seed: int = 0):
  """N clients, norms from 0.3 to about 6, and one boosted update of norm about 50."""
  rng = np.random.default_rng(seed)
  updates = [[(scale * rng.normal(size=s)).astype(np.float32) for s in SHAPES]
             for scale in np.linspace(0.1, 2.0, N)]
  updates[-1] = [25.0 * x for x in updates[-1]]
  return updates, [np.float32(w) for w in rng.uniform(1, 100, N)]


def _numpy_gaussian_average(updates, clip, n):
  """GaussianAverageQuery without noise: sum of updates clipped to `clip`, over n."""
  out = [np.zeros(s) for s in SHAPES]
  for update in updates:
    norm = np.sqrt(sum(np.sum(np.square(x.astype(np.float64))) for x in update))
    scale = min(1.0, clip / norm)
    out = [o + scale * x for o, x in zip(out, update)]
  return [o / n for o in out]


def _round(name, updates, weights, **params):
  factory = aggregators.build_defense(aggregators.DefenseConfig(name=name, **params), N, seed=3)
  process = factory.create(VALUE_TYPE, WEIGHT_TYPE)
  output = process.next(process.initialize(), updates, weights)
  return [np.asarray(x) for x in output.result], output.measurements


def test_sun_dp_is_the_clipped_unweighted_average():
  updates, weights = _updates()
  result, m = _round('sun_dp', updates, weights, clip_norm=1.0)
  for got, want in zip(result, _numpy_gaussian_average(updates, 1.0, N)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  norms = [np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in u)) for u in updates]
  assert m['clipped_count'] == sum(n > 1.0 for n in norms) >= 2
  assert (m['clipping_norm'], m['sum_noise_stddev']) == (1.0, 0.0)


def test_sun_mean_never_clips_so_a_boosted_update_replaces_the_model():
  updates, weights = _updates()
  result, m = _round('sun_mean', updates, weights)
  for got, want in zip(result, _numpy_gaussian_average(updates, np.inf, N)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert 'clipped_count' not in m and 'clipping_norm' not in m
  # A weighted mean would not give the boosted client its 1/N share: the weights are ignored.
  weighted = [sum(w * u[j] for w, u in zip(weights, updates)) / sum(weights)
              for j in range(len(SHAPES))]
  assert not np.allclose(result[0], weighted[0])


def test_matches_tf_privacy_gaussian_average_query():
  updates, _ = _updates(seed=1)
  query = tfp.NormalizedQuery(tfp.GaussianSumQuery(l2_norm_clip=1.0, stddev=0.0),
                              denominator=float(N))
  sample_state = query.initial_sample_state(updates[0])
  params = query.derive_sample_params(query.initial_global_state())
  for update in updates:
    record = query.preprocess_record(params, [tf.constant(x) for x in update])
    sample_state = query.accumulate_preprocessed_record(sample_state, record)
  expected, _, _ = query.get_noised_result(sample_state, query.initial_global_state())
  result, _ = _round('sun_dp', updates, [np.float32(1)] * N, clip_norm=1.0)
  for got, want in zip(result, expected):
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-7)


def _noise(seed, sigma=0.5, rounds=2):
  factory = aggregators.dp.sun_aggregation_factory(1.0, sigma, N, seed)
  value_type = tff.types.to_type([tff.TensorType(np.float32, (2000,))])
  process = factory.create(value_type, WEIGHT_TYPE)
  state, draws = process.initialize(), []
  for _ in range(rounds):
    output = process.next(state, [[np.zeros(2000, np.float32)]] * N, [np.float32(1)] * N)
    state = output.state
    draws.append(np.asarray(output.result[0]))
  return draws


def test_noise_is_on_the_sum_and_seeded():
  draws = _noise(seed=11)
  samples = np.concatenate(draws)  # noise std sigma on the sum, so sigma / N on the average
  assert abs(np.std(samples) / (0.5 / N) - 1.0) < 0.06
  assert not np.allclose(draws[0], draws[1])
  np.testing.assert_array_equal(draws[0], _noise(seed=11)[0])
  assert not np.allclose(draws[0], _noise(seed=12)[0])


def _model_fn():
  return tff.learning.models.from_keras_model(
      models.tiny_cnn(input_shape=(8, 8, 1), num_classes=3, seed=0),
      input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 8, 8, 1], tf.float32),
                                         y=tf.TensorSpec([None], tf.int32)),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _client_data(sizes):
  rng = np.random.default_rng(0)
  return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=rng.random((k, 8, 8, 1)).astype(np.float32),
      y=rng.integers(0, 3, k).astype(np.int32))).batch(2) for k in sizes]


def test_agrees_with_tff_dp_factory_in_build_weighted_fed_avg():
  data = _client_data([2, 4, 6, 8, 10])  # unequal sizes: a weighted mean would differ
  finals = []
  for aggregator in (
      aggregators.build_defense(aggregators.DefenseConfig(name='sun_dp', clip_norm=0.05), N, 0),
      tff.aggregators.as_weighted_aggregator(
          tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
              noise_multiplier=0.0, clients_per_round=N, clip=0.05))):
    process = tff.learning.algorithms.build_weighted_fed_avg(
        _model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.5),
        model_aggregator=aggregator)
    output = process.next(process.initialize(), data)
    finals.append(process.get_model_weights(output.state).trainable)
  for ours, tffs in zip(*finals):
    np.testing.assert_allclose(ours, tffs, rtol=1e-6, atol=1e-7)
  default = tff.learning.algorithms.build_weighted_fed_avg(
      _model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.5))
  weighted = default.get_model_weights(default.next(default.initialize(), data).state)
  assert not all(np.allclose(a, b) for a, b in zip(finals[0], weighted.trainable))
