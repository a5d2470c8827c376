"""Record formats in one place: strict JSON, JSON lines, CSV, and values made JSON-able.

Runs, analyses and studies write and read their records through these, so a format is
defined once; the names of a run directory's files are `run.rundir`'s.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import zipfile
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

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


def archive_problem(path: str, kind: str) -> Optional[str]:
  """Why `path` is no complete, intact zip archive (.keras and .npz files are), or None if it
  is one. TensorFlow-free, so a program checks a model file before TensorFlow loads."""
  if not os.path.isfile(path):
    return f'{path}: no such file'
  if not zipfile.is_zipfile(path):
    return (f'{path}: not a complete {kind} archive ({os.path.getsize(path)} bytes: truncated, '
            'or another format)')
  try:  # every member's CRC: a byte damaged in place keeps the size and the zip directory
    with zipfile.ZipFile(path) as archive:
      damaged = archive.testzip()
  except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    return f'{path}: damaged {kind} archive ({type(e).__name__}: {e})'
  if damaged is not None:
    return f'{path}: damaged {kind} archive ({damaged} fails its CRC check)'
  return None
