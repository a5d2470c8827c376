"""Weak differential privacy (Sun et al. 2019): clip each update, add Gaussian noise, seeded.

TFF's `DifferentiallyPrivateFactory.gaussian_fixed` is exactly the mechanism, but the noise of
TF-Privacy 0.9's `GaussianSumQuery` cannot be seeded: `get_noised_result` draws it with an
unseeded `tf.random_normal_initializer` (no argument of the query or of TFF reaches it), so two
processes built alike draw different noise and a run cannot be repeated from `--seed`. A seed
must also advance from round to round, so it has to live in the aggregator state. The
smallest fix is a `GaussianSumQuery` subclass that keeps a stateless-RNG seed in its global
state and draws the noise with TF-Privacy's own `tree_aggregation.GaussianNoiseGenerator` (the
seeded generator TF-Privacy uses for its tree-aggregation queries). Everything else (clipping, sum,
normalization, DP event) is TF-Privacy's and TFF's code, assembled as `gaussian_fixed` does.
"""
from __future__ import annotations

import collections
import math
from typing import Any, Optional, Tuple

import dp_accounting
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

from tff_backdoor.aggregators import _common


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
  """`tfp.GaussianSumQuery` whose noise is reproducible from an integer seed.

  Clips each record to L2 norm `l2_norm_clip` and adds Gaussian noise of standard deviation
  `stddev` to the sum, as the parent does. The noise comes from
  `tfp.tree_aggregation.GaussianNoiseGenerator` (stateless `tf.random.stateless_normal`),
  whose seed lives in the query's global state and advances at every `get_noised_result`, so
  each round draws fresh noise and a whole run is a pure function of `seed`. Inside TFF the
  global state is part of the aggregator state, hence of the learning process state.
  """

  # pylint: disable=invalid-name
  _GlobalState = collections.namedtuple('_GlobalState',
                                        ['l2_norm_clip', 'stddev', 'noise_state'])

  def __init__(self, l2_norm_clip: float, stddev: float, seed: Optional[int] = None):
    """Initializes the query.

    Args:
      l2_norm_clip: The clipping norm to apply to the global norm of each record.
      stddev: The stddev of the noise added to the sum.
      seed: Seed of the noise. If None, the generator is seeded from the clock (as TF-Privacy
        does), i.e. not reproducibly.
    """
    super().__init__(l2_norm_clip, stddev)
    self._seed = seed

  def preprocess_record_impl(self, params: tf.Tensor, record: Any) -> Tuple[Any, tf.Tensor]:
    """The parent's clipping, except that an infinite bound leaves the record as it is.

    `tf.clip_by_global_norm` with an infinite bound returns NaN (inf * 0), so "a bound that
    never binds" (Sun et al.'s aggregation without defense) skips the clipping instead.
    """
    if math.isinf(self._l2_norm_clip):
      return record, _common.global_l2_norm(record)
    return super().preprocess_record_impl(params, record)

  def _noise_generator(self, specs=None) -> tfp.tree_aggregation.GaussianNoiseGenerator:
    return tfp.tree_aggregation.GaussianNoiseGenerator(self._stddev, specs, self._seed)

  def initial_global_state(self) -> SeededGaussianSumQuery._GlobalState:
    """Implements `tensorflow_privacy.DPQuery.initial_global_state`."""
    generator = self._noise_generator()
    if self._seed is None:
      noise_state = generator.initialize()
    else:
      # The generator would start from the seed pair (seed, seed) and derive the seeds of
      # tensor i as pair + i, then advance the pair; runs with seeds s and s + 1 would then
      # draw shifted copies of the same noise. Starting from (0, seed) keeps the difference of
      # the pair equal to `seed` forever, so different seeds never share a draw.
      noise_state = generator.make_state(tf.constant([0, self._seed], tf.int64), self._stddev)
    return self._GlobalState(tf.cast(self._l2_norm_clip, tf.float32),
                             tf.cast(self._stddev, tf.float32), noise_state)

  def get_noised_result(
      self, sample_state: Any, global_state: SeededGaussianSumQuery._GlobalState
  ) -> Tuple[Any, SeededGaussianSumQuery._GlobalState, dp_accounting.DpEvent]:
    """Implements `tensorflow_privacy.DPQuery.get_noised_result`, with seeded noise."""
    specs = tf.nest.map_structure(lambda v: tf.TensorSpec(v.shape, tf.float32), sample_state)
    noise, noise_state = self._noise_generator(specs).next(global_state.noise_state)
    result = tf.nest.map_structure(lambda v, n: v + tf.cast(n, v.dtype), sample_state, noise)
    event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
    return result, global_state._replace(noise_state=noise_state), event


def seeded_gaussian_fixed(
    noise_multiplier: float, clients_per_round: float, clip: float,
    seed: Optional[int] = None) -> tff.aggregators.UnweightedAggregationFactory:
  """`tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed`, with seeded noise.

  Same arguments and mechanism as TFF's (clip each record to `clip`, sum, add noise of std
  `clip * noise_multiplier`, divide by `clients_per_round`), with `SeededGaussianSumQuery` in
  place of `tfp.GaussianSumQuery`.

  Args:
    noise_multiplier: Ratio of the noise std on the sum to `clip`. Must be >= 0.
    clients_per_round: The (expected) number of clients per round, the fixed denominator.
    clip: The L2 clipping norm. Must be > 0.
    seed: Seed of the noise; None draws it from the clock.

  Returns:
    An unweighted `tff.aggregators.DifferentiallyPrivateFactory`.
  """
  if noise_multiplier < 0:
    raise ValueError(f'noise_multiplier must be nonnegative, found {noise_multiplier}')
  if clients_per_round <= 0:
    raise ValueError(f'clients_per_round must be positive, found {clients_per_round}')
  if clip <= 0:
    raise ValueError(f'clip must be positive, found {clip}')
  query = tfp.NormalizedQuery(
      SeededGaussianSumQuery(l2_norm_clip=float(clip), stddev=float(clip * noise_multiplier),
                             seed=seed),
      denominator=float(clients_per_round))
  return tff.aggregators.DifferentiallyPrivateFactory(query)


def weak_dp_factory(noise_stddev: float, clip_norm: float, clients_per_round: int,
                    seed: Optional[int] = None) -> tff.aggregators.WeightedAggregationFactory:
  """Weak DP of Sun et al. 2019: clip each update, add Gaussian noise to the average.

  Each client update is clipped to L2 norm `clip_norm`, and noise N(0, `noise_stddev`^2) is
  added to every coordinate of the average. TFF's Gaussian mechanism adds noise of std `clip *
  noise_multiplier` to the sum and divides by `clients_per_round`, so the noise on the average
  has std `noise_stddev` when `noise_multiplier = noise_stddev * clients_per_round / clip_norm`.

  Weights are ignored: the result is (sum of clipped updates + noise) / `clients_per_round`,
  the unweighted average of the paper and of `gaussian_fixed` (a weighted average would also
  change the sensitivity the noise is calibrated to). A client whose
  update was zeroed by `NonFiniteGuardFactory` therefore adds zero, and the denominator stays
  `clients_per_round`. "Weak" means the noise is far too small for a meaningful privacy
  guarantee; it is a defense against backdoors, not a privacy mechanism.

  Measurements: TFF's DP measurements (`dp_query_metrics`, `dp`), plus `clipped_count`,
  `clipping_norm` and `noise_stddev` (std of the noise on the average).

  Args:
    noise_stddev: Std of the noise added to each coordinate of the average. Must be >= 0.
    clip_norm: L2 bound of each client update. Must be > 0.
    clients_per_round: Number of clients per round; the denominator of the average.
    seed: Seed of the noise (pass the experiment's `--seed`); None draws it from the clock.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.
  """
  if noise_stddev < 0:
    raise ValueError(f'noise_stddev must be nonnegative, found {noise_stddev}')
  if clip_norm <= 0:
    raise ValueError(f'clip_norm must be positive, found {clip_norm}')
  noise_multiplier = noise_stddev * clients_per_round / clip_norm
  dp_factory = tff.aggregators.as_weighted_aggregator(
      seeded_gaussian_fixed(noise_multiplier, clients_per_round, clip_norm, seed))
  return _with_clip_measurements(dp_factory, float(clip_norm),
                                 noise_stddev=_common.NORM_TF_TYPE(noise_stddev))


def sun_aggregation_factory(clip_norm: Optional[float], sum_noise_stddev: float,
                            clients_per_round: int, seed: Optional[int] = None
                            ) -> tff.aggregators.WeightedAggregationFactory:
  """The aggregation of Sun et al.'s own training script: TF-Privacy's Gaussian average query.

  Their loop always aggregates with TF-Privacy's `GaussianAverageQuery(l2_norm_clip,
  sum_stddev, denominator)` (since removed; it was `NormalizedQuery(GaussianSumQuery)`): each
  update clipped to `l2_norm_clip` (default 1.0), the clipped updates summed, Gaussian noise
  of std `sum_stddev` (their `mul_factor`, default 0) added to the SUM, the result divided by
  the clients per round. The mean is UNWEIGHTED, which is why a boost
  of clients_per_round replaces the model; their runs "without defense" are this query with a
  bound that never binds (`clip_norm=None` here). That is this factory: `tfp.NormalizedQuery`
  over `SeededGaussianSumQuery` (seeded noise) inside TFF's `DifferentiallyPrivateFactory`,
  i.e. `GaussianAverageQuery`'s exact composition. Weights are ignored; a client zeroed by
  `NonFiniteGuardFactory` adds zero and still counts in the denominator.

  Unlike `weak_dp_factory`, whose sigma is the noise on the AVERAGE, `sum_noise_stddev` is
  the noise on the sum (the noise on the average is `sum_noise_stddev / clients_per_round`).

  Measurements: TFF's DP measurements, `sum_noise_stddev`, and with a finite bound
  `clipped_count` and `clipping_norm`.

  Args:
    clip_norm: L2 bound of each update (> 0), or None for no bound (the authors' no defense).
    sum_noise_stddev: Std of the Gaussian noise added to each coordinate of the sum (>= 0).
    clients_per_round: The denominator of the average.
    seed: Seed of the noise (the experiment's `--seed`); None draws it from the clock.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.
  """
  if clip_norm is not None and not clip_norm > 0:
    raise ValueError(f'clip_norm must be positive or None, found {clip_norm}')
  if sum_noise_stddev < 0:
    raise ValueError(f'sum_noise_stddev must be nonnegative, found {sum_noise_stddev}')
  if clients_per_round <= 0:
    raise ValueError(f'clients_per_round must be positive, found {clients_per_round}')
  bound = math.inf if clip_norm is None else float(clip_norm)
  query = tfp.NormalizedQuery(
      SeededGaussianSumQuery(l2_norm_clip=bound, stddev=float(sum_noise_stddev), seed=seed),
      denominator=float(clients_per_round))
  dp_factory = tff.aggregators.as_weighted_aggregator(
      tff.aggregators.DifferentiallyPrivateFactory(query))
  return _with_clip_measurements(dp_factory, clip_norm,
                                 sum_noise_stddev=_common.NORM_TF_TYPE(sum_noise_stddev))


def _with_clip_measurements(dp_factory: tff.aggregators.WeightedAggregationFactory,
                            clip_norm: Optional[float], **constants
                            ) -> tff.aggregators.WeightedAggregationFactory:
  """`dp_factory` that also reports `clipped_count` and `clipping_norm` (finite bound) and
  the server-side `constants`."""
  if clip_norm is not None:
    constants = dict(clipping_norm=_common.NORM_TF_TYPE(clip_norm), **constants)

  def client_measurement_fn(value, weight):
    del weight  # Ignored by the mechanism.

    @tff.tensorflow.computation(value.type_signature.member)
    def was_clipped(value):
      return tf.cast(_common.global_l2_norm(value) > clip_norm, _common.COUNT_TF_TYPE)

    return tff.federated_zip(collections.OrderedDict(
        clipped_count=tff.federated_sum(tff.federated_map(was_clipped, value))))

  def server_measurement_fn(result):
    del result  # Only constants are reported.
    return tff.federated_value(collections.OrderedDict(constants), tff.SERVER)

  return tff.aggregators.add_measurements(
      dp_factory, server_measurement_fn=server_measurement_fn,
      client_measurement_fn=None if clip_norm is None else client_measurement_fn)
