"""Times DeepSight's DDifs (`learning.ddifs`) on Sun's CNN at the paper's defaults.

A DDif vector per seed needs the global model's and each rebuilt client model's outputs on
`samples` random inputs. The server computes the global model's once a round and sends them
down; each client runs only its own model: seeds x samples forward passes each. Prints lines
to paste: the first calls (tracing included), the steady-state seconds of the server's pass
and of a client's, and what `--rounds` x `--clients` clients add to a run, before (each
client ran both models) and now.
Usage: .venv/bin/python bench/ddif_time.py [--samples 20000] [--seeds 3] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow_federated as tff  # noqa: E402

from bench import common  # noqa: E402
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
  server_fn = ddifs.build_global_log_probs(model_fn, inputs)
  client_fn = ddifs.build_ddif_fn(model_fn, inputs)
  weights = tff.learning.models.ModelWeights.from_model(model_fn())
  global_weights = tff.learning.models.ModelWeights(
      [np.asarray(v) for v in weights.trainable], [np.asarray(v) for v in weights.non_trainable])
  rng = np.random.default_rng(0)
  delta = [0.01 * rng.normal(size=v.shape).astype(np.float32) for v in global_weights.trainable]
  server_times = common.timed(lambda: server_fn(global_weights).numpy(), 1 + args.repeats)
  log_probs = server_fn(global_weights)
  client_times = common.timed(lambda: client_fn(global_weights, delta, log_probs).numpy(),
                       1 + args.repeats)
  server, client = min(server_times[1:]), min(client_times[1:])
  passes = args.seeds * args.samples
  print(f'ddif_time: sun_cnn, {args.samples} samples x {args.seeds} seeds, batch {ddifs.BATCH}, '
        f'{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}')
  print(f'ddif_time: per client {client:.1f} s ({passes / client:,.0f} images/s over {passes:,} '
        f'forward passes; first call {client_times[0]:.1f} s with tracing)')
  print(f'ddif_time: server {server:.1f} s a round (the global model\'s {passes:,} passes; '
        f'first call {server_times[0]:.1f} s), sent down: '
        f'{log_probs.numpy().nbytes / 1e6:.1f} MB a client')
  calls = args.rounds * args.clients
  before = (client + server) * calls
  now = client * calls + server * args.rounds
  print(f'ddif_time: {args.rounds} rounds x {args.clients} clients add {now:.0f} s '
        f'({now / 60:.1f} min) to a run; before (both models at every client) {before:.0f} s '
        f'({before / 60:.1f} min)')


if __name__ == '__main__':
  main()
