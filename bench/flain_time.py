"""Times FLAIN on a briefly trained Sun CNN (real Fashion-MNIST) with an 800-image aux set.

Trains `sun_cnn` with plain Keras (default 1 epoch on 6000 images) so that the FLAIN layer's
activations are realistic, then runs `apply_flain` once per threshold mode and prints one JSON line.
Usage: .venv/bin/python bench/flain_time.py [--modes quantile,absolute] [--seed 0]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from typing import Tuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tff_backdoor import flain, models  # noqa: E402

DATA_DIR = '/usr/share/datasets/fashion-mnist'


def load_idx(data_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """Fashion-MNIST split ('train' or 't10k') as float32 images in [0, 1] [N, 28, 28, 1], labels."""
  with gzip.open(os.path.join(data_dir, f'{split}-images-idx3-ubyte.gz')) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
  with gzip.open(os.path.join(data_dir, f'{split}-labels-idx1-ubyte.gz')) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
  return images.astype(np.float32) / 255.0, labels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default=DATA_DIR)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--train_size', type=int, default=6000)
  parser.add_argument('--epochs', type=int, default=1)
  parser.add_argument('--per_class', type=int, default=80)
  parser.add_argument('--modes', default='quantile,absolute')
  args = parser.parse_args()

  tf.keras.utils.set_random_seed(args.seed)
  x_train, y_train = load_idx(args.data_dir, 'train')
  x_test, y_test = load_idx(args.data_dir, 't10k')
  model = models.sun_cnn(seed=args.seed)
  initial = model.get_weights()
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  started = time.perf_counter()
  model.fit(x_train[:args.train_size], y_train[:args.train_size], batch_size=64,
            epochs=args.epochs, verbose=0)
  train_seconds = time.perf_counter() - started
  aux_x, aux_y = flain.select_auxiliary(x_test, y_test, args.per_class, seed=args.seed)

  runs = {}
  for mode in args.modes.split(','):
    _, report = flain.apply_flain(model, initial, aux_x, aux_y,
                                  flain.FlainConfig(threshold_mode=mode))
    runs[mode] = {key: getattr(report, key) for key in (
        'seconds', 'num_k_steps', 'num_evaluations', 'k0', 'step', 'threshold',
        'stopped_by_tolerance', 'num_flipped', 'aux_accuracy_before', 'aux_accuracy_at_stop',
        'aux_accuracy_after')}
    runs[mode]['under_10s'] = report.seconds < 10.0
  print(json.dumps({'model': 'sun_cnn', 'layer': models.SUN_CNN_FLAIN_LAYER,
                    'num_aux': int(len(aux_y)), 'train_seconds': round(train_seconds, 1),
                    'runs': runs}))


if __name__ == '__main__':
  main()
