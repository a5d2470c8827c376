"""Client update norm statistics, reported next to any weighted aggregation."""
from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.learning import side_channel


def add_client_norm_measurements(
    inner_agg_factory: tff.aggregators.WeightedAggregationFactory
) -> tff.aggregators.WeightedAggregationFactory:
  """Wraps a weighted factory to also report statistics of the client update L2 norms.

  The norms are those of the values as they arrive at this factory (before any clipping done
  by `inner_agg_factory`), over the clients that take part, i.e. have a weight > 0: a client
  with weight 0 (no examples, or a non-finite update zeroed by `NonFiniteGuardFactory`) does not
  count. They show what a defense is up against: a boosted update stands out in
  `client_norm_max`, and comparing `client_norm_mean` with a clipping bound tells how much of
  the benign signal the bound cuts. For an update with side information
  (`learning.side_channel`), the norm is its delta's.

  Added measurements (float32 / int32 scalars at `SERVER`):
  * `client_count`: number of clients with weight > 0.
  * `client_norm_mean`: mean L2 norm over those clients (0 if there are none).
  * `client_norm_max`: largest L2 norm over those clients (0 if there are none).

  Args:
    inner_agg_factory: The weighted aggregation whose measurements are extended.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory` (built with
    `tff.aggregators.add_measurements`).
  """
  _common.check_weighted_factory(inner_agg_factory, 'inner_agg_factory')

  def client_measurement_fn(value, weight):
    value_type = value.type_signature.member

    @tff.tensorflow.computation(value_type, weight.type_signature.member)
    def norm_if_participating(value, weight):
      participates = tf.cast(weight, tf.float32) > 0.0
      delta = side_channel.delta_of(value, value_type)
      norm = tf.where(participates, _common.global_l2_norm(delta), 0.0)
      return norm, tf.cast(participates, _common.COUNT_TF_TYPE)

    @tff.tensorflow.computation
    def mean(norm_sum, count):
      return tf.math.divide_no_nan(norm_sum, tf.cast(count, tf.float32))

    norm, participates = tff.federated_map(norm_if_participating, (value, weight))
    client_count = tff.federated_sum(participates)
    return tff.federated_zip(collections.OrderedDict(
        client_count=client_count,
        client_norm_mean=tff.federated_map(mean, (tff.federated_sum(norm), client_count)),
        client_norm_max=tff.federated_max(norm)))

  return tff.aggregators.add_measurements(
      inner_agg_factory, client_measurement_fn=client_measurement_fn)
