"""Federated EMNIST (per-writer split) through TFF's own loader, with offline-friendly errors.

TFF's `emnist.load_data(cache_dir=D)` uses D/emnist_all.sqlite when that file exists and
otherwise downloads emnist_all.sqlite.lzma (no timeout of its own). The SQLite schema is
TFF's `SqlClientData` one: tables `examples(split_name, client_id, serialized_example_proto)`
and `client_metadata(client_id, split_name, num_examples)`; split names are
digits_only_train/test and all_train/test; each proto is a tf.train.Example with
`pixels` (784 floats, 1.0 = background, 0.0 = ink) and `label` (int64).
"""
from __future__ import annotations

import collections
import contextlib
import os
import socket
import sqlite3
import weakref
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.data import partition as partition_lib
from tff_backdoor.data.core import ArrayPair, DataError, FederatedData, empty_pair

EMNIST_FILE = 'emnist_all.sqlite'
INPUT_SHAPE = (28, 28, 1)
DOWNLOAD_TIMEOUT_S = 60.0
_PARSE_CHUNK = 4096
# ClientData objects built here -> (database path, split name), so that `client_arrays`
# can read them with one SQL scan instead of one query (table scan) per client.
SQL_SOURCES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def default_cache_dir() -> str:
  """TFF's own default cache directory for emnist_all.sqlite (~/.tff)."""
  return os.path.join(os.path.expanduser('~'), '.tff')


def split_names(only_digits: bool) -> Tuple[str, str]:
  """TFF's (train, test) split names in emnist_all.sqlite."""
  return ('digits_only_train', 'digits_only_test') if only_digits else ('all_train', 'all_test')


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
  """TFF's urlopen has no timeout; bound it so an offline machine fails instead of hanging."""
  old = socket.getdefaulttimeout()
  socket.setdefaulttimeout(seconds)
  try:
    yield
  finally:
    socket.setdefaulttimeout(old)


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0]}' if text else type(e).__name__


def _to_xy(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """TFF EMNIST elements (pixels [28,28], label) -> OrderedDict(x=[28,28,1], y=int32)."""
  return dataset.map(
      lambda e: collections.OrderedDict(x=tf.expand_dims(e['pixels'], -1),
                                        y=tf.cast(e['label'], tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE)


def load_tff_emnist(only_digits: bool = True, cache_dir: Optional[str] = None
                    ) -> Tuple[tff.simulation.datasets.ClientData,
                               tff.simulation.datasets.ClientData, str]:
  """TFF's (train, test) EMNIST ClientData in the x/y convention, and the database path."""
  cache = cache_dir or default_cache_dir()
  path = os.path.join(cache, EMNIST_FILE)
  existed = os.path.exists(path)
  try:
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
      train, test = tff.simulation.datasets.emnist.load_data(
          only_digits=only_digits, cache_dir=cache_dir)
  except Exception as e:  # pylint: disable=broad-except
    if not existed:
      if os.path.exists(path):  # TFF leaves a partial file that it would later trust.
        os.remove(path)
      raise DataError(f'federated EMNIST not found: expected {path} (TFF\'s file) and the '
                      f'download failed: {_one_line(e)}; copy emnist_all.sqlite there or '
                      'pass cache_dir') from e
    raise DataError(f'{path} is not a usable TFF EMNIST database ({_one_line(e)}); delete '
                    'it and copy a good emnist_all.sqlite there') from e
  return train.preprocess(_to_xy), test.preprocess(_to_xy), path


def read_sql_split(db_path: str, split_name: str, client_ids: Optional[Sequence[str]] = None,
                   labels_only: bool = False) -> Dict[str, ArrayPair]:
  """Reads a split of a TFF EMNIST database in one scan: {client_id: (x, y)}.

  With `labels_only`, x is an empty [0,28,28,1] array (parsing only labels is much cheaper).
  Rows keep the database order, as TFF's own per-client SqlDataset query does.
  """
  wanted = None if client_ids is None else set(client_ids)
  spec = {'label': tf.io.FixedLenFeature(shape=(), dtype=tf.int64)}
  if not labels_only:
    spec['pixels'] = tf.io.FixedLenFeature(shape=(28, 28), dtype=tf.float32)
  xs: Dict[str, list] = collections.defaultdict(list)
  ys: Dict[str, list] = collections.defaultdict(list)

  def flush(ids, protos):
    parsed = tf.io.parse_example(tf.constant(protos), spec)
    labels = parsed['label'].numpy().astype(np.int32)
    pixels = None if labels_only else parsed['pixels'].numpy()
    ids = np.asarray(ids)
    for cid in dict.fromkeys(ids.tolist()):
      sel = ids == cid
      ys[cid].append(labels[sel])
      if pixels is not None:
        xs[cid].append(pixels[sel][..., np.newaxis])

  try:
    con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
    try:
      cursor = con.execute('SELECT client_id, serialized_example_proto FROM examples '
                           'WHERE split_name = ? ORDER BY rowid', (split_name,))
      while True:
        rows = cursor.fetchmany(_PARSE_CHUNK)
        if not rows:
          break
        if wanted is not None:
          rows = [r for r in rows if r[0] in wanted]
        if rows:
          flush([r[0] for r in rows], [bytes(r[1]) for r in rows])
    finally:
      con.close()
  except (sqlite3.Error, tf.errors.InvalidArgumentError) as e:
    raise DataError(f'cannot read split {split_name} of {db_path} ({_one_line(e)}); delete '
                    'the file and copy a good emnist_all.sqlite there') from e
  out = {}
  for cid in ys:
    y = np.concatenate(ys[cid])
    x = (np.concatenate(xs[cid]) if not labels_only
         else np.zeros((0,) + INPUT_SHAPE, np.float32))
    out[cid] = (x, y)
  return out


def _stack(arrays: Dict[str, ArrayPair]) -> ArrayPair:
  if not arrays:
    return empty_pair(INPUT_SHAPE)
  keys = sorted(arrays)
  return (np.concatenate([arrays[k][0] for k in keys]),
          np.concatenate([arrays[k][1] for k in keys]))


def load_emnist(*, only_digits: bool = True, num_clients: Optional[int] = None,
                server_holdout: Optional[int] = None, seed: int = 0,
                cache_dir: Optional[str] = None) -> FederatedData:
  """Federated EMNIST: per-writer clients; test = all writers' test data minus a server split.

  `num_clients` in (0, number of writers) keeps a seeded subset of writers (0/None = all);
  the test pool stays the test data of every writer. `server_holdout` examples are drawn
  (seeded, class-stratified) from that pool and removed from it (None = 1000, at most a
  fifth of the pool).
  """
  train, _, db_path = load_tff_emnist(only_digits, cache_dir)
  train_split, test_split = split_names(only_digits)
  all_ids = list(train.client_ids)
  if num_clients is not None and num_clients < 0:
    raise DataError(f'num_clients must be >= 0 (0 = all writers), got {num_clients}')
  if num_clients and num_clients < len(all_ids):
    rng = np.random.default_rng([seed, 2])
    chosen = sorted(rng.choice(np.asarray(all_ids), num_clients, replace=False).tolist())
    train = tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
        chosen, train.serializable_dataset_fn)
  SQL_SOURCES[train] = (db_path, train_split)

  pool_x, pool_y = _stack(read_sql_split(db_path, test_split))
  if pool_y.size == 0:
    raise DataError(f'{db_path} has no {test_split} examples; use a complete emnist_all.sqlite')
  if server_holdout is None:
    server_holdout = partition_lib.default_server_holdout(pool_y.size)
  held, rest = partition_lib.stratified_holdout(pool_y, server_holdout, [seed, 1])
  num_classes = 10 if only_digits else 62
  hist = np.stack([
      np.bincount(y, minlength=num_classes)[:num_classes]
      for _, (_, y) in sorted(read_sql_split(db_path, train_split, train.client_ids,
                                             labels_only=True).items())])
  report = partition_lib.histogram_report(
      hist, 'natural', {'only_digits': only_digits, 'num_clients': num_clients or 0,
                        'writers_available': len(all_ids), 'seed': seed})
  report.update(dataset='emnist', server_size=int(held.size), test_size=int(rest.size),
                background_value=1.0)
  return FederatedData(
      name='emnist' if only_digits else 'emnist62',
      train=train,
      test=(pool_x[rest], pool_y[rest]),
      server=(pool_x[held], pool_y[held]),
      num_classes=num_classes,
      input_shape=INPUT_SHAPE,
      partition_report=report)
