"""Pure NumPy partitioners of centralised labels into federated clients, and their report.

Every partitioner is deterministic for a seed (np.random.default_rng(seed)) and returns one
sorted int64 index array per client; the arrays are disjoint and cover range(len(labels)).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tff_backdoor.data.core import DataError


def _check_labels(labels: np.ndarray) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'labels must be a 1-D integer array, got {labels.dtype} {labels.shape}')
  if labels.size and labels.min() < 0:
    raise DataError('labels must be non-negative class ids')
  return labels


def _check_num_clients(num_clients: int, n: int) -> None:
  if not 1 <= num_clients <= n:
    raise DataError(f'num_clients must be in [1, {n}] (one example at least per client), '
                    f'got {num_clients}')


def _finish(parts: Sequence[np.ndarray]) -> List[np.ndarray]:
  return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid_partition(labels: np.ndarray, num_clients: int, seed: int) -> List[np.ndarray]:
  """Shuffles the examples and cuts them into `num_clients` near-equal IID parts."""
  labels = _check_labels(labels)
  _check_num_clients(num_clients, labels.size)
  perm = np.random.default_rng(seed).permutation(labels.size)
  return _finish(np.array_split(perm, num_clients))


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
                        min_size: int = 10, max_tries: int = 1000) -> List[np.ndarray]:
  """Label-skew split: each class is spread over clients by proportions ~ Dirichlet(alpha).

  The usual Hsu et al. (2019) recipe as in the FLAIN / NIID-bench code: redraw everything
  until every client holds at least `min_size` examples (DataError after `max_tries` draws).
  Small alpha = strong skew (few classes per client); large alpha approaches IID.
  """
  labels = _check_labels(labels)
  n = labels.size
  _check_num_clients(num_clients, n)
  if not alpha > 0:
    raise DataError(f'alpha must be > 0 (small = more label skew), got {alpha}')
  min_size = int(min(min_size, n // num_clients))
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  by_class = [np.flatnonzero(labels == c) for c in classes]
  for _ in range(max_tries):
    chunks: List[List[np.ndarray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for idx in by_class:
      idx = rng.permutation(idx)
      props = rng.dirichlet(np.full(num_clients, float(alpha)))
      cuts = (np.cumsum(props)[:-1] * idx.size).astype(np.int64)
      for client, piece in enumerate(np.split(idx, cuts)):
        chunks[client].append(piece)
        sizes[client] += piece.size
    if sizes.min() >= min_size:
      return _finish([np.concatenate(c) for c in chunks])
  raise DataError(f'Dirichlet(alpha={alpha}) split of {n} examples over {num_clients} clients '
                  f'left a client below {min_size} examples in {max_tries} draws; use fewer '
                  'clients or a larger alpha')


def _allocate_shards(class_sizes: np.ndarray, total: int) -> np.ndarray:
  """Shards per class: proportional to class size, at least 1, at most the class size."""
  exact = class_sizes * total / class_sizes.sum()
  alloc = np.maximum(np.floor(exact).astype(np.int64), 1)
  alloc = np.minimum(alloc, class_sizes)
  remainder = exact - alloc
  while alloc.sum() < total:  # Largest remainder first, among classes that can take more.
    open_ = alloc < class_sizes
    k = int(np.argmax(np.where(open_, remainder, -np.inf)))
    alloc[k] += 1
    remainder[k] -= 1
  while alloc.sum() > total:  # Only when the minimum of 1 overshot: trim the largest.
    k = int(np.argmax(np.where(alloc > 1, alloc - exact, -np.inf)))
    alloc[k] -= 1
  return alloc


def shard_partition(labels: np.ndarray, num_clients: int, shards_per_client: int,
                    seed: int) -> List[np.ndarray]:
  """McMahan et al. (2017) pathological non-IID: sort by label, cut into shards, deal them.

  Shards are cut within classes (each class gets shards in proportion to its size), so every
  shard holds one label and a client at most `shards_per_client` labels; if there are fewer
  shards than classes, the label-sorted order is cut into equal shards instead.
  """
  labels = _check_labels(labels)
  n = labels.size
  _check_num_clients(num_clients, n)
  if shards_per_client < 1:
    raise DataError(f'shards_per_client must be >= 1, got {shards_per_client}')
  total = num_clients * shards_per_client
  if total > n:
    raise DataError(f'num_clients*shards_per_client = {total} shards exceed the {n} '
                    'examples; use fewer clients or shards')
  rng = np.random.default_rng(seed)
  # Random order within each class, then a stable sort by label.
  perm = rng.permutation(n)
  order = perm[np.argsort(labels[perm], kind='stable')]
  classes, class_sizes = np.unique(labels, return_counts=True)
  if total >= classes.size:
    alloc = _allocate_shards(class_sizes, total)
    starts = np.concatenate([[0], np.cumsum(class_sizes)[:-1]])
    shards = []
    for start, size, count in zip(starts, class_sizes, alloc):
      shards.extend(np.array_split(order[start:start + size], count))
  else:
    shards = np.array_split(order, total)
  deal = rng.permutation(total)
  return _finish([np.concatenate([shards[s] for s in deal[i::num_clients]])
                  for i in range(num_clients)])


def default_server_holdout(pool_size: int) -> int:
  """The default server split: 1,000 images, never more than a fifth of a small pool."""
  return min(1000, pool_size // 5)


def stratified_take(counts: np.ndarray, size: int) -> np.ndarray:
  """How many of `size` held-out examples each class gives (`stratified_holdout`'s split):
  in proportion to `counts`, largest remainders rounded up. Labels only, so a run's flags can
  be checked against its server split before the data loads."""
  counts = np.asarray(counts, dtype=np.int64)
  exact = counts * size / max(int(counts.sum()), 1)
  take = np.floor(exact).astype(np.int64)
  for k in np.argsort(-(exact - take), kind='stable')[:size - int(take.sum())]:
    take[k] += 1
  return take


def stratified_holdout(labels: np.ndarray, size: int, seed: Any) -> Tuple[np.ndarray, np.ndarray]:
  """Seeded (held_out, rest) sorted index arrays; held_out has `size` examples, class-stratified.

  Each class gives examples in proportion to its frequency (largest remainder rounding), so
  a server split carved out this way has the population's label distribution.
  """
  labels = _check_labels(labels)
  n = labels.size
  if not 0 <= size < n:
    raise DataError(f'server_holdout must be in [0, {n - 1}] for {n} examples, got {size}')
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  take = stratified_take(counts, size)
  held = [rng.choice(np.flatnonzero(labels == c), t, replace=False)
          for c, t in zip(classes, take) if t]
  held = np.sort(np.concatenate(held).astype(np.int64)) if held else np.zeros(0, np.int64)
  mask = np.ones(n, dtype=bool)
  mask[held] = False
  return held, np.flatnonzero(mask).astype(np.int64)


def _stats(values: np.ndarray) -> Dict[str, float]:
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return {'min': 0.0, 'median': 0.0, 'mean': 0.0, 'max': 0.0}
  return {'min': float(values.min()), 'median': float(np.median(values)),
          'mean': float(values.mean()), 'max': float(values.max())}


def label_histograms(parts: Sequence[np.ndarray], labels: np.ndarray,
                     num_classes: Optional[int] = None) -> np.ndarray:
  """Matrix [num_clients, num_classes] of per-client label counts."""
  labels = _check_labels(labels)
  k = int(num_classes if num_classes is not None else (labels.max() + 1 if labels.size else 0))
  return np.stack([np.bincount(labels[p], minlength=k)[:k] for p in parts]) if len(parts) \
      else np.zeros((0, k), dtype=np.int64)


def histogram_report(hist: np.ndarray, name: Optional[str] = None,
                     params: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Summary of a [clients, classes] label-count matrix (sizes, classes per client, skew)."""
  hist = np.asarray(hist, dtype=np.int64)
  sizes = hist.sum(axis=1)
  safe = np.maximum(sizes, 1)[:, None]
  client_dist = hist / safe
  total = hist.sum(axis=0)
  global_dist = total / max(int(total.sum()), 1)
  tv = 0.5 * np.abs(client_dist - global_dist[None, :]).sum(axis=1)
  return {
      'partition': name,
      'params': dict(params or {}),
      'num_clients': int(hist.shape[0]),
      'num_examples': int(sizes.sum()),
      'client_sizes': _stats(sizes),
      'labels_per_client': _stats((hist > 0).sum(axis=1)),
      'dominant_label_share': _stats(client_dist.max(axis=1)),
      # Total-variation distance of each client's label distribution from the global one:
      # 0 = IID, near 1 = a client holding only a rare class. The label-skew measure.
      'label_tv_distance': _stats(tv),
      'global_label_counts': [int(c) for c in total],
  }


def partition_report(parts: Sequence[np.ndarray], labels: np.ndarray, *,
                     name: Optional[str] = None, params: Optional[Mapping[str, Any]] = None,
                     num_classes: Optional[int] = None) -> Dict[str, Any]:
  """JSON-friendly summary of a partition: client sizes and per-client label skew."""
  return histogram_report(label_histograms(parts, labels, num_classes), name, params)
