"""`ArrayClientData`: a TFF ClientData over per-client NumPy arrays, images kept as stored.

TFF's `TestClientData` deep-copies its arrays and bakes them into a graph, which is fine for
toy data but holds the 3,580-writer FEMNIST population several times over. This one keeps a
reference to each client's arrays (uint8 codes k/255, or float32) and builds a client's
dataset on demand, casting uint8 images to float32 in the pipeline, so elements are always
`OrderedDict(x=float32 [H, W, C] in [0, 1], y=int32)` as `FederatedData` promises.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, List, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.data.core import ArrayPair, float_images


def _to_float(x: tf.Tensor, y: tf.Tensor) -> collections.OrderedDict:
  x = tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else x
  return collections.OrderedDict(x=x, y=y)


class ArrayClientData(tff.simulation.datasets.ClientData):
  """ClientData of {client_id: (x, y)} NumPy arrays, shared (not copied).

  `client_arrays(cid)` returns a client's arrays as stored (`compact`) or as float32;
  `data.client_arrays` uses it instead of iterating datasets. Datasets are built eagerly from a
  Python (or eager tensor) client id; inside a traced `tf.function` the id is not known, so
  `serializable_dataset_fn` refuses a symbolic id (build per-client datasets eagerly instead).
  """

  def __init__(self, arrays: Mapping[str, ArrayPair]):
    super().__init__()
    if not arrays:
      raise ValueError('ArrayClientData needs at least one client')
    self._arrays = dict(arrays)
    for cid, (x, y) in self._arrays.items():
      if len(x) != len(y) or not len(y):
        raise ValueError(f'client {cid}: {len(x)} images and {len(y)} labels; both must be '
                         'equal and non-zero')
    self._ids = list(self._arrays)
    self._element_type_structure = self._dataset(self._ids[0]).element_spec

  @property
  def client_ids(self) -> List[str]:
    return list(self._ids)

  def client_arrays(self, client_id: str, compact: bool = False) -> ArrayPair:
    """The client's (x, y): as stored with `compact`, else x as float32 in [0, 1]."""
    x, y = self._arrays[client_id]
    return (x, y) if compact else (float_images(x), np.asarray(y))

  def _dataset(self, client_id) -> tf.data.Dataset:
    if tf.is_tensor(client_id):
      if not tf.executing_eagerly():
        raise TypeError('ArrayClientData builds a dataset from a known client id; call '
                        'create_tf_dataset_for_client eagerly, not inside a tf.function')
      client_id = client_id.numpy().decode()
    x, y = self._arrays[client_id]
    return tf.data.Dataset.from_tensor_slices((x, y)).map(_to_float)

  @property
  def serializable_dataset_fn(self) -> Callable[[str], tf.data.Dataset]:
    return self._dataset

  @property
  def element_type_structure(self) -> Any:
    return self._element_type_structure
