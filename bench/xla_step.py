"""Does XLA (`jit_compile=True`) make local training faster on this CPU? Same process, round robin.

  python -m bench.xla_step [--repeats=3] [--output=FILE.json]

Two pairs, each timed alternately `--repeats` times after a warm-up, on 10 clients x 600
Fashion-MNIST examples, Sun CNN, batch 20, SGD lr 0.1 (bench.fedavg_throughput's setting):

- `keras` / `keras_xla`: plain Keras `model.fit`, one epoch on the 6000 examples, compiled
  with `jit_compile=False` / `True`;
- `tff_step` / `tff_step_xla`: one FedAvg round in TFF's C++ worker whose clients run local
  SGD with the per-batch step (forward, gradient, update) as a plain graph / inside
  `tf.function(jit_compile=True)`, i.e. what our client work would run with XLA.

Reports medians, best-of, the speed-up (plain / XLA, > 1 means XLA is faster) and the largest
difference between the two variants' results (final Keras weights, the round's mean update)
for the same seed. The bar for adopting XLA (issue 20): a round at least 1.2x faster with the
same metrics to within float tolerance. Prints one JSON object.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict

from absl import app
from absl import flags

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from bench import common
from tff_backdoor import cli
from tff_backdoor import data as data_lib
from tff_backdoor import models
from tff_backdoor.learning import client_datasets
from tff_backdoor.learning import process as process_lib

flags.DEFINE_integer('repeats', 3, 'Timed repetitions per variant (after one warm-up).')
flags.DEFINE_string('data_dir', None, 'Fashion-MNIST idx dir (default: the Debian package).')
flags.DEFINE_string('output', None, 'Also write the JSON here.')
FLAGS = flags.FLAGS

SHAPE, CLASSES, LR, BATCH = (28, 28, 1), 10, 0.1, 20


def _keras(x, y, jit: bool) -> Callable[[], Any]:
  """One epoch of plain Keras fit; returns the weights after it (fresh model each call)."""
  model = models.sun_cnn(SHAPE, CLASSES, seed=0)
  initial = model.get_weights()
  model.compile(optimizer=tf.keras.optimizers.SGD(LR), jit_compile=jit,
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  def epoch():
    model.set_weights(initial)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()
  return epoch


def _tff_round(xs, ys, jit: bool) -> Callable[[], Any]:
  """One FedAvg round (honest local SGD, as our client work) with an optionally XLA step."""
  model_fn = process_lib.keras_model_fn(lambda: models.sun_cnn(SHAPE, CLASSES, seed=0), SHAPE)
  with tf.Graph().as_default():
    weights_type = tff.learning.models.weights_type_from_model(model_fn())
    element_type = tff.types.tensorflow_to_type(model_fn().input_spec)
  data_type = tff.SequenceType(element_type)

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(initial, data):
    model = model_fn()
    weights = tff.learning.models.ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial)

    def step(batch):
      with tf.GradientTape() as tape:
        output = model.forward_pass(batch, training=True)
      for v, g in zip(weights.trainable, tape.gradient(output.loss, weights.trainable)):
        v.assign_sub(LR * g)
      return tf.shape(output.predictions, out_type=tf.int64)[0]

    step_fn = tf.function(step, jit_compile=True) if jit else step
    count = data.reduce(tf.constant(0, tf.int64), lambda n, batch: n + step_fn(batch))
    delta = tf.nest.map_structure(tf.subtract, initial.trainable, weights.trainable)
    return delta, tf.cast(count, tf.float32)

  @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def round_fn(server_weights, data):
    delta, count = tff.federated_map(client_update,
                                     (tff.federated_broadcast(server_weights), data))
    return tff.federated_mean(delta, count)

  @tff.tensorflow.computation
  def initial_weights():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  start = initial_weights()
  return lambda: round_fn(start, [client_datasets.client_dataset(a, b, BATCH)
                                  for a, b in zip(xs, ys)])


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
             for u, v in zip(tf.nest.flatten(a), tf.nest.flatten(b)))


def run(repeats: int, data_dir: str) -> Dict[str, Any]:
  """Times the two pairs round robin; returns the report."""
  (x, y), _ = data_lib.load_idx_dir(data_dir or data_lib.ensure_fashion_mnist())
  idx = np.random.default_rng(0).permutation(len(y))[:6000].reshape(10, -1)
  xs, ys = [x[i] for i in idx], [y[i] for i in idx]
  # Built lazily, Keras first: TFF's graph-mode model building invalidates Keras models made
  # before it, and Keras is timed before any TFF worker exists (bench.fedavg_throughput).
  pairs = {'keras': lambda: (_keras(np.concatenate(xs), np.concatenate(ys), False),
                             _keras(np.concatenate(xs), np.concatenate(ys), True)),
           'tff_step': lambda: (_tff_round(xs, ys, False), _tff_round(xs, ys, True))}
  report: Dict[str, Any] = {'setting': {'clients': 10, 'examples_per_client': 600,
                                        'batch_size': BATCH, 'repeats': repeats}}
  for name, build in pairs.items():
    plain, xla = build()
    diff = _max_diff(plain(), xla())  # also the warm-up (tracing, XLA compilation)
    times = {'plain': [], 'xla': []}
    for _ in range(repeats):
      for variant, fn in (('plain', plain), ('xla', xla)):
        t0 = time.perf_counter()
        fn()
        times[variant].append(round(time.perf_counter() - t0, 3))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    report[name] = {'seconds': times, 'median': med, 'best': best,
                    'speedup_median': round(med['plain'] / med['xla'], 3),
                    'speedup_best': round(best['plain'] / best['xla'], 3),
                    'max_abs_diff': diff}
    common.log(f'{name}: plain {med["plain"]:.2f}s median ({best["plain"]:.2f}s best), xla '
               f'{med["xla"]:.2f}s ({best["xla"]:.2f}s): speed-up '
               f'{med["plain"] / med["xla"]:.2f}x median, {best["plain"] / best["xla"]:.2f}x '
               f'best; max |diff| {diff:.3g}')
  return report


main = common.json_main(lambda: run(FLAGS.repeats, FLAGS.data_dir))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
