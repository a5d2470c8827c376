"""Reproducible Gaussian noise whose seed lives in a process state and advances every draw.

Uses TF-Privacy's stateless `tree_aggregation.GaussianNoiseGenerator`, started from the seed
pair (0, seed) as `dp.SeededGaussianSumQuery` does (so runs with seeds s and s + 1 never share
a draw); None seeds from the clock, as TF-Privacy does.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import tensorflow as tf
import tensorflow_privacy as tfp


def initial_state(seed: Optional[int]) -> Any:
  """The noise state of a process seeded with `seed` (pure TF; call inside a computation)."""
  generator = tfp.tree_aggregation.GaussianNoiseGenerator(1.0, None, seed)
  if seed is None:
    return generator.initialize()
  return generator.make_state(tf.constant([0, seed], tf.int64), 1.0)


def standard_normal(specs: Any, state: Any) -> Tuple[Any, Any]:
  """(N(0, 1) noise shaped like `specs` (float32), the advanced state)."""
  float_specs = tf.nest.map_structure(lambda s: tf.TensorSpec(s.shape, tf.float32), specs)
  return tfp.tree_aggregation.GaussianNoiseGenerator(1.0, float_specs).next(state)


def add_scaled_noise(value: Any, stddev: tf.Tensor, state: Any) -> Tuple[Any, Any]:
  """(value + N(0, stddev^2) per coordinate, the advanced state); structure of tensors."""
  specs = tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, x.dtype), value)
  noise, state = standard_normal(specs, state)
  noised = tf.nest.map_structure(lambda v, z: v + tf.cast(stddev * z, v.dtype), value, noise)
  return noised, state
