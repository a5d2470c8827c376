"""bench.sweep_throughput on tiny LEAF data: old and new settings through the sweep, one run each."""
import json
import os
import subprocess
import sys

import numpy as np

from tests import tiny


def write_leaf(root: str, writers: int = 6, per_writer: int = 16, seed: int = 0) -> str:
  """Tiny LEAF FEMNIST (28x28, background 1.0): every writer has 7s and other digits."""
  rng = np.random.default_rng(seed)
  for split, n in (('train', per_writer), ('test', per_writer // 2)):
    users = {}
    for w in range(writers):
      y = np.concatenate([[7, 7, 7], rng.integers(0, 10, n - 3)]).astype(int)
      x = np.round(rng.random((n, 784)) * 255) / 255.0
      users[f'w{w}'] = {'x': x.round(4).tolist(), 'y': y.tolist()}
    os.makedirs(os.path.join(root, split), exist_ok=True)
    with open(os.path.join(root, split, 'part.json'), 'w') as f:
      json.dump({'users': list(users), 'num_samples': [n] * writers,
                 'user_data': users}, f)
  return root


def test_old_cold_and_new_through_the_sweep_report_runs_per_hour(tmp_path):
  data = write_leaf(str(tmp_path / 'leaf'))
  out = tmp_path / 'report.json'
  result = subprocess.run(
      [sys.executable, '-m', 'bench.sweep_throughput', '--runs=1', '--rounds=2',
       '--parallel=1', '--modes=old,cold,new', '--reference_repeats=1', f'--data_dir={data}',
       f'--output={out}', '--extra_flags=--local_epochs=1 --num_tasks=1 --task_min_samples=2 '
       f'--cache_dir={tmp_path / "cache"}'],
      cwd=tiny.REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(out.read_text())
  for mode in ('old', 'cold', 'new'):
    r = report['modes'][mode]['parallel_1']
    (run,) = r['per_run']
    # 5 writers a round, one of them a norm-bounded attacker: its extra passes count too,
    # so a round trains more than the 5 writers' 5 x 16 examples.
    assert run['examples_trained'] > 2 * 5 * 16
    assert run['wall_seconds'] >= run['run_seconds'] > 0 and r['runs_per_hour'] > 0
    assert 0 < run['eval_share'] < 1
  assert report['modes']['old']['parallel_1']['per_run'][0]['examples_trained'] == (
      report['modes']['new']['parallel_1']['per_run'][0]['examples_trained'])
  assert report['modes']['old']['parallel_1']['per_run'][0]['execution']['onednn'] == (
      report['setting']['tf_default_onednn'])
  assert report['modes']['new']['parallel_1']['per_run'][0]['execution']['onednn'] is True
  cold, new = (report['modes'][m]['parallel_1']['per_run'][0] for m in ('cold', 'new'))
  assert cold['ran_in'] == 'process' and new['ran_in'].startswith('warm sweep worker')
  assert cold['examples_trained'] == new['examples_trained']
  assert report['new_models_equal_cold'] is True
  assert report['reference']['vanilla_examples_per_s'] > 0
  assert {'runs_per_hour_new_over_old_parallel_1', 'runs_per_hour_new_over_cold_parallel_1',
          'new_run_x_vanilla', 'cold_run_x_vanilla',
          'new_run_x_keras_best'} <= set(report['ratios'])


def test_bad_parallel_fails_in_one_line(tmp_path):
  code, lines = tiny.program_stderr('bench.sweep_throughput', '--parallel=two',
                                    f'--data_dir={tmp_path}')
  assert code != 0 and len(lines) == 1 and '--parallel' in lines[0]
