"""Makes sure a dataset is on disk: `python -m tff_backdoor.data.fetch fashion_mnist`.

Prints the directory holding the idx files (exit 0) or one error line on stderr (exit 1).
Order: already there; Debian's dataset-fashion-mnist via apt-get (root only); Keras' download.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence

from tff_backdoor.data import idx as idx_lib
from tff_backdoor.data.core import DataError

APT_PACKAGE = 'dataset-fashion-mnist'
APT_TIMEOUT_S = 900


def _has_idx(directory: str) -> bool:
  return os.path.isdir(directory) and idx_lib.find_idx_files(directory) is not None


def _keras_dir() -> str:
  return os.path.join(idx_lib.KERAS_DATASETS_DIR, 'fashion-mnist')


def _apt_usable() -> bool:
  return hasattr(os, 'geteuid') and os.geteuid() == 0 and shutil.which('apt-get') is not None


def _run(cmd: List[str]) -> subprocess.CompletedProcess:
  env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
  return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        env=env, timeout=APT_TIMEOUT_S, check=False)


def _apt_install() -> Optional[str]:
  """Installs the Debian package (apt-get update and retry on failure); None or an error."""
  try:
    cmd = ['apt-get', 'install', '-y', APT_PACKAGE]
    result = _run(cmd)
    if result.returncode != 0:
      _run(['apt-get', 'update'])
      result = _run(cmd)
  except (OSError, subprocess.SubprocessError) as e:
    return f'{type(e).__name__}: {e}'
  if result.returncode != 0:
    lines = (result.stderr or result.stdout or '').strip().splitlines()
    return lines[-1] if lines else f'exit code {result.returncode}'
  return None


def _keras_download() -> Optional[str]:
  """Lets Keras download Fashion-MNIST into ~/.keras/datasets/fashion-mnist; None or an error."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.keras.datasets.fashion_mnist.load_data()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'
  return None


def ensure_fashion_mnist(target_dir: str = idx_lib.FASHION_MNIST_DIR) -> str:
  """Returns a directory holding the four Fashion-MNIST idx files, installing them if needed."""
  for directory in (target_dir, idx_lib.FASHION_MNIST_DIR, _keras_dir()):
    if _has_idx(directory):
      return directory
  errors = []
  if _apt_usable():
    error = _apt_install()
    if error is None and _has_idx(idx_lib.FASHION_MNIST_DIR):
      return idx_lib.FASHION_MNIST_DIR
    errors.append(f'apt-get failed ({error or "files not in " + idx_lib.FASHION_MNIST_DIR})')
  else:
    errors.append('apt-get unusable (needs root and apt-get)')
  error = _keras_download()
  if error is None and _has_idx(_keras_dir()):
    return _keras_dir()
  errors.append(f'Keras download failed ({error or "files not in " + _keras_dir()})')
  raise DataError(f'Fashion-MNIST not found in {target_dir}: install it with "apt-get install '
                  f'-y {APT_PACKAGE}" as root (or pass --data_dir); ' + '; '.join(errors))


_FETCHERS = {'fashion_mnist': lambda: ensure_fashion_mnist(idx_lib.FASHION_MNIST_DIR)}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI: prints the dataset directory and returns 0, or prints one error line and returns 1."""
  args = list(sys.argv[1:] if argv is None else argv)
  if len(args) != 1 or args[0] not in _FETCHERS:
    print(f'usage: python -m tff_backdoor.data.fetch {{{",".join(_FETCHERS)}}}', file=sys.stderr)
    return 1
  try:
    print(_FETCHERS[args[0]]())
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
