"""Factory that keeps non-finite client updates (NaN, Inf) out of the aggregate."""
from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.learning import side_channel


class NonFiniteGuardFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` that zeroes the value and weight of non-finite updates.

  A single NaN or Inf in one client update would otherwise poison the whole model: a mean
  propagates it, and TFF's `clipping_factory` / `zeroing_factory` let it through (`NaN > bound`
  is False, so such an update is neither clipped nor zeroed). At `CLIENTS`, every update whose
  value or weight contains a non-finite number is replaced by zeros and its weight set to 0
  before `inner_agg_factory` runs. Weighted inner aggregations then compute exactly the
  aggregate of the other clients; the robust rules of this package treat a weight of 0 as
  "absent". (An aggregation that ignores weights, such as weak DP, sees a zero update.) An
  update with side information (`learning.side_channel`) is guarded on its delta; its info
  goes on unchanged.

  Put it outermost, as `build_defense` does, so that no inner factory (and no norm estimate
  such as adaptive clipping's) ever sees a non-finite number.

  Measurements: the inner factory's, plus `nonfinite_count` (number of clients guarded).
  """

  def __init__(self,
               inner_agg_factory: Optional[tff.aggregators.WeightedAggregationFactory] = None):
    """Initializes the guard.

    Args:
      inner_agg_factory: The weighted aggregation to run on the guarded values. Defaults to a
        weighted mean that returns zeros when every weight is 0.
    """
    if inner_agg_factory is None:
      inner_agg_factory = _common.default_mean_factory()
    _common.check_weighted_factory(inner_agg_factory, 'inner_agg_factory')
    self._inner_agg_factory = inner_agg_factory

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    _common.check_float_value_type(side_channel.delta_type(value_type))
    inner_process = self._inner_agg_factory.create(value_type, weight_type)

    @tff.tensorflow.computation(value_type, weight_type)
    def guard(value, weight):
      delta = side_channel.delta_of(value, value_type)
      checks = [tf.reduce_all(tf.math.is_finite(x)) for x in tf.nest.flatten(delta)]
      checks.append(tf.math.is_finite(tf.cast(weight, tf.float32)))
      is_finite = tf.reduce_all(tf.stack(checks))
      delta = tf.nest.map_structure(lambda x: tf.where(is_finite, x, tf.zeros_like(x)), delta)
      value = side_channel.with_delta(value, delta, value_type)
      weight = tf.where(is_finite, weight, tf.zeros_like(weight))
      return value, weight, tf.cast(tf.logical_not(is_finite), _common.COUNT_TF_TYPE)

    @tff.federated_computation(
        inner_process.initialize.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      value, weight, was_nonfinite = tff.federated_map(guard, (value, weight))
      inner_output = inner_process.next(state, value, weight)
      measurements = tff.federated_map(
          _common.merge_measurements,
          (inner_output.measurements,
           tff.federated_zip(collections.OrderedDict(
               nonfinite_count=tff.federated_sum(was_nonfinite)))))
      return tff.templates.MeasuredProcessOutput(
          state=inner_output.state, result=inner_output.result, measurements=measurements)

    return tff.templates.AggregationProcess(inner_process.initialize, next_fn)
