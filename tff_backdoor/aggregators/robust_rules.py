"""Byzantine-robust aggregation rules that need every client's update at the server.

Coordinate-wise median, coordinate-wise trimmed mean and (Multi-)Krum are not sums, so they
cannot be decomposed into TFF's `federated_sum`/`federated_mean`. `federated_stack` brings
every client's value to the server, stacked along a new leading axis (one row per client),
with `tff.federated_aggregate` whose accumulator grows by concatenation: the pattern of TFF's
own `tff.aggregators.federated_sample`, without its random reordering and subsampling. The
merge step also concatenates, so the aggregation stays mergeable across TFF workers. Each rule
then runs as one TensorFlow computation at the server, on the per-variable stacks, so the
structure of the update (one tensor per model variable) is kept in the result.

As in the papers, the rules of this module are unweighted: a client's weight only says
whether it takes part (weight > 0). A weight of 0 marks a client as absent, e.g. an update
with no examples or one zeroed by `NonFiniteGuardFactory`; the rule is applied to the other
clients. If no client takes part, the result is zeros.
"""
from __future__ import annotations

import abc
import collections
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.learning import side_channel


def federated_stack(value: tff.Value) -> tff.Value:
  """Collects every client's value at the server, stacked along a new leading axis.

  A member of type `<float32[2,3], float32[4]>` at `CLIENTS` becomes
  `<float32[?,2,3], float32[?,4]>` at `SERVER`, with one row per client. The server needs
  memory for all the rows: clients_per_round times the model size.

  Args:
    value: A `tff.Value` placed at `CLIENTS`, a tensor or a structure of tensors.

  Returns:
    A `tff.Value` placed at `SERVER`.
  """
  member_type = value.type_signature.member

  def with_leading_axis(tensor_type):
    return tff.TensorType(tensor_type.dtype, (None,) + tuple(tensor_type.shape))

  stacked_type = tff.types.to_type(
      tff.types.structure_from_tensor_type_tree(with_leading_axis, member_type))

  @tff.tensorflow.computation
  def empty_stack():
    return tff.types.structure_from_tensor_type_tree(
        lambda t: tf.zeros((0,) + tuple(t.shape), t.dtype), member_type)

  @tff.tensorflow.computation(stacked_type, member_type)
  def accumulate(stacked, value):
    return tf.nest.map_structure(lambda s, v: tf.concat([s, v[tf.newaxis]], axis=0),
                                 stacked, value)

  @tff.tensorflow.computation(stacked_type, stacked_type)
  def merge(a, b):
    return tf.nest.map_structure(lambda x, y: tf.concat([x, y], axis=0), a, b)

  @tff.tensorflow.computation(stacked_type)
  def report(stacked):
    return stacked

  return tff.federated_aggregate(value, empty_stack(), accumulate, merge, report)


def identified_rule_process(value_type: tff.Type, weight_type: tff.Type,
                            initial_state: Callable[[], Any],
                            rule: Callable[[Any, tf.Tensor, tf.Tensor, Any], tuple],
                            needs: str) -> tff.templates.AggregationProcess:
  """A process that stacks every (delta, identity, weight) and runs `rule` at the server.

  The value is a client update with ClientInfo (`learning.side_channel`), whose `client` is
  the client's population index; a plain value type raises `needs` in one line, with how to
  supply the identities. `initial_state()` builds the state in TF; `rule(stacked deltas,
  weights float32 [n], identities int32 [n], state)` returns (aggregate structured as one
  delta, new state, measurements). One `federated_aggregate`, so the process stays mergeable
  (FoolsGold, FLDetector).
  """
  side_channel.require(value_type, 'client', needs, 'client_info=True')

  @tff.tensorflow.computation
  def initial():
    return initial_state()

  @tff.federated_computation()
  def init_fn():
    return tff.federated_eval(initial, tff.SERVER)

  @tff.tensorflow.computation
  def apply_rule(stacked, weights, ids, state):
    return rule(stacked, tf.cast(weights, tf.float32), ids, state)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(value_type, tff.CLIENTS),
                             tff.FederatedType(weight_type, tff.CLIENTS))
  def next_fn(state, value, weight):
    delta, info = getattr(value, side_channel.DELTA), getattr(value, side_channel.INFO)
    stacked, weights, ids = federated_stack(tff.federated_zip((delta, weight, info.client)))
    result, new_state, measurements = tff.federated_map(apply_rule,
                                                        (stacked, weights, ids, state))
    return tff.templates.MeasuredProcessOutput(new_state, result, measurements)

  return tff.templates.AggregationProcess(init_fn, next_fn)


def coordinate_median(stacked: tf.Tensor) -> tf.Tensor:
  """Median along axis 0 (the clients), averaging the two middle values when n is even.

  Same convention as `np.median(stacked, axis=0)`. `stacked` must have at least one row.
  """
  n = tf.shape(stacked)[0]
  ordered = tf.sort(stacked, axis=0)
  return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


def received_order(measurements: collections.OrderedDict, participates: tf.Tensor,
                   keys: tuple = (_common.DECISIONS_KEY,)) -> collections.OrderedDict:
  """`measurements` with its per-client values under `keys` (over the participants) spread
  back to every client received, in the order received; an absent client (weight 0) gets
  `_common.ABSENT` as its decision and 0 under any other key."""
  measurements = collections.OrderedDict(measurements)
  for key in set(keys) & set(measurements):
    spread = tf.scatter_nd(tf.where(participates), tf.cast(measurements[key], tf.float32),
                           tf.shape(participates, out_type=tf.int64))
    fill = _common.ABSENT if key == _common.DECISIONS_KEY else 0.0
    measurements[key] = tf.where(participates, spread, fill)
  return measurements


def no_decisions() -> tf.Tensor:
  """The per-client decisions of a round in which no client takes part (none)."""
  return tf.zeros([0], tf.float32)


class ServerRuleFactory(tff.aggregators.WeightedAggregationFactory, metaclass=abc.ABCMeta):
  """Base of the rules applied at the server to the stacked updates of all clients.

  The created process gathers every client's (value, weight) with `federated_stack` (one
  `federated_aggregate`, so the computation stays mergeable), keeps the clients with weight
  > 0, and runs the subclass's `_rule` on them in one TensorFlow computation at the server;
  zeros if no client takes part. The process has no state. A subclass implements `_rule` and
  `_empty_measurements`, and may validate `value_type` by overriding `create`. A rule that
  admits or weights clients reports its decision per participant under
  `_common.DECISIONS_KEY` (float32 [n]; `no_decisions()` when empty); the process reports it
  for every client received, in the order received (`received_order`). A rule that reads a
  ClientInfo field (`learning.side_channel`) names it in `_reads`: the value must carry it
  (else a one-line refusal), it is stacked with the deltas and `_rule` gets it as a fourth
  argument.
  """

  # (ClientInfo field `_rule` reads, what the rule needs, the `build_attacked_fed_avg`
  # argument supplying it): `side_channel.require`'s arguments. None: the delta alone.
  _reads = None

  @abc.abstractmethod
  def _rule(self, stacked: Any, weights: tf.Tensor,
            value_spec: Any) -> tuple[Any, collections.OrderedDict]:
    """The rule, in TensorFlow, on at least one client.

    Args:
      stacked: Structure of `value_spec`, each tensor with a leading axis of n >= 1 clients.
      weights: float32 [n], the clients' weights, all > 0.
      value_spec: Structure of `tf.TensorSpec` of one client value.

    Returns:
      (aggregate structured as `value_spec`, OrderedDict of scalar measurements).
    """

  @abc.abstractmethod
  def _empty_measurements(self) -> collections.OrderedDict:
    """The measurements of `_rule` for a round in which no client takes part."""

  def _apply(self, stacked_values, weights, value_spec, info=()):
    """The rule on the participants (weight > 0) of the stacked values, or zeros if none."""
    participates = tf.cast(weights, tf.float32) > 0.0
    stacked, info = tf.nest.map_structure(lambda x: tf.boolean_mask(x, participates),
                                          (stacked_values, info))
    weights = tf.boolean_mask(tf.cast(weights, tf.float32), participates)
    n = tf.reduce_sum(tf.cast(participates, tf.int32))

    def empty():
      return (tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), value_spec),
              self._empty_measurements())

    result, measurements = tf.cond(
        n > 0, lambda: self._rule(stacked, weights, value_spec, *info), empty)
    return result, received_order(measurements, participates)

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    field = self._reads[0] if self._reads else None
    if field is not None:
      side_channel.require(value_type, *self._reads)
    delta_type = side_channel.delta_type(value_type)
    _common.check_float_value_type(delta_type)
    value_spec = tff.types.type_to_tf_tensor_specs(delta_type)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.tensorflow.computation
    def apply_rule(stacked_values, weights):
      return self._apply(stacked_values, weights, value_spec)

    @tff.tensorflow.computation
    def apply_rule_with_info(stacked_values, weights, info):
      return self._apply(stacked_values, weights, value_spec, (info,))

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      if field is None:
        stacked_values, weights = federated_stack(tff.federated_zip((
            getattr(value, side_channel.DELTA) if side_channel.carries_info(value_type)
            else value, weight)))
        result, measurements = tff.federated_map(apply_rule, (stacked_values, weights))
      else:
        info = getattr(getattr(value, side_channel.INFO), field)
        stacked = federated_stack(tff.federated_zip(
            (getattr(value, side_channel.DELTA), weight, info)))
        result, measurements = tff.federated_map(apply_rule_with_info, stacked)
      return tff.templates.MeasuredProcessOutput(
          state=state, result=result, measurements=measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)


class CoordinateMedianFactory(ServerRuleFactory):
  """`WeightedAggregationFactory` for the coordinate-wise median (Yin et al. 2018).

  Each coordinate of the result is the median of that coordinate over the participating
  clients (mean of the two middle values for an even number). Tolerates fewer than half of
  the clients being arbitrary, at the price of a noisier estimate than the mean on benign,
  non-IID updates.

  Measurements: none of its own (`OrderedDict()`); see the module docstring for weights.
  """

  def _rule(self, stacked, weights, value_spec):
    del weights, value_spec  # Unweighted, like the paper.
    return tf.nest.map_structure(coordinate_median, stacked), collections.OrderedDict()

  def _empty_measurements(self):
    return collections.OrderedDict()


class TrimmedMeanFactory(ServerRuleFactory):
  """`WeightedAggregationFactory` for the coordinate-wise trimmed mean (Yin et al. 2018).

  For each coordinate, the floor(`trim_fraction` * n) largest and as many smallest values
  over the n participating clients are dropped and the rest averaged (the convention of
  `scipy.stats.trim_mean`). `trim_fraction` = 0 is the plain unweighted mean; the result
  tolerates up to floor(`trim_fraction` * n) arbitrary clients per coordinate.

  Measurements: `trimmed_count`, number of values dropped per coordinate (2 floor(beta n)).
  """

  def __init__(self, trim_fraction: float = 0.1):
    """Initializes the factory.

    Args:
      trim_fraction: Fraction beta of clients dropped at each end, in [0, 0.5).
    """
    trim_fraction = float(trim_fraction)
    if not 0.0 <= trim_fraction < 0.5:
      raise ValueError(f'trim_fraction must be in [0, 0.5), found {trim_fraction}')
    self._trim_fraction = trim_fraction

  def _rule(self, stacked, weights, value_spec):
    del weights, value_spec  # Unweighted, like the paper.
    n = tf.shape(tf.nest.flatten(stacked)[0])[0]
    # In float64, floor(beta * n) is the value Python/NumPy compute for the same beta and n.
    k = tf.cast(tf.floor(self._trim_fraction * tf.cast(n, tf.float64)), tf.int32)

    def trimmed_mean(x):
      return tf.reduce_mean(tf.sort(x, axis=0)[k:n - k], axis=0)

    return (tf.nest.map_structure(trimmed_mean, stacked),
            collections.OrderedDict(trimmed_count=2 * k))

  def _empty_measurements(self):
    return collections.OrderedDict(trimmed_count=tf.constant(0, _common.COUNT_TF_TYPE))


class KrumFactory(ServerRuleFactory):
  """`WeightedAggregationFactory` for Krum and Multi-Krum (Blanchard et al. 2017).

  With n participating clients of which at most f = `num_byzantine` are Byzantine, the score
  of client i is the sum of its squared L2 distances (over all variables together) to its
  n - f - 2 closest other clients. Multi-Krum returns the unweighted mean of the m =
  `num_selected` updates with the lowest scores (ties go to the earlier client); Krum is m = 1
  and returns the single best update. Blanchard et al. require n > 2f + 2; if fewer clients
  arrive than planned, the rule degrades gracefully: it uses max(1, n - f - 2) neighbours
  (0 when n = 1) and selects min(m, n) clients.

  Squared distances and n - f - 2 neighbours are the paper's (and BackFed's); FLPoison scores
  with unsquared distances and n - f - 1 neighbours, which can pick another winner
  (docs/DEFENSES.md).

  Measurements: `rejected_count` (n - number selected), `krum_score_min` (score of the
  best client) and `client_decisions` (1 selected, 0 not).
  """

  def __init__(self, num_byzantine: int = 1, num_selected: int = 1):
    """Initializes the factory.

    Args:
      num_byzantine: f, the number of Byzantine clients to tolerate (>= 0).
      num_selected: m, the number of updates to average (>= 1); 1 is Krum.
    """
    if num_byzantine < 0:
      raise ValueError(f'num_byzantine must be nonnegative, found {num_byzantine}')
    if num_selected < 1:
      raise ValueError(f'num_selected must be at least 1, found {num_selected}')
    self._num_byzantine = int(num_byzantine)
    self._num_selected = int(num_selected)

  def _rule(self, stacked, weights, value_spec):
    del weights, value_spec  # Unweighted, like the paper.
    flat = tf.concat([tf.reshape(x, [tf.shape(x)[0], -1]) for x in tf.nest.flatten(stacked)],
                     axis=1)
    n = tf.shape(flat)[0]
    # Row i: squared distances from client i to every client. Computed from differences, not
    # from a Gram matrix, which would lose precision on updates that are close to each other.
    distances = tf.map_fn(lambda row: tf.reduce_sum(tf.square(flat - row), axis=1), flat)
    distances = tf.linalg.set_diag(distances, tf.fill([n], np.float32(np.inf)))
    num_neighbours = tf.clip_by_value(n - self._num_byzantine - 2, 1, n - 1)
    scores = tf.reduce_sum(tf.sort(distances, axis=1)[:, :num_neighbours], axis=1)
    num_selected = tf.minimum(self._num_selected, n)
    selected = tf.math.top_k(-scores, k=num_selected, sorted=True).indices
    result = tf.nest.map_structure(lambda x: tf.reduce_mean(tf.gather(x, selected), axis=0),
                                   stacked)
    admitted = tf.reduce_sum(tf.one_hot(selected, n), axis=0)
    return result, collections.OrderedDict([
        ('rejected_count', n - num_selected), ('krum_score_min', tf.reduce_min(scores)),
        (_common.DECISIONS_KEY, admitted)])

  def _empty_measurements(self):
    return collections.OrderedDict([
        ('rejected_count', tf.constant(0, _common.COUNT_TF_TYPE)),
        ('krum_score_min', tf.constant(0.0, _common.NORM_TF_TYPE)),
        (_common.DECISIONS_KEY, no_decisions())])
