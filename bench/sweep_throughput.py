"""Runs per hour of a sweep, old settings against new, in one invocation (issue 28).

  python -m bench.sweep_throughput [--runs=4] [--rounds=20] [--parallel=1,2] \
      [--modes=old,cold,new] [--reference_repeats=3] [--output=FILE.json]

Runs the Sun et al. code-default run (FEMNIST digits by writer, 5 writers a round, 5 local
epochs, batch 20, client lr 0.1, a norm-bounded attacker every round, norm clipping,
`--rounds` rounds, evaluation every round) `--runs` times (seeds 0, 1, ...) through the sweep
itself (`studies.sweeps.run_sweep`), once per mode and `--parallel` value, and reports for
each:

- `runs_per_hour`: runs / the sweep's wall time;
- per run: wall seconds, `examples_trained` (final.json: every example the clients trained
  on, the attackers' extra passes too), whole-run examples/s (examples / wall seconds,
  imports, tracing and evaluation included), the first round against the median later one,
  the fixed cost (wall - the run's own `seconds`: interpreter, imports, `prepare`, worker
  start), and evaluation's share of the round time (final.json `eval_seconds`);
- `reference`: plain Keras' and vanilla TFF's (`build_weighted_fed_avg`) examples/s on a bare
  5-writer round of the same data (`bench.fedavg_throughput --setting=femnist_sun
  --num_clients=5`, in a subprocess with the new settings), and the whole-run throughput over
  each (`x_vanilla`, `x_keras`);
- `ratios`: new runs/hour over old (and over cold) at each `--parallel`, the best of new over
  the best of old, and each mode's whole-run examples/s at `--parallel=1` over the reference's.

Modes: `old` = the environment and flags as before issue 28: TensorFlow's own oneDNN default
for this CPU (asked of TensorFlow in a subprocess without TF_ENABLE_ONEDNN_OPTS), TF's default
threads in every child, the evaluation flags of before (`OLD_FLAGS`) and a fresh
`python -m experiments.emnist_backdoor` process per run; `cold` = the package's defaults and
what the sweep hands each child now (`parallelism.thread_env`), still a process per run
(`--warm_workers=false`); `new` = the same in the sweep's warm workers (its default: TensorFlow
imported and a TFF worker started once per worker, `studies.warm_workers`). In a warm worker
the first run pays the imports, the later ones do not: `per_run` shows both.
`--extra_flags` are appended to every run (the tests shrink the run with them).
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

from absl import app
from absl import flags

from bench import common
from tff_backdoor import cli
from tff_backdoor import metrics_io
from tff_backdoor.execution import parallelism
from tff_backdoor.run import rundir

MODES = ('old', 'cold', 'new')
# The evaluation flags of before issue 28 (passed explicitly, so later defaults do not leak in).
OLD_FLAGS = ('--eval_subset=4000', '--eval_batch_size=500', '--eval_every=1')
ONEDNN = 'TF_ENABLE_ONEDNN_OPTS'

flags.DEFINE_integer('runs', 4, 'Runs per mode and --parallel value (seeds 0..runs-1).',
                     lower_bound=1)
flags.DEFINE_integer('rounds', 20, 'Rounds per run.', lower_bound=1)
flags.DEFINE_list('parallel', ['1', '2'], 'Runs at once (the sweep\'s --parallel), each value.')
flags.DEFINE_list('modes', list(MODES), 'Any of old, cold, new (module doc).')
flags.DEFINE_string('data_dir', None, 'LEAF FEMNIST folder (default ../shared/data/femnist).')
flags.DEFINE_string('extra_flags', '', 'Flags appended to every run (e.g. to shrink it).')
flags.DEFINE_integer('reference_repeats', 3, 'Repetitions of the Keras / vanilla TFF reference '
                     'round (0 = no reference).', lower_bound=0)
flags.DEFINE_string('output', None, 'Also write the JSON here.')
FLAGS = flags.FLAGS


def tf_default_onednn() -> bool:
  """Whether TensorFlow turns oneDNN on by itself on this CPU (asked in a clean subprocess)."""
  env = {k: v for k, v in os.environ.items() if k != ONEDNN}
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  code = ('from tensorflow.python.util import _pywrap_util_port as p; '
          'print(int(p.IsMklEnabled()))')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True, timeout=600)
  return out.stdout.strip().splitlines()[-1] == '1'


def mode_environ(mode: str, onednn_default: bool) -> Dict[str, Optional[str]]:
  """Environment changes for a mode (None = unset). `old`: TF's defaults, spelled out so the
  package's newer defaults (oneDNN on, the sweep's thread shares) cannot apply."""
  if mode == 'old':
    return {ONEDNN: '1' if onednn_default else '0', parallelism.INTRA_OP: '0',
            parallelism.INTER_OP: '0'}
  return {}  # the environment as it is: the package's defaults decide


def _apply(changes: Dict[str, Optional[str]]) -> None:
  for key, value in changes.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


@contextlib.contextmanager
def environ(changes: Dict[str, Optional[str]]) -> Iterator[None]:
  """os.environ with `changes` inside the block (the sweep hands its environment on)."""
  saved = {k: os.environ.get(k) for k in changes}
  try:
    _apply(changes)
    yield
  finally:
    _apply(saved)


def run_report(directory: str, wall: float) -> Dict[str, Any]:
  """One finished run: wall time, examples trained and where the time went."""
  final = metrics_io.read_json(os.path.join(directory, rundir.FINAL_FILE))
  rows = metrics_io.read_jsonl(os.path.join(directory, 'metrics.jsonl'))
  execution = metrics_io.read_json(os.path.join(directory, rundir.CONFIG_FILE))['execution']
  rounds = [r['round_seconds'] for r in rows]
  examples = int(final['examples_trained'])
  return {'wall_seconds': round(wall, 2), 'run_seconds': round(final['seconds'], 2),
          'fixed_seconds': round(wall - final['seconds'], 2),
          'first_round_seconds': round(rounds[0], 3),
          'later_round_seconds_median': round(statistics.median(rounds[1:] or rounds), 3),
          'eval_share': round(final['eval_seconds'] / max(sum(rounds), 1e-9), 3),
          'examples_trained': examples, 'examples_per_s': round(examples / wall, 1),
          'model_sha256': final['model_sha256'], 'execution': execution}


def time_sweep(mode: str, parallel: int, runs: int, base_flags: Sequence[str],
               onednn_default: bool, output_dir: str) -> Dict[str, Any]:
  """Runs the runs through `run_sweep` at `parallel`; returns the mode's report."""
  from studies import sweep_grid, sweep_plan, sweeps  # pylint: disable=g-import-not-at-top
  extra = list(OLD_FLAGS) if mode == 'old' else []
  spec = sweeps.SweepSpec(output_dir=output_dir, base_flags=[*base_flags, *extra],
                          grids=[sweep_grid.parse_grid('seed=' + ','.join(map(str, range(runs))))])
  started: Dict[str, float] = {}
  finished: Dict[str, float] = {}

  def on_finish(run, state):
    finished[run.name] = time.time()
    if state != sweeps.FINISHED:
      with open(os.path.join(run.directory, sweeps.LOG_FILE)) as f:
        tail = f.read()[-1500:]
      raise RuntimeError(f'{mode} run {run.name} did not finish; its log ends:\n{tail}')
  t0 = time.time()
  with environ(mode_environ(mode, onednn_default)):
    result = sweeps.run_sweep(spec, parallel=parallel, out=common.log, on_finish=on_finish,
                              warm=mode == 'new')
  wall = time.time() - t0
  per_run = []
  for run in result.runs:
    record = metrics_io.read_json(os.path.join(run.directory, sweep_plan.RUN_RECORD))
    started[run.name] = record['started']
    per_run.append({**run_report(run.directory, finished[run.name] - started[run.name]),
                    'ran_in': record['ran_in']})
  examples = sum(r['examples_trained'] for r in per_run)
  return {'parallel': parallel, 'runs': runs, 'wall_seconds': round(wall, 2),
          'runs_per_hour': round(runs * 3600.0 / wall, 2),
          'machine_examples_per_s': round(examples / wall, 1),
          'run_wall_seconds_median': round(
              statistics.median(r['wall_seconds'] for r in per_run), 2),
          'per_run': per_run}


def reference(data_dir: str, repeats: int, extra_flags: Sequence[str]) -> Dict[str, Any]:
  """Plain Keras and vanilla TFF on a bare 5-writer round (bench.fedavg_throughput), new env."""
  epochs = [f for f in extra_flags if f.startswith('--local_epochs=')]
  command = [sys.executable, '-m', 'bench.fedavg_throughput', '--setting=femnist_sun',
             '--num_clients=5', '--variants=keras,vanilla', f'--repeats={repeats}',
             f'--data_dir={data_dir}', *epochs]
  with environ(mode_environ('new', False)):  # as the new runs: oneDNN by the package default
    out = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if out.returncode:
    raise RuntimeError(f'bench.fedavg_throughput failed: {out.stderr.strip()[-500:]}')
  report = json.loads(out.stdout)
  results = report['results']
  return {'round_examples': report['setting']['examples'],
          'keras_examples_per_s': results['keras']['examples_per_s'],
          'keras_best_examples_per_s': round(
              report['setting']['examples'] / results['keras']['min_seconds'], 1),
          'vanilla_examples_per_s': results['vanilla']['examples_per_s'],
          'vanilla_cpu_seconds': results['vanilla']['cpu_seconds']}


def ratios(modes: Dict[str, Dict[str, Any]], ref: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  """New over old runs/hour at each --parallel and best over best; whole-run examples/s at
  --parallel=1 over the reference rounds'."""
  out: Dict[str, Any] = {}
  if 'old' in modes and 'new' in modes:
    for key in modes['new']:
      for other in ('old', 'cold'):
        if key in modes.get(other, {}):
          out[f'runs_per_hour_new_over_{other}_{key}'] = round(
              modes['new'][key]['runs_per_hour'] / modes[other][key]['runs_per_hour'], 3)
    best = {m: max(r['runs_per_hour'] for r in modes[m].values()) for m in ('old', 'new')}
    out['best_runs_per_hour_new_over_old'] = round(best['new'] / best['old'], 3)
    # What a user gets from the defaults: the old sweep ran 1 at a time, the new one cores.
    default = f'parallel_{parallelism.default_parallel()}'
    if 'parallel_1' in modes['old'] and default in modes['new']:
      out['runs_per_hour_new_defaults_over_old_defaults'] = round(
          modes['new'][default]['runs_per_hour'] / modes['old']['parallel_1']['runs_per_hour'], 3)
  if ref:
    for mode, by_parallel in modes.items():
      alone = by_parallel.get('parallel_1')
      if alone:
        per_s = statistics.median(r['examples_per_s'] for r in alone['per_run'])
        out[f'{mode}_run_x_vanilla'] = round(per_s / ref['vanilla_examples_per_s'], 3)
        out[f'{mode}_run_x_keras_best'] = round(per_s / ref['keras_best_examples_per_s'], 3)
  return out


def run(runs: int, rounds: int, parallel: Sequence[str], modes: Sequence[str], data_dir: str,
        extra_flags: Sequence[str], reference_repeats: int) -> Dict[str, Any]:
  """Times every mode at every --parallel value, then the reference; returns the report."""
  bad = [m for m in modes if m not in MODES]
  if bad or not modes:
    raise ValueError(f'--modes: unknown {", ".join(bad) or "(none)"}; choose from '
                     f'{", ".join(MODES)}')
  if not parallel or not all(str(p).isdigit() and int(p) >= 1 for p in parallel):
    raise ValueError(f'--parallel must list whole numbers >= 1, got {",".join(parallel)}')
  if not os.path.isdir(data_dir):
    raise ValueError(f'--data_dir={data_dir} is not a folder (a LEAF FEMNIST folder)')
  parallel = [int(p) for p in parallel]
  onednn_default = tf_default_onednn()
  base = common.sun_run_flags(data_dir, rounds) + list(extra_flags)
  report: Dict[str, Any] = {
      'setting': {'runs': runs, 'rounds': rounds, 'flags': base, 'old_flags': list(OLD_FLAGS),
                  'cpu_count': os.cpu_count(), 'tf_default_onednn': onednn_default,
                  'new_thread_env': {p: parallelism.thread_env(p, environ={})
                                     for p in parallel}},
      'modes': {m: {} for m in modes}}
  root = tempfile.mkdtemp(prefix='sweep_throughput_')  # the runs' folders, removed at the end
  try:
    for p in parallel:  # the modes alternate at each --parallel, so drift hits both
      for mode in modes:
        common.log(f'== {mode}, --parallel={p}: {runs} runs of {rounds} rounds ==')
        r = time_sweep(mode, p, runs, base, onednn_default, os.path.join(root, f'{mode}_{p}'))
        report['modes'][mode][f'parallel_{p}'] = r
        common.log(f'{mode} --parallel={p}: {r["runs_per_hour"]:.1f} runs/hour, run wall '
                   f'{r["run_wall_seconds_median"]:.1f}s median, '
                   f'{r["machine_examples_per_s"]:.0f} examples/s over the machine')
  finally:
    shutil.rmtree(root, ignore_errors=True)
  ref = reference(data_dir, reference_repeats, extra_flags) if reference_repeats else None
  report['reference'] = ref
  report['ratios'] = ratios(report['modes'], ref)
  common.log('ratios: ' + json.dumps(report['ratios']))
  if 'cold' in modes and 'new' in modes:
    report['new_models_equal_cold'] = all(
        [r['model_sha256'] for r in report['modes']['new'][k]['per_run']] ==
        [r['model_sha256'] for r in report['modes']['cold'][k]['per_run']]
        for k in report['modes']['new'])
    common.log('new (warm workers) final models equal to cold (a process per run), seed by '
               f'seed: {report["new_models_equal_cold"]}')
  return report


main = common.json_main(lambda: run(
    FLAGS.runs, FLAGS.rounds, FLAGS.parallel, FLAGS.modes,
    FLAGS.data_dir or common.FEMNIST_DIR, shlex.split(FLAGS.extra_flags), FLAGS.reference_repeats))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
