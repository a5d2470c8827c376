"""FLDetector (Zhang, Cao, Jia, Gong, KDD 2022): clients whose updates the past cannot predict.

Algorithm 1 of the paper, per round t with global model w_t and client updates g_i^t:
1. H^t, the Hessian, by L-BFGS from the last N pairs (Delta w_k = w_k - w_{k-1},
   Delta g_k = g_k - g_{k-1}) of global model moves and global updates (`lbfgs_product`:
   the compact form of Byrd, Nocedal, Schnabel 1994, as the authors' code).
2. Predicted update g^_i^t = g_i^{t-1} + H^t (w_t - w_{t-1}); d_i^t = ||g^_i^t - g_i^t||,
   normalised to sum 1 over the round's clients; suspicious score s_i = the mean of a
   client's last N normalised distances.
3. Gap statistic on the scores: more than one cluster means an attack; then k-means (k=2)
   and the cluster of larger mean score is malicious (`kmeans_1d`). Window N = 10.

In aggregator terms: the global update of round k is the aggregate a_k (our result), and
w_k - w_{k-1} = -eta a_{k-1} under FedAvg's server SGD (learning rate eta, no momentum). The
L-BFGS product B v is unchanged when every Delta w and v are scaled by the same factor (B
scales by its inverse), so the state stores a_{k-1} for Delta w and v = a_{t-1}, and eta
is not needed. A client's identity is its ClientInfo's population index, as for FoolsGold
(`foolsgold` module docstring; a plain `build_weighted_fed_avg` is refused): the scores are
per client; a weight of 0 means absent.

Where we depart from the paper, and why:
* The paper's g_i^{t-1} is the client's own previous update (every client takes part in
  every round). The state keeps the previous round's updates with their identities
  ([clients_per_round, D]); a client that did not take part in round t-1 is predicted
  from the previous global update a_{t-1} instead (its own last update may be many rounds
  old, and a [population, D] store does not fit: 293 writers x 1.2M weights).
* On detection the paper removes the malicious clients for good and restarts training from
  the initial model; an aggregator cannot restart the model, so, as FLPoison does, the
  flagged clients are left out of this round's (unweighted) mean, and scoring goes on.
* Warm-up: detection starts as soon as N pairs exist (round N+1), a client's score being
  the mean of the distances it has so far (at most N); FLPoison waits 50 rounds plus a
  full window of scores.
* k-means and the gap statistic's clusterings are the exact optimum on the line
  (`kmeans_1d`), where scikit-learn's KMeans (used by the authors and the peers) is
  Lloyd's algorithm from random starts; the reference draws are seeded per round.
Peers (bench/peer_detectors.py runs FLPoison's and BackFed's computations on the same
updates):
* FLPoison stores the pair (a_t, a_t - a_{t-1}), i.e. Delta w one round later than its
  Delta g (the paper pairs a_{t-1} with a_t - a_{t-1}); its gap statistic returns k + 1
  for the first k that satisfies the rule, so it reports >= 2 clusters, an attack, in
  every round; its W*_k is averaged before the log (Tibshirani: the mean of the logs).
* BackFed predicts client i from the i-th update of the previous round, whoever sent it
  (with sampled clients, another client), sums rather than averages the window of scores,
  and after a detection excludes the clients for good and restarts from the initial model.

Memory: the state holds (2N + clients_per_round + 1) x D float32 (D = model size).

Measurements: `rejected_count`, `fldetector_attack` (1 if the gap statistic found more than
one cluster), `fldetector_score_max`, and per client in the order received
`fldetector_scores` (0 during the warm-up) and `client_decisions` (1 admitted, 0 flagged).
"""
from __future__ import annotations

import collections
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import _rows
from tff_backdoor.aggregators import kmeans_1d
from tff_backdoor.aggregators import robust_rules
from tff_backdoor.learning import side_channel


SCORES_KEY = 'fldetector_scores'


def lbfgs_product(s: tf.Tensor, y: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
  """B v for the L-BFGS Hessian estimate B of the pairs s, y [N, D] (oldest first); v [D].

  B = sigma I - [sigma S, Y] M^-1 [sigma S^T; Y^T], M = [[sigma S^T S, L], [L^T, -D]], with
  S^T Y = L + D + (strictly upper part), sigma = y_N^T s_N / s_N^T s_N.
  """
  s64, y64, v64 = (tf.cast(t, tf.float64) for t in (s, y, v))
  sty = tf.matmul(s64, y64, transpose_b=True)
  sts = tf.matmul(s64, s64, transpose_b=True)
  lower = tf.linalg.band_part(sty, -1, 0) - tf.linalg.band_part(sty, 0, 0)
  sigma = tf.reduce_sum(y64[-1] * s64[-1]) / tf.reduce_sum(s64[-1] * s64[-1])
  middle = tf.concat([tf.concat([sigma * sts, lower], axis=1),
                      tf.concat([tf.transpose(lower), -tf.linalg.diag(tf.linalg.diag_part(sty))],
                                axis=1)], axis=0)
  p = tf.concat([sigma * tf.linalg.matvec(s64, v64), tf.linalg.matvec(y64, v64)], axis=0)
  q = tf.linalg.solve(middle, p[:, tf.newaxis])[:, 0]
  n = tf.shape(s64)[0]
  product = sigma * v64 - sigma * tf.linalg.matvec(s64, q[:n], transpose_a=True) - \
      tf.linalg.matvec(y64, q[n:], transpose_a=True)
  return tf.cast(product, tf.float32)


def normalised_distances(predicted: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
  """||predicted_i - row_i||, divided by their sum over the round's clients."""
  distances = tf.norm(predicted - rows, axis=1)
  return tf.math.divide_no_nan(distances, tf.reduce_sum(distances))


def flagged_clients(scores: tf.Tensor, reference: tf.Tensor, max_clusters: int) -> tf.Tensor:
  """bool [n]: the upper 2-means cluster of `scores` if the gap statistic finds > 1 cluster."""
  attack = kmeans_1d.estimated_clusters(scores, reference, max_clusters) >= 2
  return tf.cond(attack, lambda: kmeans_1d.upper_of_two_means(scores),
                 lambda: tf.zeros_like(scores, tf.bool))


def reference_draws(seed: int, round_number: tf.Tensor, samples: int, n: tf.Tensor) -> tf.Tensor:
  """float64 [samples, n] uniforms on [0, 1): the gap statistic's reference sets this round."""
  return tf.random.stateless_uniform([samples, n], [seed, round_number], dtype=tf.float64)


class FLDetectorFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` for FLDetector; takes updates with ClientInfo."""

  def __init__(self, num_clients: int, clients_per_round: int, window: int = 10,
               gap_samples: int = 20, max_clusters: int = 10, seed: int = 0):
    """Initializes the factory.

    Args:
      num_clients: Size of the population (identities 0 .. num_clients - 1).
      clients_per_round: Updates of the previous round kept for the prediction.
      window: N, the L-BFGS pairs and the distances averaged into a score (paper: 10).
      gap_samples: B, uniform reference sets of the gap statistic (the authors': 20).
      max_clusters: Largest k the gap statistic tries (the authors': 10).
      seed: Seed of the reference sets (with the round number).
    """
    self._num_clients = _common.integer_at_least(num_clients, 'num_clients', 1)
    self._per_round = _common.integer_at_least(clients_per_round, 'clients_per_round', 1)
    self._window = _common.integer_at_least(window, 'window', 1)
    self._samples = _common.integer_at_least(gap_samples, 'gap_samples', 2)
    self._max_clusters = _common.integer_at_least(max_clusters, 'max_clusters', 2)
    self._seed = int(seed)

  def _initial_state(self, width: int) -> collections.OrderedDict:
    window, per_round = self._window, self._per_round
    return collections.OrderedDict(
        model_moves=tf.zeros([window, width]), update_moves=tf.zeros([window, width]),
        last_aggregate=tf.zeros([width]), last_rows=tf.zeros([per_round, width]),
        last_ids=tf.fill([per_round], -1), pairs=tf.constant(0), rounds=tf.constant(0),
        distances=tf.zeros([self._num_clients, window]),
        distance_counts=tf.zeros([self._num_clients], tf.int32))

  def _predictions(self, state, ids: tf.Tensor) -> tf.Tensor:
    """g^_i: each client's previous update (or a_{t-1}) + H (w_t - w_{t-1})."""
    product = lbfgs_product(state['model_moves'], state['update_moves'],
                            state['last_aggregate'])
    matches = tf.equal(ids[:, tf.newaxis], state['last_ids'][tf.newaxis, :])
    position = tf.argmax(tf.cast(matches, tf.int32), axis=1)
    base = tf.where(tf.reduce_any(matches, axis=1)[:, tf.newaxis],
                    tf.gather(state['last_rows'], position), state['last_aggregate'])
    return base + product

  def _scores(self, state, ids, rows):
    """(scores [n], new distances, new counts): this round's distance recorded per client."""
    distances = normalised_distances(self._predictions(state, ids), rows)
    counts = tf.gather(state['distance_counts'], ids)
    slots = tf.stack([ids, counts % self._window], axis=1)
    table = tf.tensor_scatter_nd_update(state['distances'], slots, distances)
    all_counts = tf.tensor_scatter_nd_add(state['distance_counts'], ids[:, tf.newaxis],
                                          tf.ones_like(ids))
    kept = tf.minimum(tf.gather(all_counts, ids), self._window)
    mask = tf.range(self._window)[tf.newaxis, :] < kept[:, tf.newaxis]
    sums = tf.reduce_sum(tf.where(mask, tf.gather(table, ids), 0.0), axis=1)
    return sums / tf.cast(kept, tf.float32), table, all_counts

  def _detect(self, state, ids, rows):
    """(flagged [n], scores [n], distances table, counts) once N pairs exist, else none."""
    n = tf.shape(ids)[0]
    reference = reference_draws(self._seed, state['rounds'], self._samples, n)

    def detect():
      scores, table, counts = self._scores(state, ids, rows)
      flagged = tf.logical_and(flagged_clients(scores, reference, self._max_clusters), n > 1)
      return flagged, scores, table, counts

    def warm_up():
      return (tf.zeros([n], tf.bool), tf.zeros([n]), state['distances'],
              state['distance_counts'])

    return tf.cond(state['pairs'] >= self._window, detect, warm_up)

  def _next_state(self, state, ids, rows, aggregate):
    """The state after a round: the new pair (a_{t-1}, a_t - a_{t-1}), this round's rows."""
    pair_valid = state['rounds'] > 0

    def pushed(buffer, new):
      shifted = tf.concat([buffer[1:], new[tf.newaxis]], axis=0)
      return tf.where(pair_valid, shifted, buffer)

    padding = tf.maximum(self._per_round - tf.shape(ids)[0], 0)
    new = collections.OrderedDict(state)
    new['model_moves'] = pushed(state['model_moves'], state['last_aggregate'])
    new['update_moves'] = pushed(state['update_moves'], aggregate - state['last_aggregate'])
    new['pairs'] = tf.minimum(state['pairs'] + tf.cast(pair_valid, tf.int32), self._window)
    new['last_aggregate'] = aggregate
    new['last_rows'] = tf.pad(rows, [[0, padding], [0, 0]])[:self._per_round]
    new['last_ids'] = tf.pad(ids, [[0, padding]], constant_values=-1)[:self._per_round]
    new['rounds'] = state['rounds'] + 1
    return collections.OrderedDict(
        (k, tf.ensure_shape(v, state[k].shape)) for k, v in new.items())  # a fixed state type

  def _rule(self, stacked, weights, ids, state):
    """(aggregate, new state, measurements) of one round on the stacked updates."""
    valid = tf.logical_and(weights > 0.0, _common.in_population(ids, self._num_clients))
    ids = tf.boolean_mask(ids, valid)
    rows = _rows.flat_rows(tf.nest.map_structure(lambda x: tf.boolean_mask(x, valid), stacked))
    flagged, scores, table, counts = self._detect(state, ids, rows)
    admitted = 1.0 - tf.cast(flagged, tf.float32)
    aggregate = tf.math.divide_no_nan(tf.linalg.matvec(rows, admitted, transpose_a=True),
                                      tf.reduce_sum(admitted))
    new_state = self._next_state(state, ids, rows, aggregate)
    new_state['distances'], new_state['distance_counts'] = table, counts
    measurements = robust_rules.received_order(collections.OrderedDict([
        ('rejected_count', tf.reduce_sum(tf.cast(flagged, _common.COUNT_TF_TYPE))),
        ('fldetector_attack', tf.cast(tf.reduce_any(flagged), _common.COUNT_TF_TYPE)),
        ('fldetector_score_max', tf.reduce_max(tf.concat([scores, [0.0]], axis=0))),
        (SCORES_KEY, scores), (_common.DECISIONS_KEY, admitted)]), valid,
        (SCORES_KEY, _common.DECISIONS_KEY))
    return aggregate, new_state, measurements

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    delta_type = side_channel.delta_type(value_type)
    _common.check_float_value_type(delta_type)
    specs = tf.nest.flatten(tff.types.type_to_tf_tensor_specs(delta_type))
    width = int(sum(np.prod(s.shape) for s in specs))

    def rule(stacked, weights, ids, state):
      aggregate, new_state, measurements = self._rule(stacked, weights, ids, state)
      return unflatten(aggregate, specs, stacked), new_state, measurements

    return robust_rules.identified_rule_process(
        value_type, weight_type, lambda: self._initial_state(width), rule,
        "FLDetector needs each client's identity")


def unflatten(vector: tf.Tensor, specs: list, like: Any) -> Any:
  """A flat float32 vector back into the structure `like` (one client's tensors, `specs`)."""
  parts, start = [], 0
  for spec in specs:
    size = int(np.prod(spec.shape))
    parts.append(tf.cast(tf.reshape(vector[start:start + size], spec.shape), spec.dtype))
    start += size
  return tf.nest.pack_sequence_as(like, parts)
