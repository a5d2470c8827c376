"""Issue 41's failing cases, run as a user would: one line per case with rc, seconds, stderr.

  python -m bench.cli_battery [--work=/tmp/cli_battery] [--sigints=20] [--only=sigint,...]

Every case runs `python -m ...` in a new interpreter on a tiny MNIST-format data set written
under --work (tests/tiny.write_idx_dataset: 600 8x8 images, 3 classes) with the tiny CNN, so
the whole battery takes a few minutes on 2 cores. Each line: case, exit code, wall seconds,
stderr line count, and the last stderr line (or what the case checks). The SIGINT case sends
SIGINT to the run's process group (as a terminal does) at random moments in [0.2, 15] s, then
0-3 s after the run's first metrics row (in the rounds however loaded the machine is), and
also reports any process of that session left behind (a TFF worker_binary, a parser).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from typing import Callable, Dict, List, Sequence, Tuple

from absl import app
from absl import flags
import h5py
import numpy as np

from tests import tiny  # TensorFlow: imported before absl's main (Keras needs it so)
from tff_backdoor import interrupts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string('work', '/tmp/cli_battery', 'Scratch folder (deleted and rewritten).')
flags.DEFINE_integer('sigints', 20, 'Ctrl-C tries at 0.2-15 s of the run.', lower_bound=0)
flags.DEFINE_integer('sigints_in_rounds', 10, 'Ctrl-C tries 0-3 s after its first row.',
                     lower_bound=0)
flags.DEFINE_list('only', [], 'Run only these cases (names as printed).')
flags.DEFINE_integer('seed', 41, 'Seed of the SIGINT moments.')
FLAGS = flags.FLAGS

Result = Tuple[int, float, List[str]]  # exit code, seconds, non-blank stderr lines


def tiny_flags(data_dir: str, out: str, **extra) -> List[str]:
  """The flags of a tiny run of experiments.emnist_backdoor on `data_dir`."""
  values = dict(dataset='idx', data_dir=data_dir, model='tiny_cnn', partition='iid',
                num_clients=12, clients_per_round=4, rounds=3, batch_size=10,
                server_holdout=30, eval_subset=0, output_dir=out)
  values.update(extra)
  return [f'--{k}={v}' for k, v in values.items()]


def run(module: str, args: Sequence[str], **popen) -> Result:
  """Runs `python -m module args` from the repository; (rc, seconds, stderr lines)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  start = time.time()
  done = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env, text=True,
                        capture_output=True, check=False, timeout=900, **popen)
  return done.returncode, time.time() - start, [l for l in done.stderr.splitlines() if l.strip()]


def experiment(args: Sequence[str]) -> Result:
  return run('experiments.emnist_backdoor', args)


def show(case: str, result: Result, note: str = '') -> None:
  rc, seconds, lines = result
  last = lines[-1] if lines else ''
  print(f'{case:34s} rc={rc:<4d} {seconds:6.1f}s stderr_lines={len(lines):<3d} '
        f'{note or last}', flush=True)


def flip_middle_byte(path: str) -> None:
  """Flips one byte in the middle of `path`, keeping its size (a CRC error in a zip)."""
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def nan_weights(path: str) -> None:
  """Sets every model weight (not the optimizer's) inside the .keras archive `path` to NaN,
  as a run whose model turned non-finite used to save it."""
  with zipfile.ZipFile(path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  weights = path + '.weights.h5'
  with open(weights, 'wb') as f:
    f.write(members['model.weights.h5'])
  def to_nan(name: str, item) -> None:
    if isinstance(item, h5py.Dataset) and item.dtype.kind == 'f' and 'optimizer' not in name:
      item[...] = np.nan
  with h5py.File(weights, 'r+') as h5:
    h5.visititems(to_nan)
  with open(weights, 'rb') as f:
    members['model.weights.h5'] = f.read()
  os.remove(weights)
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in members.items():
      archive.writestr(name, data)


def sigint_once(data_dir: str, out: str, after_s: float, after_first_row: bool = False
                ) -> Tuple[Result, List[str]]:
  """SIGINT to the process group of a tiny 400-round run `after_s` seconds after its start
  (or after its first metrics row: in the rounds, whatever the machine's load)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  shutil.rmtree(out, ignore_errors=True)
  start = time.time()
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.emnist_backdoor',
       *tiny_flags(data_dir, out, rounds=400, checkpoint_every=5)], cwd=REPO, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
  if after_first_row:
    while proc.poll() is None and not _rows(out):
      time.sleep(0.05)
    start = time.time()
  time.sleep(max(0.0, after_s - (time.time() - start)))
  os.killpg(proc.pid, signal.SIGINT)
  try:
    _, err = proc.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
  time.sleep(0.5)
  left = interrupts.session_processes(proc.pid)
  lines = [l for l in err.splitlines() if l.strip()]
  return (proc.returncode, time.time() - start, lines), left


def case_sigints(data_dir: str, work: str) -> None:
  """--sigints moments in [0.2, 15] s of the run, then --sigints_in_rounds in [0, 3] s after
  its first metrics row (where the interrupt could land in jax's gc callback)."""
  rng = random.Random(FLAGS.seed)
  out = os.path.join(work, 'sigint')
  tries = [(round(rng.uniform(0.2, 15.0), 2), False) for _ in range(FLAGS.sigints)]
  tries += [(round(rng.uniform(0.0, 3.0), 2), True) for _ in range(FLAGS.sigints_in_rounds)]
  bad = 0
  for i, (after, in_rounds) in enumerate(tries):
    result, left = sigint_once(data_dir, out, after, in_rounds)
    ok = result[0] == 130 and len(result[2]) <= 2 and not left and not any(
        'Traceback' in l for l in result[2])
    bad += not ok
    when = f'row 1 + {after:4.2f}s' if in_rounds else f'{after:5.2f}s'
    show(f'sigint #{i + 1:02d} at {when}', result,
         f'{"ok" if ok else "FAIL"} rows_written={len(_rows(out))} '
         f'stderr={result[2][-2:] if ok else result[2][:2]} left={left}')
  print(f'sigint: {len(tries) - bad} of {len(tries)} ended rc 130, <= 2 lines, no traceback, '
        'nothing left', flush=True)


def case_flags(data_dir: str, work: str) -> None:
  out = os.path.join(work, 'flags')
  for flag in ('crfl_sigma', 'dp_sigma', 'sum_noise_stddev', 'flame_lambda'):
    show(f'--{flag}=inf', experiment(tiny_flags(data_dir, out, **{flag: 'inf'})))
  show('--output_dir=/proc/x', experiment(tiny_flags(data_dir, '/proc/x')))
  show('--output_dir=a file', experiment(tiny_flags(data_dir, os.path.join(data_dir, os.listdir(
      data_dir)[0]))))
  show('--alpha=1e-9 (dirichlet)', experiment(tiny_flags(data_dir, out, partition='dirichlet',
                                                          alpha='1e-9')))
  show('--capture_rounds=0- (3 rounds)', experiment(tiny_flags(data_dir, out,
                                                              capture_rounds='0-')),
       note=f'captured rounds: {sorted(os.listdir(os.path.join(out, "captures")))[:5]}'
       if os.path.isdir(os.path.join(out, 'captures')) else '')


def case_nonfinite(data_dir: str, work: str) -> None:
  """Models made non-finite or diverged by flags; --init_from a non-finite final model."""
  out = os.path.join(work, 'nonfinite')
  show('--client_lr=1e12 --server_lr=1e10', experiment(tiny_flags(
      data_dir, out, client_lr='1e12', server_lr='1e10', defense='sun_mean')),
       note='')
  print(f'  rows kept: {len(_rows(out))}', flush=True)
  for name, extra in (('--client_lr=50 (sun_mean)', dict(client_lr='50', defense='sun_mean')),
                      ('--client_lr=1e12 (sun_mean)', dict(client_lr='1e12',
                                                           defense='sun_mean')),
                      ('--defense=weak_dp --dp_sigma=1e30', dict(defense='weak_dp',
                                                                 dp_sigma='1e30'))):
    out = os.path.join(work, 'diverged')
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    start = time.time()
    done = subprocess.run([sys.executable, '-m', 'experiments.emnist_backdoor',
                           *tiny_flags(data_dir, out, **extra)], cwd=REPO, env=env, text=True,
                          capture_output=True, check=False)
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    final = _read(os.path.join(out, 'final.json'))
    last = (done.stdout.strip().splitlines() or [''])[-1]
    show(name, (done.returncode, time.time() - start, lines),
         note=f'diverged_round={final.get("diverged_round")}; last stdout line: {last[:110]}'
         if final else '')


def _rows(out: str) -> List[Dict]:
  try:
    with open(os.path.join(out, 'metrics.jsonl')) as f:
      return [json.loads(line) for line in f]
  except OSError:
    return []


def _read(path: str) -> Dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def case_damaged_model(data_dir: str, work: str) -> None:
  """A byte flipped in final_model.keras; a final model gone NaN (what --crfl_sigma=inf left
  before it was refused) as --init_from."""
  out = os.path.join(work, 'source')
  show('a finished tiny run', experiment(tiny_flags(data_dir, out)), note='(the source)')
  nan_source = os.path.join(work, 'nan_source')
  shutil.copytree(out, nan_source)
  nan_weights(os.path.join(nan_source, 'final_model.keras'))
  show('--init_from a NaN final model', experiment(tiny_flags(
      data_dir, os.path.join(work, 'warm_nan'), init_from=nan_source)))
  model_path = os.path.join(out, 'final_model.keras')
  flip_middle_byte(model_path)
  with zipfile.ZipFile(model_path) as z:
    print(f'  (flipped byte at {os.path.getsize(model_path) // 2}: member {z.testzip()} '
          'fails its CRC)', flush=True)
  show('flipped byte: --init_from', experiment(tiny_flags(
      data_dir, os.path.join(work, 'warm'), init_from=out)))
  show('flipped byte: per_class_accuracy', run('experiments.per_class_accuracy', [out]))
  show('flipped byte: apply_flain', run('experiments.apply_flain', [
      out, '--flain_aux_per_class=5', f'--output_dir={os.path.join(work, "flain")}']))


def case_moved_resume(data_dir: str, work: str) -> None:
  """The issue's sequence: run A (6 rounds, a checkpoint a round) Ctrl-C'd after 3 rows; run B
  started over with --overwrite=move (A goes to DIR.old-1); --resume A where it now is."""
  out = os.path.join(work, 'moved')
  args = tiny_flags(data_dir, out, rounds=6, checkpoint_every=1)
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.emnist_backdoor', *args],
                          cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  while proc.poll() is None and len(_rows(out)) < 3:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGINT)
  proc.wait()
  print(f'  A interrupted (rc {proc.returncode}) after {len(_rows(out))} rows', flush=True)
  show('B: the same flags, --overwrite=move', experiment([*args, '--overwrite=move']))
  moved = out + '.old-1'
  result = experiment([*args[:-1], f'--output_dir={moved}', '--resume'])
  same = [_no_time(r) for r in _rows(moved)] == [_no_time(r) for r in _rows(out)]
  show('--resume A in DIR.old-1', result,
       note=f'rounds {[r["round"] for r in _rows(moved)]}; every metric equals B\'s: {same}')


def _no_time(row: Dict) -> Dict:
  return {k: v for k, v in row.items() if k != 'round_seconds'}


def case_sweeps(data_dir: str, work: str) -> None:
  """Grid values 3 and 3.0 (in an axis; across grids); a final.json of {} in a sweep."""
  sweep = os.path.join(work, 'sweep')
  base = ' '.join(tiny_flags(data_dir, '/unused')[:-1] + ['--defense=clip'])
  show('sweep --grid=clip_norm=3,3.0', run('experiments.sweep', [
      '--grid=clip_norm=3,3.0;seed=0', f'--output_dir={sweep}', f'--base_flags={base}']))
  union = ['--grid=clip_norm=3;seed=0', '--grid=clip_norm=3.0;seed=0',
           f'--output_dir={sweep}', f'--base_flags={base}', '--parallel=1']
  result = run('experiments.sweep', union)
  runs = sorted(d for d in os.listdir(sweep) if os.path.isdir(os.path.join(sweep, d)))
  show('sweep grids clip_norm=3 + clip_norm=3.0', result, note=f'run folders: {runs}')
  final_path = os.path.join(sweep, runs[0], 'final.json')
  with open(final_path, 'w') as f:
    f.write('{}')
  result = run('experiments.sweep', union)
  show('sweep: a final.json of {}', result,
       note=f'redone: final.json now has {len(_read(final_path))} fields')


CASES: Dict[str, Callable[[str, str], None]] = {
    'flags': case_flags, 'damaged': case_damaged_model, 'nonfinite': case_nonfinite,
    'moved': case_moved_resume, 'sweeps': case_sweeps, 'sigint': case_sigints}


def main(argv: List[str]) -> None:
  del argv
  shutil.rmtree(FLAGS.work, ignore_errors=True)
  data_dir = tiny.write_idx_dataset(os.path.join(FLAGS.work, 'idx'))
  for name, case in CASES.items():
    if not FLAGS.only or name in FLAGS.only:
      case(data_dir, FLAGS.work)


if __name__ == '__main__':
  app.run(main)
