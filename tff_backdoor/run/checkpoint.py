"""Checkpoints of a TFF learning state plus the loop's own state (round, RNGs, ...) that survive
crashes and damage.

Layout: `<dir>/ckpt-NNNNNN/{state.npz, meta.json, MANIFEST.json}` and `<dir>/LATEST` naming the
newest one. MANIFEST.json records the size and SHA-256 of the other two files.

Writing (`save_checkpoint`): the files go into a temporary directory and are fsynced, the
manifest last; the directory is renamed into place and read back against its manifest; only
then does `LATEST` move (atomically) and are checkpoints beyond the newest `keep` deleted. So
a crash at any point leaves every earlier checkpoint untouched, and nothing is deleted before
its successor is verified on disk.

Reading (`restore_newest`): the checkpoints are tried newest first (by round); one that fails
its manifest (truncated, bit-flipped, a file missing) is skipped with one line saying so, and
the newest intact one is loaded. If there are checkpoints but none is intact,
`CheckpointError` (a ValueError, so the programs print one line and exit non-zero) names the
directory. Checkpoints written before manifests existed are accepted if `LATEST` names them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

_LATEST = 'LATEST'
_PREFIX = 'ckpt-'
MANIFEST = 'MANIFEST.json'
STATE = 'state.npz'
META = 'meta.json'
DEFAULT_KEEP = 2


class CheckpointError(ValueError):
  """No checkpoint of a directory can be used (the message is one line)."""


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _fsync_file(path: str) -> None:
  with open(path, 'rb') as f:
    os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _write_state(path: str, leaves: List[np.ndarray]) -> None:
  np.savez(path, *leaves)


def _write_meta(path: str, meta: Dict[str, Any]) -> None:
  with open(path, 'w') as f:
    json.dump(meta, f)


def _write_manifest(directory: str, owner: Optional[Dict[str, Any]] = None) -> None:
  """Records size and SHA-256 of the checkpoint's files (and `owner`, the run it belongs to:
  `run.ownership`); written (and fsynced) last."""
  files = {name: {'bytes': os.path.getsize(os.path.join(directory, name)),
                  'sha256': _sha256(os.path.join(directory, name))} for name in (STATE, META)}
  path = os.path.join(directory, MANIFEST)
  with open(path, 'w') as f:
    json.dump({'files': files, **({'owner': owner} if owner else {})}, f)
    f.flush()
    os.fsync(f.fileno())


def _set_latest(directory: str, name: str) -> None:
  """Points LATEST at `name` atomically (write a temporary file, fsync, rename, fsync dir)."""
  tmp = os.path.join(directory, f'.{_LATEST}.tmp-{os.getpid()}')
  with open(tmp, 'w') as f:
    f.write(name + '\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(directory, _LATEST))
  _fsync_dir(directory)


def damage(path: str) -> Optional[str]:
  """Why the checkpoint at `path` cannot be trusted (a short phrase), or None if it is intact.

  Intact: MANIFEST.json exists and every file it lists has the recorded size and SHA-256.
  A checkpoint without a manifest (written by an older version) counts as intact only if
  LATEST names it and its meta.json and state.npz are present.
  """
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.exists(manifest_path):
    directory, name = os.path.split(path)
    legacy = (_read_latest(directory) == name and
              all(os.path.isfile(os.path.join(path, f)) for f in (STATE, META)))
    return None if legacy else f'no {MANIFEST} (incomplete write)'
  try:
    with open(manifest_path) as f:
      files = json.load(f)['files']
  except (OSError, ValueError, KeyError, TypeError):
    return f'{MANIFEST} unreadable'
  for name, expected in sorted(files.items()):
    file_path = os.path.join(path, name)
    if not os.path.isfile(file_path):
      return f'{name} missing'
    size = os.path.getsize(file_path)
    if size != expected['bytes']:
      return f'{name} has {size} bytes, {expected["bytes"]} expected'
    if _sha256(file_path) != expected['sha256']:
      return f'{name} fails its SHA-256 checksum'
  return None


def save_checkpoint(directory: str, round_num: int, state: Any, meta: Dict[str, Any],
                    keep: int = DEFAULT_KEEP, owner: Optional[Dict[str, Any]] = None) -> str:
  """Saves `state` (any tf.nest structure of arrays/scalars) and JSON-able `meta`.

  `owner` (JSON-able) goes into the manifest: which run wrote it (`checkpoint_owner`).

  Keeps the newest `keep` (>= 1) intact checkpoints; see the module docstring for the order
  of writes. Raises OSError if the new checkpoint does not read back intact.
  """
  if keep < 1:
    raise ValueError(f'keep must be >= 1, got {keep}')
  os.makedirs(directory, exist_ok=True)
  name = f'{_PREFIX}{round_num:06d}'
  final = os.path.join(directory, name)
  tmp = os.path.join(directory, f'.{name}.tmp-{os.getpid()}')
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  leaves = [np.asarray(leaf) for leaf in tf.nest.flatten(state)]
  _write_state(os.path.join(tmp, STATE), leaves)
  _write_meta(os.path.join(tmp, META), {'round_num': round_num, 'num_leaves': len(leaves), **meta})
  for file_name in (STATE, META):
    _fsync_file(os.path.join(tmp, file_name))
  _write_manifest(tmp, owner)
  _fsync_dir(tmp)
  replaced = None
  if os.path.exists(final):  # Only a damaged one can be here (resume starts after intact ones).
    replaced = os.path.join(directory, f'.{name}.replaced-{os.getpid()}')
    shutil.rmtree(replaced, ignore_errors=True)
    os.replace(final, replaced)
  os.replace(tmp, final)
  _fsync_dir(directory)
  problem = damage(final)
  if problem is not None:
    raise OSError(f'checkpoint {final} did not read back intact ({problem})')
  _set_latest(directory, name)
  _prune(directory, keep=keep, current=name)
  return final


def _prune(directory: str, keep: int, current: str) -> None:
  """Deletes leftovers of interrupted writes, damaged checkpoints, and intact ones older than
  the newest `keep` up to `current` (which the caller verified)."""
  entries = sorted(os.listdir(directory))
  for entry in entries:
    if entry.startswith('.') and ('.tmp-' in entry or '.replaced-' in entry):
      path = os.path.join(directory, entry)
      shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
  kept = 1
  for entry in sorted((e for e in entries if e.startswith(_PREFIX) and e != current),
                      reverse=True):
    path = os.path.join(directory, entry)
    if entry > current:  # Left by the run this one resumed from: keep it unless damaged.
      if damage(path) is not None:
        shutil.rmtree(path, ignore_errors=True)
    elif kept < keep and damage(path) is None:
      kept += 1
    else:
      shutil.rmtree(path, ignore_errors=True)


def checkpoint_owner(path: str) -> Dict[str, Any]:
  """The `owner` record in the manifest of the checkpoint at `path` ({} if it has none)."""
  try:
    with open(os.path.join(path, MANIFEST)) as f:
      owner = json.load(f).get('owner', {})
  except (OSError, ValueError, AttributeError):
    return {}
  return owner if isinstance(owner, dict) else {}


def _read_latest(directory: str) -> Optional[str]:
  try:
    with open(os.path.join(directory, _LATEST)) as f:
      return f.read().strip() or None
  except (OSError, UnicodeDecodeError):
    return None


def _checkpoints(directory: str) -> List[str]:
  """Checkpoint directory names, newest (highest round) first."""
  try:
    entries = os.listdir(directory)
  except FileNotFoundError:
    return []
  return sorted((e for e in entries if e.startswith(_PREFIX) and
                 os.path.isdir(os.path.join(directory, e))), reverse=True)


def has_checkpoints(directory: str) -> bool:
  """Whether `directory` holds any checkpoint (intact or not) or a LATEST pointer."""
  return bool(_checkpoints(directory)) or _read_latest(directory) is not None


def latest_checkpoint(directory: str) -> Optional[str]:
  """The path of the newest intact checkpoint, or None."""
  for name in _checkpoints(directory):
    path = os.path.join(directory, name)
    if damage(path) is None:
      return path
  return None


def load_checkpoint(path: str, template_state: Any) -> Tuple[Any, Dict[str, Any]]:
  """Restores a state shaped like `template_state` (e.g. `process.initialize()`) and its meta."""
  with open(os.path.join(path, META)) as f:
    meta = json.load(f)
  template = tf.nest.flatten(template_state)
  with np.load(os.path.join(path, STATE)) as data:
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


def restore_newest(directory: str, template_state: Any, warn: Callable[[str], None],
                   unusable: Callable[[str], Optional[str]] = lambda path: None
                   ) -> Optional[Tuple[Any, Dict[str, Any], str]]:
  """(state, meta, path) of the newest intact checkpoint in `directory`; None if it has none.

  `unusable(path)` may give a reason to pass over an intact checkpoint too (its run's rows are
  gone: `ownership.resume_filter`). Damaged checkpoints newer than the one loaded are reported
  in one `warn` line. Raises CheckpointError (one line naming `directory`) if checkpoints exist
  but none is intact.
  """
  names = _checkpoints(directory)
  if not names:
    if _read_latest(directory) is not None:
      raise CheckpointError(f'no intact checkpoint in {directory}: {_LATEST} names '
                            f'{_read_latest(directory)}, which does not exist')
    return None
  problems = []
  for name in names:
    path = os.path.join(directory, name)
    problem = damage(path)
    problem = problem if problem is not None else unusable(path)
    if problem is None:
      state, meta = load_checkpoint(path, template_state)
      if problems:
        damaged = ', '.join(f'{n} ({why})' for n, why in problems)
        warn(f'damaged checkpoint {damaged} in {directory}; resuming from {name}, '
             'the newest intact one')
      return state, meta, path
    problems.append((name, problem))
  raise CheckpointError(f'no intact checkpoint in {directory} (' +
                        '; '.join(f'{n}: {why}' for n, why in problems) + ')')
