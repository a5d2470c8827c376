"""Tests of the Bilgin factor sweeps (studies.localization_study and its program)."""
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import pictures
from tests import tiny
from tff_backdoor.analysis import anomaly
from tff_backdoor.analysis import captures as captures_lib
from tff_backdoor.attacks import malicious_rate
from tff_backdoor.attacks import tasks as tasks_lib

from studies import localization_study as study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- sweep expansion


def test_full_sweep_has_one_point_per_task_partition_factor_value():
  points = study.expand_sweep()
  assert len(points) == 2 * 3 * (5 + 3 + 4)
  runs = study.unique_runs(points)
  # The baseline is shared by the three factors' sweeps: 2 of 12 values per cell are repeats.
  assert len(runs) == 2 * 3 * 10
  for p in points:
    settings = {'num_malicious': p.run.num_malicious, 'client_lr': p.run.client_lr,
                'malicious_rate': p.run.malicious_rate}
    assert settings[p.factor] == pytest.approx(p.value)
    for other in study.FACTORS:
      if other != p.factor:
        assert settings[other] == pytest.approx(study.BASELINE[other])
    assert (p.task, p.partition, p.seed) == (p.run.task, p.run.partition, p.run.seed)
  cells = {}
  for p in points:
    cells.setdefault((p.task, p.partition, p.factor), []).append(p.is_baseline)
  assert len(cells) == 2 * 3 * 3
  assert all(sum(flags) == 1 for flags in cells.values())
  assert len({r.name for r in runs}) == len(runs)


def test_subset_sweep_keeps_the_given_order_and_seeds():
  points = study.expand_sweep(['client_lr', 'num_malicious'], ['pixel'], ['dirichlet0.1'],
                              seeds=[3, 4], values={'num_malicious': [2, 1]})
  got = [(p.seed, p.factor, p.value) for p in points]
  assert got == [(3, 'client_lr', 0.01), (3, 'client_lr', 0.03), (3, 'client_lr', 0.1),
                 (3, 'num_malicious', 2), (3, 'num_malicious', 1),
                 (4, 'client_lr', 0.01), (4, 'client_lr', 0.03), (4, 'client_lr', 0.1),
                 (4, 'num_malicious', 2), (4, 'num_malicious', 1)]
  assert len(study.unique_runs(points)) == 2 * 4  # baseline shared within each seed
  assert all(p.run.task == 'pixel' and p.run.partition == 'dirichlet0.1' for p in points)


@pytest.mark.parametrize('kwargs,message', [
    (dict(factors=['nope']), 'unknown factor'),
    (dict(tasks=['none']), 'unknown task'),
    (dict(partitions=['dirichletx']), 'bad partition'),
    (dict(partitions=['iid', 'iid']), 'repeated partition'),
    (dict(values={'num_malicious': [10]}), 'num_malicious'),
    (dict(values={'malicious_rate': [0.0]}), 'malicious_rate'),
    (dict(values={'malicious_rate': [1.5]}), 'malicious_rate'),
    (dict(values={'client_lr': [-0.1]}), 'client_lr'),
    (dict(seeds=[]), 'no seed'),
])
def test_bad_sweeps_raise_value_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    study.expand_sweep(**kwargs)


def test_parsers():
  assert study.parse_partition('iid') == ('iid', None)
  assert study.parse_partition('dirichlet0.5') == ('dirichlet', 0.5)
  assert study.parse_partition('dirichlet0.1') == ('dirichlet', 0.1)
  with pytest.raises(ValueError):
    study.parse_partition('dirichlet0')
  assert study.parse_partition('writers') == ('writers', None)
  assert study.parse_number('1/10') == pytest.approx(0.1)
  assert study.parse_number('0.03') == pytest.approx(0.03)
  with pytest.raises(ValueError, match='bad number'):
    study.parse_number('1/0')


def test_experiment_config_of_the_baseline_and_of_a_sweep_point():
  settings = study.StudySettings(rounds=7)
  base = study.experiment_config(settings, study.expand_sweep(['num_malicious'], ['targeted'],
                                                              ['iid'])[0].run).to_dict()
  assert (base['num_clients'], base['clients_per_round']) == (10, 10)
  assert (base['schedule'], base['malicious_fraction'], base['attackers_per_round']) == (
      'fixed_per_round', 0.1, 1)
  assert (base['attack'], base['client_lr'], base['batch_size'], base['local_epochs']) == (
      'data_poison', 0.01, 64, 2)
  assert base['capture_rounds'] == 'all' and base['rounds'] == 7 and base['partition'] == 'iid'
  run = study.Setting('pixel', 'dirichlet0.1', seed=2, num_malicious=3, client_lr=0.1,
                  malicious_rate=1 / 3)
  config = study.experiment_config(settings, run).to_dict()  # flat: the flag names
  assert (config['partition'], config['alpha'], config['seed']) == ('dirichlet', 0.1, 2)
  assert (config['attackers_per_round'], config['malicious_fraction']) == (
      3, pytest.approx(0.3))
  assert config['source_class'] == -1 and config['task'] == 'pixel'
  assert config['output_dir'].endswith(run.name)


# ----------------------------------------------------------------------------- malicious rate


@pytest.mark.parametrize('n,rate,candidates,expected', [
    (100, 0.1, None, (10, 90)),
    (100, 1.0, None, (100, 0)),
    (59, 1 / 3, None, (20, 39)),
    (100, 0.05, None, (5, 95)),
    (10, 0.01, None, (1, 9)),  # at least one malicious example
    (100, 1.0, 90, (90, 0)),  # pixel: only the 90 non-target images can be poisoned
    (100, 0.5, 20, (20, 20)),  # cap binds: benign shrinks to keep the rate
])
def test_rate_counts(n, rate, candidates, expected):
  assert malicious_rate.rate_counts(n, rate, candidates) == expected


def _clients(seed=0, n=200, num_classes=4):
  rng = np.random.default_rng(seed)
  out = {}
  for i in range(3):
    y = rng.integers(0, num_classes, n).astype(np.int32)
    out[f'c{i}'] = (rng.random((n, 6, 6, 1)).astype(np.float32), y)
  return out


@pytest.mark.parametrize('rate', [1.0, 1 / 3, 1 / 10, 1 / 20])
def test_targeted_rate_task_trains_at_the_intended_rate(rate):
  clients = _clients()
  base = tasks_lib.TargetedTask.build(clients, num_tasks=1, source_class=2, target_class=1,
                                      seed=0, num_classes=4)
  task = malicious_rate.MaliciousRateTask(base, rate)
  x, y = clients['c0']
  rng = np.random.default_rng(1)
  (bx, by), (mx, my) = task.attacker_data('c0', x, y, 0, rng)
  achieved = len(my) / (len(my) + len(by))
  assert abs(achieved - rate) <= 0.5 / len(y)
  assert len(my) + len(by) == len(y)  # the attacker's FedAvg weight stays its own size
  assert np.all(my == 1)
  pool_x = base.eval_sets()['backdoor'][0]
  # Every malicious image comes from the pool; distinct ones up to the pool size.
  flat_pool = {p.tobytes() for p in pool_x}
  assert all(m.tobytes() in flat_pool for m in mx)
  assert len({m.tobytes() for m in mx}) == min(len(my), len(pool_x))
  # The benign part is a subset of the attacker's own examples.
  own = {xi.tobytes() for xi in x}
  assert all(b.tobytes() in own for b in bx)
  assert task.log[-1]['rate'] == pytest.approx(achieved)
  assert task.eval_sets()['backdoor'][0].shape == pool_x.shape


@pytest.mark.parametrize('rate', [1.0, 1 / 3, 1 / 10, 1 / 20])
def test_pixel_rate_task_trains_at_the_intended_rate(rate):
  clients = _clients(seed=2)
  x, y = clients['c1']
  test_x, test_y = clients['c2']
  base = tasks_lib.PixelTriggerTask(test_x, test_y, target_class=1, source_class=None,
                                    trigger_size=2, trigger_value=1.0, num_classes=4)
  task = malicious_rate.MaliciousRateTask(base, rate)
  (bx, by), (mx, my) = task.attacker_data('c1', x, y, 0, np.random.default_rng(0))
  non_target = int(np.sum(y != 1))
  if rate == 1.0:
    assert (len(my), len(by)) == (non_target, 0)  # everything it can poison, nothing else
  else:
    assert len(my) + len(by) == len(y)
    assert abs(len(my) / len(y) - rate) <= 0.5 / len(y)
  assert np.all(my == 1)
  assert np.all(mx[:, base.mask, :] == 1.0)  # the trigger is stamped
  assert not np.any(np.all(bx[:, base.mask, 0] == 1.0, axis=1))  # and only on malicious ones


def test_rate_task_rejects_bad_inputs():
  clients = _clients()
  base = tasks_lib.TargetedTask.build(clients, num_tasks=1, source_class=2, target_class=1,
                                      num_classes=4)
  with pytest.raises(ValueError, match='rate'):
    malicious_rate.MaliciousRateTask(base, 0.0)
  with pytest.raises(TypeError):
    malicious_rate.MaliciousRateTask(object(), 0.1)


# ----------------------------------------------------------------------------- analysis


def _write_captures(directory, rounds=4, n=6, seed=0):
  rng = np.random.default_rng(seed)
  names = ['conv/kernel', 'conv/bias', 'logits/kernel', 'logits/bias']
  shapes = [(3, 3, 1, 2), (2,), (4, 3), (3,)]
  for r in range(rounds):
    malicious = np.zeros(n, bool)
    malicious[r % n] = True
    updates = [rng.normal(size=(n, *s)) for s in shapes]
    updates[3][malicious] += 10.0 if r < 2 else 0.0  # the bias stands out early only
    captures_lib.save_round_capture(str(directory), r, updates, names,
                               [f'c{i}' for i in range(n)], malicious)
  return names


@pytest.mark.parametrize('score', ['linf', 'l2'])
def test_localization_rows_equal_anomaly_localization_table(tmp_path, score):
  _write_captures(tmp_path)
  scores, bias = study.score_captures(str(tmp_path))
  assert [c.variable_names for c in bias] == [['logits/bias']] * 4
  for rounds in (None, [0, 1], [3]):
    ours = study.localization_rows(scores, score, rounds)
    ref = anomaly.localization_table(captures_lib.load_captures(str(tmp_path)), score, rounds)
    assert [r.variable for r in ours] == [r.variable for r in ref]
    for a, b in zip(ours, ref):
      np.testing.assert_allclose([a.auc, a.mean_malicious, a.mean_honest, a.ratio],
                                 [b.auc, b.mean_malicious, b.mean_honest, b.ratio])
      assert a.round_auc == b.round_auc


def test_early_late_rounds():
  assert study.early_late_rounds(range(20), 5) == ([0, 1, 2, 3, 4], [15, 16, 17, 18, 19])
  assert study.early_late_rounds([0, 1, 2, 3, 4, 5, 6], 5) == ([0, 1, 2, 3, 4], [5, 6])
  assert study.early_late_rounds([0, 1, 2], 5) == ([0, 1, 2], [])


def test_tied_aucs_share_the_top_rank():
  def row(name, auc):
    return anomaly.LocalizationRow(name, auc, 1.0, 1.0, 1.0, 1, 1, {})
  rows = [row('logits/kernel', 1.0), row('logits/bias', 1.0), row('conv/bias', 0.5),
          row('conv/kernel', float('nan'))]
  assert study._rank_of(rows, 'logits/bias') == 1
  assert study._rank_of(rows, 'conv/bias') == 3
  assert study._rank_of(rows, 'conv/kernel') is None
  assert study._top_variables(rows) == 'logits/kernel|logits/bias'


def test_analyze_run_ranks_a_planted_bias_anomaly_first_early(tmp_path):
  _write_captures(tmp_path / 'captures', rounds=4)
  summary = study.analyze_run(str(tmp_path), early_rounds=2, z_threshold=3.5)
  assert summary['top_variable_early'] == 'logits/bias'
  assert summary['bias_rank_early'] == 1 and summary['bias_auc_early'] == 1.0
  assert summary['bias_auc_late'] < 1.0
  assert summary['variables'] == ['conv/kernel', 'conv/bias', 'logits/kernel', 'logits/bias']
  with open(tmp_path / 'localization_early.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['variable'] for r in rows][0] == 'logits/bias' and len(rows) == 4
  with open(tmp_path / 'detector.json') as f:
    detector = json.load(f)
  assert detector['early_rounds'] == [0, 1] and detector['late_rounds'] == [2, 3]
  assert detector['z_threshold']['threshold'] == 3.5
  for name in ('localization_auc.png', 'round_auc.png', 'bias_scores.png'):
    pictures.check_png(tmp_path / name)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')), n_train=500, n_test=120)


def _settings(idx_dir, out, **overrides):
  base = dict(dataset='idx', data_dir=idx_dir, model='tiny_cnn', rounds=3, num_clients=10,
              local_epochs=1, batch_size=16, source_class=2, target_class=0, trigger_size=2,
              server_holdout=30, early_rounds=1, output_dir=str(out), verbose=False)
  base.update(overrides)
  return study.StudySettings(**base)


def _competition_rank(aucs, variable):
  """1 + the number of variables with a larger AUC, from a localization CSV's columns."""
  mine = aucs[variable]
  return 1 + sum(1 for auc in aucs.values() if auc > mine)


def _assert_row_is_its_run_tables(row, run_dir):
  """The summary row carries the bias variable's AUC and rank in each of the run's
  localization tables (rank recomputed from the AUCs) and the detector's operating points."""
  for suffix, name in (('', 'localization.csv'), ('_early', 'localization_early.csv'),
                       ('_late', 'localization_late.csv')):
    with open(os.path.join(run_dir, name)) as f:
      aucs = {r['variable']: float(r['auc']) for r in csv.DictReader(f)}
    assert len(aucs) == 6
    assert row[f'bias_auc{suffix}'] == pytest.approx(aucs['logits/bias'], abs=1e-9)
    assert row[f'bias_rank{suffix}'] == _competition_rank(aucs, 'logits/bias')
    best = max(aucs.values())
    assert row[f'top_variable{suffix}'] == '|'.join(
        v for v, auc in sorted(aucs.items(), key=lambda kv: -kv[1]) if auc == best)
  with open(os.path.join(run_dir, 'detector.json')) as f:
    detector = json.load(f)
  metrics = detector['in_sample_1pct']['metrics']
  assert row['fpr_at_fpr_1pct'] == detector['in_sample_1pct']['fpr_at_threshold'] <= 0.01
  assert row['tpr_at_fpr_5pct'] == metrics['tpr_at_fpr_5pct']
  assert row['fpr_at_z'] == detector['z_threshold']['fpr_at_threshold']


def test_study_writes_tables_and_plots_and_skips_done_runs(idx_dir, tmp_path):
  settings = _settings(idx_dir, tmp_path)
  points = study.expand_sweep(['num_malicious'], ['targeted'], ['iid'],
                              values={'num_malicious': [1, 2]})
  logs = []
  rows = study.run_study(settings, points, log=logs.append)
  assert len(logs) == 2 and all(line.endswith('running') for line in logs)
  assert [(r['task'], r['factor'], r['value'], r['is_baseline']) for r in rows] == [
      ('targeted', 'num_malicious', 1, True), ('targeted', 'num_malicious', 2, False)]
  for point, row in zip(points, rows):
    assert row['partition'] == 'iid' and row['rounds'] == 3
    assert row['bias_variable'] == 'logits/bias' and row['num_variables'] == 6
    _assert_row_is_its_run_tables(row, settings.run_dir(point.run))
    # The intended malicious data rate is what the attackers trained at.
    assert abs(row['achieved_rate'] - 0.1) < 0.02
  assert rows[1]['num_malicious'] == 2
  run_dir = settings.run_dir(points[1].run)
  with open(os.path.join(run_dir, study.STUDY_RUN_FILE)) as f:
    info = json.load(f)
  assert info['rate']['calls'] == 2 * 3  # two attackers, every round
  assert len(info['malicious_clients']) == 2
  assert not os.path.exists(os.path.join(run_dir, 'captures'))  # deleted after the analysis
  for name in ('localization.csv', 'localization_early.csv', 'localization_late.csv',
               'detector.json', 'bias_scores.png', 'metrics.csv', 'config.json'):
    assert os.path.exists(os.path.join(run_dir, name)), name
  with open(tmp_path / 'summary.csv') as f:
    assert [r['value'] for r in csv.DictReader(f)] == ['1', '2']
  assert os.listdir(tmp_path / 'plots') == ['targeted_iid_num_malicious_seed0.png']
  table = study.format_table(rows)
  assert len(table.splitlines()) == 3 and 'bias_auc' in table.splitlines()[0]
  # Second call: everything is done, nothing is trained again, same rows.
  logs.clear()
  again = study.run_study(settings, points, log=logs.append)
  assert len(logs) == 2 and all(line.endswith('skipped') for line in logs)
  assert again == json.loads(json.dumps(rows))
  # Summarize only: a sweep with one more value trains nothing and tabulates the finished runs.
  logs.clear()
  more = study.expand_sweep(['num_malicious'], ['targeted'], ['iid'],
                            values={'num_malicious': [1, 2, 3]})
  partial = study.run_study(settings, more, log=logs.append, run_missing=False)
  assert logs[-1].endswith('not run, left out of the summary')
  assert partial == again
  assert not os.path.exists(settings.run_dir(more[2].run))
  with open(tmp_path / 'summary.csv') as f:
    assert [r['value'] for r in csv.DictReader(f)] == ['1', '2']
  # A finished run made with other settings is never mistaken for done.
  with pytest.raises(ValueError, match='different rounds'):
    study.run_study(_settings(idx_dir, tmp_path, rounds=4), points, log=logs.append)


def test_pixel_dirichlet_run_keeps_captures_at_the_intended_rate(idx_dir, tmp_path):
  settings = _settings(idx_dir, tmp_path, keep_captures=True, rounds=2)
  points = study.expand_sweep(['malicious_rate'], ['pixel'], ['dirichlet0.5'],
                              values={'malicious_rate': [0.5]})
  rows = study.run_study(settings, points, log=lambda _: None)
  run_dir = settings.run_dir(points[0].run)
  captures = captures_lib.load_captures(os.path.join(run_dir, 'captures'))
  assert [c.round_num for c in captures] == [0, 1]
  assert all(c.num_clients == 10 and c.malicious.sum() == 1 for c in captures)
  with open(os.path.join(run_dir, study.STUDY_RUN_FILE)) as f:
    info = json.load(f)
  for call in info['attacker_calls']:
    assert call['n_malicious'] + call['n_benign'] <= call['n_local']
    assert abs(call['rate'] - 0.5) <= 0.5 / (call['n_malicious'] + call['n_benign'])
  assert rows[0]['achieved_rate'] == pytest.approx(0.5, abs=0.02)
  with open(os.path.join(run_dir, 'config.json')) as f:
    config = json.load(f)
  assert (config['partition'], config['alpha'], config['source_class']) == ('dirichlet', 0.5, -1)


# ----------------------------------------------------------------------------- program


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'experiments.anomaly_localization', *args],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_program_dry_run_lists_the_sweep(tmp_path):
  result = _cli('--dry_run', '--tasks=pixel', '--partitions=iid,dirichlet0.1',
                '--factors=malicious_rate', f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('8 sweep points, 8 distinct runs')
  assert sum('(baseline)' in line for line in lines) == 2
  assert not os.listdir(tmp_path)  # nothing written


def _flag_values(*args):
  """The program's flag values after parsing `args` (absl's global FLAGS, reset after)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import anomaly_localization  # pylint: disable=g-import-not-at-top,unused-import
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(['anomaly_localization', *args])
    return flags.FLAGS.flag_values_dict()
  finally:
    flags.FLAGS.unparse_flags()


def test_flag_values_build_the_sweep():
  settings, points = study.study_from_flag_values(_flag_values(
      '--tasks=pixel', '--partitions=dirichlet0.5', '--factors=malicious_rate',
      '--malicious_rate_values=1,1/20', '--baseline_malicious_rate=1/20', '--rounds=4'))
  assert settings.rounds == 4 and settings.model == 'sun_cnn' and settings.batch_size == 64
  assert [(p.value, p.is_baseline) for p in points] == [(1.0, False), (0.05, True)]
  assert points[1].run.malicious_rate == 0.05 and points[0].run.client_lr == 0.01


@pytest.mark.parametrize('args,message', [
    (['--factors=speed'], 'unknown factor'),
    (['--partitions=dirichlet'], 'bad partition'),
    (['--malicious_rate_values=1/0'], 'bad number'),
    (['--seeds=a'], 'seeds'),
    (['--num_malicious_values=10'], 'num_malicious'),
    (['--client_data_fraction=0'], 'client_data_fraction'),
    (['--batch_size=0'], 'batch_size'),
])
def test_bad_flag_values_raise_one_line_value_errors(args, message):
  with pytest.raises(ValueError, match=message) as e:
    study.study_from_flag_values(_flag_values(*args))
  assert '\n' not in str(e.value)


def test_program_bad_flag_exits_with_one_line():
  result = _cli('--dry_run', '--partitions=iid,dirichlet')
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode != 0
  assert len(lines) == 1 and lines[0].startswith('error:'), result.stderr
  assert 'bad partition' in lines[0]


def test_writer_data_takes_the_writers_partition_only():
  run = study.expand_sweep(['num_malicious'], ['pixel'], ['writers'])[0].run
  settings = study.StudySettings(dataset='femnist', data_dir='/leaf')
  config = study.experiment_config(settings, run).to_dict()
  assert (config['dataset'], config['num_clients'], config['clients_per_round']) == (
      'femnist', 10, 10)
  with pytest.raises(ValueError, match='--init_from=/runs/pre: no such run directory'):
    study.experiment_config(dataclasses.replace(settings, init_from='/runs/pre'), run)
  with pytest.raises(ValueError, match="take exactly the 'writers' partition"):
    study.experiment_config(study.StudySettings(), run)
  iid = study.expand_sweep(['num_malicious'], ['pixel'], ['iid'])[0].run
  with pytest.raises(ValueError, match="take exactly the 'writers' partition"):
    study.experiment_config(settings, iid)
