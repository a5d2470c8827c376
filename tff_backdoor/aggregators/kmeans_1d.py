"""Exact k-means of scalars and Tibshirani's gap statistic, in TensorFlow (FLDetector's step 3).

FLDetector clusters one suspicious score per client. On the line, an optimal k-means partition
is k contiguous runs of the sorted values, so the optimum is a dynamic programme over split
points: with SSE(i, j) the squared error of the sorted values i..j-1 around their mean (from
prefix sums), cost_1(j) = SSE(0, j) and cost_k(j) = min_{i<j} cost_{k-1}(i) + SSE(i, j);
W_k = cost_k(n) is the within-cluster sum of squares (scikit-learn's `inertia_`). It is the
global optimum, where Lloyd's algorithm with random starts (scikit-learn's KMeans, which the
papers' code calls) finds it only most of the time. O(k_max n^2) per data set: trivial for
tens of clients.

Gap statistic (Tibshirani, Walther, Hastie 2001), as FLDetector uses it: the scores are
min-max scaled to [0, 1]; B reference sets of n uniform draws on [0, 1];
Gap(k) = mean_b log W*_kb - log W_k, s_k = sd_b(log W*_kb) sqrt(1 + 1/B); the estimated
number of clusters is the smallest k with Gap(k) >= Gap(k+1) - s_{k+1} (k_max if none).
"""
from __future__ import annotations

import math

import tensorflow as tf

WITHIN_FLOOR = 1e-12  # W_k of k >= distinct values is 0; its log is taken of this instead


def segment_errors(sorted_values: tf.Tensor) -> tf.Tensor:
  """[..., n+1, n+1] SSE of sorted values i..j-1 around their mean; +inf unless i < j."""
  x = tf.cast(sorted_values, tf.float64)
  zeros = tf.zeros_like(x[..., :1])
  first = tf.concat([zeros, tf.cumsum(x, axis=-1)], axis=-1)
  second = tf.concat([zeros, tf.cumsum(tf.square(x), axis=-1)], axis=-1)
  n = tf.shape(first)[-1]
  count = tf.cast(tf.range(n)[tf.newaxis, :] - tf.range(n)[:, tf.newaxis], tf.float64)
  sums = first[..., tf.newaxis, :] - first[..., :, tf.newaxis]
  squares = second[..., tf.newaxis, :] - second[..., :, tf.newaxis]
  errors = tf.maximum(squares - tf.math.divide_no_nan(tf.square(sums), count), 0.0)
  return tf.where(count > 0, errors, tf.constant(math.inf, tf.float64))


def within_sums(values: tf.Tensor, k_max: int) -> tf.Tensor:
  """[..., k_max] optimal W_1 .. W_k_max of each row of `values` (+inf where k > n)."""
  errors = segment_errors(tf.sort(values, axis=-1))
  cost = errors[..., 0, :]  # cost_1(j)
  totals = [cost[..., -1]]
  for _ in range(k_max - 1):
    cost = tf.reduce_min(cost[..., :, tf.newaxis] + errors, axis=-2)
    totals.append(cost[..., -1])
  return tf.stack(totals, axis=-1)


def scaled(values: tf.Tensor) -> tf.Tensor:
  """Min-max scaling to [0, 1] (all zeros if the values are all equal)."""
  low = tf.reduce_min(values)
  return tf.math.divide_no_nan(values - low, tf.reduce_max(values) - low)


def estimated_clusters(values: tf.Tensor, reference: tf.Tensor, k_max: int) -> tf.Tensor:
  """Gap statistic's number of clusters of `values` [n] against `reference` [B, n] uniforms.

  k_max is capped at n; equal values are one cluster.
  """
  n = tf.shape(values)[0]
  k_cap = tf.minimum(k_max, n)
  log_w = tf.math.log(tf.maximum(within_sums(scaled(values), k_max), WITHIN_FLOOR))
  log_ref = tf.math.log(tf.maximum(within_sums(reference, k_max), WITHIN_FLOOR))
  samples = tf.cast(tf.shape(reference)[0], tf.float64)
  gap = tf.reduce_mean(log_ref, axis=0) - log_w
  spread = tf.math.reduce_std(log_ref, axis=0) * tf.sqrt(1.0 + 1.0 / samples)
  stops = gap[:-1] >= gap[1:] - spread[1:]  # stops[k-1]: k is the answer
  stops = tf.logical_and(stops, tf.range(1, k_max) < k_cap)
  first = tf.argmax(tf.concat([stops, [True]], axis=0), output_type=tf.int32) + 1
  answer = tf.minimum(first, k_cap)
  return tf.where(tf.reduce_max(values) > tf.reduce_min(values), answer, 1)


def upper_of_two_means(values: tf.Tensor) -> tf.Tensor:
  """bool [n]: the cluster with the larger mean in the optimal 2-means split (n >= 2)."""
  ordered = tf.sort(values)
  errors = segment_errors(ordered)
  n = tf.shape(values)[0]
  split = tf.argmin(errors[0, 1:n] + errors[1:n, n], output_type=tf.int32) + 1
  return values >= ordered[split]
