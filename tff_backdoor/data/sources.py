"""`load_federated_data`: one entry point for every dataset, always returning ClientData.

Centralised sources (MNIST, Fashion-MNIST, any idx dir) are split into a server hold-out
(carved from TRAIN, class-stratified), then the rest of TRAIN is partitioned over clients;
the idx test split is the evaluation set. EMNIST keeps its natural per-writer split.
"""
from __future__ import annotations

import collections
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow_federated as tff

from tff_backdoor.data import emnist as emnist_lib
from tff_backdoor.data import femnist as femnist_lib
from tff_backdoor.data import idx as idx_lib
from tff_backdoor.data import partition as partition_lib
from tff_backdoor.data.array_client_data import ArrayClientData
from tff_backdoor.data.core import DataError, FederatedData
from tff_backdoor.data.core import DATASETS, NATURAL_DATASETS, PARTITIONS, ArrayPair
from tff_backdoor.data.core import empty_pair
from tff_backdoor.execution import tff_private
_BATCH = 4096


def _client_id(i: int, num_clients: int) -> str:
  return f'client_{i:0{max(3, len(str(num_clients - 1)))}d}'


def _partition(labels: np.ndarray, partition: str, num_clients: int, alpha: float,
               shards_per_client: int, seed: int) -> List[np.ndarray]:
  if partition == 'iid':
    return partition_lib.iid_partition(labels, num_clients, seed)
  if partition == 'dirichlet':
    return partition_lib.dirichlet_partition(labels, num_clients, alpha, seed)
  return partition_lib.shard_partition(labels, num_clients, shards_per_client, seed)


def federate_arrays(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray]
                    ) -> tff.simulation.datasets.ClientData:
  """ClientData ('client_000', ...) holding x[p], y[p] for each index array p of `parts`."""
  if not parts or any(len(p) == 0 for p in parts):
    raise DataError('every client needs at least one example; use fewer clients')
  return tff.simulation.datasets.TestClientData({
      _client_id(i, len(parts)): collections.OrderedDict(x=x[p], y=y[p])
      for i, p in enumerate(parts)})


def load_federated_data(dataset: str, *, data_dir: Optional[str] = None,
                        partition: str = 'dirichlet', num_clients: Optional[int] = None,
                        alpha: float = 0.5, shards_per_client: int = 2,
                        server_holdout: Optional[int] = None, seed: int = 0,
                        only_digits: bool = True,
                        cache_dir: Optional[str] = None,
                        train_fraction: float = 1.0) -> FederatedData:
  """Loads `dataset` as FederatedData (clients' ClientData, test and server arrays).

  `partition`/`alpha`/`shards_per_client` apply to centralised data; EMNIST and FEMNIST
  (LEAF JSON in `data_dir`) use their per-writer split, `num_clients` as a seeded writer
  subset (0/None = all), `only_digits` and `cache_dir` (TFF's emnist_all.sqlite; FEMNIST's
  parsed-array cache). `server_holdout` None = 1000 images, at most a fifth of a writer
  data set's test split. `train_fraction` < 1
  keeps a seeded, class-stratified share of the centralised training pool (after the server
  holdout, before partitioning): the same population shape at a fraction of the cost.
  """
  _check_request(dataset, partition, train_fraction)
  if dataset in NATURAL_DATASETS:
    return _load_writers(dataset, data_dir=data_dir, only_digits=only_digits,
                         num_clients=num_clients, server_holdout=server_holdout, seed=seed,
                         cache_dir=cache_dir)
  return _load_centralised(dataset, data_dir, partition, 100 if num_clients is None else
                           num_clients, alpha, shards_per_client,
                           1000 if server_holdout is None else server_holdout, seed,
                           train_fraction)


def _check_request(dataset: str, partition: str, train_fraction: float) -> None:
  """Raises DataError for an unknown data set or partition, or a bad train_fraction."""
  if dataset not in DATASETS:
    raise DataError(f'unknown dataset {dataset!r}; valid: {", ".join(DATASETS)}')
  if partition not in PARTITIONS:
    raise DataError(f'unknown partition {partition!r}; valid: {", ".join(PARTITIONS)}')
  if not 0 < train_fraction <= 1:
    raise DataError(f'train_fraction must be in (0, 1], got {train_fraction}')
  if dataset in NATURAL_DATASETS and train_fraction < 1:
    raise DataError(f'train_fraction applies to centralised data; for {dataset} take fewer '
                    'writers with num_clients')


def _load_femnist(data_dir: Optional[str], **kwargs) -> FederatedData:
  if not data_dir:
    raise DataError('--dataset=femnist needs --data_dir (a LEAF folder with train/, test/)')
  return femnist_lib.load_femnist(data_dir, **kwargs)


# Writer data set -> its loader in the per-writer split (LEAF FEMNIST, TFF's EMNIST).
_WRITER_LOADERS: Dict[str, Callable[..., FederatedData]] = {
    'femnist': _load_femnist,
    'emnist': lambda data_dir, **kwargs: emnist_lib.load_emnist(**kwargs),
}


def _load_writers(dataset: str, *, data_dir: Optional[str], **kwargs) -> FederatedData:
  """A writer data set (one of NATURAL_DATASETS) in its per-writer split."""
  return _WRITER_LOADERS[dataset](data_dir, **kwargs)


def _load_centralised(dataset: str, data_dir: Optional[str], partition: str, num_clients: int,
                      alpha: float, shards_per_client: int, server_holdout: int, seed: int,
                      train_fraction: float) -> FederatedData:
  """A centralised data set: server holdout, optional stratified share, then partitioned."""
  if num_clients < 1:
    raise DataError(f'num_clients must be >= 1 for {dataset}, got {num_clients}')
  (x, y), test = idx_lib.load_centralised(dataset, data_dir)
  held, pool = partition_lib.stratified_holdout(y, server_holdout, [seed, 1])
  if train_fraction < 1:
    size = int(round(train_fraction * pool.size))
    if size < num_clients:
      raise DataError(f'train_fraction={train_fraction} keeps {size} examples, fewer than '
                      f'num_clients={num_clients}')
    kept, _ = partition_lib.stratified_holdout(y[pool], size, [seed, 2])
    pool = pool[kept]
  parts = [pool[p] for p in _partition(y[pool], partition, num_clients, alpha,
                                       shards_per_client, seed)]
  params = {'num_clients': num_clients, 'seed': seed}
  if train_fraction < 1:
    params['train_fraction'] = train_fraction
  if partition == 'dirichlet':
    params['alpha'] = alpha
  elif partition == 'shards':
    params['shards_per_client'] = shards_per_client
  num_classes = int(max(y.max(initial=0), test[1].max(initial=0))) + 1
  report = partition_lib.partition_report(parts, y, name=partition, params=params,
                                          num_classes=num_classes)
  report.update(dataset=dataset, server_size=int(held.size), test_size=int(test[1].size),
                background_value=0.0)
  return FederatedData(
      name=dataset, train=federate_arrays(x, y, parts), test=test, server=(x[held], y[held]),
      num_classes=num_classes, input_shape=tuple(int(d) for d in x.shape[1:]),
      partition_report=report)


def _readonly(a: np.ndarray) -> np.ndarray:
  view = a.view()
  view.flags.writeable = False
  return view


def client_arrays(client_data: tff.simulation.datasets.ClientData,
                  client_ids: Optional[Sequence[str]] = None,
                  compact: bool = False) -> Dict[str, ArrayPair]:
  """Materialises clients' x/y data as numpy {client_id: (x, y)}, without per-element loops.

  Arrays of ClientData built from numpy are returned as read-only views (no copy); EMNIST
  from our loader is read in one SQL scan; anything else is iterated once in big batches.
  With `compact`, images an `ArrayClientData` stores as uint8 codes (FEMNIST) stay uint8
  (k meaning k/255, 4x smaller; `data.core.float_images` reads them); otherwise x is float32.
  """
  all_ids = list(client_data.client_ids)
  ids = all_ids if client_ids is None else list(client_ids)
  unknown = set(ids) - set(all_ids)
  if unknown:
    raise DataError(f'unknown client ids {sorted(unknown)[:5]}; pick from client_data.client_ids')
  if isinstance(client_data, ArrayClientData):
    return {cid: tuple(map(_readonly, client_data.client_arrays(cid, compact))) for cid in ids}
  if isinstance(client_data, tff.simulation.datasets.TestClientData):
    slices = tff_private.tensor_slices(client_data)
    if (isinstance(slices, dict) and slices
        and all(isinstance(v, dict) and set(v) == {'x', 'y'} for v in slices.values())):
      return {cid: (_readonly(np.asarray(slices[cid]['x'])),
                    _readonly(np.asarray(slices[cid]['y']))) for cid in ids}
  source = emnist_lib.SQL_SOURCES.get(client_data)
  if source is not None:
    found = emnist_lib.read_sql_split(source[0], source[1], ids)
    empty = empty_pair(emnist_lib.INPUT_SHAPE)
    return {cid: found.get(cid, empty) for cid in ids}
  spec = client_data.element_type_structure
  if not isinstance(spec, dict) or set(spec) != {'x', 'y'}:
    raise DataError(f'client_arrays needs elements OrderedDict(x=..., y=...), got {spec}; '
                    'map the data to that convention first')
  out = {}
  for cid in ids:
    xs, ys = [], []
    for batch in client_data.create_tf_dataset_for_client(cid).batch(_BATCH):
      xs.append(batch['x'].numpy())
      ys.append(batch['y'].numpy())
    if xs:
      out[cid] = (np.concatenate(xs), np.concatenate(ys))
    else:
      out[cid] = (np.zeros((0,) + tuple(spec['x'].shape), spec['x'].dtype.as_numpy_dtype),
                  np.zeros((0,), spec['y'].dtype.as_numpy_dtype))
  return out
