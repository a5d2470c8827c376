"""Centered clipping (Karimireddy, He, Jaggi 2021): clip every update around the last aggregate.

"Learning from History for Byzantine Robust Optimization" (ICML 2021), Algorithm CC: starting
from the previous round's aggregate v (the server's momentum; zeros in the first round),
repeat L times
  v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||),
and return v, which is also kept for the next round. An update far from the history moves
the aggregate by at most tau / n, whatever its norm.

Defaults are the authors' experiments (their code, `Clipping(tau=100, n_iter=1)` for CIFAR-10):
tau = 100, L = 1. On updates of norm a few units, as in the Sun et al. EMNIST setting, tau =
100 clips nothing; it is a radius to tune per task (`--cc_tau`).

Popular implementations: FLPoison uses the same (tau = 100, one iteration); Blades defaults
to tau = 10 and 5 iterations. Both keep v across rounds as here. BackFed has none.

Departure (docs/DEFENSES.md): no worker momentum. The paper applies CC to worker momenta
m_i = (1 - beta) g_i + beta m_i(prev); an aggregator sees what the client work sends, and
FedAvg's honest clients keep no state across rounds, so here x_i are the FedAvg model
updates themselves. (FLPoison's clients keep their momentum-0.9 SGD optimizer across rounds
and send one FedSGD step, so its updates carry worker momentum.)
"""
from __future__ import annotations

import collections
from typing import Any, Tuple

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import _rows
from tff_backdoor.aggregators import robust_rules


def centered_clip(stacked: Any, center: Any, tau: float,
                  iterations: int) -> Tuple[Any, tf.Tensor]:
  """(new center, number of clients clipped in the last iteration) for n >= 1 rows."""
  clipped = tf.constant(0, _common.COUNT_TF_TYPE)
  for _ in range(iterations):
    distances = _rows.distances_to(stacked, center)
    scales = tf.minimum(1.0, tf.math.divide_no_nan(tau, distances))
    scales = tf.where(distances > 0, scales, 1.0)
    n = tf.cast(tf.size(scales), tf.float32)
    center = tf.nest.map_structure(
        lambda c, step: c + step, center,
        _rows.combine_rows(scales / n, _rows.minus(stacked, center)))
    clipped = tf.reduce_sum(tf.cast(distances > tau, _common.COUNT_TF_TYPE))
  return center, clipped


class CenteredClippingFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` for centered clipping; its state is the last aggregate.

  Unweighted like the paper; clients with weight 0 are absent (see `robust_rules`). Every
  update reaches the server with `federated_stack`, so L > 1 iterations need no extra
  communication and the process stays mergeable. A round without participants returns zeros
  and keeps the state.

  Measurements: `centered_clipped_count` (clients farther than tau from the center in the last
  iteration) and `centered_clipping_norm` (tau).
  """

  def __init__(self, tau: float = 100.0, iterations: int = 1):
    """Initializes the factory.

    Args:
      tau: Clipping radius around the center, > 0.
      iterations: L >= 1 clipping iterations per round.
    """
    if not tau > 0:
      raise ValueError(f'tau must be positive, found {tau}')
    self._tau = float(tau)
    self._iterations = _common.integer_at_least(iterations, 'iterations', 1)

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    _common.check_float_value_type(value_type)
    value_spec = tff.types.type_to_tf_tensor_specs(value_type)
    zeros = lambda: tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), value_spec)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_eval(tff.tensorflow.computation(zeros), tff.SERVER)

    @tff.tensorflow.computation
    def apply_rule(center, stacked_values, weights):
      participates = tf.cast(weights, tf.float32) > 0.0
      stacked = tf.nest.map_structure(lambda x: tf.boolean_mask(x, participates),
                                      stacked_values)
      new_center, clipped = tf.cond(
          tf.reduce_any(participates),
          lambda: centered_clip(stacked, center, self._tau, self._iterations),
          lambda: (center, tf.constant(0, _common.COUNT_TF_TYPE)))
      result = tf.cond(tf.reduce_any(participates), lambda: new_center, zeros)
      return new_center, result, collections.OrderedDict(
          centered_clipped_count=clipped,
          centered_clipping_norm=tf.constant(self._tau, _common.NORM_TF_TYPE))

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS),
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      stacked_values, weights = robust_rules.federated_stack(tff.federated_zip((value, weight)))
      new_state, result, measurements = tff.federated_map(
          apply_rule, (state, stacked_values, weights))
      return tff.templates.MeasuredProcessOutput(new_state, result, measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)
