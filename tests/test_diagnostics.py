"""Per-class accuracy and source->target rates (tff_backdoor.analysis.diagnostics) and their program."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests import tiny
from tff_backdoor import config as config_lib
from tff_backdoor.analysis import diagnostics
from tff_backdoor.run import driver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_per_class_accuracy_matches_a_direct_count():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  preds = np.array([0, 1, 0, 1, 0, 2, 1, 1, 2])
  acc = diagnostics.per_class_accuracy(labels, preds, num_classes=4)
  np.testing.assert_allclose(acc[:3], [2 / 3, 1 / 2, 2 / 4])
  assert np.isnan(acc[3])  # no examples of class 3
  assert diagnostics.confusion_rate(labels, preds, source=2, target=1) == pytest.approx(0.5)
  report = diagnostics.class_report(labels, preds, 4, source=2, target=1)
  assert report['accuracy'] == pytest.approx(5 / 9)
  assert report['source_to_target'] == pytest.approx(0.5)
  assert 'source_to_target' not in diagnostics.class_report(labels, preds, 4, source=-1, target=1)


def test_mismatched_lengths_are_refused():
  with pytest.raises(ValueError, match='labels'):
    diagnostics.per_class_accuracy(np.zeros(3), np.zeros(4), 2)


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'experiments.per_class_accuracy', *args],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_program_reports_a_finished_run(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  out = tmp_path / 'run'
  final = driver.run_experiment(config_lib.ExperimentConfig.from_flat(
      dataset='idx', data_dir=idx_dir, model='tiny_cnn', partition='iid', num_clients=6,
      clients_per_round=3, rounds=1, batch_size=10, server_holdout=30, seed=2,
      output_dir=str(out), verbose=False, tensorboard=False, task='targeted', source_class=2,
      target_class=0, schedule='fixed_frequency'))
  result = _cli(str(out), f'--output={tmp_path / "report.json"}')
  assert result.returncode == 0, result.stderr
  assert 'accuracy' in result.stdout and '2->0' in result.stdout
  with open(tmp_path / 'report.json') as f:
    report = json.load(f)[str(out)]
  assert report['accuracy'] == pytest.approx(final['test_accuracy'], abs=1e-6)
  assert len(report['per_class_accuracy']) == 3


def test_program_refuses_a_directory_that_is_not_a_run(tmp_path):
  result = _cli(str(tmp_path))
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode != 0 and len(lines) == 1
  assert lines[0].startswith('error:') and 'config.json' in lines[0]


def test_program_refuses_an_unwritable_output_before_the_work(tmp_path):
  # The run directory is no run: were --output checked after the work, that would be the error.
  result = _cli(str(tmp_path), '--output=/proc/x.json')
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert lines[0].startswith('error: --output=/proc/x.json cannot be written')


def test_attack_round_summary_compares_attack_rounds_with_the_clean_run():
  clean = [{'round': r, 'test_accuracy': 0.8} for r in range(4)]
  attacked = [{'round': 0, 'test_accuracy': 0.8, 'backdoor_accuracy': 0.0, 'num_attackers': 0},
              {'round': 1, 'test_accuracy': 0.6, 'backdoor_accuracy': 1.0, 'num_attackers': 1},
              {'round': 2, 'test_accuracy': 0.8, 'backdoor_accuracy': 0.2, 'num_attackers': 1},
              {'round': 3, 'test_accuracy': 0.7, 'backdoor_accuracy': 0.95, 'num_attackers': 1}]
  s = diagnostics.attack_round_summary(clean, attacked, backdoor_threshold=0.9)
  assert (s['attack_rounds'], s['rounds_above'], s['first_round_above']) == (3, 2, 1)
  assert s['gap_min'] == pytest.approx(0.1) and s['gap_max'] == pytest.approx(0.2)
  assert s['mean_test'] == pytest.approx(0.7) and s['mean_clean_test'] == pytest.approx(0.8)
  assert s['mean_backdoor'] == pytest.approx((1.0 + 0.2 + 0.95) / 3)
  with pytest.raises(ValueError, match='no evaluated attack round'):
    diagnostics.attack_round_summary(clean, attacked[:1])


def _summary_run(directory, rows, **config):
  """A run directory with these metrics.jsonl rows and a config.json of these flat keys."""
  os.makedirs(directory)
  with open(directory / 'metrics.jsonl', 'w') as f:
    f.write('\n'.join(json.dumps(r) for r in rows) + '\n')
  flat = dict(dict(dataset='fashion_mnist', task='targeted', source_class=7), **config)
  with open(directory / 'config.json', 'w') as f:
    json.dump(config_lib.ExperimentConfig.from_flat(**flat).to_dict(), f)
  return str(directory)


def _summary(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'experiments.attack_summary', *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=300)


_CLEAN_ROWS = [{'round': 0, 'test_accuracy': 0.8, 'num_attackers': 0}]
_HIT_ROWS = [{'round': 0, 'test_accuracy': 0.5, 'backdoor_accuracy': 1.0, 'num_attackers': 1}]


def test_attack_summary_program_prints_a_line_per_run(tmp_path):
  clean = _summary_run(tmp_path / 'clean', _CLEAN_ROWS)
  hit = _summary_run(tmp_path / 'hit', _HIT_ROWS)
  result = _summary(f'--clean={clean}', hit)
  assert result.returncode == 0, result.stderr
  assert 'in 1/1 attack rounds' in result.stdout and '0.300..0.300' in result.stdout
  bad = _summary(f'--clean={tmp_path / "nope"}', hit)
  lines = [l for l in bad.stderr.splitlines() if l.strip()]
  assert bad.returncode != 0 and len(lines) == 1 and 'metrics.jsonl' in lines[0]


@pytest.mark.parametrize('clean_config,run_config,message', [
    ({}, dict(dataset='mnist'), 'data set mnist but the clean run .* has fashion_mnist'),
    (dict(dataset='femnist', data_dir='/leaf'),
     dict(dataset='femnist', data_dir='/leaf', only_digits=False),
     'number of classes 62 but the clean run .* has 10'),
    ({}, dict(target_class=3), 'task targeted 7->3 but the clean run .* has targeted 7->1'),
    ({}, dict(task='pixel'), 'task pixel square 5px .* but the clean run .* has targeted'),
])
def test_attack_summary_refuses_a_run_unlike_the_clean_one(tmp_path, clean_config, run_config,
                                                           message):
  clean = _summary_run(tmp_path / 'clean', _CLEAN_ROWS, **clean_config)
  other = _summary_run(tmp_path / 'other', _HIT_ROWS, **run_config)
  result = _summary(f'--clean={clean}', other)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 1 and len(lines) == 1, result.stderr
  assert re.match(f'error: .*other: {message}', lines[0]), lines[0]
  assert result.stdout == ''  # refused before any line is printed


@pytest.mark.parametrize('threshold', ['7', '-0.1', 'nan'])
def test_attack_summary_refuses_a_threshold_outside_0_1(tmp_path, threshold):
  clean = _summary_run(tmp_path / 'clean', _CLEAN_ROWS)
  result = _summary(f'--clean={clean}', clean, f'--threshold={threshold}')
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert '--threshold must be in [0, 1]' in lines[0]
