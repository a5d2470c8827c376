"""A run directory belongs to one run: a lock while it runs, an identity its checkpoints carry.

- `claim(output_dir, resume, overwrite)` holds an exclusive `flock` on OUTPUT_DIR/.run.lock for
  the whole run (the kernel drops it when the holder dies, so a killed run never leaves a stale
  lock): a second run on the same directory is refused in one line. A fresh start (no
  --resume) into a directory that holds a run's files is refused in one line, or with
  `overwrite='move'` those files are moved to a sibling OUTPUT_DIR.old-N (never deleted).
- `identity(config)`: a hash of the settings a run's numbers depend on (not the ones that may
  change on resume, not the execution record). Every checkpoint's manifest carries it and the
  size and SHA-256 of metrics.jsonl at that moment (fsynced before the checkpoint is written):
  `resume_filter` refuses a checkpoint of another identity and skips one whose rows
  metrics.jsonl no longer holds, and `restore_metrics` cuts metrics.jsonl back to exactly the
  checkpoint's rows, so a resume never drops or duplicates a round.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence

from tff_backdoor import config as config_lib
from tff_backdoor import metrics_io
from tff_backdoor.run import rundir

LOCK_FILE = rundir.LOCK_FILE
CHECKPOINTS = rundir.CHECKPOINTS_DIR
OVERWRITE_MOVE = 'move'
# Files whose presence means a run wrote in the directory.
RUN_FILES = (rundir.CONFIG_FILE, rundir.METRICS_JSONL, rundir.FINAL_FILE, CHECKPOINTS)


class RunDirectoryError(ValueError):
  """The run directory is in use or holds another run (the message is one line)."""


def settings(config: Mapping[str, Any], ignored: Sequence[str]) -> Dict[str, Any]:
  """config.json's settings as JSON values, minus `ignored` and the execution record."""
  current = json.loads(json.dumps(metrics_io.to_jsonable(dict(config))))
  return {k: v for k, v in current.items()
          if k not in ignored and k != config_lib.EXECUTION_KEY}


def identity(config: Mapping[str, Any], ignored: Sequence[str]) -> str:
  """SHA-256 (hex) of config.json's settings minus `ignored` and the execution record.

  Only settings that differ from their defaults enter, nested ones (`defense`) key by key, so
  a setting added by a newer version (at its default) never changes the identity of a run.
  """
  kept = config_lib.non_default(settings(config, ignored), config_lib.default_settings())
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def legacy_identity(saved: Mapping[str, Any], ignored: Sequence[str]) -> str:
  """The identity versions up to 2026-12-05 gave checkpoints: top-level keys pruned only.

  Computed from the run's own config.json (`saved`), whose `defense` has the keys of its
  version: the default it is compared with is cut to those keys, as that version had it.
  """
  defaults = config_lib.default_settings()
  kept = {}
  for key, value in settings(saved, ignored).items():
    default = defaults.get(key)
    if isinstance(value, dict) and isinstance(default, dict):
      default = {k: default[k] for k in value if k in default}
    if value != default:
      kept[key] = value
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- lock + claim


def _lock(output_dir: str):
  """An open lock file holding an exclusive flock on OUTPUT_DIR/.run.lock, or refusal."""
  import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  path = os.path.join(output_dir, LOCK_FILE)
  handle = open(path, 'a+')
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    handle.seek(0)
    holder = handle.read().strip()
    handle.close()
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise
    raise RunDirectoryError(f'another run is using {output_dir}'
                            + (f' (pid {holder})' if holder else '')
                            + '; wait for it or use another --output_dir') from None
  handle.seek(0)
  handle.truncate()
  handle.write(f'{os.getpid()}\n')
  handle.flush()
  return handle


def run_files(output_dir: str) -> list:
  """The run files (RUN_FILES) present in `output_dir`."""
  return [name for name in RUN_FILES if os.path.exists(os.path.join(output_dir, name))]


def _row_count(output_dir: str) -> int:
  """The rounds in OUTPUT_DIR's metrics.jsonl (0 without one)."""
  path = os.path.join(output_dir, rundir.METRICS_JSONL)
  return len(metrics_io.read_jsonl(path)) if os.path.isfile(path) else 0


def _describe(output_dir: str) -> str:
  if os.path.exists(os.path.join(output_dir, rundir.FINAL_FILE)):
    return 'a finished run'
  rows = _row_count(output_dir)
  rounds = '1 round' if rows == 1 else f'{rows} rounds'
  return f'an unfinished run ({rounds} in {rundir.METRICS_JSONL})'


def _move_aside(output_dir: str) -> str:
  """Moves every entry but the lock file to the first free sibling OUTPUT_DIR.old-N."""
  base = os.path.abspath(output_dir).rstrip(os.sep)
  n = 1
  while os.path.exists(f'{base}.old-{n}'):
    n += 1
  target = f'{base}.old-{n}'
  os.makedirs(target)
  for entry in sorted(os.listdir(base)):
    if entry != LOCK_FILE:
      shutil.move(os.path.join(base, entry), os.path.join(target, entry))
  return target


def _never_trained(output_dir: str) -> bool:
  """A run that failed before its first round (no row, checkpoint or final file): a fresh
  start moves it aside without --overwrite=move, as it holds nothing to continue."""
  return (set(run_files(output_dir)) <= {rundir.CONFIG_FILE, rundir.METRICS_JSONL}
          and _row_count(output_dir) == 0)


def check_fresh_start(output_dir: str, overwrite: str,
                      say: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                       flush=True)) -> None:
  """A fresh start may only write into a directory without run files (or move them aside:
  with --overwrite=move, or always when they are a run that never trained)."""
  if not run_files(output_dir):
    return
  what = _describe(output_dir)
  if overwrite != OVERWRITE_MOVE and not _never_trained(output_dir):
    hint = ('' if what == 'a finished run' else '--resume continues it, ')
    raise RunDirectoryError(f'{output_dir} holds {what}; {hint}--overwrite=move moves it '
                            'aside, or use another --output_dir')
  say(f'moved {what} in {output_dir} to {_move_aside(output_dir)}')


@contextlib.contextmanager
def claim(output_dir: str, resume: bool, overwrite: str) -> Iterator[None]:
  """Holds OUTPUT_DIR's lock while the body runs; a fresh start checks the directory first,
  and a resume refuses a finished run (it would rewrite its final files)."""
  if resume and overwrite == OVERWRITE_MOVE:
    raise RunDirectoryError('--resume continues the run in --output_dir; --overwrite=move '
                            'would move it away: give one of them')
  os.makedirs(output_dir, exist_ok=True)
  handle = _lock(output_dir)
  try:
    if resume and rundir.is_finished(output_dir):
      raise RunDirectoryError(f'{output_dir} holds a finished run: nothing to resume; drop '
                              '--resume and add --overwrite=move to run it again, or use '
                              'another --output_dir')
    if not resume:
      check_fresh_start(output_dir, overwrite)
    yield
  finally:
    handle.close()


# ----------------------------------------------------------------------------- checkpoints


def _prefix_sha256(path: str, size: int) -> Optional[str]:
  """SHA-256 of the first `size` bytes of `path`; None if the file is shorter or absent."""
  try:
    with open(path, 'rb') as f:
      data = f.read(size)
  except OSError:
    return None
  return hashlib.sha256(data).hexdigest() if len(data) == size else None


def checkpoint_owner(run_identity: str, output_dir: str) -> Dict[str, Any]:
  """What a checkpoint's manifest records: the run identity and metrics.jsonl's rows so far
  (size and SHA-256), after fsyncing them so they are on disk with the checkpoint."""
  path = os.path.join(output_dir, rundir.METRICS_JSONL)
  with open(path, 'rb') as f:
    os.fsync(f.fileno())
    data = f.read()
  return {'run': run_identity,
          'metrics': {'bytes': len(data), 'sha256': hashlib.sha256(data).hexdigest()}}


def _legacy_rows_problem(output_dir: str, checkpoint_path: str) -> Optional[str]:
  """For a checkpoint without a metrics record: are rounds 0..next_round-1 all in the rows?"""
  with open(os.path.join(checkpoint_path, 'meta.json')) as f:
    next_round = int(json.load(f)['next_round'])
  rows = metrics_io.read_jsonl(os.path.join(output_dir, rundir.METRICS_JSONL))
  rounds = [r.get('round') for r in rows if r.get('round', 0) < next_round]
  if rounds != list(range(next_round)):
    return f'{rundir.METRICS_JSONL} does not hold rounds 0-{next_round - 1} in order'
  return None


def resume_filter(run_identity: str, output_dir: str,
                  owner_of: Callable[[str], Dict[str, Any]],
                  also: Sequence[str] = ()) -> Callable[[str], Optional[str]]:
  """For `checkpoint.restore_newest`: why an intact checkpoint cannot be resumed (or None).

  A checkpoint of another run identity (neither `run_identity` nor one of `also`, e.g. the
  `legacy_identity` of the run's config.json) raises RunDirectoryError (one line); one whose
  rows metrics.jsonl no longer holds as written (torn, cut, rewritten) is skipped.
  """
  metrics_path = os.path.join(output_dir, rundir.METRICS_JSONL)

  def problem(path: str) -> Optional[str]:
    owner = owner_of(path)
    if owner.get('run') not in (None, run_identity, *also):
      raise RunDirectoryError(
          f'cannot --resume: {path} was written by another run (run identity '
          f'{str(owner["run"])[:12]}, this configuration is {run_identity[:12]}); use another '
          '--output_dir, or start over without --resume and with --overwrite=move')
    record = owner.get('metrics')
    if record is None:
      return _legacy_rows_problem(output_dir, path)
    if _prefix_sha256(metrics_path, int(record['bytes'])) != record['sha256']:
      return f'{rundir.METRICS_JSONL} no longer holds the rows saved with it'
    return None
  return problem


def restore_metrics(output_dir: str, owner: Mapping[str, Any]) -> None:
  """Cuts metrics.jsonl back to the rows the resumed checkpoint was saved with."""
  record = owner.get('metrics')
  if record is not None:
    with open(os.path.join(output_dir, rundir.METRICS_JSONL), 'r+b') as f:
      f.truncate(int(record['bytes']))
      os.fsync(f.fileno())
