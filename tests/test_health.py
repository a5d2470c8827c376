"""The global model's health in every run (issue 41): a non-finite model stops the run in one
line naming the round with every row kept; a finite divergence is recorded (final.json's
`diverged_round`, the rows, the last summary line); `nonfinite_count` counts the updates the
client work zeroed."""
import json
import os

import pytest

from tests import tiny
from tff_backdoor.run import driver
from tff_backdoor.run import health
from tff_backdoor.run import summary


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')))


def _run(idx_dir, out, **flags):
  base = dict(num_clients=12, clients_per_round=4, rounds=3, batch_size=10, eval_subset=0)
  return driver.run_experiment(tiny.run_config(idx_dir, out, **{**base, **flags}))


def _rows(out):
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_a_healthy_run_is_finite_and_moves_a_fraction_of_its_norm(idx_dir, tmp_path):
  final = _run(idx_dir, tmp_path / 'run')
  rows = _rows(tmp_path / 'run')
  assert final['diverged_round'] is None
  assert [r['model_finite'] for r in rows] == [True] * 3
  assert all(0 < r['model_update_norm'] < r['model_norm'] for r in rows)
  assert all(r['update_vs_model'] < 1 and not r['model_diverged'] for r in rows)
  assert rows[0]['update_vs_previous'] is None and rows[1]['update_vs_previous'] > 0
  assert [r['nonfinite_count'] for r in rows] == [0, 0, 0]


def test_a_finite_divergence_is_a_result_with_its_round(idx_dir, tmp_path, capsys):
  """client_lr=50 under sun_mean: round 0's update is ~1e5 times the model; the run ends
  normally and says so."""
  out = tmp_path / 'run'
  final = _run(idx_dir, out, client_lr=50.0, defense={'name': 'sun_mean'}, verbose=True)
  rows = _rows(out)
  assert final['diverged_round'] == 0
  with open(out / 'final.json') as f:
    assert json.load(f)['diverged_round'] == 0
  assert [r['model_diverged'] for r in rows] == [True, False, False]  # the first one only
  assert rows[0]['update_vs_model'] > health.DIVERGED_VS_MODEL
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith('the model DIVERGED at round 0: that round applied an update of norm')


def test_a_non_finite_model_stops_the_run_naming_the_round_and_keeps_its_rows(idx_dir,
                                                                            tmp_path):
  """client_lr=1e12 with server_lr=1e10: every client update overflows (zeroed: counted in
  nonfinite_count, which stayed 0 before) or the model does."""
  out = tmp_path / 'run'
  with pytest.raises(health.NonFiniteModel,
                     match=r'^the global model is not finite after round 0 \(\d+ weights NaN'):
    _run(idx_dir, out, client_lr=1e12, server_lr=1e10, defense={'name': 'sun_mean'}, checkpoint_every=1)
  rows = _rows(out)
  assert [(r['round'], r['model_finite']) for r in rows] == [(0, False)]
  assert rows[0]['nonfinite_weights'] > 0 and rows[0]['nonfinite_count'] >= 1
  assert not os.path.exists(out / 'checkpoints' / 'LATEST')  # no checkpoint of a broken model
  assert not os.path.exists(out / 'final.json')


def test_the_rows_count_what_the_client_work_and_tffs_finalizer_refused():
  flat = {'client_work/nonfinite_count': 2, 'aggregator/nonfinite_count': 1,
          'finalizer/update_non_finite': 1}
  row = driver.round_row(4, flat, [False, True])
  assert (row['nonfinite_count'], row['update_non_finite'], row['num_attackers']) == (3, 1, 1)


def test_the_divergence_rule_and_its_words():
  assert health.diverged(11.0, 1.0, []) and not health.diverged(9.0, 1.0, [])
  assert health.diverged(2e4 + 1, 1e9, [1.0, 2.0, 3.0])  # 1e4 x the median 2.0
  assert not health.diverged(1e4, 1e9, [1.0, 2.0, 3.0])
  rows = [{'round': 0, 'model_diverged': False},
          {'round': 1, 'model_diverged': True, 'model_update_norm': 4.6e8,
           'update_vs_model': 9.2e6, 'update_vs_previous': 1e8}]
  assert summary.summary_lines(rows, {'name': 'none'})[-1] == (
      "the model DIVERGED at round 1: that round applied an update of norm 4.6e+08, 9.2e+06 "
      "times the model's own norm, 1e+08 times the earlier rounds' median; the numbers after "
      'it are of a broken model')
