"""Warm sweep workers: the same numbers as a process per run, failures that stay with their run."""
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests import tiny

from studies import sweep_grid
from studies import sweep_plan
from studies import sweep_worker
from studies import sweeps
from studies import warm_workers

TINY_FLAGS = ('--dataset=idx --data_dir={} --model=tiny_cnn --partition=iid --num_clients=12 '
              '--clients_per_round=4 --rounds=2 --batch_size=10 --server_holdout=30 '
              '--task=targeted --source_class=2 --target_class=0 --num_tasks=2 '
              '--schedule=fixed_frequency --attack=boost --capture_rounds=1')


def _spec(out, grid, idx_dir):
  return sweep_plan.SweepSpec(str(out), [sweep_grid.parse_grid(grid)],
                              base_flags=sweep_grid.parse_base_flags(TINY_FLAGS.format(idx_dir)))


def _record(run):
  with open(os.path.join(run.directory, sweep_plan.RUN_RECORD)) as f:
    return json.load(f)


def _final(run):
  with open(os.path.join(run.directory, 'final.json')) as f:
    return json.load(f)


def _captured_names(run):
  (path,) = glob.glob(os.path.join(run.directory, 'captures', 'round_*.npz'))
  return list(np.load(path)['variable_names'])


def test_a_run_in_a_used_warm_worker_matches_its_own_process_bit_for_bit(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  grid = 'defense=clip;seed=3,4'
  warm = sweeps.run_sweep(_spec(tmp_path / 'warm', grid, idx_dir), out=lambda s: None)
  cold = sweeps.run_sweep(_spec(tmp_path / 'cold', grid, idx_dir), warm=False,
                          out=lambda s: None)
  assert warm.exit_code == 0 and cold.exit_code == 0, (warm.failed, cold.failed)
  first, second = warm.runs
  # Both ran in one worker, the second after the first: the worker was reused.
  assert 'warm sweep worker' in _record(first)['ran_in']
  assert _record(second)['ran_in'].replace('run 2', 'run 1') == _record(first)['ran_in']
  assert all(_record(r)['ran_in'] == 'process' for r in cold.runs)
  for w, c in zip(warm.runs, cold.runs):
    for key in ('model_sha256', 'test_accuracy', 'backdoor_accuracy', 'examples_trained'):
      assert _final(w)[key] == _final(c)[key], (w.name, key)
    assert _captured_names(w) == _captured_names(c)  # Keras' layer names restart per run
  assert _final(first)['model_sha256'] != _final(second)['model_sha256']
  with open(os.path.join(second.directory, sweep_plan.LOG_FILE)) as f:
    assert 'MB resident with its TFF worker after its run 2' in f.read().splitlines()[-1]


def test_a_failed_run_leaves_the_worker_to_the_next_one(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  broken = tiny.write_idx_dataset(str(tmp_path / 'broken'))  # its files there (the sweep's
  with open(os.path.join(broken, 'train-labels-idx1-ubyte.gz'), 'r+b') as f:  # check passes),
    f.truncate(20)  # one of them cut short: the run fails when it reads it
  spec = _spec(tmp_path / 'sweep', f'data_dir={broken},{idx_dir};seed=0', idx_dir)
  lines = []
  result = sweeps.run_sweep(spec, out=lines.append)
  bad, good = result.runs
  assert result.status[bad.name] == sweep_plan.FAILED
  assert result.failed[bad.name].startswith('exit code 1: error:'), result.failed
  assert 'broken' in result.failed[bad.name]
  assert result.status[good.name] == sweep_plan.FINISHED
  assert _record(good)['ran_in'].replace('run 2', 'run 1') == _record(bad)['ran_in']


def test_a_worker_killed_mid_run_fails_that_run_only(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  spec = _spec(tmp_path / 'sweep', 'defense=none,clip;seed=0', idx_dir)
  first = sweep_plan.plan(spec)[0]
  killed = []

  def kill_first_worker():
    record = os.path.join(first.directory, sweep_plan.RUN_RECORD)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not os.path.exists(record):
      time.sleep(0.05)
    time.sleep(0.2)
    pid = int(_record(first)['ran_in'].split('pid ')[1].split()[0])
    os.killpg(pid, signal.SIGKILL)
    killed.append(pid)

  thread = threading.Thread(target=kill_first_worker)
  thread.start()
  result = sweeps.run_sweep(spec, out=lambda s: None)
  thread.join()
  second = result.runs[1]
  assert killed and result.status[first.name] == sweep_plan.FAILED
  assert result.failed[first.name].startswith(f'exit code {-signal.SIGKILL}: error: the warm '
                                             'sweep worker'), result.failed
  assert warm_workers.WORKER_LOG in result.failed[first.name]
  assert result.status[second.name] == sweep_plan.FINISHED
  assert f'pid {killed[0]} ' not in _record(second)['ran_in']  # a new worker
  assert not os.path.exists(os.path.join(first.directory, 'final.json'))


def _two_runs(tmp_path):
  """A sweep of two tiny runs in warm workers: the result and, per run, (its worker's pid,
  which of that worker's runs it was)."""
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  result = sweeps.run_sweep(_spec(tmp_path / 'sweep', 'defense=none;seed=0,1', idx_dir),
                            out=lambda s: None)
  assert result.exit_code == 0, result.failed
  ran_in = [_record(r)['ran_in'] for r in result.runs]
  return result, [(s.split('pid ')[1].split()[0], s.split('(')[1]) for s in ran_in]


@pytest.mark.parametrize('budget', ['MAX_RUNS', 'MAX_RSS_MB'])
def test_workers_retire_after_their_run_or_memory_budget(tmp_path, monkeypatch, budget):
  """A worker takes at most MAX_RUNS runs, and none after a run that left it (with its TFF
  worker) above MAX_RSS_MB; the next run gets a fresh one."""
  monkeypatch.setattr(warm_workers, budget, 1)
  result, workers = _two_runs(tmp_path)
  assert workers[0][0] != workers[1][0] and all(n == 'its run 1)' for _, n in workers)
  resident = []
  for run in result.runs:  # each run's log ends with what its worker held after it
    with open(os.path.join(run.directory, sweep_plan.LOG_FILE)) as f:
      resident += [float(line.split(': ')[1].split()[0]) for line in f
                   if 'MB resident with its TFF worker' in line]
  assert len(resident) == 2 and min(resident) > 100


def test_a_worker_within_its_budgets_takes_the_next_run(tmp_path):
  _, workers = _two_runs(tmp_path)
  assert workers[0][0] == workers[1][0] and [n for _, n in workers] == ['its run 1)',
                                                                          'its run 2)']


def test_tree_rss_counts_the_children_a_worker_started():
  """What a worker reports includes its children (the TFF worker_binary): a child holding
  200 MB adds about that much."""
  before = sweep_worker.tree_rss_mb()
  child = subprocess.Popen([sys.executable, '-c', 'import sys, time; x = bytearray(200 << 20); '
                            'x[::4096] = b"1" * len(x[::4096]); print(1, flush=True); '
                            'time.sleep(60)'], stdout=subprocess.PIPE)
  try:
    child.stdout.readline()  # its memory is touched
    assert sweep_worker.tree_rss_mb() - before > 150
  finally:
    child.kill()
    child.wait()
