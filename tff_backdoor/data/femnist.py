"""FEMNIST from LEAF's JSON files: one client per writer, the test split pooled over writers.

The real writer-partitioned handwriting Sun et al. 2019 use (TFF's federated EMNIST is the
same NIST data grouped the same way). Pixels follow LEAF and TFF EMNIST: 1.0 = background.
The server split (FLAIN's auxiliary data) is carved, seeded and class-stratified, from the
pooled test split; what is left is the test set, also kept per writer so that a targeted
backdoor can be measured on the target writers' own test images and on everyone else's.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from tff_backdoor.data import leaf
from tff_backdoor.data import partition as partition_lib
from tff_backdoor.data.array_client_data import ArrayClientData
from tff_backdoor.data.core import ArrayPair, DataError, FederatedData, float_images

NUM_DIGITS = 10


def load_femnist(data_dir: str, *, only_digits: bool = True, num_clients: Optional[int] = None,
                 server_holdout: Optional[int] = None, seed: int = 0,
                 cache_dir: Optional[str] = None) -> FederatedData:
  """LEAF FEMNIST in `data_dir` (train/, test/) as FederatedData, one client per writer.

  `num_clients` in (0, writers) keeps a seeded subset of the training writers (None/0 = all);
  `server_holdout` None = `partition.default_server_holdout` of the pooled test split. Training
  images stay uint8 (`ArrayClientData` casts a client's batches); the test and server splits
  are float32.
  """
  if num_clients is not None and num_clients < 0:
    raise DataError(f'--num_clients must be >= 0 (0 = all writers), got {num_clients}')
  train, test = leaf.read_leaf_packed(data_dir, leaf.NUM_CLASSES,
                                      cache_dir or leaf.default_cache_dir())
  listed = len(train.writers)
  if only_digits:
    train, test = train.select(train.labels < NUM_DIGITS), test.select(test.labels < NUM_DIGITS)
  if not train.writers:
    raise DataError(f'{data_dir}/train has no writer with a digit image (--only_digits)')
  ids = train.writers
  if num_clients and num_clients < len(ids):
    rng = np.random.default_rng([seed, 2])
    ids = sorted(rng.choice(np.asarray(ids), num_clients, replace=False).tolist())
  elif num_clients and num_clients > len(ids):
    raise DataError(f'--num_clients={num_clients} but {data_dir}/train has {len(ids)} writers')
  test_x, test_y = float_images(test.pixels), test.labels
  test_owner = np.asarray(test.writers, dtype=object)[test.owners()]
  if test_y.size < 2:
    raise DataError(f'{data_dir}/test has {test_y.size} usable images; it needs at least 2')
  holdout = partition_lib.default_server_holdout(test_y.size) if server_holdout is None else server_holdout
  held, rest = partition_lib.stratified_holdout(test_y, holdout, [seed, 1])
  num_classes = NUM_DIGITS if only_digits else leaf.NUM_CLASSES
  by_writer = train.by_writer()
  report = _report(train, ids, test_y[rest], test_owner[rest], num_classes, listed,
                   only_digits, num_clients, seed)
  report.update(server_size=int(held.size))
  return FederatedData(
      name='femnist' if only_digits else 'femnist62',
      train=ArrayClientData({w: by_writer[w] for w in ids}),
      test=(test_x[rest], test_y[rest]),
      server=(test_x[held], test_y[held]),
      num_classes=num_classes,
      input_shape=leaf.INPUT_SHAPE,
      partition_report=report,
      test_by_client=_by_owner(test_x[rest], test_y[rest], test_owner[rest]))


def _by_owner(x: np.ndarray, y: np.ndarray, owner: np.ndarray) -> Dict[str, ArrayPair]:
  """{writer: its images} in order of first appearance, each writer's images in their order."""
  names, first, codes = np.unique(owner.astype(str), return_index=True, return_inverse=True)
  order = np.argsort(codes, kind='stable')
  bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
  groups = {str(names[k]): order[bounds[k]:bounds[k + 1]] for k in range(len(names))}
  return {str(names[k]): (x[groups[str(names[k])]], y[groups[str(names[k])]])
          for k in np.argsort(first, kind='stable')}


def _report(train: leaf.PackedSplit, ids, test_y, test_owner, num_classes, listed, only_digits,
            num_clients, seed) -> dict:
  """The partition report: writers and images used, digits among them, what was dropped."""
  hist = np.zeros((len(train.writers), num_classes), np.int64)
  np.add.at(hist, (train.owners(), train.labels), 1)  # labels < num_classes: checked on read
  position = {w: i for i, w in enumerate(train.writers)}
  hist = hist[[position[w] for w in ids]]
  report = partition_lib.histogram_report(
      hist, 'natural', {'only_digits': only_digits, 'num_clients': num_clients or 0,
                        'writers_available': len(train.writers), 'seed': seed})
  report.update(
      dataset='femnist', background_value=1.0, writers_listed=listed,
      writers_dropped_no_digits=listed - len(train.writers) if only_digits else 0,
      train_digits=int(hist[:, :NUM_DIGITS].sum()), test_size=int(test_y.size),
      test_writers=len(set(test_owner.tolist())),
      test_digits=int(np.sum(test_y < NUM_DIGITS)))
  return report
