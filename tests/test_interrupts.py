"""Ctrl-C at any moment (issue 41): SIGINT to the process group, as a terminal sends it, ends
the run program with `interrupted` (one line), exit 130, and no process of its session left;
the parallel LEAF parsers still work with SIGINT ignored in them.
(tests/test_faults.py has SIGINT to the run's own process while its worker runs rounds.)"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import tiny
from tff_backdoor import interrupts
from tff_backdoor.data import leaf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')))


@pytest.mark.parametrize('after_s', [0.3, 1.5, 'first row'])
def test_sigint_to_the_group_at_any_moment_is_one_line_and_exit_130(idx_dir, tmp_path,
                                                                    after_s):
  """0.3 s: inside the imports (was a 58-line traceback); 1.5 s: TensorFlow loading; the
  first metrics row: rounds on the TFF worker (could be swallowed in jax's gc callback)."""
  out = tmp_path / 'run'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.emnist_backdoor', '--dataset=idx',
       f'--data_dir={idx_dir}', '--model=tiny_cnn', '--partition=iid', '--num_clients=8',
       '--clients_per_round=3', '--rounds=500', '--batch_size=10', '--server_holdout=20',
       f'--output_dir={out}'], cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    if after_s == 'first row':
      deadline = time.time() + 120
      rows = out / 'metrics.jsonl'
      while time.time() < deadline and not (rows.exists() and rows.stat().st_size):
        time.sleep(0.1)
      assert rows.exists() and rows.stat().st_size
    else:
      time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, 'interrupted\n')
    time.sleep(0.3)
    assert interrupts.session_processes(proc.pid) == []
    if after_s == 'first row':  # every row written stays whole
      rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
      assert [r['round'] for r in rows] == list(range(len(rows))) and rows
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()


def test_the_parallel_leaf_parsers_start_with_sigint_ignored(tmp_path, monkeypatch):
  """The spawned parsers ignore SIGINT (the run program kills them), and still parse."""
  paths = []
  for i in range(2):
    path = tmp_path / f'p{i}.json'
    path.write_text(json.dumps({'users': [f'w{i}'], 'num_samples': [1], 'user_data': {
        f'w{i}': {'x': [[1.0] * 784], 'y': [i]}}}))
    paths.append(str(path))
  monkeypatch.setattr(leaf, '_PARALLEL_BYTES', 0)
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  parsed = leaf._read_files(paths, 10)  # pylint: disable=protected-access
  assert [p.writers for p in parsed] == [['w0'], ['w1']]
  assert [int(p.labels[0]) for p in parsed] == [0, 1]
  assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the parent's is untouched
  assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_child_processes_lists_direct_children_only(tmp_path):
  child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
  try:
    assert (child.pid, 'python') in [(p, n[:6]) for p, n in interrupts.child_processes()]
  finally:
    child.kill()
    child.wait()
  assert child.pid not in [p for p, _ in interrupts.child_processes()]
