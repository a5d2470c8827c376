"""Run-directory records in one place: file names, JSON, JSON lines, CSV and TensorBoard.

Every module that reads or writes a run directory (the training loop, warm starts, the studies)
uses these names and writers, so a file's name and format are defined once.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

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


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
  """Flattens nested metric dicts to 'a/b/c' keys with plain Python scalars."""
  flat: Dict[str, Any] = {}
  for key, value in metrics.items():
    name = f'{prefix}{key}'
    if isinstance(value, (list, tuple)) and not value:
      continue  # empty nested measurements (e.g. a stateless inner aggregator)
    if isinstance(value, Mapping):
      flat.update(flatten_metrics(value, prefix=name + '/'))
    else:
      flat[name] = to_jsonable(value)
  return flat


def to_jsonable(value: Any) -> Any:
  """NumPy values, dataclasses, bytes and non-finite floats (-> None) as plain JSON values."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return to_jsonable(dataclasses.asdict(value))
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return to_jsonable(value.tolist())
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.str_):
    return str(value)
  if isinstance(value, bytes):
    return value.decode()
  return value


def number(value: Any) -> Optional[float]:
  """A record's value as a finite float, or None (missing, non-numeric, boolean, NaN, inf)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


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


def write_json(path: str, payload: Any) -> str:
  """Writes strict JSON (NaN/inf as null) atomically, so readers never see half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(to_jsonable(payload), f, indent=2, allow_nan=False)
    f.write('\n')
  os.replace(tmp, path)
  return path


def read_json(path: str) -> Any:
  """The JSON value in `path`; ValueError naming the file if it is not valid JSON."""
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f'{path} is not valid JSON: {e}') from None


def write_csv(path: str, rows: Sequence[Mapping[str, Any]],
              columns: Optional[Sequence[str]] = None) -> str:
  """Writes dict rows as CSV atomically; columns default to every key in first-seen order.

  Values go through `to_jsonable`; None (and so NaN) is an empty cell, as is a missing key.
  """
  if columns is None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), restval='', extrasaction='ignore')
    writer.writeheader()
    for row in rows:
      writer.writerow({k: '' if v is None else v for k, v in to_jsonable(dict(row)).items()})
  os.replace(tmp, path)
  return path


def read_csv(path: str) -> List[Dict[str, str]]:
  """The rows of a CSV file with a header line, as dicts of strings."""
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def read_jsonl(path: str) -> List[Dict[str, Any]]:
  """The rows of a JSON-lines file ([] if absent); a torn last line (a killed writer) is
  ignored, a bad line before it is an error."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1:
        raise ValueError(f'{path}:{i + 1} is not valid JSON') from None
  return rows


def read_rows(directory: str) -> List[Dict[str, Any]]:
  """The per-round rows of a run directory's metrics.jsonl ([] if absent)."""
  return read_jsonl(os.path.join(directory, METRICS_JSONL))
