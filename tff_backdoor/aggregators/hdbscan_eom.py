"""HDBSCAN's flat clustering (excess of mass), in TensorFlow, for cohorts of tens of clients.

`hdbscan_rule` has the closed form of FLAME's case (one cluster of more than half the
points); DeepSight clusters with HDBSCAN's usual settings (min cluster size 5 in the
peers' calls), which needs the whole algorithm. Scikit-learn's steps
(`sklearn.cluster.HDBSCAN(metric='precomputed')`, allow_single_cluster=False,
cluster_selection_method='eom', epsilon 0), with m = min_cluster_size:
1. Mutual reachability distances (`hdbscan_rule.mutual_reachability`, scikit-learn's
   min_samples: the point itself counts), Prim's order over them from point 0
   (`spanning_tree`); its edges sorted by weight (stably) are the single-linkage merges.
2. The condensed tree, built here bottom-up over the merges, with lambda = 1/distance. A
   merge of two components of >= m points each makes a new cluster, the parent of both,
   and is their birth (top-down, the parent splits into them there); a component of < m
   points merging into a cluster falls out of it there (its points leave the cluster at
   that lambda); two small components reaching >= m together make a new (leaf) cluster.
   Each point leaves a cluster once: stability(C) = sum over its points of
   (lambda_leave - lambda_birth(C)), with lambda_birth(root) = 0.
3. Excess of mass, children before parents: a cluster is kept if its stability is at
   least the summed best of its children (then its descendants are dropped), else it
   passes that sum up; the root is never kept (allow_single_cluster=False).
4. Each point gets the kept cluster among the clusters it belongs to, or -1 (noise).
A zero distance is treated as 1e-12 (scikit-learn: lambda = inf). `tests/test_deepsight.py`
checks the labels against scikit-learn up to renaming.
"""
from __future__ import annotations

import tensorflow as tf

from tff_backdoor.aggregators import hdbscan_rule

TINY_DISTANCE = 1e-12


def spanning_tree(graph: tf.Tensor) -> tuple:
  """(source, target, weight) [n - 1]: Prim's order of points from point 0, as scikit-learn.

  Like scikit-learn's `mst_from_mutual_reachability` (and the hdbscan library's
  `mst_linkage_core`), an edge pairs the point added with the point added just before it,
  not with its nearest point in the tree: only the order of the merges and their distances
  are kept. Ties go to the lowest index.
  """
  n = tf.shape(graph)[0]
  inf = tf.constant(float('inf'), graph.dtype)

  def step(i, in_tree, best, current, src, dst, weight):
    best = tf.minimum(best, graph[current])
    j = tf.argmin(tf.where(in_tree, inf, best), output_type=tf.int32)
    src, dst, weight = src.write(i, current), dst.write(i, j), weight.write(i, best[j])
    return i + 1, tf.logical_or(in_tree, tf.equal(tf.range(n), j)), best, j, src, dst, weight

  arrays = [tf.TensorArray(dtype, n - 1, element_shape=[])
            for dtype in (tf.int32, tf.int32, graph.dtype)]
  start = (0, tf.equal(tf.range(n), 0), tf.fill([n], inf), 0, *arrays)
  out = tf.while_loop(lambda i, *_: i < n - 1, step, start)
  return out[4].stack(), out[5].stack(), out[6].stack()


def condensed_clusters(source: tf.Tensor, target: tf.Tensor, weight: tf.Tensor, n: tf.Tensor,
                       min_cluster_size: int) -> tuple:
  """Bottom-up condensed tree: (first cluster of each point [n], parent, stability, exists
  [n-1]; exists: the merge is a cluster of the condensed tree).

  Cluster ids are merge indices (0 .. n-2); -1 is none. See the module docstring.
  """
  m = min_cluster_size
  slots = tf.maximum(n - 1, 1)

  def merge(t, comp, comp_cluster, first, lam_sum, size, birth, parent):
    a, b = source[t], target[t]
    lam = 1.0 / tf.maximum(tf.cast(weight[t], tf.float64), TINY_DISTANCE)
    in_a, in_b = tf.equal(comp, comp[a]), tf.equal(comp, comp[b])
    sa, sb = tf.reduce_sum(tf.cast(in_a, tf.int32)), tf.reduce_sum(tf.cast(in_b, tf.int32))
    ka, kb = comp_cluster[a], comp_cluster[b]
    big_a, big_b = sa >= m, sb >= m
    in_ab = tf.logical_or(in_a, in_b)
    new = tf.logical_or(tf.logical_and(big_a, big_b),
                        tf.logical_and(tf.logical_not(big_a | big_b), sa + sb >= m))
    absorb = tf.math.logical_xor(big_a, big_b)
    host = tf.where(big_a, ka, kb)
    small_in = tf.where(big_a, in_b, in_a)
    t_hot, host_hot = tf.equal(tf.range(slots), t), tf.equal(tf.range(slots), host)
    joined = tf.cast(sa + sb, tf.float64) * lam
    lam_sum = tf.where(new & t_hot, joined, lam_sum)
    size = tf.where(new & t_hot, sa + sb, size)
    fallen = tf.cast(tf.where(big_a, sb, sa), tf.float64) * lam
    lam_sum = tf.where(absorb & host_hot, lam_sum + fallen, lam_sum)
    size = tf.where(absorb & host_hot, size + tf.where(big_a, sb, sa), size)
    children = tf.logical_and(tf.logical_and(big_a, big_b),
                              tf.equal(tf.range(slots), ka) | tf.equal(tf.range(slots), kb))
    parent = tf.where(children, t, parent)
    birth = tf.where(children, lam, birth)
    leaf = tf.logical_and(new, tf.logical_not(big_a | big_b))
    first = tf.where(leaf & in_ab, t, tf.where(absorb & small_in, host, first))
    comp_cluster = tf.where(in_ab, tf.where(new, t, tf.where(absorb, host, comp_cluster)),
                            comp_cluster)
    comp = tf.where(in_b, comp[a], comp)
    return t + 1, comp, comp_cluster, first, lam_sum, size, birth, parent

  none = tf.fill([n], -1)
  start = (0, tf.range(n), none, none, tf.zeros([slots], tf.float64), tf.zeros([slots], tf.int32),
           tf.zeros([slots], tf.float64), tf.fill([slots], -1))
  out = tf.while_loop(lambda t, *_: t < n - 1, merge, start)
  first, lam_sum, size, birth, parent = out[3:]
  stability = lam_sum - tf.cast(size, tf.float64) * birth
  return first, parent, stability, size > 0


def selected_clusters(parent: tf.Tensor, stability: tf.Tensor, exists: tf.Tensor) -> tf.Tensor:
  """bool [n-1]: the clusters excess of mass keeps (the root never)."""
  slots = tf.shape(parent)[0]
  is_root = tf.logical_and(exists, parent < 0)

  def up(t, best, keep):
    children = tf.equal(parent, t)
    below = tf.reduce_sum(tf.where(children, best, 0.0))
    passes = tf.logical_and(tf.reduce_any(children), below > stability[t])
    hot = tf.equal(tf.range(slots), t)
    best = tf.where(hot & passes, below, best)
    keep = tf.where(hot, exists[t] & ~passes & ~is_root[t], keep)
    return t + 1, best, keep

  _, _, keep = tf.while_loop(lambda t, *_: t < slots, up,
                             (0, stability, tf.zeros([slots], tf.bool)))

  def down(t, covered, final):
    above = tf.where(parent[t] >= 0,
                     tf.gather(covered | final, tf.maximum(parent[t], 0)), False)
    hot = tf.equal(tf.range(slots), t)
    return t - 1, tf.where(hot, above, covered), tf.where(hot, keep[t] & ~above, final)

  start = (slots - 1, tf.zeros([slots], tf.bool), tf.zeros([slots], tf.bool))
  return tf.while_loop(lambda t, *_: t >= 0, down, start)[2]


def cluster_labels(distances: tf.Tensor, min_cluster_size: int = 5,
                   min_samples: int = 5) -> tf.Tensor:
  """int32 [n]: HDBSCAN's flat labels of precomputed distances (-1 noise; ids arbitrary)."""
  n = tf.shape(distances)[0]
  reach = hdbscan_rule.mutual_reachability(distances, min_samples)
  source, target, weight = spanning_tree(reach)
  order = tf.argsort(weight, stable=True)
  source, target, weight = (tf.gather(x, order) for x in (source, target, weight))
  first, parent, stability, exists = condensed_clusters(source, target, weight, n,
                                                        min_cluster_size)
  final = selected_clusters(parent, stability, exists)

  def climb(_, cluster, label):
    here = tf.where(cluster >= 0, tf.gather(final, tf.maximum(cluster, 0)), False)
    label = tf.where(tf.logical_and(label < 0, here), cluster, label)
    return _ + 1, tf.where(cluster >= 0, tf.gather(parent, tf.maximum(cluster, 0)), -1), label

  return tf.while_loop(lambda i, *_: i < n, climb, (0, first, tf.fill([n], -1)))[2]
