"""Examples/s of one FedAvg round vs a plain Keras epoch on the same 6000 Fashion-MNIST examples.

  python -m bench.fedavg_throughput [--variants=keras,vanilla,ours,clip,weak_dp] [--repeats=5]

`peak_rss_mb` is this process's peak (Python + TFF worker): run one variant per process to get
a per-configuration figure (bench/run_all.py does). Setting (ENVIRONMENT.md's reference): Sun et al. CNN, 10 clients x 600 examples, batch 20, one
local epoch, client SGD lr 0.1. Plain Keras is timed first, before any TFF worker exists; then
every TFF variant is warmed up once (tracing and compilation) and the variants are timed
round-robin `--repeats` times. Medians are reported. A round's time includes building its client
datasets from NumPy, as in the experiments. Prints one JSON object; ratios are to `keras`
(`ratio_to_keras`) and to TFF's own `build_weighted_fed_avg` (`ratio_to_vanilla`), of the
medians and, as `min_ratio_to_*`, of the best (fastest) repetitions: on a shared machine the
slowdowns are noise from outside, and the best of N is the least disturbed estimate (as
Python's `timeit` advises).
"""
from __future__ import annotations

import collections
import json
import statistics
import sys
import time
from typing import Callable, Dict, List

from absl import app
from absl import flags

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor import cli
from tff_backdoor import data as data_lib
from tff_backdoor import models
from tff_backdoor import process as process_lib
from tff_backdoor.aggregators import registry as defense_registry
from tff_backdoor.attacks import AttackConfig, make_client_data

ATTACK_VARIANTS = {'ours_boost_attacker': 'boost', 'ours_norm_bounded_attacker': 'norm_bounded',
                   'ours_data_poison_attacker': 'data_poison'}
VARIANTS = ('keras', 'vanilla', 'ours', 'capture', *ATTACK_VARIANTS,
            'clip', 'weak_dp', 'adaptive_clip', 'zeroing', 'clip_mean', 'median', 'trimmed_mean',
            'krum', 'multi_krum', 'bias_filter')

flags.DEFINE_list('variants', ['keras', 'vanilla', 'ours'], f'Any of {", ".join(VARIANTS)}.')
flags.DEFINE_integer('repeats', 3, 'Timed repetitions per variant (after one warm-up).')
flags.DEFINE_integer('num_clients', 10, 'Clients per round.')
flags.DEFINE_integer('examples_per_client', 600, 'Examples per client.')
flags.DEFINE_integer('batch_size', 20, 'Batch size.')
flags.DEFINE_string('data_dir', None, 'Fashion-MNIST idx dir (default: the Debian package).')
flags.DEFINE_integer('seed', 0, 'Seed for data selection and model init.')
flags.DEFINE_string('output', None, 'Also write the JSON here.')
FLAGS = flags.FLAGS

INPUT_SHAPE = (28, 28, 1)
LR = 0.1


def _client_datasets(xs, ys, batch_size):
  """The clients' datasets, built as the experiments build them (process.client_dataset)."""
  return [process_lib.client_dataset(x, y, batch_size) for x, y in zip(xs, ys)]


def _keras_epoch(x, y, batch_size, seed):
  model = models.sun_cnn(INPUT_SHAPE, 10, seed=seed)
  model.compile(optimizer=tf.keras.optimizers.SGD(LR),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
  return lambda: model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)


def _round_fn(learning_process, make_inputs):
  state = [learning_process.initialize()]

  def one_round():
    state[0] = learning_process.next(state[0], make_inputs()).state
  return one_round


def build_variant(name: str, xs, ys, batch_size: int, seed: int) -> Callable[[], None]:
  """A no-arg callable running one round (or one Keras epoch) of the named variant."""
  model_fn = process_lib.keras_model_fn(
      lambda: models.sun_cnn(INPUT_SHAPE, 10, seed=seed), INPUT_SHAPE)
  if name == 'keras':
    return _keras_epoch(np.concatenate(xs), np.concatenate(ys), batch_size, seed)
  if name == 'vanilla':
    vanilla = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, tff.learning.optimizers.build_sgdm(LR), tff.learning.optimizers.build_sgdm(1.0))
    return _round_fn(vanilla, lambda: _client_datasets(xs, ys, batch_size))
  n = len(xs)
  attackers = 1 if name in ATTACK_VARIANTS else 0
  defense = 'none' if name.startswith('ours') or name == 'capture' else name
  config = defense_registry.DefenseConfig(name=defense)
  attack = AttackConfig(ATTACK_VARIANTS.get(name, 'boost'), boost=float(n))
  client_work = process_lib.build_client_work(model_fn, client_learning_rate=LR,
                                              batch_size=batch_size, attack=attack)
  ours = process_lib.build_backdoor_process(
      model_fn, client_learning_rate=LR, server_learning_rate=1.0, batch_size=batch_size,
      attack=attack, model_aggregator=defense_registry.build_defense(config, n, seed=seed),
      client_work=client_work)
  empty = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=np.zeros([0, *INPUT_SHAPE], np.float32), y=np.zeros([0], np.int32))).batch(batch_size)

  def inputs():
    datasets = _client_datasets(xs, ys, batch_size)
    malicious = _client_datasets(xs[:1], [(ys[0] + 1) % 10], batch_size)[0]
    return [make_client_data(d, malicious if i < attackers else empty, i < attackers, i)
            for i, d in enumerate(datasets)]
  if name != 'capture':
    return _round_fn(ours, inputs)
  state = [ours.initialize()]

  def capture_round():  # what --capture_rounds adds to a round: every client's update saved
    data = inputs()
    process_lib.capture_client_updates(client_work, state[0], ours.get_model_weights(state[0]),
                                       data)
    state[0] = ours.next(state[0], data).state
  return capture_round


def peak_rss_mb() -> Dict[str, float]:
  """Peak resident memory of this process and of its TFF worker children (Linux)."""
  import resource  # pylint: disable=g-import-not-at-top
  from tff_backdoor import runtime  # pylint: disable=g-import-not-at-top
  out = {'python': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 'workers': 0.0}
  for pid in runtime._child_worker_pids():  # pylint: disable=protected-access
    try:
      with open(f'/proc/{pid}/status') as f:
        for line in f:
          if line.startswith('VmHWM:'):
            out['workers'] += int(line.split()[1]) / 1024.0
    except OSError:
      pass
  out['total'] = out['python'] + out['workers']
  return {k: round(v, 1) for k, v in out.items()}


def run(variants, num_clients, examples_per_client, batch_size, repeats, data_dir, seed) -> Dict:
  (x, y), _ = data_lib.load_idx_dir(data_dir or data_lib.ensure_fashion_mnist())
  rng = np.random.default_rng(seed)
  idx = rng.permutation(len(y))[:num_clients * examples_per_client].reshape(num_clients, -1)
  xs, ys = [x[i] for i in idx], [y[i] for i in idx]
  examples = num_clients * examples_per_client
  for name in variants:
    if name not in VARIANTS:
      raise ValueError(f'unknown variant {name!r}; choose from {", ".join(VARIANTS)}')
  # Plain Keras first, in a process where no TFF worker exists yet (with the worker alive,
  # Keras in the parent process sometimes gets one core instead of two). Then the TFF variants:
  # all warmed up, then timed round-robin, so drift in the machine's speed hits them alike.
  times = {name: [] for name in variants}
  if 'keras' in variants:
    fn = build_variant('keras', xs, ys, batch_size, seed)
    fn()
    for _ in range(repeats):
      t0 = time.perf_counter()
      fn()
      times['keras'].append(time.perf_counter() - t0)
  fns = collections.OrderedDict(
      (name, build_variant(name, xs, ys, batch_size, seed)) for name in variants
      if name != 'keras')
  for fn in fns.values():
    fn()
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  results = collections.OrderedDict()
  for name in variants:  # in the order asked for
    median, best = statistics.median(times[name]), min(times[name])
    results[name] = {'seconds': round(median, 3), 'examples_per_s': round(examples / median, 1),
                     'min_seconds': round(best, 3), 'all_seconds': [round(t, 3) for t in times[name]]}
    print(f'{name}: {median:.2f}s per round/epoch median, {best:.2f}s best '
          f'({examples / median:.0f} examples/s)', file=sys.stderr, flush=True)
  for name, r in results.items():
    for base in ('keras', 'vanilla'):
      if base in results:
        r[f'ratio_to_{base}'] = round(r['seconds'] / results[base]['seconds'], 3)
        r[f'min_ratio_to_{base}'] = round(r['min_seconds'] / results[base]['min_seconds'], 3)
  return {'setting': {'dataset': 'fashion_mnist', 'model': 'sun_cnn', 'clients': num_clients,
                      'examples_per_client': examples_per_client, 'batch_size': batch_size,
                      'local_epochs': 1, 'repeats': repeats, 'examples': examples},
          'results': results, 'peak_rss_mb': peak_rss_mb()}


def main(argv):
  del argv
  report = cli.run_or_fail(lambda: run(FLAGS.variants, FLAGS.num_clients,
                                       FLAGS.examples_per_client, FLAGS.batch_size,
                                       FLAGS.repeats, FLAGS.data_dir, FLAGS.seed))
  text = json.dumps(report, indent=2)
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
