"""Neurotoxin, constrain-and-scale, FLTrust and FoolsGold through experiments.emnist_backdoor."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import tiny
from tff_backdoor import models
from tff_backdoor.analysis import captures


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')))


def _run(idx_dir, out, *flags):
  """Runs the program on the tiny idx data (1 attacker in each round of 4); returns its rows."""
  args = ['--dataset=idx', f'--data_dir={idx_dir}', '--model=tiny_cnn', '--partition=iid',
          '--num_clients=12', '--clients_per_round=4', '--rounds=2', '--batch_size=10',
          '--server_holdout=30', '--seed=3', f'--output_dir={out}', '--task=targeted',
          '--source_class=2', '--target_class=0', '--num_tasks=2',
          '--schedule=fixed_frequency', '--attack_every=1', '--eval_subset=0', *flags]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run([sys.executable, '-m', 'experiments.emnist_backdoor', *args],
                          cwd=tiny.REPO, capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _weights(run_dir, name):
  if name.endswith('.npz'):
    saved = np.load(os.path.join(run_dir, name))
    return np.concatenate([saved[f'arr_{i}'].ravel() for i in range(len(saved.files))])
  model = tf.keras.models.load_model(os.path.join(run_dir, name),
                                     custom_objects=models.CUSTOM_OBJECTS)
  return np.concatenate([w.ravel() for w in model.get_weights()])


def test_neurotoxin_attacker_leaves_the_top_coordinates_alone(idx_dir, tmp_path):
  """Round 1's attacker update is exactly 0 on the top 30% of |w1 - w0| (w1: the same run
  stopped after round 0), and not in round 0, which has no previous update."""
  flags = ('--attack=neurotoxin', '--neurotoxin_mask_fraction=0.3')
  _run(idx_dir, tmp_path / 'one', *flags, '--rounds=1')
  _run(idx_dir, tmp_path / 'two', *flags, '--capture_rounds=0-1')
  last_update = (_weights(tmp_path / 'one', 'final_model.keras')
                 - _weights(tmp_path / 'one', 'initial_weights.npz'))
  top = np.argsort(-np.abs(last_update))[:int(0.3 * last_update.size)]
  attacker = []
  for capture in captures.load_captures(str(tmp_path / 'two' / 'captures')):
    row = int(np.flatnonzero(capture.malicious)[0])
    attacker.append(np.concatenate([u[row].ravel() for u in capture.updates]))
  np.testing.assert_array_equal(attacker[1][top], 0.0)
  assert np.count_nonzero(attacker[0][top]) > 0


def test_constrain_and_scale_anomaly_term_shrinks_the_attacker(idx_dir, tmp_path):
  """Same seed and data: the anomaly term (alpha 0.6) lowers the scaled attacker's norm."""
  norms = {}
  for alpha in ('1.0', '0.6'):
    rows = _run(idx_dir, tmp_path / alpha, '--attack=constrain_scale', f'--constrain_alpha={alpha}',
                '--rounds=1')
    norms[alpha] = rows[0]['mean_malicious_update_norm']
    with open(tmp_path / alpha / 'config.json') as f:
      assert json.load(f)['constrain_alpha'] == float(alpha)
  assert 0 < norms['0.6'] < 0.9 * norms['1.0']


def test_fltrust_bounds_the_step_by_the_server_update(idx_dir, tmp_path):
  rows = _run(idx_dir, tmp_path, '--defense=fltrust', '--fltrust_root_per_class=5',
              '--attack=boost', '--boost=50', '--rounds=1')
  row = rows[0]
  assert row['aggregator/server_update_norm'] > 0
  assert 0 <= row['aggregator/trusted_count'] <= row['aggregator/client_count'] == 4
  initial = np.load(tmp_path / 'initial_weights.npz')
  final = tf.keras.models.load_model(tmp_path / 'final_model.keras',
                                     custom_objects=models.CUSTOM_OBJECTS).get_weights()
  step = np.sqrt(sum(np.sum(np.square(final[i] - initial[f'arr_{i}']))
                     for i in range(len(final))))
  assert 0 < step <= row['aggregator/server_update_norm'] * (1 + 1e-4)  # boost 50 undone
  assert row['mean_malicious_update_norm'] > 10 * step


def test_foolsgold_knows_its_clients(idx_dir, tmp_path):
  rows = _run(idx_dir, tmp_path, '--defense=foolsgold')
  assert all(0 < r['aggregator/mean_foolsgold_weight'] <= 1 for r in rows)
  assert all(0 <= r['aggregator/zero_weight_count'] <= 4 for r in rows)
  assert all(r['aggregator/client_count'] == 4 for r in rows)
