"""Plots from hand-written run outputs (no training): runs, sweeps, FLAIN, captures, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import pictures
from tff_backdoor.analysis import captures as captures_lib

from studies import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(directory, test_acc, backdoor_acc=None, flain=None, captures=False,
               eval_every=1):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'metrics.jsonl'), 'w') as f:
    for r, acc in enumerate(test_acc):
      row = {'round': r, 'train_accuracy': 0.5, 'num_attackers': 1}
      if (r + 1) % eval_every == 0 or r + 1 == len(test_acc):
        row['test_accuracy'] = acc
        if backdoor_acc is not None:
          row['backdoor_accuracy'] = backdoor_acc[r]
      f.write(json.dumps(row) + '\n')
  final = {'rounds': len(test_acc), 'test_accuracy': test_acc[-1]}
  if backdoor_acc is not None:
    final['backdoor_accuracy'] = backdoor_acc[-1]
  if flain is not None:
    final['flain'] = {'before': {'test_accuracy': test_acc[-1],
                                 'backdoor_accuracy': backdoor_acc[-1]},
                      'after': {'test_accuracy': flain[0], 'backdoor_accuracy': flain[1]},
                      'report': {}}
  with open(os.path.join(directory, 'final.json'), 'w') as f:
    json.dump(final, f)
  if captures:
    rng = np.random.default_rng(0)
    for r in range(2):
      malicious = np.array([True, False, False, False, False])
      kernel = rng.normal(size=(5, 3, 2))
      bias = rng.normal(scale=0.01, size=(5, 3))
      bias[0] += 5.0  # The attacker's final-layer bias stands out.
      captures_lib.save_round_capture(os.path.join(directory, 'captures'), r, [kernel, bias],
                                 ['conv/kernel', 'logits/bias'],
                                 [f'c{i}' for i in range(5)], malicious)


def test_single_run_writes_curves_flain_and_anomaly_plots(tmp_path):
  run = tmp_path / 'run'
  _write_run(str(run), [0.3, 0.5, 0.6, 0.7], [0.1, 0.8, 0.9, 0.95], flain=(0.68, 0.2),
             captures=True, eval_every=2)
  files = plots.plot_all(str(run))
  names = sorted(os.path.basename(f) for f in files)
  assert names == ['anomaly_auc.png', 'bias_scores.png', 'curves.png', 'flain.png']
  assert all(os.path.dirname(f) == str(run / 'plots') for f in files)
  for f in files:
    pictures.check_png(f)


def test_sweep_groups_seeds_and_skips_missing_outputs(tmp_path):
  sweep = tmp_path / 'sweep'
  runs = []
  for defense in ('none', 'clip'):
    for seed in (0, 1):
      name = f'defense={defense},seed={seed}'
      runs.append({'name': name, 'flags': {'defense': defense, 'seed': str(seed)},
                   'group': f'defense={defense}', 'status': 'finished'})
      _write_run(str(sweep / name), [0.2 + 0.1 * seed, 0.5, 0.7], [0.1, 0.5 + 0.1 * seed, 0.9])
  runs.append({'name': 'defense=krum,seed=0', 'flags': {'defense': 'krum', 'seed': '0'},
               'group': 'defense=krum', 'status': 'not_run'})  # Never started: no dir.
  with open(sweep / 'sweep.json', 'w') as f:
    json.dump({'program': 'x', 'seed_flag': 'seed', 'runs': runs}, f)
  kind, groups = plots.find_groups(str(sweep))
  assert kind == 'sweep'
  assert [(g.label, len(g.runs)) for g in groups] == [('defense=none', 2), ('defense=clip', 2)]
  out = tmp_path / 'pngs'
  files = plots.plot_all(str(sweep), str(out), band='std')
  assert [os.path.basename(f) for f in files] == ['curves.png']  # No FLAIN, no captures.
  pictures.check_png(files[0])


def test_aggregate_mean_and_bands_over_seeds():
  curves = [{1: 0.2, 2: 0.4}, {1: 0.4, 2: 0.8}, {2: 0.6}]
  x, mean, low, high = plots.aggregate(curves, 'minmax')
  np.testing.assert_array_equal(x, [1, 2])
  np.testing.assert_allclose(mean, [0.3, 0.6])
  np.testing.assert_allclose(low, [0.2, 0.4])
  np.testing.assert_allclose(high, [0.4, 0.8])
  _, mean, low, high = plots.aggregate(curves, 'std')
  np.testing.assert_allclose(high - mean, [np.std([0.2, 0.4], ddof=1), 0.2])
  assert plots.curve([{'round': 0, 'test_accuracy': None}, {'round': 1, 'test_accuracy': 0.5}],
                     'test_accuracy') == {2: 0.5}


def test_directory_of_runs_is_one_line_per_run(tmp_path):
  _write_run(str(tmp_path / 'a'), [0.1, 0.2])
  _write_run(str(tmp_path / 'b'), [0.3, 0.4], flain=None)
  kind, groups = plots.find_groups(str(tmp_path))
  assert kind == 'runs' and [g.label for g in groups] == ['a', 'b']
  files = plots.plot_all(str(tmp_path))
  assert [os.path.basename(f) for f in files] == ['curves.png']


def test_library_errors(tmp_path):
  with pytest.raises(ValueError, match='no such directory'):
    plots.plot_all(str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='no metrics.jsonl'):
    plots.plot_all(str(tmp_path))


def test_missing_directory_is_one_line_error(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.plot', str(tmp_path / 'nope')], cwd=REPO,
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode != 0
  assert lines == [f'error: no such directory: {tmp_path / "nope"}'], result.stderr
  assert result.stdout == ''
