"""FoolsGold (Fung et al., RAID 2020): clients whose update histories agree are sybils.

Each client's history is the sum of all its updates so far. Among the clients of a round,
with cs_ij the cosine similarity of the histories of i and j (cs_ii = 0) and v_i = max_j cs_ij:
pardoning scales cs_ij by v_i / v_j where v_i < v_j; a_i = 1 - max_j cs_ij clipped to [0, 1],
divided by the largest a, with 1 replaced by 0.99; then the logit
a_i = kappa * (ln(a_i / (1 - a_i)) + 0.5), clipped to [0, 1] (the steps of `foolsgold` in
the authors' DistributedML/FoolsGold, which give Algorithm 1's weights at kappa = 1).
Histories accumulate the raw updates, as the paper's H_i += Delta_i (BackFed and FLPoison add
the updates clipped to norm 1).

Departure (docs/DEFENSES.md): the aggregate is the a-weighted MEAN, sum_i a_i Delta_i /
sum_i a_i, where the paper (with the authors' ML/code and FLPoison) steps by the SUM
sum_i a_i Delta_i, and the authors' deep-fg trainer by sum_i a_i Delta_i / n. The paper's
Delta are FedSGD gradients; FedAvg's are model deltas of several local steps, and the sum
would move the model by up to n times their mean (a step that grows with the clients per
round); / n keeps that scale but shrinks the honest step by the sybils' share. Dividing by
sum_i a_i keeps FedAvg's step for the clients kept and only reweights, as BackFed does; the
paper's step is this one times sum_i a_i.

Client identities: the rule needs to know who sent an update across rounds, and TFF's FedAvg
sends only (delta, weight). `FoolsGoldFactory` reads the identity from the update's ClientInfo
(`learning.side_channel`: `info.client`, the population index), which a process built with
`learning.process.build_attacked_fed_avg(client_info=True)` sends; in a plain
`build_weighted_fed_avg` it refuses to build. An update and its identity travel together, so
the rule holds with any executor and client order. The weight only says whether a client
takes part (> 0; 0 = absent, as everywhere in this package): the paper's aggregation ignores
the data size.

State: `history`, float32 [num_clients, D], where D counts the coordinates of the last
`history_tensors` tensors of the update (0 = all). The default 2 keeps the output layer's
kernel and bias, as the indicative features of FLPoison's FoolsGold do: for the 293 writers
of the EMNIST setting and sun_cnn's logits layer (128 x 10 + 10 = 1,290 values) that is
293 x 1,290 x 4 B = 1.5 MB; the full model (1,199,882 values) would take 1.4 GB.

Mergeable: the updates reach the server with `federated_stack`.

Measurements: `zero_weight_count` (clients given weight 0, the sybils), `mean_foolsgold_weight`
(over the clients taking part), `client_decisions` (each client's weight a in [0, 1], in the
order received; -1, `_common.ABSENT`, for an absent client).
"""
from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import robust_rules
from tff_backdoor.learning import side_channel


def foolsgold_weights(histories: tf.Tensor, confidence: float) -> tf.Tensor:
  """FoolsGold's weights a [n] of n clients from their histories [n, D] (see the docstring)."""
  n = tf.shape(histories)[0]
  unit = tf.math.divide_no_nan(histories, tf.norm(histories, axis=1, keepdims=True))
  cs = tf.matmul(unit, unit, transpose_b=True) - tf.eye(n)
  max_cs = tf.reduce_max(cs, axis=1)
  pardon = max_cs[:, tf.newaxis] < max_cs[tf.newaxis, :]
  cs = tf.where(pardon, cs * tf.math.divide_no_nan(max_cs[:, tf.newaxis],
                                                   max_cs[tf.newaxis, :]), cs)
  wv = tf.clip_by_value(1.0 - tf.reduce_max(cs, axis=1), 0.0, 1.0)
  wv = tf.math.divide_no_nan(wv, tf.reduce_max(wv))
  wv = tf.where(tf.equal(wv, 1.0), 0.99, wv)
  wv = confidence * (tf.math.log(wv / (1.0 - wv)) + 0.5)
  wv = tf.where(wv > 1.0, 1.0, wv)  # also +inf
  return tf.where(tf.logical_or(wv < 0.0, tf.math.is_nan(wv)), 0.0, wv)  # also -inf


class FoolsGoldFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` for FoolsGold; takes updates with ClientInfo."""

  def __init__(self, num_clients: int, history_tensors: int = 2, confidence: float = 1.0):
    """Initializes the factory.

    Args:
      num_clients: Size of the population (identities 0 .. num_clients - 1; one beyond
        it counts as absent).
      history_tensors: Trailing tensors of the update kept in the history (0 = all).
      confidence: kappa of the logit.
    """
    if num_clients < 1:
      raise ValueError(f'foolsgold needs the population size, got num_clients={num_clients}')
    if history_tensors < 0 or not confidence > 0:
      raise ValueError(f'bad FoolsGold parameters: history_tensors={history_tensors}, '
                       f'confidence={confidence}')
    self._num_clients, self._tensors = int(num_clients), int(history_tensors)
    self._confidence = float(confidence)

  def _kept(self, structure):
    tensors = tf.nest.flatten(structure)
    return tensors[-self._tensors:] if self._tensors else tensors

  def _rule(self, stacked, weights, ids, history):
    """(aggregate, new history, measurements) of one round on the stacked updates."""
    valid = tf.logical_and(weights > 0.0, _common.in_population(ids, self._num_clients))
    stacked = tf.nest.map_structure(lambda x: tf.boolean_mask(x, valid), stacked)
    ids = tf.boolean_mask(ids, valid)
    n = tf.shape(ids)[0]
    rows = tf.concat([tf.reshape(x, [n, x.shape[1:].num_elements()])
                      for x in self._kept(stacked)], axis=1)
    history = tf.tensor_scatter_nd_add(history, ids[:, tf.newaxis], rows)
    wv = foolsgold_weights(tf.gather(history, ids), self._confidence)
    result = tf.nest.map_structure(
        lambda x: tf.math.divide_no_nan(tf.tensordot(wv, x, axes=1), tf.reduce_sum(wv)),
        stacked)
    return result, history, robust_rules.received_order(collections.OrderedDict([
        ('zero_weight_count', tf.reduce_sum(tf.cast(tf.equal(wv, 0.0), _common.COUNT_TF_TYPE))),
        ('mean_foolsgold_weight',
         tf.math.divide_no_nan(tf.reduce_sum(wv), tf.cast(n, tf.float32))),
        (_common.DECISIONS_KEY, wv)]), valid)

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    delta_type = side_channel.delta_type(value_type)
    _common.check_float_value_type(delta_type)
    specs = tf.nest.flatten(tff.types.type_to_tf_tensor_specs(delta_type))
    kept = specs[-self._tensors:] if self._tensors else specs
    width = int(sum(np.prod(s.shape) for s in kept))

    def rule(stacked, weights, ids, state):
      result, history, measurements = self._rule(stacked, weights, ids, state['history'])
      return result, collections.OrderedDict(history=history), measurements

    return robust_rules.identified_rule_process(
        value_type, weight_type,
        lambda: collections.OrderedDict(history=tf.zeros([self._num_clients, width])), rule,
        "FoolsGold needs each client's identity")
