"""Shared types of the data layer: the array-pair convention, FederatedData, DataError.

Kept free of TensorFlow imports so that the fetch CLI and the idx reader load fast.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
  import tensorflow_federated as tff

DATASETS = ('emnist', 'femnist', 'mnist', 'fashion_mnist', 'idx')
# Data sets already split by writer: no partitioner, `num_clients` = writers kept (0 = all).
NATURAL_DATASETS = ('emnist', 'femnist')
# Partitioners of centralised data; EMNIST and FEMNIST keep their natural per-writer split.
PARTITIONS = ('iid', 'dirichlet', 'shards')

# (x float32 [n, H, W, C] in [0, 1], y int32 [n]). Client training images may instead be
# stored compactly as uint8 codes k meaning k/255 (LEAF FEMNIST); `float_images` reads both.
ArrayPair = Tuple[np.ndarray, np.ndarray]

# The float32 value of each 8-bit code k (k / 255, rounded once from float64), which is what
# LEAF's JSON pixels parse to and what `tf.cast(k, tf.float32) / 255` gives, bit for bit.
PIXEL_VALUES = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def float_images(x: np.ndarray) -> np.ndarray:
  """Images as float32 in [0, 1]: uint8 codes k become k/255, anything else is cast."""
  x = np.asarray(x)
  return PIXEL_VALUES[x] if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


class DataError(ValueError):
  """Any bad input to the data layer; the message is one line that says what to do."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """A federated dataset: clients' training data plus disjoint test and server splits.

  Elements of `train` are OrderedDict(x=float32[H,W,C] in [0,1], y=int32 scalar).
  `test` is for evaluation only; `server` is the server's clean held-out data (FLAIN's
  auxiliary set), disjoint from `test` and from every client. `test_by_client`, when the
  source has writers, is `test` split by writer (for per-writer backdoor measurements).
  """
  name: str
  train: 'tff.simulation.datasets.ClientData'
  test: ArrayPair
  server: ArrayPair
  num_classes: int
  input_shape: Tuple[int, int, int]
  partition_report: Dict[str, Any]
  test_by_client: Optional[Dict[str, ArrayPair]] = None


def empty_pair(input_shape: Tuple[int, ...]) -> ArrayPair:
  """An ArrayPair with no examples (used when server_holdout=0)."""
  return (np.zeros((0,) + tuple(input_shape), np.float32), np.zeros((0,), np.int32))
