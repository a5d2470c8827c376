"""LEAF's JSON output (e.g. FEMNIST) read into validated per-writer arrays, parsed once.

A LEAF split directory holds `*.json` or `*.json.gz` files, each
`{"users": [w, ...], "num_samples": [n, ...], "user_data": {w: {"x": [[784 floats]], "y": [..]}}}`.
Every file is checked as it is read (one `DataError` line naming the file and the writer), so
nothing is half-loaded. Parsing JSON is most of the cost (about 6 s for the shared FEMNIST
folder in one process), so large splits are parsed in parallel processes, and validated arrays
are cached as one `.npz` per split, keyed by a hash of the files' bytes (an edit that keeps a
file's size and time is never served stale); pixels are stored as their exact 8-bit values k/255.
Only regular files are read: anything else named `*.json` (a pipe, a device) is refused unopened.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import gzip
import hashlib
import json
import multiprocessing
import os
import stat
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from tff_backdoor import interrupts
from tff_backdoor.data.core import ArrayPair, DataError

IMAGE_SIZE = 784
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 62  # LEAF FEMNIST: 0-9, 'A'-'Z', 'a'-'z'.
_SUFFIXES = ('.json', '.json.gz')
_CACHE_VERSION = 2
_HASH_CHUNK = 1 << 20
_MAX_PARSERS = 4
_PARALLEL_BYTES = 4 << 20  # Smaller splits parse faster than processes start.
# The float32 value of each 8-bit pixel as LEAF writes it (k / 255).
_PIXEL_VALUES = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def split_files(directory: str) -> List[str]:
  """The sorted LEAF JSON files (plain or gzipped) of one split directory, all regular files."""
  if not os.path.isdir(directory):
    raise DataError(f'{directory} not found: a LEAF data_dir needs train/ and test/ folders')
  files = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                 if f.endswith(_SUFFIXES))
  if not files:
    raise DataError(f'{directory} holds no LEAF .json or .json.gz files')
  for path in files:
    try:
      mode = os.stat(path).st_mode  # stat, not open: opening a named pipe would block
    except OSError as e:
      raise DataError(f'{path}: cannot be read ({e.strerror})') from None
    if not stat.S_ISREG(mode):
      raise DataError(f'{path}: not a regular file (a pipe, socket, device or folder); '
                      'a LEAF split holds only JSON files')
  return files


def _load_json(path: str) -> dict:
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      content = json.loads(f.read())
  except (ValueError, EOFError, OSError, zlib.error) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f'{path}: not valid LEAF JSON (truncated or corrupt: {reason})') from None
  if not isinstance(content, dict) or not {'users', 'num_samples', 'user_data'} <= set(content):
    raise DataError(f'{path}: not LEAF JSON: needs the keys users, num_samples and user_data')
  return content


def _is_number(value) -> bool:
  return type(value) in (int, float)  # bool is an int subclass; JSON true/false are not pixels


def _labels(path: str, writer: str, entry, num_samples) -> np.ndarray:
  """One writer's labels, checked against LEAF's schema and its num_samples entry."""
  if not isinstance(entry, dict) or 'x' not in entry or 'y' not in entry:
    raise DataError(f'{path}: writer {writer} has no x/y data')
  labels = entry['y']
  if not isinstance(labels, list) or not all(type(v) is int for v in labels):
    raise DataError(f'{path}: writer {writer}: labels must be a list of integers')
  if not labels:
    raise DataError(f'{path}: writer {writer} has no images')
  if type(num_samples) is not int:
    raise DataError(f'{path}: writer {writer}: num_samples must be an integer, got '
                    f'{num_samples!r} ({type(num_samples).__name__})')
  if num_samples != len(labels):
    raise DataError(f'{path}: writer {writer}: num_samples says {num_samples} but y has '
                    f'{len(labels)} labels')
  return np.asarray(labels, dtype=np.int64)


def _writer_arrays(path: str, writer: str, entry, num_samples, num_classes: int) -> ArrayPair:
  """One writer's (x float32 [n,28,28,1], y int32 [n]), checked against LEAF's schema."""
  y = _labels(path, writer, entry, num_samples)
  bad = np.flatnonzero((y < 0) | (y >= num_classes))
  if bad.size:
    raise DataError(f'{path}: writer {writer}: label {y[bad[0]]} outside [0, {num_classes})')
  rows = entry['x']
  if not isinstance(rows, list):
    raise DataError(f'{path}: writer {writer}: x must be a list of images, not '
                    f'{type(rows).__name__}')
  if len(rows) != y.size:
    raise DataError(f'{path}: writer {writer}: {len(rows)} images but {y.size} labels')
  for i, row in enumerate(rows):
    if not isinstance(row, list) or len(row) != IMAGE_SIZE:
      size = len(row) if isinstance(row, list) else type(row).__name__
      raise DataError(f'{path}: writer {writer}: image {i} has {size} values, not {IMAGE_SIZE}')
  kinds = set(map(type, itertools.chain.from_iterable(rows)))  # C-speed: ~0.1 s for FEMNIST
  if not kinds <= {int, float}:
    i, value = next((i, v) for i, row in enumerate(rows) for v in row if not _is_number(v))
    raise DataError(f'{path}: writer {writer}: image {i} has the pixel {repr(value)[:40]} '
                    f'({type(value).__name__}); pixels must be numbers')
  x = np.asarray(rows, dtype=np.float32)
  if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
    raise DataError(f'{path}: writer {writer}: pixel values must be in [0, 1]')
  return x.reshape((-1,) + INPUT_SHAPE), y.astype(np.int32)


def _writer_ids(path: str, users, counts, user_data) -> None:
  """The file's writer list: string ids, each once, matching num_samples and user_data."""
  if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
    raise DataError(f'{path}: users and num_samples must be lists of the same length')
  for writer in users:
    if not isinstance(writer, str):
      raise DataError(f'{path}: writer {writer!r}: writer ids must be strings, not '
                      f'{type(writer).__name__}')
  seen = set()
  for writer in users:
    if writer in seen:
      raise DataError(f'{path}: writer {writer} is listed twice in users')
    seen.add(writer)
  if not isinstance(user_data, dict) or seen != set(user_data):
    raise DataError(f'{path}: user_data must hold exactly the writers listed in users')


def read_file(path: str, num_classes: int = NUM_CLASSES) -> Dict[str, ArrayPair]:
  """{writer: (x, y)} of one LEAF JSON file, validated (DataError names file and writer)."""
  content = _load_json(path)
  users, counts, user_data = content['users'], content['num_samples'], content['user_data']
  _writer_ids(path, users, counts, user_data)
  writers = {}
  for writer, n in zip(users, counts):
    try:
      writers[writer] = _writer_arrays(path, writer, user_data[writer], n, num_classes)
    except (TypeError, ValueError, OverflowError) as e:
      if isinstance(e, DataError):
        raise
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise DataError(f'{path}: writer {writer}: not LEAF data ({reason})') from None
  return writers


def _read_files(paths: List[str], num_classes: int) -> List[Dict[str, ArrayPair]]:
  """`read_file` of each path; several files are parsed in parallel processes (JSON parsing
  is most of the cost), started with 'spawn' so that no TensorFlow state is forked."""
  workers = min(len(paths), os.cpu_count() or 1, _MAX_PARSERS)
  if workers < 2 or sum(os.path.getsize(p) for p in paths) < _PARALLEL_BYTES:
    return [read_file(p, num_classes) for p in paths]
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=interrupts.ignore_in_child) as pool:
    with interrupts.held_while_starting_children():  # map starts the processes
      parsed = pool.map(read_file, paths, [num_classes] * len(paths))
    return list(parsed)


def _read_split(directory: str, num_classes: int) -> Dict[str, ArrayPair]:
  writers: Dict[str, ArrayPair] = {}
  owner: Dict[str, str] = {}
  paths = split_files(directory)
  for path, content in zip(paths, _read_files(paths, num_classes)):
    for writer, arrays in content.items():
      if writer in writers:
        raise DataError(f'{path}: writer {writer} is also in {owner[writer]}')
      writers[writer], owner[writer] = arrays, path
  return writers


def _content_hash(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_HASH_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _cache_path(cache_dir: str, files: List[str], num_classes: int) -> str:
  """The cache file of these files' exact bytes (names too: they decide the order)."""
  key = hashlib.sha256(repr((_CACHE_VERSION, num_classes, [
      (os.path.basename(f), _content_hash(f)) for f in files
  ])).encode()).hexdigest()[:24]
  return os.path.join(cache_dir, f'leaf-{key}.npz')


def _pack(writers: Dict[str, ArrayPair]) -> Optional[Dict[str, np.ndarray]]:
  """The cache arrays, or None when a pixel is not exactly k/255 (then nothing is cached)."""
  ids = sorted(writers)
  x = np.concatenate([writers[w][0] for w in ids]).reshape(-1)
  codes = np.rint(x * 255.0).astype(np.uint8)
  if not np.array_equal(_PIXEL_VALUES[codes], x):
    return None
  return {'writers': np.asarray(ids), 'sizes': np.asarray([len(writers[w][1]) for w in ids]),
          'pixels': codes, 'labels': np.concatenate([writers[w][1] for w in ids])}


def _unpack(npz) -> Dict[str, ArrayPair]:
  x = _PIXEL_VALUES[npz['pixels']].reshape((-1,) + INPUT_SHAPE)
  y = npz['labels'].astype(np.int32)
  bounds = np.concatenate([[0], np.cumsum(npz['sizes'])])
  return {str(w): (x[a:b], y[a:b]) for w, a, b in zip(npz['writers'], bounds[:-1], bounds[1:])}


def read_split(directory: str, num_classes: int = NUM_CLASSES,
               cache_dir: Optional[str] = None) -> Dict[str, ArrayPair]:
  """{writer: (x float32 [n,28,28,1] in [0,1], y int32 [n])} of a LEAF split directory.

  With `cache_dir`, validated arrays are kept there and reused while the files' bytes are
  unchanged; a file that changes while it is parsed is parsed again next time, never cached.
  """
  files = split_files(directory)
  path = _cache_path(cache_dir, files, num_classes) if cache_dir else None
  if path and os.path.isfile(path):
    try:
      with np.load(path) as npz:
        return _unpack(npz)
    except (OSError, ValueError, KeyError, zlib.error):
      pass  # A damaged cache is rebuilt below.
  writers = _read_split(directory, num_classes)
  packed = _pack(writers) if path else None
  if packed is not None and path == _cache_path(cache_dir, split_files(directory), num_classes):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}.npz'
    np.savez(tmp, **packed)
    os.replace(tmp, path)
  return writers


def default_cache_dir() -> str:
  """Where parsed LEAF arrays are cached by default (~/.cache/tff_backdoor)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'tff_backdoor')


def read_leaf_dir(data_dir: str, num_classes: int = NUM_CLASSES,
                  cache_dir: Optional[str] = None) -> Tuple[Dict[str, ArrayPair],
                                                            Dict[str, ArrayPair]]:
  """(train, test) {writer: (x, y)} of a LEAF data directory with train/ and test/."""
  if not os.path.isdir(data_dir):
    raise DataError(f'--data_dir {data_dir} not found (a LEAF folder with train/ and test/)')
  return tuple(read_split(os.path.join(data_dir, split), num_classes, cache_dir)
               for split in ('train', 'test'))
