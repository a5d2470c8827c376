"""Fault tests: real kills at chosen points, and what must survive them (README, "Faults").

- SIGKILL inside `checkpoint.save_checkpoint` (after the files are written but before LATEST
  moves; in the middle of writing state.npz), then --resume: every metric equals the
  uninterrupted run.
- SIGKILL / SIGTERM / SIGINT of a run: its TFF worker_binary is gone within a few seconds.
- A remote worker SIGKILLed mid-run and restarted on its port: the Sun CNN run continues and
  every metric equals local execution.
Damaged (truncated, bit-flipped) checkpoints are in tests/test_checkpoint.py, the NaN-sending
client under every defense in tests/test_aggregators.py.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow_federated as tff

from tests import tiny
from tff_backdoor import config as config_lib
from tff_backdoor.execution import workers as workers_lib
from tff_backdoor.run import driver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs experiments.emnist_backdoor with save_checkpoint SIGKILLing its own process at a point.
_CRASH_DRIVER = r'''
import os, runpy, signal, sys
from tff_backdoor.run import checkpoint
point, target = sys.argv[1], sys.argv[2]

def die():
  os.kill(os.getpid(), signal.SIGKILL)

if point == 'before_pointer':  # Checkpoint renamed into place and verified; LATEST not moved.
  real_set_latest = checkpoint._set_latest
  def set_latest(directory, name):
    if name == target:
      die()
    real_set_latest(directory, name)
  checkpoint._set_latest = set_latest
elif point == 'mid_file':  # Half of state.npz on disk (fsynced), then the kill.
  real_write_state = checkpoint._write_state
  def write_state(path, leaves):
    if target in os.path.basename(os.path.dirname(path)):
      real_write_state(path + '.full.npz', leaves)
      with open(path + '.full.npz', 'rb') as f:
        data = f.read()
      with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
      die()
    real_write_state(path, leaves)
  checkpoint._write_state = write_state
sys.argv = ['emnist_backdoor', *sys.argv[3:]]
runpy.run_module('experiments.emnist_backdoor', run_name='__main__')
'''

_RUN = dict(dataset='idx', model='tiny_cnn', partition='iid', num_clients=12,
            clients_per_round=4, rounds=4, batch_size=10, server_holdout=30, task='targeted',
            source_class=2, target_class=0, num_tasks=2, schedule='random_fraction',
            malicious_fraction=0.25, attack='boost', seed=5, checkpoint_every=1)


def _flags(run: dict) -> list:
  return [f'--{k}={v}' for k, v in run.items()]


def _raw_rows(out) -> list:
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _rows(out) -> list:
  return [{k: v for k, v in r.items() if k != 'round_seconds'} for r in _raw_rows(out)]


def _run_in_process(out, **kw) -> list:
  params = dict(_RUN, verbose=False, output_dir=str(out))
  params.update(kw)
  try:
    driver.run_experiment(config_lib.ExperimentConfig.from_flat(**params))
  finally:
    tff.backends.native.set_sync_local_cpp_execution_context()
  return _rows(out)


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')))


@pytest.fixture(scope='module')
def reference(idx_dir, tmp_path_factory):
  """Every metric of the uninterrupted run."""
  return _run_in_process(tmp_path_factory.mktemp('ref') / 'run', data_dir=idx_dir)


def _env() -> dict:
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))


@pytest.mark.parametrize('point', ['before_pointer', 'mid_file'])
def test_kill_during_checkpoint_write_then_resume_equals_uninterrupted(
    idx_dir, reference, tmp_path, point):
  out = tmp_path / 'run'
  driver = tmp_path / 'crash_driver.py'
  driver.write_text(_CRASH_DRIVER)
  with open(tmp_path / 'run.log', 'w') as log:
    proc = subprocess.run(
        [sys.executable, str(driver), point, 'ckpt-000003',
         *_flags(dict(_RUN, data_dir=idx_dir, output_dir=out))],
        cwd=REPO, env=_env(), stdout=log, stderr=log, timeout=300, check=False)
  assert proc.returncode == -signal.SIGKILL, (tmp_path / 'run.log').read_text()[-2000:]
  ckpts = out / 'checkpoints'
  assert (ckpts / 'LATEST').read_text().strip() == 'ckpt-000002'
  if point == 'before_pointer':
    assert (ckpts / 'ckpt-000003' / 'MANIFEST.json').exists()
  else:
    assert not (ckpts / 'ckpt-000003').exists()
    (partial,) = [p for p in os.listdir(ckpts) if p.startswith('.ckpt-000003.tmp-')]
    assert 0 < os.path.getsize(ckpts / partial / 'state.npz')
  assert not (out / 'final.json').exists()
  before = _raw_rows(out)
  assert len(before) == 3
  assert _run_in_process(out, data_dir=idx_dir, resume=True) == reference
  # It resumed from the newest complete checkpoint: the rows before it are kept as written
  # (timings included); a resume from an older one would have rewritten them.
  kept = 3 if point == 'before_pointer' else 2
  assert _raw_rows(out)[:kept] == before[:kept]


def _children_named(pid: int, name: str) -> list:
  found = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        stat = open(f'/proc/{entry}/stat').read()
      except OSError:
        continue
      comm, fields = stat[stat.find('(') + 1:stat.rfind(')')], stat[stat.rfind(')') + 2:].split()
      if int(fields[1]) == pid and comm.startswith(name[:15]):
        found.append(int(entry))
  return found


def _alive(pid: int) -> bool:
  """Running (not gone, not a zombie waiting for init to reap it)."""
  try:
    stat = open(f'/proc/{pid}/stat').read()
  except OSError:
    return False
  return stat[stat.rfind(')') + 2] != 'Z'


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_run_leaves_no_worker_binary(idx_dir, tmp_path, sig):
  """And Ctrl-C (SIGINT) or SIGTERM ends in one line on stderr, exit code 130 or 143, no
  traceback."""
  out = tmp_path / 'run'
  with open(tmp_path / 'run.log', 'w') as log, open(tmp_path / 'err.log', 'w') as err:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'experiments.emnist_backdoor',
         *_flags(dict(_RUN, data_dir=idx_dir, output_dir=out, rounds=500, checkpoint_every=0))],
        cwd=REPO, env=dict(_env(), TF_CPP_MIN_LOG_LEVEL='3'), stdout=log, stderr=err,
        start_new_session=True)
  try:
    deadline, workers = time.time() + 180, []
    while time.time() < deadline and proc.poll() is None:
      workers = _children_named(proc.pid, 'worker_binary')
      if workers and (out / 'metrics.jsonl').exists() and (out / 'metrics.jsonl').stat().st_size:
        break  # Its worker is running rounds.
      time.sleep(0.2)
    assert proc.poll() is None and workers, (tmp_path / 'err.log').read_text()[-2000:]
    errors_before = (tmp_path / 'err.log').read_text()
    os.kill(proc.pid, sig)  # The Python process only, not its group.
    proc.wait(timeout=60)
    if sig != signal.SIGKILL:
      added = (tmp_path / 'err.log').read_text()[len(errors_before):]
      assert (proc.returncode, added) == (
          128 + sig, {signal.SIGINT: 'interrupted\n', signal.SIGTERM: 'terminated\n'}[sig])
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(w) for w in workers):
      time.sleep(0.1)
    assert not any(_alive(w) for w in workers), f'worker(s) {workers} outlived the run'
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)  # Clean up whatever outlived it (if the test failed).
    except ProcessLookupError:
      pass
    proc.wait()


def test_sun_cnn_survives_a_worker_killed_and_restarted_mid_run(idx_dir, tmp_path):
  """Local, and two loopback workers with one SIGKILLed after round 1 and restarted on its
  port while the run waits: the same metrics, exactly (tests/test_remote.py has the run on
  two healthy workers)."""
  run = dict(model='sun_cnn', rounds=4, num_clients=8, batch_size=5, client_lr=0.2,
             checkpoint_every=0, data_dir=idx_dir)
  local = _run_in_process(tmp_path / 'local', **run)
  workers = workers_lib.start_local_workers(2)
  result, out = {}, tmp_path / 'remote'

  def drive():
    try:
      result['rows'] = _run_in_process(
          out, workers=','.join(f'{h}:{p}' for h, p in (w.address for w in workers)), **run)
    except BaseException as e:  # pylint: disable=broad-except
      result['error'] = e

  thread = threading.Thread(target=drive)
  thread.start()
  try:
    deadline = time.time() + 240
    while time.time() < deadline and thread.is_alive() and not (
        (out / 'metrics.jsonl').exists() and (out / 'metrics.jsonl').stat().st_size):
      time.sleep(0.05)
    assert thread.is_alive(), result
    port = workers[1].port
    workers[1].kill()
    workers[1].wait()
    time.sleep(1.0)  # The run sees the worker down (and retries).
    workers[1] = workers_lib.start_local_workers(1, ports=[port])[0]
    thread.join(timeout=300)
    assert not thread.is_alive(), 'the run did not finish after the worker came back'
  finally:
    workers_lib.stop_workers(workers)
  assert 'error' not in result, result.get('error')
  rows = result['rows']
  assert len(rows) == 4 and rows == local
  assert local[0]['test_loss'] != local[-1]['test_loss']
