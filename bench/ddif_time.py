"""Times one client's DeepSight DDifs (`learning.ddifs`) on Sun's CNN, at the paper's defaults.

A DDif vector per seed needs the rebuilt client model's and the global model's outputs on
`samples` random inputs: 2 x seeds x samples forward passes per client and round. Prints lines
to paste: the first call (tracing included), the steady-state seconds per client, and what
that adds to a matrix run of `--rounds` x `--clients` clients.
Usage: .venv/bin/python bench/ddif_time.py [--samples 20000] [--seeds 3] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow_federated as tff  # noqa: E402

from tff_backdoor import models  # noqa: E402
from tff_backdoor.learning import ddifs  # noqa: E402
from tff_backdoor.learning import process  # noqa: E402
from tff_backdoor.learning.side_channel import DDifInputs  # noqa: E402

SHAPE, CLASSES = (28, 28, 1), 10


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--samples', type=int, default=DDifInputs.samples)
  parser.add_argument('--seeds', type=int, default=DDifInputs.seeds)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument('--clients', type=int, default=10)
  args = parser.parse_args()
  model_fn = process.keras_model_fn(lambda: models.sun_cnn(SHAPE, CLASSES, seed=0), SHAPE)
  inputs = DDifInputs(args.samples, args.seeds, seed=0)
  ddif_fn = ddifs.build_ddif_fn(model_fn, inputs)
  weights = tff.learning.models.ModelWeights.from_model(model_fn())
  global_weights = tff.learning.models.ModelWeights(
      [np.asarray(v) for v in weights.trainable], [np.asarray(v) for v in weights.non_trainable])
  rng = np.random.default_rng(0)
  delta = [0.01 * rng.normal(size=v.shape).astype(np.float32) for v in global_weights.trainable]
  times = []
  for _ in range(1 + args.repeats):
    start = time.perf_counter()
    ddif_fn(global_weights, delta).numpy()
    times.append(time.perf_counter() - start)
  per_client = min(times[1:])
  passes = 2 * args.seeds * args.samples
  print(f'ddif_time: sun_cnn, {args.samples} samples x {args.seeds} seeds, batch {ddifs.BATCH}, '
        f'{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}')
  print(f'ddif_time: first call (tracing) {times[0]:.1f} s; per client {per_client:.1f} s '
        f'({passes / per_client:,.0f} images/s over {passes:,} forward passes)')
  total = per_client * args.rounds * args.clients
  print(f'ddif_time: {args.rounds} rounds x {args.clients} clients add {total:.0f} s '
        f'({total / 60:.1f} min) to a run')


if __name__ == '__main__':
  main()
