"""Gaussian noise scaled to the median client update norm, added to an inner aggregate."""
from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import robust_rules
from tff_backdoor.aggregators import seeded_noise


class MedianNormNoiseFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` adding N(0, (lambda * S)^2) per coordinate to the inner result.

  S is the median L2 norm of this round's participating updates (weight > 0), the bound FLAME
  clips at; with lambda = `noise_ratio` this is FLAME's adaptive noise sigma = lambda * S
  (Nguyen et al. 2022). The norms (one scalar per client) reach the server with
  `federated_stack`, so the process stays mergeable. The noise is seeded: its state advances
  every round (`seeded_noise`), so a run is a pure function of `seed`.

  FLAME adds the noise to the new global model; with server SGD at learning rate 1 (FedAvg)
  that is the same as adding it to the aggregated update, as here; a server learning rate
  eta scales the noise by eta.

  Measurements: the inner factory's, plus `noise_stddev` (lambda * S this round).
  """

  def __init__(self, noise_ratio: float, seed: Optional[int] = None,
               inner_agg_factory: Optional[tff.aggregators.WeightedAggregationFactory] = None):
    """Initializes the factory.

    Args:
      noise_ratio: lambda >= 0, the noise std as a multiple of the median norm.
      seed: Seed of the noise; None draws it from the clock.
      inner_agg_factory: The aggregation to which noise is added; defaults to a weighted mean
        that returns zeros when every weight is 0.
    """
    if not noise_ratio >= 0:
      raise ValueError(f'noise_ratio must be nonnegative, found {noise_ratio}')
    self._noise_ratio = float(noise_ratio)
    self._seed = seed
    self._inner_agg_factory = _common.inner_or_default(inner_agg_factory)

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    _common.check_float_value_type(value_type)
    inner_process = self._inner_agg_factory.create(value_type, weight_type)
    seed, noise_ratio = self._seed, self._noise_ratio

    @tff.federated_computation()
    def init_fn():
      noise_state = tff.federated_eval(
          tff.tensorflow.computation(lambda: seeded_noise.initial_state(seed)), tff.SERVER)
      return tff.federated_zip((inner_process.initialize(), noise_state))

    @tff.tensorflow.computation(value_type, weight_type)
    def norm_and_weight(value, weight):
      return _common.global_l2_norm(value), tf.cast(weight, tf.float32)

    @tff.tensorflow.computation
    def add_noise(aggregate, norms, weights, noise_state):
      norms = tf.boolean_mask(norms, weights > 0.0)
      median = tf.cond(tf.size(norms) > 0, lambda: robust_rules.coordinate_median(norms),
                       lambda: tf.constant(0.0))
      stddev = noise_ratio * median
      noised, noise_state = seeded_noise.add_scaled_noise(aggregate, stddev, noise_state)
      return noised, noise_state, collections.OrderedDict(noise_stddev=stddev)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS),
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      inner_state, noise_state = state
      inner_output = inner_process.next(inner_state, value, weight)
      norms, weights = robust_rules.federated_stack(
          tff.federated_map(norm_and_weight, (value, weight)))
      result, noise_state, noise_measurements = tff.federated_map(
          add_noise, (inner_output.result, norms, weights, noise_state))
      measurements = tff.federated_map(_common.merge_measurements,
                                       (inner_output.measurements, noise_measurements))
      return tff.templates.MeasuredProcessOutput(
          tff.federated_zip((inner_output.state, noise_state)), result, measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)
