"""A run directory: the name of every file a run writes, and its per-round metric files.

Every module that reads or writes a run directory (the driver and its hooks, warm starts,
FLAIN re-application, the studies) takes the names from here, so a file's name is defined
once. The formats are `metrics_io`'s; a checkpoint's own files are `checkpoint`'s.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from tff_backdoor.metrics_io import read_json, read_jsonl, to_jsonable, write_csv

# The files of a run directory (`driver.run_experiment`).
CONFIG_FILE = 'config.json'  # The run's configuration; written first.
FINAL_FILE = 'final.json'  # The final metrics; written last: its presence marks a finished run.
METRICS_JSONL = 'metrics.jsonl'  # One JSON row per round.
METRICS_CSV = 'metrics.csv'  # The same rows as CSV.
FLAIN_FILE = 'flain.json'  # FLAIN's result (also in final.json under 'flain').
CAPTURES_DIR = 'captures'  # Per-round client updates (--capture_rounds).
TENSORBOARD_DIR = 'tensorboard'
# What an analysis of runs writes: one summary per run, a table over runs.
SUMMARY_JSON = 'summary.json'
SUMMARY_CSV = 'summary.csv'

CHECKPOINTS_DIR = 'checkpoints'  # `checkpoint` checkpoints (--checkpoint_every).
FINAL_MODEL = 'final_model.keras'  # The last round's global model.
INITIAL_WEIGHTS = 'initial_weights.npz'  # The round-0 model (what FLAIN measures updates from).
FLAIN_MODEL = 'flain_model.keras'  # The final model after FLAIN.
LOCK_FILE = '.run.lock'  # `ownership.claim`'s flock: one run writes in a directory at a time.
SPOOL_DIR = '.capture_spool'  # Where a local run's capture rounds spool client updates.
# What every finished run's final.json holds (runs of every version); a final.json without
# one of them (`{}`, a hand-made `{"test_accuracy": 0.99}`) is not a finished run.
FINAL_FIELDS = ('rounds', 'test_accuracy', 'partition')


def missing_final_fields(final: Any) -> List[str]:
  """The FINAL_FIELDS that `final` (a parsed final.json) lacks; all of them if not a dict."""
  return [k for k in FINAL_FIELDS if not isinstance(final, dict) or k not in final]


def is_finished(run_dir: str) -> bool:
  """Whether `run_dir` holds a finished run: a readable final.json with `FINAL_FIELDS`."""
  path = os.path.join(run_dir, FINAL_FILE)
  try:
    return os.path.isfile(path) and not missing_final_fields(read_json(path))
  except (OSError, ValueError):
    return False


def spool_dir(run_dir: str) -> str:
  """Absolute path of the spool (the TFF worker writes there, from its own working directory)."""
  return os.path.abspath(os.path.join(run_dir, SPOOL_DIR))


class MetricsWriter:
  """Appends one row per round to metrics.jsonl, rewrites metrics.csv, logs TensorBoard scalars."""

  def __init__(self, output_dir: str, tensorboard: bool = True, keep_rounds_before: int = 0):
    """Starts fresh files, keeping the rows of rounds < keep_rounds_before (for resuming)."""
    os.makedirs(output_dir, exist_ok=True)
    self.jsonl_path = os.path.join(output_dir, METRICS_JSONL)
    self.csv_path = os.path.join(output_dir, METRICS_CSV)
    self.rows: List[Dict[str, Any]] = []
    if keep_rounds_before > 0 and os.path.exists(self.jsonl_path):
      self.rows = [r for r in read_jsonl(self.jsonl_path)
                   if r.get('round', 0) < keep_rounds_before]
    self._rewrite()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TF-free readers load fast)
    self._tf = tf
    self._summary = (tf.summary.create_file_writer(os.path.join(output_dir, TENSORBOARD_DIR))
                     if tensorboard else None)

  def write(self, row: Dict[str, Any]) -> None:
    row = {k: to_jsonable(v) for k, v in row.items()}
    self.rows.append(row)
    with open(self.jsonl_path, 'a') as f:
      f.write(json.dumps(row, sort_keys=False) + '\n')
    self._rewrite_csv()
    if self._summary is not None:
      with self._summary.as_default():
        for key, value in row.items():
          if key != 'round' and isinstance(value, (int, float)) and not isinstance(value, bool):
            self._tf.summary.scalar(key, value, step=int(row['round']))
      self._summary.flush()

  def _rewrite(self) -> None:
    with open(self.jsonl_path, 'w') as f:
      for row in self.rows:
        f.write(json.dumps(row) + '\n')
    self._rewrite_csv()

  def _rewrite_csv(self) -> None:
    write_csv(self.csv_path, self.rows)

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def read_rows(directory: str) -> List[Dict[str, Any]]:
  """The per-round rows of a run directory's metrics.jsonl ([] if absent)."""
  return read_jsonl(os.path.join(directory, METRICS_JSONL))
