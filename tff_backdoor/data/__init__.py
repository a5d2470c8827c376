"""Data layer: every source returns `tff.simulation.datasets.ClientData`.

Elements everywhere: OrderedDict(x=float32[H,W,C] in [0,1], y=int32 scalar).
`load_federated_data` is the entry point; `client_arrays` turns ClientData back into numpy.
TensorFlow-free names (DataError, ArrayPair, FederatedData, DATASETS, PARTITIONS) load
eagerly; the rest loads on first use, so `python -m tff_backdoor.data.fetch` stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from tff_backdoor.data.core import DATASETS, NATURAL_DATASETS, PARTITIONS, ArrayPair
from tff_backdoor.data.core import DataError, FederatedData

_LAZY = {
    'load_federated_data': 'tff_backdoor.data.sources',
    'client_arrays': 'tff_backdoor.data.sources',
    'federate_arrays': 'tff_backdoor.data.sources',
    'ensure_fashion_mnist': 'tff_backdoor.data.fetch',
    'iid_partition': 'tff_backdoor.data.partition',
    'dirichlet_partition': 'tff_backdoor.data.partition',
    'shard_partition': 'tff_backdoor.data.partition',
    'partition_report': 'tff_backdoor.data.partition',
    'read_idx': 'tff_backdoor.data.idx',
    'load_idx_dir': 'tff_backdoor.data.idx',
    'load_femnist': 'tff_backdoor.data.femnist',
    'read_leaf_dir': 'tff_backdoor.data.leaf',
}

__all__ = ['ArrayPair', 'DataError', 'FederatedData', 'DATASETS', 'NATURAL_DATASETS',
           'PARTITIONS'] + list(_LAZY)


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
