"""What Neurotoxin and constrain-and-scale do to an attacker's gradients, in pure TensorFlow.

Each function works on structures of tensors shaped like the model's trainable weights, so
the attacker client work (`attacks.client_work`) applies them at every SGD step of its local
training, inside TFF's computations.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf


def _flatten(structure: Any) -> tf.Tensor:
  return tf.concat([tf.reshape(t, [-1]) for t in tf.nest.flatten(structure)], axis=0)


def _unflatten(flat: tf.Tensor, like: Any) -> Any:
  tensors = tf.nest.flatten(like)
  sizes = [tf.size(t) for t in tensors]
  parts = tf.split(flat, sizes)
  return tf.nest.pack_sequence_as(
      like, [tf.reshape(p, tf.shape(t)) for p, t in zip(parts, tensors)])


def bottom_coordinates_mask(global_update: Any, masked_fraction: float,
                            has_update: tf.Tensor) -> Any:
  """1.0 outside, 0.0 on, the top `masked_fraction` coordinates of |global_update|.

  Neurotoxin's mask (Zhang et al. 2022): the coordinates that the benign clients update most,
  judged by the magnitude of the last global update over all variables together (the authors'
  `aggregate_all_layer=1`), are masked; floor(masked_fraction * size) of them, ties broken by
  `tf.math.top_k` (the lower index first). All ones when `has_update` is False (no previous
  round) or the update is all zeros (nothing to rank).
  """
  flat = tf.abs(_flatten(global_update))
  size = tf.size(flat)
  k = tf.cast(tf.floor(masked_fraction * tf.cast(size, tf.float64)), tf.int32)
  usable = tf.logical_and(has_update, tf.reduce_max(tf.concat([flat, [0.0]], 0)) > 0.0)
  k = tf.where(usable, k, 0)
  top = tf.math.top_k(flat, k=k, sorted=False).indices
  keep = tf.tensor_scatter_nd_update(tf.ones_like(flat), top[:, tf.newaxis],
                                     tf.zeros([k], flat.dtype))
  return _unflatten(keep, global_update)


def apply_mask(structure: Any, mask: Any) -> Any:
  return tf.nest.map_structure(tf.multiply, structure, mask)


def with_distance_term(gradients: Any, weights: Any, global_weights: Any,
                       alpha: float) -> Any:
  """Gradient of alpha * task loss + (1 - alpha) * ||weights - global_weights||_2.

  Bagdasaryan et al. 2020's constrain-and-scale loss with their code's anomaly term, the L2
  distance to the global model (`model_dist_norm_var`); its gradient (w - w_G) / ||w - w_G||
  is taken as 0 where the distance is 0 (the first step).
  """
  difference = tf.nest.map_structure(tf.subtract, weights, global_weights)
  distance = tf.linalg.global_norm(tf.nest.flatten(difference))
  return tf.nest.map_structure(
      lambda g, d: alpha * g + (1.0 - alpha) * tf.math.divide_no_nan(d, distance),
      gradients, difference)
