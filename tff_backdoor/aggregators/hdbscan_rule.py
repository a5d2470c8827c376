"""HDBSCAN's cluster rule for FLAME's setting, in TensorFlow, for cohorts of tens of clients.

FLAME runs HDBSCAN on precomputed distances with min_cluster_size = floor(n/2) + 1 and
allow_single_cluster=True, and keeps the one cluster. HDBSCAN's own steps are: core distance
core_i = distance to the min_samples-th nearest point (the point itself counts, scikit-learn's
convention); mutual reachability m_ij = max(d_ij, core_i, core_j); its minimum spanning tree,
i.e. the single-linkage hierarchy; the condensed tree with min_cluster_size; excess-of-mass
selection; labelling. With min_cluster_size c > n/2 they collapse to a closed form:

* A split of a cluster into two children of size >= c each would need more than n points,
  so the condensed tree is the root alone, points falling out of it as the distance level
  falls. Excess of mass can only select the root (allowed by allow_single_cluster).
* Labelling then keeps the points whose fall-out lambda = 1/distance equals the largest one,
  i.e. those still in the root when it stops having >= c points. Going down the single-
  linkage hierarchy, that is the component of size >= c of the graph {m_ij <= t*}, where t*
  is the smallest level at which such a component exists (points split off at level t*
  itself share the maximal lambda, hence ties at t* belong to the cluster).
* Components of the threshold graph {m_ij <= t} are those of the MST's edges <= t, and
  j is in i's component iff u_ij <= t, with u the minimax path distance (the single-linkage
  ultrametric), computed here by log2(n) min-max "squarings" of m (O(n^3 log n), trivial
  for tens of clients). i's component reaches size c at t_i = the c-th smallest u_ij (u_ii =
  0 included), so t* = min_i t_i and the cluster is {j : u_{i*j} <= t*}.

`tests/test_defenses.py` checks this against `sklearn.cluster.HDBSCAN(metric='precomputed',
allow_single_cluster=True)` on random distance matrices with ties.
"""
from __future__ import annotations

import math

import tensorflow as tf

from tff_backdoor.aggregators import _rows


def mutual_reachability(distances: tf.Tensor, min_samples: int) -> tf.Tensor:
  """max(d_ij, core_i, core_j), zero diagonal; min_samples is capped at n."""
  n = tf.shape(distances)[0]
  k = tf.minimum(min_samples, n) - 1
  core = tf.sort(distances, axis=1)[:, k]
  reach = tf.maximum(distances, tf.maximum(core[:, tf.newaxis], core[tf.newaxis, :]))
  return tf.linalg.set_diag(reach, tf.zeros([n], reach.dtype))


def minimax_distances(graph: tf.Tensor) -> tf.Tensor:
  """u_ij = min over paths i..j of the largest edge (the single-linkage ultrametric)."""
  n = tf.shape(graph)[0]
  steps = tf.cast(tf.math.ceil(tf.math.log(tf.cast(tf.maximum(n, 2), tf.float32)) /
                               math.log(2.0)), tf.int32)

  def square(step, u):
    return step + 1, tf.reduce_min(tf.maximum(u[:, :, tf.newaxis], u[tf.newaxis, :, :]), axis=1)

  return tf.while_loop(lambda step, _: step < steps, square, (tf.constant(0), graph))[1]


def majority_cluster(distances: tf.Tensor, min_samples: int = 2) -> tf.Tensor:
  """bool [n]: HDBSCAN's cluster with min_cluster_size = n // 2 + 1, allow_single_cluster.

  Args:
    distances: Symmetric [n, n] distances (n >= 1), zero diagonal, any float dtype.
    min_samples: HDBSCAN's min_samples in scikit-learn's convention (the point counts).
  """
  n = tf.shape(distances)[0]
  ultrametric = minimax_distances(mutual_reachability(distances, min_samples))
  levels = tf.sort(ultrametric, axis=1)[:, n // 2]  # the (n // 2 + 1)-th smallest
  best = _rows.first_argmin(levels)
  return ultrametric[best] <= levels[best]


def cosine_distances(rows: tf.Tensor) -> tf.Tensor:
  """[n, n] 1 - cos(row_i, row_j), zero diagonal; a zero row is at distance 1 from all."""
  unit = tf.math.divide_no_nan(rows, tf.norm(rows, axis=1, keepdims=True))
  distances = tf.clip_by_value(1.0 - tf.matmul(unit, unit, transpose_b=True), 0.0, 2.0)
  distances = 0.5 * (distances + tf.transpose(distances))  # exactly symmetric
  return tf.linalg.set_diag(distances, tf.zeros([tf.shape(rows)[0]], rows.dtype))
