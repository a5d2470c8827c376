"""Bulyan (El Mhamdi, Guerraoui, Rouault 2018): recursive Krum, then a trimmed mean around the median.

"The Hidden Vulnerability of Distributed Learning in Byzantium" (ICML 2018). With n updates of
which at most f are Byzantine, and n >= 4f + 3:
1. Selection: theta = n - 2f times, Krum (Blanchard et al. 2017) picks one update from those
   not yet picked, with scores recomputed on the remaining set (each score sums the squared
   distances to the m - f - 2 closest other remaining updates, m = remaining count).
2. Aggregation, per coordinate: among the theta selected values, the beta = theta - 2f closest
   to their median are averaged.
Krum alone lets an attacker move one coordinate far while staying close in L2; step 2 bounds
every coordinate by the honest values around the median.

FLPoison departs from it (docs/DEFENSES.md): it sets beta = n - 2f = theta, so step 2 never
runs and its Bulyan is the mean of the Krum picks; and it re-runs Krum on the remaining
updates but records the winner's index in the reduced array as an index into the full one,
so after the first pick it can select the wrong clients. BackFed (commit ab3bcbd) has no
Bulyan.
"""
from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import _rows
from tff_backdoor.aggregators import robust_rules


def squared_distances(rows: tf.Tensor) -> tf.Tensor:
  """[n, n] squared L2 distances between rows, from differences (as `KrumFactory`)."""
  return tf.map_fn(lambda row: tf.reduce_sum(tf.square(rows - row), axis=1), rows)


def recursive_krum(distances: tf.Tensor, num_byzantine: int, num_selected: tf.Tensor
                   ) -> tf.Tensor:
  """bool [n]: the `num_selected` clients picked one at a time by Krum on the remaining ones.

  Each pick scores every remaining client by the sum of its max(1, m - f - 2) smallest squared
  distances to the other remaining ones (m remaining; none when m = 1) and takes the lowest
  score, the lowest index among ties.
  """
  n = tf.shape(distances)[0]
  distances = tf.linalg.set_diag(distances, tf.fill([n], np.float32(np.inf)))

  def pick(step, selected):
    remaining = tf.logical_not(selected)
    m = tf.reduce_sum(tf.cast(remaining, tf.int32))
    k = tf.clip_by_value(m - num_byzantine - 2, tf.minimum(1, m - 1), m - 1)
    to_remaining = tf.where(remaining[tf.newaxis, :], distances, np.float32(np.inf))
    nearest = tf.sort(to_remaining, axis=1)
    scores = tf.reduce_sum(tf.where(tf.range(n)[tf.newaxis, :] < k, nearest, 0.0), axis=1)
    scores = tf.where(remaining, scores, np.float32(np.inf))
    return step + 1, tf.logical_or(selected, tf.equal(tf.range(n), _rows.first_argmin(scores)))

  _, selected = tf.while_loop(lambda step, _: step < num_selected, pick,
                              (tf.constant(0), tf.zeros([n], tf.bool)))
  return selected


def closest_to_median_mean(values: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
  """Per coordinate (axis 0 = clients), the mean of the `beta` values closest to the median.

  Ties in the distance to the median go to the earlier row (a stable sort).
  """
  rows = tf.reshape(values, [tf.shape(values)[0], -1])
  columns = tf.transpose(rows)  # [d, theta]
  gaps = tf.abs(columns - robust_rules.coordinate_median(rows)[:, tf.newaxis])
  closest = tf.argsort(gaps, axis=1, stable=True)[:, :beta]
  mean = tf.reduce_mean(tf.gather(columns, closest, batch_dims=1), axis=1)
  return tf.reshape(mean, tf.shape(values)[1:])


class BulyanFactory(robust_rules.ServerRuleFactory):
  """`WeightedAggregationFactory` for Bulyan over Krum, unweighted like the paper.

  The paper's requirement n >= 4f + 3 is checked for the planned cohort by
  `config.validate_defense`; if fewer clients take part in a round, the rule degrades
  gracefully instead of failing: theta = max(1, n - 2f) and beta = max(1, theta - 2f).

  Measurements: `rejected_count` (n - theta, clients not selected by the Krum phase),
  `bulyan_kept_per_coordinate` (beta) and `client_decisions` (1 for the theta clients the
  Krum phase selects: the coordinate-wise trimming that follows has no per-client verdict).
  """

  def __init__(self, num_byzantine: int = 1):
    """Initializes the factory.

    Args:
      num_byzantine: f, the number of Byzantine clients to tolerate (>= 0).
    """
    self._f = _common.integer_at_least(num_byzantine, 'num_byzantine', 0)

  def _rule(self, stacked, weights, value_spec):
    del weights, value_spec  # Unweighted, like the paper.
    rows = _rows.flat_rows(stacked)
    n = tf.shape(rows)[0]
    theta = tf.maximum(1, n - 2 * self._f)
    beta = tf.maximum(1, theta - 2 * self._f)
    selected = recursive_krum(squared_distances(rows), self._f, theta)
    result = tf.nest.map_structure(
        lambda x: tf.cast(closest_to_median_mean(tf.cast(tf.boolean_mask(x, selected),
                                                         tf.float32), beta), x.dtype),
        stacked)
    return result, collections.OrderedDict([
        ('rejected_count', n - theta), ('bulyan_kept_per_coordinate', beta),
        (_common.DECISIONS_KEY, tf.cast(selected, tf.float32))])

  def _empty_measurements(self):
    return collections.OrderedDict([
        ('rejected_count', tf.constant(0, _common.COUNT_TF_TYPE)),
        ('bulyan_kept_per_coordinate', tf.constant(0, _common.COUNT_TF_TYPE)),
        (_common.DECISIONS_KEY, robust_rules.no_decisions())])
