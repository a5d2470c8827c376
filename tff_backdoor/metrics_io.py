"""Writers for per-round metrics: JSON lines, CSV and TensorBoard summaries in one place."""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Mapping

import numpy as np


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
      flat[name] = to_python(value)
  return flat


def to_python(value: Any) -> Any:
  """numpy scalars/arrays to JSON-able Python values (non-finite floats become None)."""
  if isinstance(value, np.ndarray):
    return value.item() if value.ndim == 0 else [to_python(v) for v in value.tolist()]
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, (np.bool_,)):
    return bool(value)
  if isinstance(value, bytes):
    return value.decode()
  return value


class MetricsWriter:
  """Appends one row per round to metrics.jsonl, rewrites metrics.csv, logs TensorBoard scalars."""

  def __init__(self, output_dir: str, tensorboard: bool = True, keep_rounds_before: int = 0):
    """Starts fresh files, keeping the rows of rounds < keep_rounds_before (for resuming)."""
    os.makedirs(output_dir, exist_ok=True)
    self.jsonl_path = os.path.join(output_dir, 'metrics.jsonl')
    self.csv_path = os.path.join(output_dir, 'metrics.csv')
    self.rows: List[Dict[str, Any]] = []
    if keep_rounds_before > 0 and os.path.exists(self.jsonl_path):
      with open(self.jsonl_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
      self.rows = [r for r in rows if r.get('round', 0) < keep_rounds_before]
    self._rewrite()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TF-free readers load fast)
    self._tf = tf
    self._summary = (tf.summary.create_file_writer(os.path.join(output_dir, 'tensorboard'))
                     if tensorboard else None)

  def write(self, row: Dict[str, Any]) -> None:
    row = {k: to_python(v) for k, v in row.items()}
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
    columns: List[str] = []
    for row in self.rows:
      columns.extend(k for k in row if k not in columns)
    with open(self.csv_path, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=columns)
      writer.writeheader()
      for row in self.rows:
        writer.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in columns})

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Writes JSON atomically (temp file + rename) so readers never see half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, default=to_python)
    f.write('\n')
  os.replace(tmp, path)


def read_rows(directory: str) -> List[Dict[str, Any]]:
  """The rows of DIR/metrics.jsonl ([] if absent); a torn last line is ignored."""
  path = os.path.join(directory, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1:  # Only a run killed mid-write leaves a bad last line.
        raise ValueError(f'{path}:{i + 1} is not valid JSON') from None
  return rows
