"""Neurotoxin, constrain-and-scale, FLTrust and FoolsGold through experiments.emnist_backdoor."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import defense_references as refs
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


def _aggregates_applied(run_dir):
  """initial_weights.npz - final_model.keras, flat: with server SGD at learning rate 1, the sum
  of the rounds' aggregates (TFF's sign, as the captured updates: initial - trained)."""
  return _weights(run_dir, 'initial_weights.npz') - _weights(run_dir, 'final_model.keras')


def _flat_rows(capture):
  """[num_clients, D] float64: each captured client's update, flat in variable order."""
  return np.concatenate([u.reshape(len(u), -1) for u in capture.updates], axis=1).astype(
      np.float64)


def test_fltrust_step_is_the_trusted_updates_rescaled_to_the_server_update(idx_dir, tmp_path):
  """Cao et al.: step = ||g0|| sum_i c_i g_i / ||g_i|| with c_i = ReLU(cos_i) / sum ReLU(cos):
  the step, solved for c on the captured unit updates, has c >= 0 summing to 1, nonzero for
  exactly the trusted clients; the boosted attacker counts once, at norm ||g0||."""
  rows = _run(idx_dir, tmp_path, '--defense=fltrust', '--fltrust_root_per_class=5',
              '--attack=boost', '--boost=50', '--rounds=1', '--capture_rounds=0')
  row = rows[0]
  g0_norm = row['aggregator/server_update_norm']
  assert g0_norm > 0 and row['aggregator/client_count'] == 4
  x = _flat_rows(captures.load_captures(str(tmp_path / 'captures'))[0])
  units = x / np.linalg.norm(x, axis=1, keepdims=True)
  step = _aggregates_applied(tmp_path)
  c, *_ = np.linalg.lstsq(units.T, step / g0_norm, rcond=None)
  np.testing.assert_allclose(units.T @ c, step / g0_norm, atol=1e-4)
  assert np.all(c > -1e-4)
  assert row['aggregator/trusted_count'] == np.sum(c > 1e-4) >= 1
  np.testing.assert_allclose(np.sum(c), 1.0, atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(step), g0_norm * np.linalg.norm(units.T @ c),
                             rtol=1e-3)
  assert row['mean_malicious_update_norm'] > 10 * np.linalg.norm(step)


def test_foolsgold_weights_and_steps_match_the_reference_on_the_captured_updates(
    idx_dir, tmp_path):
  """Both rounds' FoolsGold weights (identity = a fixed index per client id: the rule only
  compares identities) and the model's step, from the captured updates."""
  rows = _run(idx_dir, tmp_path, '--defense=foolsgold', '--capture_rounds=0-1')
  rounds = captures.load_captures(str(tmp_path / 'captures'))
  ids = {c: i for i, c in enumerate(sorted({c for r in rounds for c in r.client_ids}))}
  variables = len(rounds[0].updates)
  history = np.zeros([len(ids), sum(u[0].size for u in rounds[0].updates[-2:])])
  total = 0.0
  for row, capture in zip(rows, rounds):
    updates = [[u[k] for u in capture.updates] for k in range(capture.num_clients)]
    weights = [float(ids[c] + 1) for c in capture.client_ids]
    step, history, wv = refs.foolsgold_round(updates, weights, history)
    aggregate = refs.ours(step, wv)
    assert row['aggregator/client_count'] == 4
    assert row['aggregator/zero_weight_count'] == np.sum(wv == 0)
    np.testing.assert_allclose(row['aggregator/mean_foolsgold_weight'], np.mean(wv),
                               rtol=1e-4, atol=1e-6)
    total = total + np.concatenate([np.ravel(aggregate[v]) for v in range(variables)])
  np.testing.assert_allclose(_aggregates_applied(tmp_path), total, rtol=1e-3, atol=1e-5)
