"""Small helpers shared by the defense factories (not part of the public API)."""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

NORM_TF_TYPE = np.float32  # Same dtypes as tff.aggregators.clipping_factory's measurements.
COUNT_TF_TYPE = np.int32
# Measurement of the per-client decision, float32 [clients received], in the order the round
# received them: the client's weight in the aggregate (1/0 = admitted/rejected for a filter,
# its weight for a weighting rule; ABSENT for a client that took no part: weight 0, e.g. an
# empty client or one the non-finite guard zeroed). `run.detection` joins it with the round's
# attackers and leaves absent clients out: the defense never saw them.
DECISIONS_KEY = 'client_decisions'
ABSENT = -1.0


def default_mean_factory() -> tff.aggregators.MeanFactory:
  """The weighted mean our defenses aggregate with unless told otherwise.

  `no_nan_division=True` so that a round in which every weight is 0 (e.g. every client was
  rejected or sent a non-finite update) yields a zero update instead of 0/0 = NaN.
  """
  return tff.aggregators.MeanFactory(no_nan_division=True)


def check_weighted_factory(value: Any, name: str) -> None:
  """TypeError naming `name` unless `value` is a weighted factory (what our defenses wrap)."""
  if not isinstance(value, tff.aggregators.WeightedAggregationFactory):
    raise TypeError(f'{name} must be a tff.aggregators.WeightedAggregationFactory, '
                    f'found {type(value).__name__}')


def inner_or_default(inner_agg_factory: Any) -> tff.aggregators.WeightedAggregationFactory:
  """`inner_agg_factory`, checked to be weighted, or `default_mean_factory()` if None."""
  if inner_agg_factory is None:
    return default_mean_factory()
  check_weighted_factory(inner_agg_factory, 'inner_agg_factory')
  return inner_agg_factory


def in_population(ids: tf.Tensor, num_clients: int) -> tf.Tensor:
  """bool: which client identities (population indices) are in 0 .. num_clients - 1."""
  return tf.logical_and(ids >= 0, ids < num_clients)


def check_float_value_type(value_type: tff.Type) -> None:
  """TypeError unless every value in `value_type` is a float (norms and means need it)."""
  if not tff.types.is_structure_of_floats(value_type):
    raise TypeError(f'All values in value_type must be of floating dtype, found {value_type}')


def global_l2_norm(value: Any) -> tf.Tensor:
  """L2 norm of a structure of tensors taken as one vector, as a float32 scalar."""
  squares = [tf.reduce_sum(tf.square(tf.cast(x, tf.float32))) for x in tf.nest.flatten(value)]
  return tf.math.sqrt(tf.add_n(squares))


@tff.tensorflow.computation
def merge_measurements(inner_measurements: Any, new_measurements: Any) -> Any:
  """Adds `new_measurements` to the inner factory's measurements dict, at the same level.

  Like `tff.aggregators.add_measurements`, but refuses to silently overwrite a key.
  """
  if not inner_measurements:
    return new_measurements
  clashes = sorted(set(inner_measurements) & set(new_measurements))
  if clashes:
    raise ValueError(f'measurement names {clashes} are already reported by the inner factory')
  inner_measurements.update(new_measurements)
  return inner_measurements


def integer_at_least(value: Any, name: str, minimum: int) -> int:
  """`value` as an int; ValueError naming `name` unless it is an integer >= `minimum`."""
  if int(value) != value or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, found {value}')
  return int(value)
