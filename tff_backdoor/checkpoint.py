"""Crash-safe checkpoints of a TFF learning state plus the loop's own state (round, RNGs, ...).

Layout: `<dir>/ckpt-NNNNNN/{state.npz, meta.json}` and `<dir>/LATEST` naming the newest one.
A checkpoint is written into a temporary directory, fsynced and renamed, and only then is
`LATEST` replaced (atomically); older checkpoints are deleted last. A crash at any point
leaves `LATEST` naming a complete checkpoint, so a partial write never corrupts the previous one.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

_LATEST = 'LATEST'
_PREFIX = 'ckpt-'


def _fsync_file(path: str) -> None:
  with open(path, 'rb') as f:
    os.fsync(f.fileno())


def save_checkpoint(directory: str, round_num: int, state: Any, meta: Dict[str, Any],
                    keep: int = 1) -> str:
  """Saves `state` (any tf.nest structure of arrays/scalars) and JSON-able `meta`."""
  os.makedirs(directory, exist_ok=True)
  name = f'{_PREFIX}{round_num:06d}'
  final = os.path.join(directory, name)
  tmp = os.path.join(directory, f'.{name}.tmp-{os.getpid()}')
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  leaves = [np.asarray(leaf) for leaf in tf.nest.flatten(state)]
  np.savez(os.path.join(tmp, 'state.npz'), *leaves)
  with open(os.path.join(tmp, 'meta.json'), 'w') as f:
    json.dump({'round_num': round_num, 'num_leaves': len(leaves), **meta}, f)
  for file_name in ('state.npz', 'meta.json'):
    _fsync_file(os.path.join(tmp, file_name))
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  latest_tmp = os.path.join(directory, f'.{_LATEST}.tmp-{os.getpid()}')
  with open(latest_tmp, 'w') as f:
    f.write(name + '\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(latest_tmp, os.path.join(directory, _LATEST))
  _prune(directory, keep=keep, current=name)
  return final


def _prune(directory: str, keep: int, current: str) -> None:
  """Deletes leftovers of interrupted writes and all but the newest `keep` checkpoints."""
  entries = sorted(os.listdir(directory))
  for entry in entries:
    if entry.startswith('.') and '.tmp-' in entry:
      path = os.path.join(directory, entry)
      shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
  complete = [e for e in entries if e.startswith(_PREFIX) and e <= current]
  for entry in complete[:-keep] if keep > 0 else []:
    shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def latest_checkpoint(directory: str) -> Optional[str]:
  """The path of the newest complete checkpoint, or None."""
  try:
    with open(os.path.join(directory, _LATEST)) as f:
      name = f.read().strip()
  except FileNotFoundError:
    return None
  path = os.path.join(directory, name)
  return path if os.path.exists(os.path.join(path, 'meta.json')) else None


def load_checkpoint(path: str, template_state: Any) -> Tuple[Any, Dict[str, Any]]:
  """Restores a state shaped like `template_state` (e.g. `process.initialize()`) and its meta."""
  with open(os.path.join(path, 'meta.json')) as f:
    meta = json.load(f)
  template = tf.nest.flatten(template_state)
  with np.load(os.path.join(path, 'state.npz')) as data:
    leaves = [data[f'arr_{i}'] for i in range(meta['num_leaves'])]
  if len(leaves) != len(template):
    raise ValueError(f'checkpoint {path} has {len(leaves)} state tensors but the process has '
                     f'{len(template)}: it was written by a different configuration')
  restored = []
  for saved, like in zip(leaves, template):
    like = np.asarray(like)
    if saved.shape != like.shape:
      raise ValueError(f'checkpoint {path} does not match the process: a tensor of shape '
                       f'{saved.shape} where {like.shape} is expected')
    restored.append(saved.astype(like.dtype))
  return tf.nest.pack_sequence_as(template_state, restored), meta
