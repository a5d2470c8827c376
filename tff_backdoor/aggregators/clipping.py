"""Norm-bounding defenses: clip or zero client updates, or clip the averaged update.

The per-client variants are TFF's own `clipping_factory` / `zeroing_factory`, configured the
way Sun et al. (2019) use them (L2 norm of the whole update, weighted mean inside). Only
the 2019 code's variant that clips the *averaged* update has no TFF counterpart and is
implemented here, as a small wrapper around an inner aggregation.
"""
from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import robust_rules

WeightedFactory = tff.aggregators.WeightedAggregationFactory


def norm_clipping_factory(clip_norm: float,
                          inner_agg_factory: Optional[WeightedFactory] = None) -> WeightedFactory:
  """Clips each client update to L2 norm `clip_norm`, then aggregates (Sun et al. 2019).

  A boosted (model replacement) update keeps its direction but loses its scale, so its share
  of the average is bounded by `clip_norm / clients_per_round`. Sun et al. report that M=3
  mitigates their attacks on EMNIST at almost no cost on the main task.

  Measurements (from `tff.aggregators.clipping_factory`): `clipped_count`, `clipping_norm`,
  and the inner factory's under `clipping`.

  Args:
    clip_norm: The L2 bound, over all variables of an update taken together. Must be > 0.
    inner_agg_factory: Aggregation of the clipped updates; defaults to a weighted mean that
      returns zeros when every weight is 0.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.
  """
  return tff.aggregators.clipping_factory(float(clip_norm),
                                          inner_agg_factory or _common.default_mean_factory())


def adaptive_clipping_factory(target_quantile: float = 0.5,
                              initial_norm: float = 1.0,
                              learning_rate: float = 0.2,
                              inner_agg_factory: Optional[WeightedFactory] = None
                              ) -> WeightedFactory:
  """Clips each client update to an adaptively estimated quantile of the update norms.

  The bound follows the `target_quantile` of the client norms with the geometric update of
  Andrew, Thakkar et al. (2021), without noise
  (`tff.aggregators.PrivateQuantileEstimationProcess.no_noise`): each round it moves by a
  factor of at most exp(`learning_rate`) towards the norm below which `target_quantile` of
  the clients fall. So no bound has to be tuned per task; on the other hand a bound that
  tracks the median can be pushed up by many large (malicious) updates, slowly.

  `target_quantile` = 0.5 and `learning_rate` = 0.2 are the defaults of TFF's adaptive
  clipping (`DifferentiallyPrivateFactory.gaussian_adaptive`). `initial_norm` = 1.0 rather
  than TFF's 0.1: a start of the order of Sun et al.'s bound M = 3, since the estimate moves
  by at most a factor exp(0.2) = 1.22 a round and a far-off start costs many rounds.

  Measurements: as `norm_clipping_factory`; `clipping_norm` is the estimate in force.

  Args:
    target_quantile: Quantile of the client norms to clip at, in (0, 1).
    initial_norm: Bound used in the first round. Must be > 0.
    learning_rate: Learning rate of the geometric update. Must be > 0.
    inner_agg_factory: Aggregation of the clipped updates; defaults to a weighted mean that
      returns zeros when every weight is 0.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.
  """
  norm_process = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
      initial_estimate=float(initial_norm), target_quantile=float(target_quantile),
      learning_rate=float(learning_rate))
  return tff.aggregators.clipping_factory(norm_process,
                                          inner_agg_factory or _common.default_mean_factory())


def norm_zeroing_factory(zeroing_norm: float,
                         inner_agg_factory: Optional[WeightedFactory] = None) -> WeightedFactory:
  """Replaces every client update of L2 norm above `zeroing_norm` by zeros, then aggregates.

  Unlike clipping, a zeroed update contributes nothing but its (unchanged) weight, which pulls
  the weighted mean towards zero; this is `tff.aggregators.zeroing_factory`'s documented
  behaviour, kept for consistency with TFF. The L2 norm (not TFF's default L-inf) is used so
  that the bound means the same as the clipping bound.

  Measurements (from `tff.aggregators.zeroing_factory`): `zeroed_count`, `zeroing_norm`, and
  the inner factory's under `zeroing`; ours: `client_decisions` (1 kept, 0 zeroed, -1 absent,
  in the order received: `zeroing_decisions`).

  Args:
    zeroing_norm: The L2 bound. Must be > 0.
    inner_agg_factory: Aggregation of the remaining updates; defaults to a weighted mean that
      returns zeros when every weight is 0.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.
  """
  zeroing = tff.aggregators.zeroing_factory(float(zeroing_norm),
                                            inner_agg_factory or _common.default_mean_factory(),
                                            norm_order=2.0)
  return tff.aggregators.add_measurements(
      zeroing, client_measurement_fn=lambda v, w: zeroing_decisions(v, w, float(zeroing_norm)))


def zeroing_decisions(value: tff.Value, weight: tff.Value, zeroing_norm: float) -> tff.Value:
  """At SERVER, {client_decisions: float32 [clients]}: 1 where a client is kept by zeroing.

  The same test as TFF's zeroing (L2 norm > bound is zeroed), made at the clients and
  stacked in the order received (`robust_rules.federated_stack`); weight 0 is absent
  (`_common.ABSENT`).
  """
  @tff.tensorflow.computation(value.type_signature.member, weight.type_signature.member)
  def kept(value, weight):
    keep = tf.cast(_common.global_l2_norm(value) <= zeroing_norm, tf.float32)
    return tf.where(tf.cast(weight, tf.float32) > 0.0, keep, _common.ABSENT)

  @tff.tensorflow.computation
  def as_measurements(decisions):
    return collections.OrderedDict([(_common.DECISIONS_KEY, decisions)])

  return tff.federated_map(
      as_measurements, robust_rules.federated_stack(tff.federated_map(kept, (value, weight))))


class AggregateClippingFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` that clips the *aggregated* update to an L2 bound.

  The 2019 code of Sun et al. also had this variant: the inner aggregation (by default the
  weighted mean) runs first, and the server then projects its result onto the L2 ball of
  radius `clip_norm`. It bounds how far one round can move the model, whoever caused it,
  but unlike per-client clipping it does not limit one client's share of the average.

  Measurements: the inner factory's, plus `aggregate_norm` (norm of the inner result before
  clipping), `aggregate_clipping_norm` (the bound) and `aggregate_clipped_count` (1 if the
  result was clipped this round, else 0).
  """

  def __init__(self, clip_norm: float, inner_agg_factory: Optional[WeightedFactory] = None):
    """Initializes the factory.

    Args:
      clip_norm: The L2 bound on the aggregated update. Must be > 0.
      inner_agg_factory: The aggregation whose result is clipped; defaults to a weighted mean
        that returns zeros when every weight is 0.
    """
    clip_norm = float(clip_norm)
    if clip_norm <= 0:
      raise ValueError(f'clip_norm must be positive, found {clip_norm}')
    if inner_agg_factory is None:
      inner_agg_factory = _common.default_mean_factory()
    _common.check_weighted_factory(inner_agg_factory, 'inner_agg_factory')
    self._clip_norm = clip_norm
    self._inner_agg_factory = inner_agg_factory

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    _common.check_float_value_type(value_type)
    inner_process = self._inner_agg_factory.create(value_type, weight_type)
    clip_norm = self._clip_norm

    @tff.tensorflow.computation(value_type)
    def clip(value):
      clipped, norm = tf.clip_by_global_norm(tf.nest.flatten(value), clip_norm)
      clipped = tf.nest.pack_sequence_as(value, clipped)
      return clipped, collections.OrderedDict(
          aggregate_norm=norm,
          aggregate_clipping_norm=tf.constant(clip_norm, _common.NORM_TF_TYPE),
          aggregate_clipped_count=tf.cast(norm > clip_norm, _common.COUNT_TF_TYPE))

    @tff.federated_computation(
        inner_process.initialize.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      inner_output = inner_process.next(state, value, weight)
      result, clip_measurements = tff.federated_map(clip, inner_output.result)
      measurements = tff.federated_map(_common.merge_measurements,
                                       (inner_output.measurements, clip_measurements))
      return tff.templates.MeasuredProcessOutput(
          state=inner_output.state, result=result, measurements=measurements)

    return tff.templates.AggregationProcess(inner_process.initialize, next_fn)
