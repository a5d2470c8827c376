"""What a LEAF writer folder holds, read before any training: writers and their labels.

The flag check of a run, and a sweep's precheck of every configuration, ask this instead of
loading the data: how many training writers there are (digits only or all classes) and how
many hold at least k images of a class, so that `--clients_per_round`, `--num_clients` and
`--num_tasks` that the data cannot serve are refused in one line before TensorFlow loads. It
reads the parsed-array cache's labels (milliseconds once the folder was parsed; otherwise it
parses the folder, which the run would do anyway, and leaves the cache behind). TF-free.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import numpy as np

from tff_backdoor.data import leaf
from tff_backdoor.data import partition
from tff_backdoor.data.core import DataError

NUM_DIGITS = 10


@dataclasses.dataclass(frozen=True)
class WriterCounts:
  """A LEAF train split's labels by writer (`only_digits`: digit images, writers with one)."""
  data_dir: str
  writers: int
  owners: np.ndarray  # writer index of every image
  labels: np.ndarray

  def holding(self, label: int, at_least: int) -> int:
    """How many writers hold at least `at_least` (>= 1) images of `label`."""
    counts = np.bincount(self.owners[self.labels == label], minlength=self.writers)
    return int(np.sum(counts >= max(1, at_least)))


def writer_counts(data_dir: str, only_digits: bool = True,
                  cache_dir: Optional[str] = None) -> WriterCounts:
  """The train split's writer counts; DataError (one line) for a bad folder."""
  return _counts(os.path.abspath(data_dir), only_digits,
                 os.path.abspath(cache_dir or leaf.default_cache_dir()), _stamp(data_dir))


def _stamp(data_dir: str) -> tuple:
  """Names, sizes and times of the train files: a sweep's precheck reads a folder once."""
  directory = os.path.join(data_dir, 'train')
  if not os.path.isdir(directory):
    return ()
  stats = [(f, os.stat(os.path.join(directory, f))) for f in sorted(os.listdir(directory))]
  return tuple((f, st.st_size, st.st_mtime_ns) for f, st in stats)


@functools.lru_cache(maxsize=8)
def _counts(data_dir: str, only_digits: bool, cache_dir: str, stamp: tuple) -> WriterCounts:
  del stamp  # the cache key only
  leaf.check_leaf_dir(data_dir)
  split = leaf.read_split_packed(os.path.join(data_dir, 'train'), leaf.NUM_CLASSES, cache_dir)
  owners, labels = split.owners(), np.asarray(split.labels)
  if only_digits:  # labels only: the pixels (memory-mapped) are never read
    keep = labels < NUM_DIGITS
    owners, labels = np.unique(owners[keep], return_inverse=True)[1], labels[keep]
    return WriterCounts(data_dir, int(owners.max(initial=-1)) + 1, owners, labels)
  return WriterCounts(data_dir, len(split.writers), owners, labels)


def check_writers(counts: WriterCounts, *, clients_per_round: int, num_clients: Optional[int],
                  num_tasks: Optional[int] = None, source_class: Optional[int] = None,
                  task_min_samples: int = 0) -> None:
  """DataError (one line naming the flag) if the folder's writers cannot serve the request:
  more clients a round or kept writers than it has, or more target writers (`num_tasks`,
  the targeted task) than hold `task_min_samples` images of `source_class`."""
  where = f'{counts.data_dir}/train'
  if num_clients and num_clients > counts.writers:
    raise DataError(f'--num_clients={num_clients} but {where} has {counts.writers} writers')
  population = num_clients or counts.writers
  if clients_per_round > population:
    raise DataError(f'--clients_per_round={clients_per_round} is larger than the '
                    f'{population} writers of {where}')
  if num_tasks is not None and source_class is not None and not num_clients:
    eligible = counts.holding(source_class, task_min_samples)
    if num_tasks > eligible:
      raise DataError(f'--num_tasks={num_tasks} but only {eligible} writers of {where} hold '
                      f'at least {max(1, task_min_samples)} images of class {source_class} '
                      '(--task_min_samples)')


def server_class_counts(data_dir: str, only_digits: bool = True,
                        cache_dir: Optional[str] = None,
                        server_holdout: Optional[int] = None) -> np.ndarray:
  """Images a class in the server split `femnist.load_femnist` carves from the test split
  (stratified, so the counts follow from the labels alone); DataError for a bad folder."""
  directory = os.path.join(os.path.abspath(data_dir), 'test')
  if not os.path.isdir(directory):
    raise DataError(f'--data_dir {data_dir} has no test/ folder')
  split = leaf.read_split_packed(directory, leaf.NUM_CLASSES,
                                 os.path.abspath(cache_dir or leaf.default_cache_dir()))
  labels = np.asarray(split.labels)
  num_classes = NUM_DIGITS if only_digits else leaf.NUM_CLASSES
  labels = labels[labels < num_classes]
  size = (partition.default_server_holdout(labels.size) if server_holdout is None
          else server_holdout)
  if not 0 <= size < labels.size:
    raise DataError(f'--server_holdout={size} must be below the {labels.size} test images of '
                    f'{directory}')
  take = np.zeros(num_classes, np.int64)
  classes, counts = np.unique(labels, return_counts=True)
  take[classes] = partition.stratified_take(counts, size)
  return take


def check_root_set(server_counts: np.ndarray, per_class: int,
                   flag: str) -> None:
  """DataError (one line naming `flag` and --server_holdout) if the server split cannot give a
  root set (FLTrust's) of `per_class` images of every class."""
  short = {c: int(n) for c, n in enumerate(server_counts) if n < per_class}
  if short:
    raise DataError(f'{flag}={per_class} but the server split of '
                    f'{int(server_counts.sum())} images (--server_holdout) holds fewer of '
                    f'class: count {short}')
