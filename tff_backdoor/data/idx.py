"""Readers for MNIST-format idx files (`*-images-idx3-ubyte[.gz]`, `*-labels-idx1-ubyte[.gz]`).

Used for MNIST, Fashion-MNIST and any other dataset shipped in that format; pure NumPy so it
is cheap to import (the fetch CLI uses it without loading TensorFlow).
"""
from __future__ import annotations

import gzip
import os
from typing import Dict, Optional, Tuple

import numpy as np

from tff_backdoor.data.core import ArrayPair, DataError

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
KERAS_DATASETS_DIR = os.path.join(os.path.expanduser('~'), '.keras', 'datasets')
# Split name -> file name prefixes accepted for it (MNIST's own names first).
_SPLIT_PREFIXES = {'train': ('train',), 'test': ('t10k', 'test')}
_MNIST_NAMES = {'train_images': 'train-images-idx3-ubyte', 'train_labels': 'train-labels-idx1-ubyte',
                'test_images': 't10k-images-idx3-ubyte', 'test_labels': 't10k-labels-idx1-ubyte'}
# idx type code -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


def _read_bytes(path: str) -> bytes:
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError) as e:
    raise DataError(f'cannot read idx file {path}: {e}; replace the file with a valid copy')


def read_idx(path: str) -> np.ndarray:
  """Reads one idx file (plain or .gz) into a native-endian array, validating its header."""
  data = _read_bytes(path)
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise DataError(f'{path} is not an idx file (bad magic number {data[:4].hex()}); '
                    'pass a directory holding MNIST-format idx files')
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  ndim = data[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(data) < header:
    raise DataError(f'{path} has a truncated idx header; replace the file with a valid copy')
  shape = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise DataError(f'{path} holds {len(data) - header} data bytes but its header {shape} '
                    f'needs {expected}; replace the file with a valid copy')
  return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(
      dtype.newbyteorder('='), copy=False)


def _idx_matches(data_dir: str) -> Dict[str, Optional[str]]:
  """Each of the four idx files (keys train_images, ..., test_labels): its path, or None."""
  found = {}
  for split, prefixes in _SPLIT_PREFIXES.items():
    for kind, tag in (('images', 'idx3'), ('labels', 'idx1')):
      # Accept MNIST's names (train-images-idx3-ubyte) and the dotted variant
      # (train-images.idx3-ubyte), plain or gzipped.
      matches = [os.path.join(data_dir, f'{prefix}-{kind}{sep}{tag}-ubyte{suffix}')
                 for prefix in prefixes for sep in ('-', '.') for suffix in ('', '.gz')]
      found[f'{split}_{kind}'] = next((p for p in matches if os.path.isfile(p)), None)
  return found


def find_idx_files(data_dir: str) -> Optional[Dict[str, str]]:
  """Paths of the four idx files in `data_dir` (keys train_images, ..., test_labels), or None."""
  found = _idx_matches(data_dir)
  return None if None in found.values() else found


def _to_pair(images: np.ndarray, labels: np.ndarray, where: str) -> ArrayPair:
  if images.ndim != 3 or labels.ndim != 1:
    raise DataError(f'{where}: expected images [n,H,W] and labels [n], got {images.shape} '
                    f'and {labels.shape}; pass MNIST-format idx3 images and idx1 labels')
  if images.shape[0] != labels.shape[0]:
    raise DataError(f'{where}: {images.shape[0]} images but {labels.shape[0]} labels; '
                    'the image and label files must come from the same split')
  if images.dtype != np.uint8:
    raise DataError(f'{where}: images must be uint8 (idx type 0x08), got {images.dtype}')
  if labels.size and (labels.min() < 0):
    raise DataError(f'{where}: labels must be non-negative class ids')
  x = images.astype(np.float32)
  x /= 255.0
  return x[..., np.newaxis], labels.astype(np.int32)


def check_idx_dir(data_dir: str) -> Dict[str, str]:
  """The four idx files of `data_dir` (`find_idx_files`); DataError, one line saying what
  is missing, if the folder or a file is not there. Reads no file: a flag check runs it."""
  if not os.path.isdir(data_dir):
    what = 'is a file, not a folder' if os.path.exists(data_dir) else 'does not exist'
    raise DataError(f'data directory {data_dir} {what}; pass --data_dir with the four '
                    'MNIST-format idx files')
  found = _idx_matches(data_dir)
  missing = [_MNIST_NAMES[key] for key, path in found.items() if path is None]
  if missing:
    raise DataError(f'{data_dir} lacks the MNIST-format idx file(s) {", ".join(missing)} '
                    '(.gz or not)')
  return found


def load_idx_dir(data_dir: str) -> Tuple[ArrayPair, ArrayPair]:
  """Loads (train, test) ArrayPairs from the train-*/t10k-* idx files in `data_dir`."""
  files = check_idx_dir(data_dir)
  train = _to_pair(read_idx(files['train_images']), read_idx(files['train_labels']),
                   f'{data_dir} (train)')
  test = _to_pair(read_idx(files['test_images']), read_idx(files['test_labels']),
                  f'{data_dir} (test)')
  if train[0].shape[1:] != test[0].shape[1:]:
    raise DataError(f'{data_dir}: train images {train[0].shape[1:]} and test images '
                    f'{test[0].shape[1:]} differ in shape; use files of one dataset')
  return train, test


def load_keras_npz(path: str) -> Tuple[ArrayPair, ArrayPair]:
  """Loads (train, test) from a Keras-cached `mnist.npz` (x_train, y_train, x_test, y_test)."""
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
  except (OSError, KeyError, ValueError) as e:
    raise DataError(f'cannot read {path} as a Keras MNIST npz ({e}); delete it or pass '
                    '--data_dir with MNIST idx files')
  return (_to_pair(arrays['x_train'], arrays['y_train'], f'{path} (train)'),
          _to_pair(arrays['x_test'], arrays['y_test'], f'{path} (test)'))


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an idx file (gzipped if `path` ends in .gz); for tests and tools."""
  array = np.ascontiguousarray(array, dtype=np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype='>u4').tobytes()
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


def load_centralised(dataset: str, data_dir: Optional[str] = None) -> Tuple[ArrayPair, ArrayPair]:
  """(train, test) for 'mnist', 'fashion_mnist' or 'idx', resolving each one's default dir."""
  if data_dir is not None:
    return load_idx_dir(data_dir)
  if dataset == 'fashion_mnist':
    keras_dir = os.path.join(KERAS_DATASETS_DIR, 'fashion-mnist')
    for candidate in (FASHION_MNIST_DIR, keras_dir):
      if os.path.isdir(candidate) and find_idx_files(candidate):
        return load_idx_dir(candidate)
    raise DataError(f'Fashion-MNIST not found in {FASHION_MNIST_DIR} or {keras_dir}: run '
                    '"apt-get install -y dataset-fashion-mnist" (or "python -m '
                    'tff_backdoor.data.fetch fashion_mnist") or pass --data_dir')
  if dataset == 'mnist':
    for candidate in (KERAS_DATASETS_DIR, os.path.join(KERAS_DATASETS_DIR, 'mnist')):
      if os.path.isdir(candidate) and find_idx_files(candidate):
        return load_idx_dir(candidate)
    npz = os.path.join(KERAS_DATASETS_DIR, 'mnist.npz')
    if os.path.isfile(npz):
      return load_keras_npz(npz)
    raise DataError(f'MNIST not found (no idx files or mnist.npz in {KERAS_DATASETS_DIR}): '
                    'pass --data_dir with the four MNIST idx files')
  if dataset == 'idx':
    raise DataError('dataset "idx" needs --data_dir: a directory holding train-*/t10k-* '
                    'MNIST-format idx files')
  raise DataError(f'no idx loader for dataset {dataset!r}; use mnist, fashion_mnist or idx')
