"""Anticipate (Wen et al. 2022): the unrolled gradient against a NumPy reference, the client
work's cost in examples_trained, and a run through experiments.emnist_backdoor."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import tiny
from tff_backdoor.attacks import AttackConfig, make_client_data
from tff_backdoor.attacks import anticipate

LR, CLIENTS = 0.3, 4


class _Linear:
  """Least squares on a linear model: loss = mean((x w - y)^2) / 2; a `forward_pass` model."""

  def __init__(self, dim):
    self.w = tf.Variable(tf.zeros([dim], tf.float64))

  def forward_pass(self, batch, training=True):
    del training
    residual = tf.linalg.matvec(batch['x'], self.w) - batch['y']
    return collections.namedtuple('Output', 'loss')(0.5 * tf.reduce_mean(residual ** 2))


def _loss(w, batch):
  return 0.5 * np.mean((batch['x'] @ w - batch['y']) ** 2)


def _unrolled_loss(wa, w0, clean, backdoor, rounds):
  """sum_j L_b(g_j) written out in NumPy (the module docstring's unroll, no derivatives)."""
  step = lambda w: w - LR * clean['x'].T @ (clean['x'] @ w - clean['y']) / len(clean['y'])
  g = (wa + (CLIENTS - 1) * step(w0)) / CLIENTS
  total = _loss(g, backdoor)
  for _ in range(rounds - 1):
    g = step(g)
    total += _loss(g, backdoor)
  return total


@pytest.mark.parametrize('rounds', [1, 3])
def test_unrolled_gradient_equals_finite_differences_of_the_unrolled_loss(rounds):
  rng = np.random.default_rng(0)
  dim = 3
  clean = {'x': rng.normal(size=(6, dim)), 'y': rng.normal(size=6)}
  backdoor = {'x': rng.normal(size=(5, dim)), 'y': rng.normal(size=5) + 2.0}
  w0, wa = rng.normal(size=dim), rng.normal(size=dim)
  model = _Linear(dim)
  sim = anticipate.Simulator(model, [model.w])
  honest = sim.benign_step([tf.constant(w0)], clean, tf.constant(LR, tf.float64))
  got = anticipate.anticipated_gradient(sim, [tf.constant(wa)], honest, clean, backdoor,
                                        CLIENTS, rounds, tf.constant(LR, tf.float64))[0].numpy()
  eps = 1e-6
  want = np.array([(_unrolled_loss(wa + eps * e, w0, clean, backdoor, rounds)
                    - _unrolled_loss(wa - eps * e, w0, clean, backdoor, rounds)) / (2 * eps)
                   for e in np.eye(dim)])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
  if rounds > 1:  # the future rounds matter: not the one-round gradient
    one = anticipate.anticipated_gradient(sim, [tf.constant(wa)], honest, clean, backdoor,
                                          CLIENTS, 1, tf.constant(LR, tf.float64))[0].numpy()
    assert np.linalg.norm(got - one) > 0.1 * np.linalg.norm(one)


def test_client_work_counts_the_simulation_in_num_examples():
  """Benign 12 (batches of 4), malicious 5: the mixture's 5 batches (4, 4, 4, 4, 1), k = 2,
  one epoch: per step 2 |batch| + 3 * 1 * |b0| = 2 |batch| + 12; plus B(w0) on b0 (4):
  2 * 17 + 5 * 12 + 4 = 98 example passes, and an honest client's 12 beside it."""
  attack = AttackConfig('anticipate', anticipate_rounds=2, anticipate_epochs=1,
                        anticipate_clients=CLIENTS)
  work = tiny.client_work(attack, LR)
  weights = tiny.initial_weights()
  benign, malicious = tiny.dataset(12, seed=1), tiny.dataset(5, seed=2)
  clients = [make_client_data(benign, malicious, True, 5),
             make_client_data(benign, tiny.dataset(0, seed=3), False, 6)]
  out = work.next(work.initialize(), [weights, weights], clients)
  assert out.measurements['train']['num_examples'] == 98 + 12
  attacker = np.concatenate([np.ravel(u) for u in out.result[0].update])
  assert np.all(np.isfinite(attacker)) and np.abs(attacker).max() > 0
  assert out.result[0].update_weight == 17.0


def test_anticipate_run_end_to_end(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  out = tmp_path / 'run'
  args = ['--dataset=idx', f'--data_dir={idx_dir}', '--model=tiny_cnn', '--partition=iid',
          '--num_clients=12', '--clients_per_round=4', '--rounds=3', '--batch_size=10',
          '--server_holdout=30', '--seed=3', f'--output_dir={out}', '--task=targeted',
          '--source_class=2', '--target_class=0', '--num_tasks=2', '--attack_stop=2',
          '--schedule=fixed_frequency', '--attack_every=1', '--eval_subset=0',
          '--attack=anticipate', '--anticipate_epochs=1', '--lifespan_threshold=0.01']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run([sys.executable, '-m', 'experiments.emnist_backdoor', *args],
                          cwd=tiny.REPO, capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  with open(out / 'final.json') as f:
    final = json.load(f)
  assert [r['num_attackers'] for r in rows] == [1, 1, 0]
  # The attacker's simulation costs more passes than its data: attacked rounds train more.
  assert rows[0]['examples_trained'] > 1.5 * rows[2]['examples_trained']
  assert final['examples_trained'] == sum(r['examples_trained'] for r in rows)
  assert final['last_attack_round'] == 1 and final['lifespan_threshold'] == 0.01
  assert final['lifespan_rounds'] in (0, 1)
