"""Examples/s of one FedAvg round vs plain Keras fit on the same examples, same process.

  python -m bench.fedavg_throughput [--variants=keras,vanilla,ours,clip,weak_dp] [--repeats=5]
  python -m bench.fedavg_throughput --setting=femnist_sun \
      --variants=keras,vanilla,ours,capture,capture_save,capture_rerun --repeats=5
  python -m bench.fedavg_throughput --setting=femnist_sun --num_clients=5,30 \
      --variants=keras,vanilla,ours --repeats=3   # both sizes; ours/vanilla lines at the end

Settings (`--setting`), both with the Sun et al. CNN, batch 20 and client SGD lr 0.1:
- `fashion_mnist` (ENVIRONMENT.md's reference): 10 clients x 600 Fashion-MNIST examples, one
  local epoch;
- `femnist_sun`: the FEMNIST round of the Sun et al. study, 30 real writers (a seeded draw
  of the digits-only LEAF writers in `--data_dir`, default ../shared/data/femnist) with all
  their digits, 5 local epochs.
A client's local epochs are shuffled passes over its examples (seeded), fed as one dataset, as
`client_inputs.round_client_data` builds them; plain Keras fits one epoch over the concatenation
of the same passes (`shuffle=False`), i.e. the same examples in the same order and batches.

Variants: `keras` (plain `model.fit`), `vanilla` (`tff.learning.algorithms.
build_weighted_fed_avg`), `ours` (our composed process with the attack machinery, no
attacker), `capture` (ours with `capture_updates=True`, spooling as a local experiment does:
the round also hands every client's update to Python), `capture_save` (capture, plus writing
the round's `captures/round_NNNN.npz` as the experiment does), `capture_stack` (the updates
stacked into the measurements instead, the way with remote workers), `capture_rerun` (the old
capture: every client's training run again to read its update), the attacker variants and
one per defense.

`peak_rss_mb` is this process's peak (Python + TFF worker): run one variant per process to get
a per-configuration figure (bench/run_all.py does). Plain Keras is timed first, before any TFF
worker exists; then every TFF variant is warmed up once (tracing and compilation) and the
variants are timed round-robin `--repeats` times. A round's time includes building its client
datasets from NumPy, as in the experiments. Prints one JSON object; ratios are to `keras`
(`ratio_to_keras`), to TFF's own `build_weighted_fed_avg` (`ratio_to_vanilla`) and to `ours`
(`ratio_to_ours`), of the medians and, as `min_ratio_to_*`, of the best (fastest)
repetitions: on a shared machine the slowdowns are noise from outside, and the best of N is
the least disturbed estimate (as Python's `timeit` advises). `cpu_seconds` (and
`cpu_ratio_to_*`) are the CPU time the round consumed in this process and its TFF worker:
the cost, which other jobs on the machine disturb much less than the wall time.
"""
from __future__ import annotations

import atexit
import collections
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


from tff_backdoor.analysis import captures as captures_lib
from bench import common
from tff_backdoor import cli
from tff_backdoor import data as data_lib
from tff_backdoor import models
from tff_backdoor.aggregators import registry as defense_registry
from tff_backdoor.attacks import AttackConfig, build_attacker_client_work, make_client_data
from tff_backdoor.learning import client_datasets
from tff_backdoor.learning import process as process_lib
from tff_backdoor.learning import update_capture

ATTACK_VARIANTS = {'ours_boost_attacker': 'boost', 'ours_norm_bounded_attacker': 'norm_bounded',
                   'ours_data_poison_attacker': 'data_poison'}
CAPTURE_VARIANTS = ('capture', 'capture_save', 'capture_stack', 'capture_rerun')
VARIANTS = ('keras', 'vanilla', 'ours', *CAPTURE_VARIANTS, *ATTACK_VARIANTS,
            'clip', 'weak_dp', 'adaptive_clip', 'zeroing', 'clip_mean', 'median', 'trimmed_mean',
            'krum', 'multi_krum', 'bias_filter', 'geomed', 'bulyan', 'centered_clip', 'rlr',
            'flame', 'crfl')
SETTINGS = {  # name: (dataset, clients per round, local epochs)
    'fashion_mnist': ('fashion_mnist', 10, 1),
    'femnist_sun': ('femnist', 30, 5),
}

flags.DEFINE_list('variants', ['keras', 'vanilla', 'ours'], f'Any of {", ".join(VARIANTS)}.')
flags.DEFINE_enum('setting', 'fashion_mnist', list(SETTINGS), 'The round to time.')
flags.DEFINE_integer('repeats', 3, 'Timed repetitions per variant (after one warm-up).')
flags.DEFINE_list('num_clients', ['0'], 'Clients per round (0 = the setting\'s: 10 / 30); '
                  'several (e.g. 5,30): each size in turn, one report per size.')
flags.DEFINE_integer('examples_per_client', 600, 'fashion_mnist: examples per client.')
flags.DEFINE_integer('local_epochs', 0, 'Local epochs (0 = the setting\'s: 1 / 5).')
flags.DEFINE_integer('batch_size', 20, 'Batch size.')
flags.DEFINE_string('data_dir', None, 'Fashion-MNIST idx dir (default: the Debian package) or '
                    'the FEMNIST LEAF dir (default: ../shared/data/femnist).')
flags.DEFINE_integer('seed', 0, 'Seed for data selection, local shuffles and model init.')
flags.DEFINE_string('output', None, 'Also write the JSON here.')
FLAGS = flags.FLAGS

INPUT_SHAPE = (28, 28, 1)
LR = 0.1


def _client_datasets(xs, ys, batch_size):
  """The clients' datasets, built as the experiments build them (process.client_dataset)."""
  return [client_datasets.client_dataset(x, y, batch_size) for x, y in zip(xs, ys)]


def _keras_epoch(x, y, batch_size, seed):
  """One epoch of plain Keras fit over (x, y) in order: the clients' passes, concatenated."""
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
  """A no-arg callable running one round (or one Keras epoch) of the named variant.

  `xs[i]`, `ys[i]` are client i's examples in training order (all its local epochs).
  """
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
  defense = 'none' if name.startswith('ours') or name in CAPTURE_VARIANTS else name
  config = defense_registry.DefenseConfig(name=defense)
  attack = AttackConfig(ATTACK_VARIANTS.get(name, 'boost'), boost=float(n))
  client_work = build_attacker_client_work(model_fn, tff.learning.optimizers.build_sgdm(LR),
                                           attack, batch_size)
  spool = tempfile.mkdtemp(prefix='bench_spool_')
  atexit.register(functools.partial(shutil.rmtree, spool, ignore_errors=True))
  server = defense_registry.build_server_optimizer(  # CRFL's step; others: SGD at 1.0
      config, tff.learning.optimizers.build_sgdm(1.0), seed)
  ours = process_lib.build_attacked_fed_avg(
      model_fn, tff.learning.optimizers.build_sgdm(LR), server,
      batch_size=batch_size, attack=attack,
      model_aggregator=defense_registry.build_defense(config, n, seed=seed),
      capture_updates=name in ('capture', 'capture_save', 'capture_stack'),
      capture_spool_dir=spool if name in ('capture', 'capture_save') else None)
  empty = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=np.zeros([0, *INPUT_SHAPE], np.float32), y=np.zeros([0], np.int32))).batch(batch_size)

  def inputs():
    datasets = _client_datasets(xs, ys, batch_size)
    malicious = _client_datasets(xs[:1], [(ys[0] + 1) % 10], batch_size)[0]
    return [make_client_data(d, malicious if i < attackers else empty, i < attackers, i)
            for i, d in enumerate(datasets)]
  if name not in CAPTURE_VARIANTS:
    return _round_fn(ours, inputs)
  state = [ours.initialize()]
  names = [f'var_{i}' for i in range(len(ours.get_model_weights(state[0]).trainable))]
  ids = [f'client_{i}' for i in range(n)]
  directory = tempfile.mkdtemp(prefix='bench_capture_')
  atexit.register(functools.partial(shutil.rmtree, directory, ignore_errors=True))

  def capture_round():  # a --capture_rounds round: every client's update reaches Python
    data = inputs()
    if name == 'capture_rerun':  # the old way: run every client's training again
      updates = update_capture.capture_client_updates(
          client_work, state[0], ours.get_model_weights(state[0]), data)
      stacked = [np.stack([u[v] for u in updates]) for v in range(len(names))]
      output = ours.next(state[0], data)
    else:
      output = ours.next(state[0], data)
      stacked = update_capture.pop_captured_updates(output.metrics, data)
    if name == 'capture_save':
      captures_lib.save_round_capture(directory, 0, stacked, names, ids, np.zeros(n, bool),
                                 compress=False)  # as capture_lib.save_capture writes it
    state[0] = output.state
  return capture_round


def load_setting(setting: str, num_clients: int, examples_per_client: int, local_epochs: int,
                 data_dir: Optional[str], seed: int
                 ) -> Tuple[List[np.ndarray], List[np.ndarray], Dict]:
  """Each client's examples in training order (local epochs of seeded shuffles), and a summary."""
  dataset, default_clients, default_epochs = SETTINGS[setting]
  num_clients = num_clients or default_clients
  local_epochs = local_epochs or default_epochs
  rng = np.random.default_rng(seed)
  if dataset == 'fashion_mnist':
    (x, y), _ = data_lib.load_idx_dir(data_dir or data_lib.ensure_fashion_mnist())
    idx = rng.permutation(len(y))[:num_clients * examples_per_client].reshape(num_clients, -1)
    pools = [(x[i], y[i]) for i in idx]
  else:
    data = data_lib.load_federated_data('femnist', data_dir=data_dir or common.FEMNIST_DIR,
                                        only_digits=True, seed=seed)
    writers = sorted(data.train.client_ids)
    if num_clients > len(writers):
      raise ValueError(f'--num_clients={num_clients}: FEMNIST has {len(writers)} writers')
    chosen = sorted(rng.choice(writers, num_clients, replace=False).tolist())
    arrays = data_lib.client_arrays(data.train, chosen)
    pools = [arrays[w] for w in chosen]
  xs, ys = [], []
  for x, y in pools:
    order = np.concatenate([rng.permutation(len(y)) for _ in range(local_epochs)])
    xs.append(np.asarray(x, np.float32)[order])
    ys.append(np.asarray(y, np.int32)[order])
  sizes = [len(y) // local_epochs for y in ys]
  summary = {'setting': setting, 'dataset': dataset, 'model': 'sun_cnn', 'clients': num_clients,
             'local_epochs': local_epochs, 'client_examples_min_median_max':
             [min(sizes), int(statistics.median(sizes)), max(sizes)],
             'examples': int(sum(len(y) for y in ys))}
  return xs, ys, summary


def cpu_seconds() -> float:
  """CPU time (user + system) used so far by this process and its live TFF workers (Linux).

  On a machine shared with other jobs a round's wall time swings with their load; the CPU
  time it consumes is its cost, and much steadier (threads waiting for a core do not count).
  """
  from tff_backdoor.execution import workers  # pylint: disable=g-import-not-at-top
  total = time.process_time()
  tick = os.sysconf('SC_CLK_TCK')
  for pid in workers._child_worker_pids():  # pylint: disable=protected-access
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    except (OSError, IndexError, ValueError):
      pass
  return total


def peak_rss_mb() -> Dict[str, float]:
  """Peak resident memory of this process and of its TFF worker children (Linux)."""
  import resource  # pylint: disable=g-import-not-at-top
  from tff_backdoor.execution import workers  # pylint: disable=g-import-not-at-top
  out = {'python': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 'workers': 0.0}
  for pid in workers._child_worker_pids():  # pylint: disable=protected-access
    try:
      with open(f'/proc/{pid}/status') as f:
        for line in f:
          if line.startswith('VmHWM:'):
            out['workers'] += int(line.split()[1]) / 1024.0
    except OSError:
      pass
  out['total'] = out['python'] + out['workers']
  return {k: round(v, 1) for k, v in out.items()}


def run(variants: Sequence[str], num_clients: int, examples_per_client: int, batch_size: int,
        repeats: int, data_dir: Optional[str], seed: int, setting: str = 'fashion_mnist',
        local_epochs: int = 0) -> Dict:
  """Times the variants round robin on the setting's round; returns the report."""
  for name in variants:
    if name not in VARIANTS:
      raise ValueError(f'unknown variant {name!r}; choose from {", ".join(VARIANTS)}')
  xs, ys, summary = load_setting(setting, num_clients, examples_per_client, local_epochs,
                                 data_dir, seed)
  examples = summary['examples']
  # Plain Keras first, in a process where no TFF worker exists yet (with the worker alive,
  # Keras in the parent process sometimes gets one core instead of two). Then the TFF variants:
  # all warmed up, then timed round-robin, so drift in the machine's speed hits them alike.
  times = {name: [] for name in variants}
  cpu = {name: [] for name in variants}

  def timed(name, fn):
    t0, c0 = time.perf_counter(), cpu_seconds()
    fn()
    times[name].append(time.perf_counter() - t0)
    cpu[name].append(cpu_seconds() - c0)

  if 'keras' in variants:
    fn = build_variant('keras', xs, ys, batch_size, seed)
    fn()
    for _ in range(repeats):
      timed('keras', fn)
  fns = collections.OrderedDict(
      (name, build_variant(name, xs, ys, batch_size, seed)) for name in variants
      if name != 'keras')
  for fn in fns.values():
    fn()
  for _ in range(repeats):
    for name, fn in fns.items():
      timed(name, fn)
  results = collections.OrderedDict()
  for name in variants:  # in the order asked for
    median, best = statistics.median(times[name]), min(times[name])
    results[name] = {'seconds': round(median, 3), 'examples_per_s': round(examples / median, 1),
                     'min_seconds': round(best, 3), 'all_seconds': [round(t, 3) for t in times[name]],
                     'cpu_seconds': round(statistics.median(cpu[name]), 3),
                     'min_cpu_seconds': round(min(cpu[name]), 3),
                     'all_cpu_seconds': [round(t, 3) for t in cpu[name]]}
    print(f'{name}: {median:.2f}s per round/epoch median, {best:.2f}s best '
          f'({examples / median:.0f} examples/s); CPU {statistics.median(cpu[name]):.2f}s '
          f'median, {min(cpu[name]):.2f}s best', file=sys.stderr, flush=True)
  for name, r in results.items():
    for base in ('keras', 'vanilla', 'ours'):
      if base in results:
        r[f'ratio_to_{base}'] = round(r['seconds'] / results[base]['seconds'], 3)
        r[f'min_ratio_to_{base}'] = round(r['min_seconds'] / results[base]['min_seconds'], 3)
        r[f'cpu_ratio_to_{base}'] = round(r['cpu_seconds'] / results[base]['cpu_seconds'], 3)
        r[f'min_cpu_ratio_to_{base}'] = round(
            r['min_cpu_seconds'] / results[base]['min_cpu_seconds'], 3)
  return {'setting': {**summary, 'batch_size': batch_size, 'repeats': repeats},
          'results': results, 'peak_rss_mb': peak_rss_mb()}


def ratio_line(report: Dict) -> str:
  """'N clients: ours x vanilla wall median / best, CPU median' (when both were timed)."""
  r = report['results']
  if 'ours' not in r or 'vanilla' not in r:
    return f"{report['setting']['clients']} clients"
  o = r['ours']
  return (f"{report['setting']['clients']} clients: ours / vanilla wall "
          f"{o['ratio_to_vanilla']:.3f} median, {o['min_ratio_to_vanilla']:.3f} best; CPU {o['cpu_ratio_to_vanilla']:.3f} "
          f"median, {o['min_cpu_ratio_to_vanilla']:.3f} best")


def run_sizes(sizes: Sequence[str], **kwargs) -> Dict:
  """`run` at each --num_clients value; one size: its report, several: {'by_num_clients'}."""
  if not sizes or not all(str(n).isdigit() for n in sizes):
    raise ValueError(f'--num_clients must list whole numbers, got {",".join(sizes)}')
  reports = []
  for n in sizes:
    reports.append(run(num_clients=int(n), **kwargs))
    common.log(ratio_line(reports[-1]))
  if len(reports) == 1:
    return reports[0]
  for report in reports:
    common.log(ratio_line(report))
  return {'by_num_clients': {str(r['setting']['clients']): r for r in reports}}


main = common.json_main(lambda: run_sizes(
    FLAGS.num_clients, variants=FLAGS.variants, examples_per_client=FLAGS.examples_per_client,
    batch_size=FLAGS.batch_size, repeats=FLAGS.repeats, data_dir=FLAGS.data_dir,
    seed=FLAGS.seed, setting=FLAGS.setting, local_epochs=FLAGS.local_epochs))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
