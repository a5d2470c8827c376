"""Checkpoint/resume: crash-safe files, and kill-then-resume equals an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import tiny
from tff_backdoor import checkpoint
from tff_backdoor import simulation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkpoint_round_trip_and_partial_write_is_ignored(tmp_path):
  state = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'n': np.int64(4)}
  checkpoint.save_checkpoint(str(tmp_path), 2, state, {'next_round': 2})
  # An interrupted later write: a temporary directory that never got renamed.
  (tmp_path / '.ckpt-000003.tmp-12345').mkdir()
  (tmp_path / '.ckpt-000003.tmp-12345' / 'state.npz').write_bytes(b'garbage')
  path = checkpoint.latest_checkpoint(str(tmp_path))
  assert path.endswith('ckpt-000002')
  restored, meta = checkpoint.load_checkpoint(path, state)
  np.testing.assert_array_equal(restored['w'], state['w'])
  assert restored['n'] == 4 and meta['next_round'] == 2
  checkpoint.save_checkpoint(str(tmp_path), 4, state, {'next_round': 4})
  assert sorted(os.listdir(tmp_path)) == ['LATEST', 'ckpt-000004']  # leftovers pruned
  with pytest.raises(ValueError, match='different configuration'):
    checkpoint.load_checkpoint(checkpoint.latest_checkpoint(str(tmp_path)), {'w': state['w']})


def _flags(idx_dir, out):
  return [f'--dataset=idx', f'--data_dir={idx_dir}', '--model=tiny_cnn', '--partition=iid',
          '--num_clients=12', '--clients_per_round=4', '--rounds=5', '--batch_size=10',
          '--server_holdout=30', '--task=targeted', '--source_class=2', '--target_class=0',
          '--num_tasks=2', '--schedule=random_fraction', '--malicious_fraction=0.25',
          '--attack=boost', '--seed=5', '--checkpoint_every=1', f'--output_dir={out}']


def _config(idx_dir, out, **kw):
  return simulation.ExperimentConfig(
      dataset='idx', data_dir=idx_dir, model='tiny_cnn', partition='iid', num_clients=12,
      clients_per_round=4, rounds=5, batch_size=10, server_holdout=30, task='targeted',
      source_class=2, target_class=0, num_tasks=2, schedule='random_fraction',
      malicious_fraction=0.25, attack='boost', seed=5, checkpoint_every=1,
      output_dir=str(out), verbose=False, **kw)


def _rows(out):
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k != 'round_seconds'} for r in rows]


def test_kill_and_resume_gives_identical_metrics(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  reference = simulation.run_experiment(_config(idx_dir, tmp_path / 'ref'))

  out = tmp_path / 'killed'
  log = open(tmp_path / 'killed.log', 'w')
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.emnist_backdoor',
                           *_flags(idx_dir, out)], cwd=REPO, stdout=log, stderr=log,
                          start_new_session=True)
  latest = out / 'checkpoints' / 'LATEST'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if latest.exists() and latest.read_text().strip() >= 'ckpt-000002':
      break
    time.sleep(0.2)
  assert proc.poll() is None, 'the run ended before it could be killed'
  os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the TFF worker dies too
  proc.wait()
  assert not (out / 'final.json').exists()

  resumed = simulation.run_experiment(_config(idx_dir, out, resume=True))
  assert _rows(out) == _rows(tmp_path / 'ref')
  assert [r['round'] for r in _rows(out)] == list(range(5))
  for key in ('test_accuracy', 'backdoor_accuracy', 'test_loss'):
    assert resumed[key] == reference[key]


def test_resume_refuses_a_different_configuration(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  cfg = _config(idx_dir, tmp_path / 'run')
  cfg.rounds = 1
  simulation.run_experiment(cfg)
  other = _config(idx_dir, tmp_path / 'run', resume=True)
  other.rounds, other.seed = 1, 6
  with pytest.raises(ValueError, match='seed'):
    simulation.run_experiment(other)
