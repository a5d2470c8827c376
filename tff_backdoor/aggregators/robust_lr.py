"""Robust learning rate (Ozdayi, Kantarcioglu, Gel 2021): flip the step where signs disagree.

"Defending against Backdoors in Federated Learning with Robust Learning Rate" (AAAI 2021). For
each coordinate k, with s_k = |sum_i sign(x_ik)| over the n clients of the round, the server
learning rate of coordinate k is +eta if s_k >= theta and -eta otherwise. A backdoor needs
coordinates that honest clients do not push consistently; there the agreement is low and the
step is reversed. The aggregate to which the learning rate applies is the weighted mean
(their `agg_avg`, weighted by data sizes); the sign count is unweighted.

Here the sign flip is applied to the inner aggregate (by default the weighted mean), and the
server optimizer's learning rate eta does the rest, so with server SGD the model moves by
eta * flip * mean exactly as in the paper. The sign sums are a `federated_sum`, so the
factory adds one sum of the model's size and stays mergeable.

Default theta = 4: the authors' value for 10 agents per round (Fashion-MNIST, this package's
default `clients_per_round`); they use 8 for CIFAR-10 (40 agents) and for Federated EMNIST
(about 34 agents per round). theta must not exceed the number of clients, or every
coordinate is flipped every round.

Popular implementations: BackFed's RobustLR defaults to theta = 4 but averages the updates
unweighted (the authors weight by data size) and defaults to a server learning rate of 0.1.
"""
from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common


class RobustLearningRateFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` that negates the inner aggregate where sign agreement < theta.

  Clients with weight 0 (absent, or guarded by `NonFiniteGuardFactory`) do not count in the
  sign sums.

  Measurements: the inner factory's, plus `rlr_flipped_fraction` (fraction of coordinates
  whose sign was flipped) and `rlr_threshold` (theta).
  """

  def __init__(self, threshold: float = 4,
               inner_agg_factory: Optional[tff.aggregators.WeightedAggregationFactory] = None):
    """Initializes the factory.

    Args:
      threshold: theta > 0, the sign agreement |sum_i sign(x_ik)| a coordinate needs to keep
        its learning rate positive.
      inner_agg_factory: The aggregation whose result is sign-corrected; defaults to a
        weighted mean that returns zeros when every weight is 0.
    """
    if not threshold > 0:
      raise ValueError(f'threshold must be positive, found {threshold}')
    self._threshold = float(threshold)
    self._inner_agg_factory = _common.inner_or_default(inner_agg_factory)

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    _common.check_float_value_type(value_type)
    inner_process = self._inner_agg_factory.create(value_type, weight_type)
    threshold = self._threshold

    @tff.tensorflow.computation(value_type, weight_type)
    def signs(value, weight):
      participates = tf.cast(tf.cast(weight, tf.float32) > 0.0, tf.float32)
      return tf.nest.map_structure(lambda x: tf.sign(tf.cast(x, tf.float32)) * participates,
                                   value)

    @tff.tensorflow.computation
    def flip(aggregate, sign_sums):
      keep = tf.nest.map_structure(lambda s: tf.abs(s) >= threshold, sign_sums)
      result = tf.nest.map_structure(lambda a, k: tf.where(k, a, -a), aggregate, keep)
      flipped = tf.add_n([tf.reduce_sum(1.0 - tf.cast(k, tf.float32))
                          for k in tf.nest.flatten(keep)])
      size = sum(k.shape.num_elements() for k in tf.nest.flatten(keep))
      return result, collections.OrderedDict(
          rlr_flipped_fraction=flipped / size,
          rlr_threshold=tf.constant(threshold, _common.NORM_TF_TYPE))

    @tff.federated_computation(inner_process.initialize.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS),
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      inner_output = inner_process.next(state, value, weight)
      sign_sums = tff.federated_sum(tff.federated_map(signs, (value, weight)))
      result, flip_measurements = tff.federated_map(flip, (inner_output.result, sign_sums))
      measurements = tff.federated_map(_common.merge_measurements,
                                       (inner_output.measurements, flip_measurements))
      return tff.templates.MeasuredProcessOutput(inner_output.state, result, measurements)

    return tff.templates.AggregationProcess(inner_process.initialize, next_fn)
