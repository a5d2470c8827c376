"""Row-wise helpers for rules on stacked client updates (one row per client; not public API)."""
from __future__ import annotations

from typing import Any

import tensorflow as tf


def flat_rows(stacked: Any) -> tf.Tensor:
  """float32 [n, d]: each client's update (all tensors of the structure) as one row."""
  return tf.concat([tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1])
                    for x in tf.nest.flatten(stacked)], axis=1)


def row_norms(stacked: Any) -> tf.Tensor:
  """float32 [n]: the L2 norm of each client's update, all its tensors taken together."""
  squares = [tf.reduce_sum(tf.reshape(tf.square(tf.cast(x, tf.float32)), [tf.shape(x)[0], -1]),
                           axis=1) for x in tf.nest.flatten(stacked)]
  return tf.sqrt(tf.add_n(squares))


def minus(stacked: Any, center: Any) -> Any:
  """Every row minus `center` (a structure of one client's tensors)."""
  return tf.nest.map_structure(lambda x, c: x - c[tf.newaxis], stacked, center)


def distances_to(stacked: Any, center: Any) -> tf.Tensor:
  """float32 [n]: ||row_i - center||, over all tensors of the structure."""
  return row_norms(minus(stacked, center))


def combine_rows(coefficients: tf.Tensor, stacked: Any) -> Any:
  """sum_i coefficients[i] * row i, per tensor of the structure, in each tensor's dtype."""
  return tf.nest.map_structure(
      lambda x: tf.cast(tf.tensordot(coefficients, tf.cast(x, tf.float32), axes=1), x.dtype),
      stacked)


def first_argmin(values: tf.Tensor) -> tf.Tensor:
  """Index of the smallest value, the lowest index among ties (as `np.argmin`).

  A stable sort, not `values == reduce_min(values)`: in TFF's C++ worker that comparison
  matched no element (seen on TFF 0.87), and `tf.argmin` does not promise the first tie.
  """
  return tf.argsort(values, stable=True)[0]
