"""FEMNIST from LEAF's JSON files: one client per writer, the test split pooled over writers.

The real writer-partitioned handwriting Sun et al. 2019 use (TFF's federated EMNIST is the
same NIST data grouped the same way). Pixels follow LEAF and TFF EMNIST: 1.0 = background.
The server split (FLAIN's auxiliary data) is carved, seeded and class-stratified, from the
pooled test split; what is left is the test set, also kept per writer so that a targeted
backdoor can be measured on the target writers' own test images and on everyone else's.
"""
from __future__ import annotations

import collections
from typing import Dict, Optional

import numpy as np
import tensorflow_federated as tff

from tff_backdoor.data import leaf
from tff_backdoor.data import partition as partition_lib
from tff_backdoor.data.core import ArrayPair, DataError, FederatedData, empty_pair

NUM_DIGITS = 10


def _digits(writers: Dict[str, ArrayPair]) -> Dict[str, ArrayPair]:
  """Each writer's digit images; writers left with none are dropped."""
  out = {}
  for writer, (x, y) in writers.items():
    keep = y < NUM_DIGITS
    if keep.any():
      out[writer] = (x[keep], y[keep])
  return out


def _pool(writers: Dict[str, ArrayPair]):
  """(x, y, owner) of all writers' images concatenated in sorted writer order."""
  ids = sorted(writers)
  if not ids:
    x, y = empty_pair(leaf.INPUT_SHAPE)
    return x, y, np.zeros([0], dtype=object)
  owner = np.concatenate([np.full(len(writers[w][1]), w, dtype=object) for w in ids])
  return (np.concatenate([writers[w][0] for w in ids]),
          np.concatenate([writers[w][1] for w in ids]), owner)


def load_femnist(data_dir: str, *, only_digits: bool = True, num_clients: Optional[int] = None,
                 server_holdout: Optional[int] = None, seed: int = 0,
                 cache_dir: Optional[str] = None) -> FederatedData:
  """LEAF FEMNIST in `data_dir` (train/, test/) as FederatedData, one client per writer.

  `num_clients` in (0, writers) keeps a seeded subset of the training writers (None/0 = all);
  `server_holdout` None = `partition.default_server_holdout` of the pooled test split.
  """
  if num_clients is not None and num_clients < 0:
    raise DataError(f'--num_clients must be >= 0 (0 = all writers), got {num_clients}')
  train, test = leaf.read_leaf_dir(data_dir, leaf.NUM_CLASSES,
                                   cache_dir or leaf.default_cache_dir())
  listed = len(train)
  if only_digits:
    train, test = _digits(train), _digits(test)
  if not train:
    raise DataError(f'{data_dir}/train has no writer with a digit image (--only_digits)')
  ids = sorted(train)
  if num_clients and num_clients < len(ids):
    rng = np.random.default_rng([seed, 2])
    ids = sorted(rng.choice(np.asarray(ids), num_clients, replace=False).tolist())
  elif num_clients and num_clients > len(ids):
    raise DataError(f'--num_clients={num_clients} but {data_dir}/train has {len(ids)} writers')
  test_x, test_y, test_owner = _pool(test)
  if test_y.size < 2:
    raise DataError(f'{data_dir}/test has {test_y.size} usable images; it needs at least 2')
  holdout = partition_lib.default_server_holdout(test_y.size) if server_holdout is None else server_holdout
  held, rest = partition_lib.stratified_holdout(test_y, holdout, [seed, 1])
  num_classes = NUM_DIGITS if only_digits else leaf.NUM_CLASSES
  report = _report(train, ids, test_y[rest], test_owner[rest], num_classes, listed,
                   only_digits, num_clients, seed)
  report.update(server_size=int(held.size))
  return FederatedData(
      name='femnist' if only_digits else 'femnist62',
      train=tff.simulation.datasets.TestClientData({
          w: collections.OrderedDict(x=train[w][0], y=train[w][1]) for w in ids}),
      test=(test_x[rest], test_y[rest]),
      server=(test_x[held], test_y[held]),
      num_classes=num_classes,
      input_shape=leaf.INPUT_SHAPE,
      partition_report=report,
      test_by_client=_by_owner(test_x[rest], test_y[rest], test_owner[rest]))


def _by_owner(x: np.ndarray, y: np.ndarray, owner: np.ndarray) -> Dict[str, ArrayPair]:
  return {str(w): (x[owner == w], y[owner == w]) for w in dict.fromkeys(owner.tolist())}


def _report(train, ids, test_y, test_owner, num_classes, listed, only_digits, num_clients,
            seed) -> dict:
  """The partition report: writers and images used, digits among them, what was dropped."""
  hist = np.stack([np.bincount(train[w][1], minlength=num_classes)[:num_classes] for w in ids])
  report = partition_lib.histogram_report(
      hist, 'natural', {'only_digits': only_digits, 'num_clients': num_clients or 0,
                        'writers_available': len(train), 'seed': seed})
  report.update(
      dataset='femnist', background_value=1.0, writers_listed=listed,
      writers_dropped_no_digits=listed - len(train) if only_digits else 0,
      train_digits=int(hist[:, :NUM_DIGITS].sum()), test_size=int(test_y.size),
      test_writers=len(set(test_owner.tolist())),
      test_digits=int(np.sum(test_y < NUM_DIGITS)))
  return report
