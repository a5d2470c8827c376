"""Issue 41's failing cases, run as a user would: one line per case with rc, seconds, stderr.

  python -m bench.cli_battery [--work=/tmp/cli_battery] [--sigints=20] [--only=sigint,...]

Every case runs `python -m ...` in a new interpreter on a tiny MNIST-format data set written
under --work (tests/tiny.write_idx_dataset: 600 8x8 images, 3 classes) with the tiny CNN, so
the whole battery takes a few minutes on 2 cores. Each line: case, exit code, wall seconds,
stderr line count, and the last stderr line (or what the case checks). The SIGINT case sends
SIGINT to the run's process group (as a terminal does) at random moments in [0.2, 15] s and
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

from tff_backdoor import interrupts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string('work', '/tmp/cli_battery', 'Scratch folder (deleted and rewritten).')
flags.DEFINE_integer('sigints', 20, 'Ctrl-C tries.', lower_bound=0)
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


def sigint_once(data_dir: str, out: str, after_s: float) -> Tuple[Result, List[str]]:
  """SIGINT to the process group of a tiny 400-round run `after_s` seconds after its start."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  shutil.rmtree(out, ignore_errors=True)
  start = time.time()
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.emnist_backdoor',
       *tiny_flags(data_dir, out, rounds=400, checkpoint_every=5)], cwd=REPO, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
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
  rng = random.Random(FLAGS.seed)
  bad = 0
  for i in range(FLAGS.sigints):
    after = round(rng.uniform(0.2, 15.0), 2)
    result, left = sigint_once(data_dir, os.path.join(work, 'sigint'), after)
    ok = result[0] == 130 and len(result[2]) <= 2 and not left and not any(
        'Traceback' in l for l in result[2])
    bad += not ok
    show(f'sigint #{i + 1:02d} at {after:5.2f}s', result,
         f'{"ok" if ok else "FAIL"} stderr={result[2][-2:]} left={left}')
  print(f'sigint: {FLAGS.sigints - bad} of {FLAGS.sigints} ended rc 130, <= 2 lines, no '
        'traceback, nothing left', flush=True)


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
  """A model turned non-finite (client_lr=1e12 under sun_mean), then --init_from it."""
  out = os.path.join(work, 'nonfinite')
  result = experiment(tiny_flags(data_dir, out, client_lr='1e12', defense='sun_mean',
                                 checkpoint_every=1))
  show('--client_lr=1e12 (non-finite)', result)
  show('--init_from the non-finite run', experiment(tiny_flags(
      data_dir, os.path.join(work, 'warm_nonfinite'), init_from=out)))
  out = os.path.join(work, 'diverged')
  result = experiment(tiny_flags(data_dir, out, client_lr='50', defense='sun_mean'))
  final = _read(os.path.join(out, 'final.json'))
  show('--client_lr=50 (finite divergence)', result,
       note=f'final.json diverged_round={final.get("diverged_round")}')


def _read(path: str) -> Dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def case_damaged_model(data_dir: str, work: str) -> None:
  out = os.path.join(work, 'source')
  show('a finished tiny run', experiment(tiny_flags(data_dir, out)))
  model = os.path.join(out, 'final_model.keras')
  flip_middle_byte(model)
  with zipfile.ZipFile(model) as z:
    crc = z.testzip()
  show('flipped byte: --init_from', experiment(tiny_flags(
      data_dir, os.path.join(work, 'warm'), init_from=out)), note='')
  show('flipped byte: per_class_accuracy', run('experiments.per_class_accuracy',
                                               [f'--run_dir={out}']))
  show('flipped byte: apply_flain', run('experiments.apply_flain', [
      f'--run_dir={out}', f'--output_dir={os.path.join(work, "flain")}']))
  print(f'  (the damaged member: {crc})', flush=True)


def case_moved_resume(data_dir: str, work: str) -> None:
  """Run killed-like (3 of 6 rounds, checkpoints), moved by --overwrite=move, --resume'd."""
  out = os.path.join(work, 'moved')
  args = dict(rounds=6, checkpoint_every=1)
  experiment(tiny_flags(data_dir, out, **args))
  # Make it unfinished: drop the final files, keep rounds 0-2's checkpoint.
  for name in ('final.json', 'final_model.keras'):
    os.remove(os.path.join(out, name))
  moved = out + '.elsewhere'
  shutil.rmtree(moved, ignore_errors=True)
  shutil.move(out, moved)
  result = experiment(tiny_flags(data_dir, moved, resume='true', **args))
  show('--resume of a moved run', result,
       note=f'final.json rounds={_read(os.path.join(moved, "final.json")).get("rounds")} '
       f'{result[2][-1] if result[2] else ""}')


def case_sweeps(data_dir: str, work: str) -> None:
  """A final.json of {} in a sweep; the grid clip_norm=3,3.0."""
  sweep = os.path.join(work, 'sweep')
  grid = os.path.join(work, 'grid.txt')
  with open(grid, 'w') as f:
    f.write('defense=clip\nclip_norm=3,3.0\n')
  base = ' '.join(tiny_flags(data_dir, '/unused')[:-1])
  result = run('experiments.sweep', [f'--grid={grid}', f'--output_dir={sweep}', '--seeds=1',
                                     f'--base_flags={base}', '--parallel=1'])
  runs = sorted(d for d in os.listdir(sweep) if os.path.isdir(os.path.join(sweep, d)))
  show('sweep grid clip_norm=3,3.0', result, note=f'run folders: {runs}')
  if runs:
    with open(os.path.join(sweep, runs[0], 'final.json'), 'w') as f:
      f.write('{}')
  result = run('experiments.sweep', [f'--grid={grid}', f'--output_dir={sweep}', '--seeds=1',
                                     f'--base_flags={base}', '--parallel=1'])
  final = _read(os.path.join(sweep, runs[0], 'final.json')) if runs else {}
  show('sweep: a final.json of {}', result,
       note=f'rerun: final.json now has {len(final)} fields')


CASES: Dict[str, Callable[[str, str], None]] = {
    'flags': case_flags, 'damaged': case_damaged_model, 'nonfinite': case_nonfinite,
    'moved': case_moved_resume, 'sweeps': case_sweeps, 'sigint': case_sigints}


def main(argv: List[str]) -> None:
  del argv
  sys.path.insert(0, REPO)
  from tests import tiny  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  shutil.rmtree(FLAGS.work, ignore_errors=True)
  data_dir = tiny.write_idx_dataset(os.path.join(FLAGS.work, 'idx'))
  for name, case in CASES.items():
    if not FLAGS.only or name in FLAGS.only:
      case(data_dir, FLAGS.work)


if __name__ == '__main__':
  app.run(main)
