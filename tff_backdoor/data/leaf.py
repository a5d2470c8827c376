"""LEAF's JSON output (e.g. FEMNIST) read into validated per-writer arrays, parsed once.

A LEAF split directory holds `*.json` or `*.json.gz` files, each
`{"users": [w, ...], "num_samples": [n, ...], "user_data": {w: {"x": [[784 floats]], "y": [..]}}}`.
Every file is checked as it is read (one `DataError` line naming the file and the writer), so
nothing is half-loaded. A split is held as one `PackedSplit`: every writer's images in one
array, sorted by writer, as LEAF's exact 8-bit values (uint8 k, meaning k/255; float32 only for
a file whose pixels are not all k/255), so the whole LEAF FEMNIST population (814k images) is
0.64 GB instead of 2.6 GB of floats. Files are parsed one at a time per process (JSON parsing
is most of the cost; large splits use parallel processes), and a split is cached as a folder of
`.npy` files keyed by a hash of the files' bytes (an edit that keeps a file's size and time is
never served stale), read back memory-mapped: processes that load the same folder share one
copy in the page cache. Only regular files are read: anything else named `*.json` (a pipe, a
device) is refused unopened.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import stat
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from tff_backdoor import interrupts
from tff_backdoor.data.core import PIXEL_VALUES, ArrayPair, DataError

IMAGE_SIZE = 784
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 62  # LEAF FEMNIST: 0-9, 'A'-'Z', 'a'-'z'.
_SUFFIXES = ('.json', '.json.gz')
_CACHE_VERSION = 3  # 3: a folder of memory-mappable .npy files per split
_HASH_CHUNK = 1 << 20
_MAX_PARSERS = 4
_PARALLEL_BYTES = 4 << 20  # Smaller splits parse faster than processes start.
_CACHE_FILES = ('writers', 'sizes', 'pixels', 'labels')


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


@dataclasses.dataclass(frozen=True)
class PackedSplit:
  """A split's writers in one array each: writer w's images are rows bounds[i]:bounds[i+1].

  `pixels` is uint8 [n, 28, 28, 1] (k meaning k/255, LEAF's own values) or, when some pixel is
  not an exact k/255, float32 in [0, 1]; `labels` int32 [n]; `writers` sorted; `sizes` [w].
  """
  writers: List[str]
  sizes: np.ndarray
  pixels: np.ndarray
  labels: np.ndarray

  @property
  def bounds(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

  def by_writer(self) -> Dict[str, ArrayPair]:
    """{writer: (x, y)}: views into the packed arrays, no copy."""
    b = self.bounds
    return {w: (self.pixels[b[i]:b[i + 1]], self.labels[b[i]:b[i + 1]])
            for i, w in enumerate(self.writers)}

  def owners(self) -> np.ndarray:
    """The index into `writers` of every image's writer."""
    return np.repeat(np.arange(len(self.writers)), self.sizes)

  def select(self, keep: np.ndarray) -> 'PackedSplit':
    """The images where `keep` holds (one vectorised copy); writers left with none dropped."""
    counts = np.bincount(self.owners()[keep], minlength=len(self.writers))
    return PackedSplit([w for w, c in zip(self.writers, counts) if c],
                       counts[counts > 0].astype(np.int64), self.pixels[keep], self.labels[keep])


def _codes(x: np.ndarray) -> np.ndarray:
  """x as uint8 codes when every value is exactly k/255 (LEAF's pixels), else x unchanged."""
  codes = np.rint(x * 255.0).astype(np.uint8)
  return codes if np.array_equal(PIXEL_VALUES[codes], x) else x


def read_file_packed(path: str, num_classes: int = NUM_CLASSES) -> PackedSplit:
  """One LEAF JSON file, validated (DataError names file and writer), as a PackedSplit."""
  content = _load_json(path)
  users, counts, user_data = content['users'], content['num_samples'], content['user_data']
  _writer_ids(path, users, counts, user_data)
  xs, ys = [], []
  for writer, n in zip(users, counts):
    try:
      x, y = _writer_arrays(path, writer, user_data.pop(writer), n, num_classes)
    except (TypeError, ValueError, OverflowError) as e:
      if isinstance(e, DataError):
        raise
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise DataError(f'{path}: writer {writer}: not LEAF data ({reason})') from None
    xs.append(_codes(x))
    ys.append(y)
  exact = all(x.dtype == np.uint8 for x in xs)
  pixels = np.concatenate([x if exact else _as_float(x) for x in xs]) if xs else _no_pixels()
  return _concat([PackedSplit(list(users), np.asarray([len(y) for y in ys], np.int64), pixels,
                              _labels_of(ys))])


def read_file(path: str, num_classes: int = NUM_CLASSES) -> Dict[str, ArrayPair]:
  """{writer: (x, y)} of one LEAF JSON file, validated; x as in `PackedSplit.pixels`."""
  return read_file_packed(path, num_classes).by_writer()


def _no_pixels() -> np.ndarray:
  return np.zeros((0,) + INPUT_SHAPE, np.uint8)


def _labels_of(ys: List[np.ndarray]) -> np.ndarray:
  return np.concatenate(ys).astype(np.int32) if ys else np.zeros([0], np.int32)


def _concat(parts: List[PackedSplit]) -> PackedSplit:
  """The parts (disjoint writers) as one split sorted by writer; uint8 unless a part is float."""
  writers = [w for p in parts for w in p.writers]
  sizes = np.concatenate([p.sizes for p in parts]) if parts else np.zeros([0], np.int64)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  order = sorted(range(len(writers)), key=writers.__getitem__)
  rows = (np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in order])
          if order else np.zeros([0], np.int64))
  exact = all(p.pixels.dtype == np.uint8 for p in parts)
  pixels = np.concatenate([p.pixels if exact else _as_float(p.pixels) for p in parts]
                          ) if parts else _no_pixels()
  labels = np.concatenate([p.labels for p in parts]) if parts else np.zeros([0], np.int32)
  in_order = rows.size == 0 or np.array_equal(rows, np.arange(rows.size))
  return PackedSplit([writers[i] for i in order], sizes[order].astype(np.int64),
                     pixels if in_order else pixels[rows], labels if in_order else labels[rows])


def _as_float(pixels: np.ndarray) -> np.ndarray:
  return PIXEL_VALUES[pixels] if pixels.dtype == np.uint8 else pixels


def _read_files(paths: List[str], num_classes: int) -> List[PackedSplit]:
  """`read_file_packed` of each path; several files are parsed in parallel processes (JSON
  parsing is most of the cost), started with 'spawn' so that no TensorFlow state is forked.
  Each process returns a file's uint8 arrays, so the parent never holds Python objects of
  more than one file, nor floats."""
  workers = min(len(paths), os.cpu_count() or 1, _MAX_PARSERS)
  if workers < 2 or sum(os.path.getsize(p) for p in paths) < _PARALLEL_BYTES:
    return [read_file_packed(p, num_classes) for p in paths]
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=interrupts.ignore_in_child) as pool:
    with interrupts.held_while_starting_children():  # map starts the processes
      parsed = pool.map(read_file_packed, paths, [num_classes] * len(paths))
    return list(parsed)


def _read_split(directory: str, num_classes: int) -> PackedSplit:
  paths = split_files(directory)
  parts = _read_files(paths, num_classes)
  owner: Dict[str, str] = {}
  for path, part in zip(paths, parts):
    for writer in part.writers:
      if writer in owner:
        raise DataError(f'{path}: writer {writer} is also in {owner[writer]}')
      owner[writer] = path
  return _concat(parts)


def _content_hash(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_HASH_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _cache_path(cache_dir: str, files: List[str], num_classes: int) -> str:
  """The cache folder of these files' exact bytes (names too: they decide the order)."""
  key = hashlib.sha256(repr((_CACHE_VERSION, num_classes, [
      (os.path.basename(f), _content_hash(f)) for f in files
  ])).encode()).hexdigest()[:24]
  return os.path.join(cache_dir, f'leaf-{key}')


def _write_cache(path: str, split: PackedSplit) -> None:
  """The split as .npy files in `path`, written to a temporary folder renamed into place."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  arrays = dict(writers=np.asarray(split.writers, dtype=str), sizes=split.sizes,
                pixels=split.pixels, labels=split.labels)
  for name in _CACHE_FILES:
    np.save(os.path.join(tmp, f'{name}.npy'), arrays[name], allow_pickle=False)
  try:
    os.rename(tmp, path)
  except OSError:  # another process cached the same bytes first: keep theirs
    shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(path: str) -> Optional[PackedSplit]:
  """The cached split (pixels memory-mapped, read-only), or None if absent or damaged."""
  try:
    arrays = {name: np.load(os.path.join(path, f'{name}.npy'), allow_pickle=False,
                            mmap_mode='r' if name == 'pixels' else None)
              for name in _CACHE_FILES}
  except (OSError, ValueError):
    return None
  split = PackedSplit([str(w) for w in arrays['writers']], np.asarray(arrays['sizes'], np.int64),
                      arrays['pixels'], np.asarray(arrays['labels'], np.int32))
  shape_ok = (split.pixels.ndim == 4 and split.pixels.shape[1:] == INPUT_SHAPE and
              split.pixels.dtype == np.uint8 and split.labels.shape == split.pixels.shape[:1])
  if not shape_ok or int(split.sizes.sum()) != split.labels.size:
    return None
  return split


def read_split_packed(directory: str, num_classes: int = NUM_CLASSES,
                      cache_dir: Optional[str] = None) -> PackedSplit:
  """A LEAF split directory as a PackedSplit, from the cache when its files are unchanged.

  With `cache_dir`, a split whose pixels are all k/255 is kept there and reused while the
  files' bytes are unchanged; a file that changes while it is parsed is parsed again next time,
  never cached. A damaged cache folder is rebuilt.
  """
  files = split_files(directory)
  path = _cache_path(cache_dir, files, num_classes) if cache_dir else None
  cached = _read_cache(path) if path and os.path.isdir(path) else None
  if cached is not None:
    return cached
  split = _read_split(directory, num_classes)
  if path and split.pixels.dtype == np.uint8:
    if path == _cache_path(cache_dir, split_files(directory), num_classes):
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)  # damaged: replaced
      try:
        _write_cache(path, split)
      except OSError:  # a cache that cannot be written (read-only, full) costs a parse, no more
        return split
      return _read_cache(path) or split
  return split


def read_split(directory: str, num_classes: int = NUM_CLASSES,
               cache_dir: Optional[str] = None) -> Dict[str, ArrayPair]:
  """{writer: (x [n,28,28,1], y int32 [n])} of a LEAF split directory; x as in PackedSplit."""
  return read_split_packed(directory, num_classes, cache_dir).by_writer()


def default_cache_dir() -> str:
  """Where parsed LEAF arrays are cached by default (~/.cache/tff_backdoor)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'tff_backdoor')


def check_leaf_dir(data_dir: str) -> None:
  """DataError, one line, if `data_dir` is not a folder (a LEAF folder holds train/, test/)."""
  if not os.path.isdir(data_dir):
    what = 'is a file, not' if os.path.exists(data_dir) else 'not found: give'
    raise DataError(f'--data_dir {data_dir} {what} a LEAF folder with train/ and test/')


def read_leaf_packed(data_dir: str, num_classes: int = NUM_CLASSES,
                     cache_dir: Optional[str] = None) -> Tuple[PackedSplit, PackedSplit]:
  """(train, test) PackedSplits of a LEAF data directory with train/ and test/."""
  check_leaf_dir(data_dir)
  return tuple(read_split_packed(os.path.join(data_dir, split), num_classes, cache_dir)
               for split in ('train', 'test'))


def read_leaf_dir(data_dir: str, num_classes: int = NUM_CLASSES,
                  cache_dir: Optional[str] = None) -> Tuple[Dict[str, ArrayPair],
                                                            Dict[str, ArrayPair]]:
  """(train, test) {writer: (x, y)} of a LEAF data directory; x as in PackedSplit.pixels."""
  train, test = read_leaf_packed(data_dir, num_classes, cache_dir)
  return train.by_writer(), test.by_writer()
