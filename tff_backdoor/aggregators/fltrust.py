"""FLTrust (Cao et al., NDSS 2021): client updates weighted by their agreement with the server's.

Each round the server trains its own update g0 from the current global model on a small clean
root set. A client update g_i gets the trust score TS_i = ReLU(cos(g_i, g0)), is rescaled to
the norm of g0, and the aggregate is sum_i TS_i * (||g0|| / ||g_i||) g_i / sum_i TS_i.

`FLTrustFactory` is a `tff.aggregators.WeightedAggregationFactory`: each client computes its
trust and rescaled update where it is, and two `federated_sum`s finish the rule, so it is
mergeable and never stacks the updates (only the trust scores, one scalar a client, reach the
server with `federated_stack`, for the per-client decisions). g0 comes through the side
channel (`learning.side_channel`): the distributor trains it at the server from the round's
global model (`learning.root_update`) and broadcasts it with the model, as the paper's server
does, and each client hands it on to the aggregator in its ClientInfo (`info.root_update`).
A process built with `learning.process.build_attacked_fed_avg(root=(x, y))` does so; in a
plain `build_weighted_fed_avg` there is no g0 and the factory refuses to build.

Unweighted, like the paper: a client's weight only says whether it takes part (> 0). A
non-finite update (zeroed with weight 0 by `NonFiniteGuardFactory`) and a zero update have
trust 0; a non-finite or zero g0 gives every client trust 0 and the round a zero update.

Departures (docs/DEFENSES.md): the paper leaves the all-distrusted round open; here it is a
zero update (nothing trusted, nothing applied), as in BackFed, which keeps the model. FLPoison
instead averages the rescaled updates uniformly when every trust is 0, so such a round moves
the model.

Measurements: `trusted_count` (clients with TS > 0), `mean_trust` (over the clients taking
part), `server_update_norm` (||g0||), `client_decisions` (each client's TS, in the order
received; -1, `_common.ABSENT`, for an absent client).
"""
from __future__ import annotations

import collections
from typing import Any, Tuple

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators.robust_rules import federated_stack
from tff_backdoor.learning import side_channel


def trust_and_rescaled(value: Any, reference: Any,
                       participates: tf.Tensor) -> Tuple[tf.Tensor, Any]:
  """(TS, (||g0|| / ||g||) g) of one client; TS = 0 for a non-finite g0, a zero update, or
  one so large that ||g|| ||g0|| overflows float32 (its cosine would be inf / inf = NaN, and a
  NaN trust would void the round's sum)."""
  norm, reference_norm = _common.global_l2_norm(value), _common.global_l2_norm(reference)
  dot = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32) * tf.cast(r, tf.float32))
                  for v, r in zip(tf.nest.flatten(value), tf.nest.flatten(reference))])
  cosine = tf.math.divide_no_nan(dot, norm * reference_norm)
  usable = tf.logical_and(tf.logical_and(participates, tf.math.is_finite(reference_norm)),
                          tf.math.is_finite(cosine))
  trust = tf.where(usable, tf.nn.relu(cosine), 0.0)
  scale = tf.math.divide_no_nan(reference_norm, norm)
  factor = tf.where(trust > 0.0, trust * scale, 0.0)  # not 0 * inf when g0 is not finite
  rescaled = tf.nest.map_structure(lambda v: tf.cast(factor, v.dtype) * v, value)
  return trust, rescaled


class FLTrustFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` for FLTrust's aggregation rule (see the module docstring)."""

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    side_channel.require(value_type, 'root_update',
                         "FLTrust needs the server's own update g0 on its root set each round",
                         'root=(x, y)')
    delta_type = side_channel.delta_type(value_type)
    _common.check_float_value_type(delta_type)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.tensorflow.computation(value_type, weight_type)
    def client_share(value, weight):
      participates = tf.cast(weight, tf.float32) > 0.0
      reference = value[side_channel.INFO]['root_update']
      trust, rescaled = trust_and_rescaled(value[side_channel.DELTA], reference, participates)
      counts = collections.OrderedDict(
          trust=trust, trusted=tf.cast(trust > 0.0, _common.COUNT_TF_TYPE),
          participants=tf.cast(participates, _common.COUNT_TF_TYPE))
      return rescaled, counts, _common.global_l2_norm(reference)

    @tff.tensorflow.computation
    def trust_of(counts):
      return tf.where(counts['participants'] > 0, counts['trust'], _common.ABSENT)

    @tff.tensorflow.computation
    def finish(weighted_sum, counts, reference_norm, trusts):
      result = tf.nest.map_structure(
          lambda s: tf.math.divide_no_nan(s, tf.cast(counts['trust'], s.dtype)), weighted_sum)
      measurements = collections.OrderedDict(
          trusted_count=counts['trusted'],
          mean_trust=tf.math.divide_no_nan(counts['trust'],
                                           tf.cast(counts['participants'], tf.float32)),
          server_update_norm=reference_norm)
      measurements[_common.DECISIONS_KEY] = trusts
      return result, measurements

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS),
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      rescaled, counts, reference_norm = tff.federated_map(client_share, (value, weight))
      trusts = federated_stack(tff.federated_map(trust_of, counts))
      result, measurements = tff.federated_map(
          finish, (tff.federated_sum(rescaled), tff.federated_sum(counts),
                   tff.federated_max(reference_norm), trusts))
      return tff.templates.MeasuredProcessOutput(state=state, result=result,
                                                 measurements=measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)
