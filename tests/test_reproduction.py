"""REPRODUCTION.md's tables: families and cross tables over a synthetic sweep directory."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tests import pictures

from studies import reproduction

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(directory, final, rows, attack_start):
  """A run directory; its final.json gets the fields every finished run writes."""
  os.makedirs(directory)
  with open(os.path.join(directory, 'final.json'), 'w') as f:
    json.dump({'rounds': len(rows), 'partition': {}, **final}, f)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump({'attack_start': attack_start}, f)
  with open(os.path.join(directory, 'metrics.jsonl'), 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


def _sweep(tmp_path, runs):
  """runs: [(flags, final, rows)]; writes sweep.json like sweep_results.write_outputs."""
  entries = []
  for i, (flags, final, rows) in enumerate(runs):
    name = f'run{i}'
    _write_run(str(tmp_path / name), final, rows, attack_start=2)
    entries.append({'name': name, 'flags': flags, 'group': 'g', 'status': 'finished'})
  with open(tmp_path / 'sweep.json', 'w') as f:
    json.dump({'runs': entries}, f)
  return str(tmp_path)


def _rows(test, backdoor):
  return [{'round': r, 'test_accuracy': t, 'backdoor_accuracy': b}
          for r, (t, b) in enumerate(zip(test, backdoor))]


FAMILY = reproduction.Family('f', 'title', 'k', {'a': 'x', 'k': 'ignored'},
                             references=(('clean', {'a': 'clean'}),))


def _family_sweep(tmp_path):
  runs = []
  for k, backdoors in (('10', (0.0, 1.0)), ('2', (0.5, 0.7))):
    for seed, b in enumerate(backdoors):
      runs.append(({'a': 'x', 'k': k, 'seed': str(seed)},
                   {'test_accuracy': 0.8, 'backdoor_accuracy': b, 'seconds': 10.0 + seed},
                   _rows([0.1, 0.2, 0.6, 0.8], [0.0, 0.0, b / 2, b])))
  runs.append(({'a': 'clean', 'k': '2', 'seed': '0'},
               {'test_accuracy': 0.9, 'backdoor_accuracy': 0.0, 'seconds': 5.0},
               _rows([0.1, 0.2, 0.7, 0.9], [0.0] * 4)))
  runs.append(({'a': 'other', 'k': '2', 'seed': '0'},  # matches neither the family nor a reference
               {'test_accuracy': 0.1, 'backdoor_accuracy': 0.3}, _rows([0.1], [0.3])))
  return _sweep(tmp_path, runs)


def test_family_rows_average_seeds_in_numeric_order_with_attack_window(tmp_path):
  runs = reproduction.load_runs([_family_sweep(tmp_path)])
  references, rows = reproduction.family_rows(runs, FAMILY)
  assert [r['label'] for r in rows] == ['2', '10']  # numeric, not string, order
  two = rows[0]
  assert two['n'] == 2
  assert two['backdoor_mean'] == pytest.approx(0.6)
  assert two['backdoor_std'] == pytest.approx(0.1414, abs=1e-4)
  # window = rounds >= attack_start (2): backdoor (b/2 + b)/2 = 0.75 b; test (0.6 + 0.8)/2.
  assert two['window_backdoor_mean'] == pytest.approx(0.75 * 0.6)
  assert two['window_test_mean'] == pytest.approx(0.7)
  assert two['seconds_mean'] == pytest.approx(10.5)
  assert rows[1]['backdoor_mean'] == pytest.approx(0.5)
  assert [(r['label'], r['n'], r['test_mean']) for r in references] == [('clean', 1, 0.9)]
  assert two['flain_test_mean'] is None


def test_family_markdown_and_plot(tmp_path):
  runs = reproduction.load_runs([_family_sweep(tmp_path / 's')])
  text = reproduction.family_markdown(runs, FAMILY, metrics=('backdoor', 'seconds'))
  lines = text.splitlines()
  assert lines[0] == '**title**'
  assert lines[2] == '| k | seeds | backdoor acc (final) | s / run |'
  assert lines[4] == '| clean (reference) | 1 | 0.000 | 5 |'
  assert lines[5] == '| 2 | 2 | 0.600 ± 0.141 | 10 ± 1 |'
  path = reproduction.plot_family(runs, FAMILY, str(tmp_path / 'out' / 'f.png'))
  pictures.check_png(path)
  empty = reproduction.Family('e', 'nothing', 'k', {'a': 'absent'})
  with pytest.raises(ValueError, match="no finished run of family 'e'"):
    reproduction.family_markdown(runs, empty)


def test_family_wall_clock_counts_its_rows_not_its_references(tmp_path):
  runs = reproduction.load_runs([_family_sweep(tmp_path)])
  # rows k=2 (10 s, 11 s) and k=10 (10 s, 11 s); the clean reference's 5 s is not counted.
  assert reproduction.family_wall_clock(runs, FAMILY) == (
      'wall clock of f (its k rows): 4 runs, 10 ± 1 s per run, 0.01 run-hours')
  timed = reproduction.render(runs, dataclasses.replace(FAMILY, wall_clock=True))
  assert timed[1].startswith('wall clock of f (its k rows): 4 runs')
  assert not any(t.startswith('wall clock') for t in reproduction.render(runs, FAMILY))


def test_unfinished_runs_are_left_out_and_non_sweeps_rejected(tmp_path):
  sweep = _family_sweep(tmp_path / 's')
  os.remove(os.path.join(sweep, 'run0', 'final.json'))
  runs = reproduction.load_runs([sweep])
  assert 'run0' not in [r.name for r in runs] and len(runs) == 5
  with pytest.raises(ValueError, match='not a sweep directory'):
    reproduction.load_runs([str(tmp_path)])


def test_a_final_json_without_a_finished_runs_fields_is_no_run_and_divergence_is_marked(
    tmp_path):
  """Issue 41: a final.json of {} or {"test_accuracy": 0.99} counted as a finished seed."""
  sweep = _family_sweep(tmp_path / 's')
  for run, final in (('run0', {}), ('run1', {'test_accuracy': 0.99})):
    with open(os.path.join(sweep, run, 'final.json'), 'w') as f:
      json.dump(final, f)
  with open(os.path.join(sweep, 'run2', 'final.json')) as f:
    diverged = dict(json.load(f), diverged_round=1)
  with open(os.path.join(sweep, 'run2', 'final.json'), 'w') as f:
    json.dump(diverged, f)
  runs = reproduction.load_runs([sweep])
  assert sorted(r.name for r in runs) == ['run2', 'run3', 'run4', 'run5']
  assert [r.diverged_round for r in runs if r.name == 'run2'] == [1]
  lines = reproduction.family_markdown(runs, FAMILY, metrics=('backdoor',)).splitlines()
  # k=10's two seeds are gone; run2, one of k=2's two, diverged.
  assert lines[4:] == ['| clean (reference) | 1 | 0.000 |',
                       '| 2 | 2 (1 diverged) | 0.600 ± 0.141 |'], lines
  table = reproduction.CrossTable('c', 'cross', ('a',), 'k', (('k=2', '2', 'backdoor'),),
                                  where={'a': 'x'})
  text, flat = reproduction.cross_markdown(runs, table)
  assert text.splitlines()[-1] == '| x | 2 (1 diverged) | 0.600 ± 0.141 |'
  assert [r['seeds'] for r in flat] == ['2 (1 diverged)']


def test_cross_rows_put_one_flag_in_columns(tmp_path):
  runs = []
  for ratio in ('0.1', '0.4'):
    for defense, acc in (('none', 0.9), ('median', 0.2)):
      for seed in ('0', '1'):
        final = {'test_accuracy': 0.8, 'backdoor_accuracy': acc + (0.1 if ratio == '0.4' else 0),
                 'flain': {'after': {'test_accuracy': 0.79, 'backdoor_accuracy': 0.05}}}
        runs.append(({'ratio': ratio, 'defense': defense, 'seed': seed}, final,
                     _rows([0.8], [acc])))
  table = reproduction.cross_rows(reproduction.load_runs([_sweep(tmp_path, runs)]),
                                  ['ratio'], 'defense')
  assert list(table) == [('0.1',), ('0.4',)]
  assert table[('0.4',)]['none']['backdoor_mean'] == pytest.approx(1.0)
  assert table[('0.1',)]['median']['n'] == 2
  assert table[('0.1',)]['none']['flain_backdoor_mean'] == pytest.approx(0.05)


def test_window_means_skip_unevaluated_rounds():
  rows = [{'round': 0, 'test_accuracy': 0.1}, {'round': 3}, {'round': 4, 'test_accuracy': 0.5,
                                                               'backdoor_accuracy': 1.0,
                                                               'collateral_accuracy': 0.25}]
  assert reproduction.window_means(rows, 3) == {'window_test': 0.5, 'window_backdoor': 1.0,
                                                'window_collateral': 0.25}
  assert reproduction.window_means(rows, 9) == {'window_test': None, 'window_backdoor': None,
                                                'window_collateral': None}


@pytest.mark.parametrize('grid,families', [
    ('sun.grid', reproduction.SUN_FAMILIES),
    ('sun_femnist.grid', reproduction.SUN_FEMNIST_FAMILIES)])
def test_sun_families_select_what_the_sun_grid_runs(grid, families):
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  from studies import sweep_results  # pylint: disable=g-import-not-at-top
  grids = sweep_grid.read_grid_file(os.path.join(REPO, 'experiments', 'grids', grid))
  configs = sweep_grid.expand(grids)
  assert len(configs) == 3 * (18 + (grid == 'sun_femnist.grid'))  # configurations x 3 seeds
  fake = [reproduction.RunSummary(str(i), c, {'test': 0.5}) for i, c in enumerate(configs)]
  for family in families:
    references, rows = reproduction.family_rows(fake, family)
    assert len(rows) == 3 and all(r['n'] == 3 for r in rows), family.key
    assert len(references) == len(family.references) and all(r['n'] == 3 for r in references)


def _program(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'experiments.reproduction_tables', *args],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_program_prints_tables_and_rejects_bad_input(tmp_path):
  bad = _program(str(tmp_path), '--families=nope')
  assert bad.returncode != 0 and 'unknown --families nope' in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1
  missing = _program(str(tmp_path))
  assert missing.returncode != 0 and 'not a sweep directory' in missing.stderr


def test_program_writes_every_sun_table_plot_and_csv(tmp_path):
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  from studies import sweep_results  # pylint: disable=g-import-not-at-top
  configs = sweep_grid.expand(sweep_grid.read_grid_file(
      os.path.join(REPO, 'experiments', 'grids', 'sun.grid')))
  runs = [(c, {'test_accuracy': 0.8, 'backdoor_accuracy': 0.5, 'seconds': 60.0},
           _rows([0.5, 0.6, 0.7], [0.0, 0.4, 0.6])) for c in configs]
  sweep = _sweep(tmp_path / 'sweep', runs)
  out = tmp_path / 'out'
  result = _program(sweep, f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  for family in reproduction.SUN_FAMILIES:
    assert f'**{family.title}**' in result.stdout
    assert (out / f'{family.key}.png').exists() and (out / f'{family.key}.csv').exists()
  assert '| no attacker (reference) | 3 | 0.700 ± 0.000 | 0.600 ± 0.000 |' in result.stdout
  assert result.stdout.startswith('wall clock: 54 runs, 60 ± 0 s per run, 0.90 run-hours')
  assert not list(out.glob('*_curves.png'))


def test_femnist_families_show_the_collateral_rate_and_curves(tmp_path):
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  from studies import sweep_results  # pylint: disable=g-import-not-at-top
  configs = sweep_grid.expand(sweep_grid.read_grid_file(
      os.path.join(REPO, 'experiments', 'grids', 'sun_femnist.grid')))
  rows = [dict(r, collateral_accuracy=c) for r, c in
          zip(_rows([0.5, 0.6, 0.7], [0.0, 0.4, 0.6]), (0.1, 0.2, 0.3))]
  runs = [(c, {'test_accuracy': 0.8, 'backdoor_accuracy': 0.5, 'collateral_accuracy': 0.3,
               'seconds': 60.0}, rows) for c in configs]
  out = tmp_path / 'out'
  result = _program(_sweep(tmp_path / 'sweep', runs), '--families=sun_femnist',
                    f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  assert ('| frequency | seeds | main acc (attack rounds) | backdoor acc (attack rounds) | '
          'collateral (attack rounds) | main acc (final) | backdoor acc (final) | '
          'collateral (final) | s / run |').replace('frequency', 'attack_every') in result.stdout
  assert '| no attacker (reference) | 3 | 0.700 ± 0.000 | 0.600 ± 0.000 | 0.300 ± 0.000 |' in (
      result.stdout)
  for family in reproduction.SUN_FEMNIST_FAMILIES:
    assert (out / f'{family.key}_curves.png').exists(), family.key


def test_flain_tables_have_flain_and_every_defense_column(tmp_path):
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  from studies import sweep_results  # pylint: disable=g-import-not-at-top
  configs = sweep_grid.expand(sweep_grid.read_grid_file(
      os.path.join(REPO, 'experiments', 'grids', 'flain.grid')))
  assert len(configs) == 4 * 4 * 6 * 3 + 4 * 3
  runs = []
  for c in configs:
    b = {'none': 0.9, 'median': 0.3}.get(c['defense'], 0.5)
    runs.append(reproduction.RunSummary('r', c, {'backdoor': b, 'flain_backdoor': 0.02,
                                                 'test': 0.8}))
  text, flat = reproduction.cross_markdown(runs, reproduction.FLAIN_TABLES[0])
  lines = text.splitlines()
  assert lines[2] == ('| task | partition | malicious_fraction | seeds | no defense | FLAIN | '
                      'clip | weak DP | median | trimmed mean | Multi-Krum |')
  assert len(flat) == 4 * 5  # every task x partition x (4 shares + unattacked)
  assert ('| pixel | dirichlet | 0.2 | 3 | 0.900 ± 0.000 | 0.020 ± 0.000 | 0.500 ± 0.000 | '
          '0.500 ± 0.000 | 0.300 ± 0.000 |') in text
  unattacked = [r for r in flat if r['malicious_fraction'] == '0']
  assert len(unattacked) == 4 and all(r['clip mean'] is None for r in unattacked)
  out = reproduction.render(runs, reproduction.FLAIN_TABLES[0], str(tmp_path))
  assert out[1].endswith('flain_backdoor.csv') and os.path.exists(out[1])


def _study(root, runs):
  """runs: [(task, partition, factor, value, seed, is_baseline, bias_auc, {variable: auc})]."""
  os.makedirs(root)
  header = ['task', 'partition', 'factor', 'value', 'seed', 'is_baseline', 'bias_auc', 'run']
  lines = [','.join(header)]
  for task, partition, factor, value, seed, baseline, auc, variables in runs:
    run = f'{task}_{partition}_{"base" if baseline == "True" else value}_{seed}'  # as the study
    lines.append(','.join([task, partition, factor, value, seed, baseline, str(auc), run]))
    os.makedirs(os.path.join(root, 'runs', run), exist_ok=True)
    with open(os.path.join(root, 'runs', run, 'localization_early.csv'), 'w') as f:
      f.write('rank,variable,auc\n' + ''.join(f'{i},{v},{a}\n'
                                               for i, (v, a) in enumerate(variables.items())))
  with open(os.path.join(root, 'summary.csv'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return root


def test_bilgin_tables_average_seeds_and_count_the_baseline_once(tmp_path):
  runs = []
  for seed, (bias, kernel) in enumerate(((1.0, 0.9), (0.8, 0.7))):
    variables = {'logits/bias': bias, 'logits/kernel': kernel}
    for factor in ('num_malicious', 'client_lr'):  # the baseline is listed under each factor
      runs.append(('pixel', 'iid', factor, '1' if factor == 'num_malicious' else '0.01',
                   str(seed), 'True', bias, variables))
    runs.append(('pixel', 'iid', 'num_malicious', '3', str(seed), 'False', bias - 0.5,
                 variables))
  rows = reproduction.read_study_rows([_study(str(tmp_path / 's'), runs)])
  text, flat = reproduction.bilgin_localization(rows)
  assert '| pixel | iid | 2 | 0.900 ± 0.141 | 0.800 ± 0.141 |' in text
  assert flat == [{'task': 'pixel', 'partition': 'iid', 'seeds': 2,
                   'logits/bias': pytest.approx(0.9), 'logits/kernel': pytest.approx(0.8)}]
  text, flat = reproduction.bilgin_factor_table(rows, 'num_malicious')
  assert [(r['num_malicious'], r['seeds'], r['bias_auc']) for r in flat] == [
      ('1', 2, pytest.approx(0.9)), ('3', 2, pytest.approx(0.4))]
  with pytest.raises(ValueError, match="no run of factor 'malicious_rate'"):
    reproduction.bilgin_factor_table(rows, 'malicious_rate')
  with pytest.raises(ValueError, match='not an anomaly-localization study'):
    reproduction.read_study_rows([str(tmp_path)])


def test_bilgin_detector_facts_count_bias_first_per_seed_and_the_fixed_z_cost():
  def row(seed, m, rank, top, fpr, tpr, run):
    return {'task': 'pixel', 'partition': 'iid', 'seed': seed, 'num_malicious': m,
            'bias_rank_early': rank, 'top_variable_early': top, 'fpr_at_z': fpr,
            'tpr_at_fpr_1pct': tpr, 'run_dir': run}
  rows = [row('0', '1', '1', 'logits/bias', '0.1', '0.5', 'a'),
          row('0', '1', '1', 'logits/bias', '0.1', '0.5', 'a'),  # baseline listed twice
          row('0', '2', '3', 'logits/kernel', '0.3', '0', 'b'),
          row('1', '1', '2', 'logits/kernel', '0.05', '0.25', 'c'),
          row('2', '1', '2', 'conv1/bias|logits/kernel', '0.1', '0', 'e'),
          row('1', '5', '1', 'logits/bias', '0.2', 'nan', 'd')]  # 5 attackers: not counted
  text, flat = reproduction.bilgin_detector_facts(rows)
  assert ('| pixel | iid | 5 | seed 0: 1/2, seed 1: 0/1, seed 2: 0/1 | logits/kernel (2), '
          'conv1/bias = logits/kernel (1) | 0.05-0.30 | 2 of 4 | 0.500 |') in text
  assert flat[0]['bias_first_seed0'] == 1 and flat[0]['minority_runs_seed1'] == 1
  text, _ = reproduction.bilgin_detector_facts(rows, max_attackers=5)
  assert 'seed 1: 1/2' in text
  with pytest.raises(ValueError, match='no run'):
    reproduction.bilgin_detector_facts([])


def test_wall_clock_line():
  assert reproduction.wall_clock_markdown('sun', [3600.0, 7200.0]) == (
      'sun: 2 runs, 5400 ± 2546 s per run, 3.00 run-hours')
  assert reproduction.wall_clock_markdown('x', []) == 'x: no finished run'
  assert reproduction.wall_clock_markdown('one', [90.0]) == (
      'one: 1 run, 90 s per run, 0.03 run-hours')


def test_bilgin_program_writes_tables_csvs_and_plots(tmp_path):
  runs = [('pixel', 'iid', 'num_malicious', str(m), str(seed), str(m == 1), 0.9 - 0.1 * m,
           {'logits/bias': 0.9}) for m in (1, 2) for seed in (0, 1)]
  study = _study(str(tmp_path / 's'), runs)
  out = tmp_path / 'out'
  result = _program(study, '--families=bilgin', '--bilgin_factors=num_malicious',
                    f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  assert '| pixel | iid | 2 | 2 | 0.700 ± 0.000 |' in result.stdout  # value 2, two seeds
  assert result.stdout.startswith('wall clock (train + analysis): no finished run')
  for name in ('bilgin_localization.csv', 'bilgin_num_malicious.csv', 'bilgin_num_malicious.png',
               'bilgin_detector.csv'):
    assert (out / name).exists(), name
  mixed = _program(study, '--families=bilgin,sun')
  assert mixed.returncode != 0 and 'ask for it on its own' in mixed.stderr


def test_render_reports_a_family_without_runs_in_one_line(tmp_path):
  runs = reproduction.load_runs([_family_sweep(tmp_path)])
  empty = reproduction.Family('e', 'nothing yet', 'k', {'a': 'absent'})
  assert reproduction.render(runs, empty, str(tmp_path / 'o')) == [
      '**nothing yet**: no finished run yet']
  assert not os.path.exists(tmp_path / 'o')
  assert reproduction.render(runs, reproduction.FLAIN_TABLES[0]) == [
      f'**{reproduction.FLAIN_TABLES[0].title}**: no finished run yet']


def test_render_shows_the_references_while_the_family_rows_wait(tmp_path):
  runs = reproduction.load_runs([_family_sweep(tmp_path)])
  waiting = dataclasses.replace(FAMILY, key='w', where={'a': 'absent'}, wall_clock=True,
                                curves=True, metrics=('backdoor', 'seconds'))
  out = reproduction.render(runs, waiting, str(tmp_path / 'o'))
  lines = out[0].splitlines()
  assert lines[0] == '**title**: no k row has finished yet, its references have'
  assert lines[2:] == ['| k | seeds | backdoor acc (final) | s / run |',
                       '| --- | ---: | ---: | ---: |', '| clean (reference) | 1 | 0.000 | 5 |']
  # No wall-clock line (its rows have none) and no plot against k; the curves and the CSV.
  assert [os.path.basename(p) for p in out[1:]] == ['w_curves.png', 'w.csv']
  pictures.check_png(out[1])


# The defenses of the matrix's committed records (issue 39 adds fldetector and deepsight).
OLD_MATRIX_DEFENSES = [v for v in dict(reproduction._MATRIX_DEFENSES).values()
                       if v not in ('fldetector', 'deepsight')]


def test_matrix_tables_have_every_defense_flain_and_a_heat_map(tmp_path):
  runs = []
  for task in ('targeted', 'pixel'):
    for attack in ('data_poison', 'boost', 'norm_bounded'):
      for defense in OLD_MATRIX_DEFENSES:
        for seed in range(3):
          values = {'backdoor': 0.9 if defense == 'none' else 0.1 + 0.1 * seed, 'test': 0.8,
                    'flain_backdoor': 0.05 if defense == 'none' else None,
                    'flain_origin_backdoor': 0.5 if defense == 'none' else None}
          flags = {'task': task, 'attack': attack, 'defense': defense, 'seed': str(seed),
                   'malicious_fraction': '0.2', 'distributed_parts': '1'}
          runs.append(reproduction.RunSummary('r', flags, values))
          # The FLAIN study's other shares share the sweep and stay out of the matrix.
          runs.append(reproduction.RunSummary(
              'r', dict(flags, malicious_fraction='0.4'), {'backdoor': 0.0, 'test': 0.0}))
  table = reproduction.MATRIX_TABLES[4]
  text, flat = reproduction.cross_markdown(runs, table)
  assert len(flat) == 6
  assert text.splitlines()[2].endswith(
      '| bias filter | geometric median | Bulyan | centered clip | RLR | FLAME | CRFL | FLTrust '
      '| FoolsGold | FLAIN | FLAIN (warm-start init) |')
  from tff_backdoor.aggregators import defense_config  # every defense has its column
  assert set(dict(reproduction._MATRIX_DEFENSES).values()) == set(defense_config.DEFENSES) - {
      'sun_mean', 'sun_dp'}  # the authors' Sun aggregation is section 1's, not a matrix defense
  assert 'FLDetector' not in text and 'DeepSight' not in text  # no run of theirs: no column
  assert ('| pixel | boost | 3 | 0.900 ± 0.000 | 0.200 ± 0.100 |') in text
  assert text.splitlines()[-1].endswith('| 0.200 ± 0.100 | 0.500 ± 0.000 | 0.050 ± 0.000 |')
  out = reproduction.render(runs, table, str(tmp_path))
  assert out[1].endswith('matrix_backdoor.csv') and out[2].endswith('matrix_backdoor.png')
  pictures.check_png(out[2])


def test_flain_femnist_tables_read_flain_applied_afterwards_beside_the_run(tmp_path):
  rows = [{'round': 0, 'test_accuracy': 0.9, 'backdoor_accuracy': 0.8}]
  flags = {'task': 'pixel', 'attack': 'data_poison', 'defense': 'none', 'seed': '0',
           'malicious_fraction': '0.2', 'distributed_parts': '4'}
  final = {'test_accuracy': 0.9, 'backdoor_accuracy': 0.8,
           'flain': {'after': {'test_accuracy': 0.85, 'backdoor_accuracy': 0.3}}}
  sweep = _sweep(tmp_path, [(flags, final, rows), (dict(flags, defense='clip'), final, rows)])
  for sub, backdoor in (('flain_origin_quantile', 0.2), ('flain_origin_absolute', 0.1)):
    os.makedirs(os.path.join(sweep, 'run0', sub))
    with open(os.path.join(sweep, 'run0', sub, 'flain.json'), 'w') as f:
      json.dump({'after': {'test_accuracy': 0.7, 'backdoor_accuracy': backdoor}}, f)
  runs = reproduction.load_runs([sweep])
  text, flat = reproduction.cross_markdown(runs, reproduction.FLAIN_FEMNIST_TABLES[0])
  assert text.splitlines()[-1] == (
      '| 4 | 0.2 | 1 | 0.800 | 0.200 | 0.100 | 0.300 | 0.800 | - | - | - |')
  assert flat[0]['FLAIN absolute mean'] == 0.1
  # Runs without the file: no absolute column in the families' aggregates.
  assert 'flain_abs_backdoor_mean' not in reproduction.aggregate_runs(runs[1:], 'x')


def test_the_30_writer_family_selects_its_grid():
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  from studies import sweep_results  # pylint: disable=g-import-not-at-top
  configs = sweep_grid.expand(sweep_grid.read_grid_file(
      os.path.join(REPO, 'experiments', 'grids', 'sun_femnist_30.grid')))
  fake = [reproduction.RunSummary(str(i), c, {'test': 0.5}) for i, c in enumerate(configs)]
  references, rows = reproduction.family_rows(fake, reproduction.SUN_FEMNIST_30_FAMILIES[0])
  assert [r['label'] for r in rows] == ['1', '3'] and all(r['n'] == 1 for r in rows)
  assert [r['n'] for r in references] == [1, 1, 1]


AUTHORS_ROWS = {'sun_authors_c_clip_boost': ['0.3', '1', '3'],
                'sun_authors_c_clip_norm_bounded': ['0.3', '1', '3'],
                'sun_authors_d_noise': ['0', '0.005', '0.025', '0.1'],
                'sun_authors_b_tasks': ['1', '3', '10', '30', '100'],
                'sun_authors_a_frequency': ['1', '3', '10'],
                'sun_authors_a_fraction': ['0.01', '0.03', '0.1']}


@pytest.mark.parametrize('grid,families,prefix', [
    ('sun_authors.grid', reproduction.SUN_AUTHORS_FAMILIES, 'sun_authors_'),
    ('sun_authors_30.grid', reproduction.SUN_AUTHORS_30_FAMILIES, 'sun_authors_30_')])
def test_authors_families_select_every_cell_of_their_grid_with_3_seeds(grid, families, prefix):
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  configs = sweep_grid.expand(sweep_grid.read_grid_file(
      os.path.join(REPO, 'experiments', 'grids', grid)))
  fake = [reproduction.RunSummary(str(i), c, {'test': 0.5}) for i, c in enumerate(configs)]
  checked = 0
  for family in families:
    if isinstance(family, reproduction.PlateauCheck):
      assert sum(reproduction.matches(r, family.where) for r in fake) == 3
      continue
    references, rows = reproduction.family_rows(fake, family)
    key = family.key.replace(prefix, 'sun_authors_')
    assert [r['label'] for r in rows] == AUTHORS_ROWS[key], family.key
    assert all(r['n'] == 3 for r in rows + references), family.key
    assert len(references) == len(family.references)
    checked += len(rows)
  used = {r.name for f in families if isinstance(f, reproduction.Family)
          for group in reproduction.family_groups(fake, f) for _, rs in group for r in rs}
  assert len(used) == len(configs)  # every run of the grid is in some table
  assert checked > 0


def test_plateau_check_compares_the_last_two_windows(tmp_path):
  flat, rising = [0.5] * 10 + [0.9] * 20, [0.1 * i / 3 for i in range(30)]
  sweep = _sweep(tmp_path, [
      ({'schedule': 'none', 'seed': '0'}, {'test_accuracy': 0.9}, _rows(flat, [0.0] * 30)),
      ({'schedule': 'none', 'seed': '1'}, {'test_accuracy': 0.9}, _rows(flat, [0.0] * 30)),
      ({'schedule': 'x', 'seed': '0'}, {'test_accuracy': 0.9}, _rows(rising, [0.0] * 30))])
  runs = reproduction.load_runs([sweep])
  line = reproduction.render(runs, reproduction.PlateauCheck('p', 'Plateau?',
                                                             {'schedule': 'none'}))[0]
  assert line.startswith('**Plateau?** (2 seeds)') and line.endswith('change +0.000')
  line = reproduction.plateau_markdown(runs, reproduction.PlateauCheck('p', 'P', {'schedule': 'x'}))
  assert line.startswith('**P** (1 seed):') and 'change +0.333' in line
  assert 'no finished run' in reproduction.plateau_markdown(
      runs, reproduction.PlateauCheck('p', 'P', {'schedule': 'y'}))


def _population_sweep(directory, backdoor_of_k, clean_backdoor):
  directory.mkdir()
  runs = [({'a': 'x', 'k': k, 'seed': '0'}, {'test_accuracy': 0.8, 'backdoor_accuracy': b},
           _rows([0.5, 0.5, 0.8, 0.8], [0.0, 0.0, b, b])) for k, b in backdoor_of_k.items()]
  runs.append(({'a': 'clean', 'k': '2', 'seed': '0'}, {'test_accuracy': 0.9},
               _rows([0.5, 0.5, 0.9, 0.9], [0.0, 0.0, clean_backdoor, clean_backdoor])))
  return _sweep(directory, runs)


def test_population_comparison_joins_the_two_studies_row_by_row(tmp_path):
  from studies import population
  small = _population_sweep(tmp_path / 'small', {'2': 0.4, '10': 0.9}, 0.1)
  full = _population_sweep(tmp_path / 'full', {'2': 0.7, '30': 0.2}, 0.0)
  comparison = population.Comparison('p', 'title', ('small', '293'), ('full', '3,580'),
                                     FAMILY, FAMILY, metrics=('window_backdoor',))
  rows = comparison.rows(reproduction.load_runs([small, full]))
  assert [r['label'] for r in rows] == ['clean (reference)', '2', '30', '10']
  by_label = {r['label']: r for r in rows}
  assert by_label['2']['window_backdoor_small'] == pytest.approx(0.4)
  assert by_label['2']['window_backdoor_change'] == pytest.approx(0.3)
  assert by_label['clean (reference)']['window_backdoor_change'] == pytest.approx(-0.1)
  assert by_label['30']['n_small'] == 0 and by_label['30']['window_backdoor_change'] is None
  text = comparison.render(reproduction.load_runs([small, full]), str(tmp_path))[0]
  assert '| 2 | 1 / 1 | 0.400 | 0.700 | +0.300 |' in text and '| 10 | 1 / 0 | 0.900 | - | - |' in text
  assert 'needs finished runs of both' in comparison.render(reproduction.load_runs([small]))[0]


def test_a_run_whose_attackers_stop_splits_its_windows_at_the_stop(tmp_path):
  backdoor = [0.9] * 9 + [0.6] + [0.2] * 10
  _write_run(str(tmp_path / 'stop'), {'test_accuracy': 0.5}, _rows([0.5] * 20, backdoor),
             attack_start=0)
  with open(tmp_path / 'stop' / 'config.json', 'w') as f:
    json.dump({'attack_start': 0, 'attack_stop': 10, 'rounds': 20}, f)
  values = reproduction.summarize_run(str(tmp_path / 'stop'), {}).values
  assert values['window_backdoor'] == pytest.approx(0.87)  # rounds 0-9 only
  assert values['last_attack_backdoor'] == pytest.approx(0.6)
  assert values['after_backdoor'] == pytest.approx(0.2)
  with open(tmp_path / 'stop' / 'config.json', 'w') as f:
    json.dump({'attack_start': 0, 'attack_stop': None, 'rounds': 20}, f)
  values = reproduction.summarize_run(str(tmp_path / 'stop'), {}).values
  assert values['window_backdoor'] == pytest.approx(sum(backdoor) / 20)
  assert 'after_backdoor' not in values and 'last_attack_backdoor' not in values


def test_a_long_run_also_reports_the_short_horizon_window(tmp_path):
  rows = _rows([0.5] * 70, [1.0 if r < 60 else 0.0 for r in range(70)])
  _write_run(str(tmp_path / 'long'), {'test_accuracy': 0.5}, rows, attack_start=0)
  with open(tmp_path / 'long' / 'config.json', 'w') as f:
    json.dump({'attack_start': 0, 'rounds': 70}, f)
  values = reproduction.summarize_run(str(tmp_path / 'long'), {}).values
  assert values['first60_backdoor'] == pytest.approx(1.0)
  assert values['window_backdoor'] == pytest.approx(60 / 70)
  _write_run(str(tmp_path / 'short'), {'test_accuracy': 0.5}, rows[:60], attack_start=0)
  assert 'first60_backdoor' not in reproduction.summarize_run(str(tmp_path / 'short'), {}).values


def _matrix_flags(task, attack, defense, seed):
  return {'task': task, 'attack': attack, 'defense': defense, 'seed': str(seed),
          'malicious_fraction': '0.2', 'distributed_parts': '1'}


def test_matrix_gets_the_new_defenses_and_attacks_where_they_have_runs_and_gaps_stay_missing():
  runs = [reproduction.RunSummary('r', _matrix_flags('pixel', attack, defense, seed),
                                  {'backdoor': 0.5 + 0.1 * seed})
          for attack, defense in (('data_poison', 'none'), ('data_poison', 'fldetector'),
                                  ('a3fl', 'none'), ('a3fl', 'krum'))
          for seed in range(2)]
  table = reproduction.MATRIX_TABLES[4]
  text, flat = reproduction.cross_markdown(runs, table)
  header = text.splitlines()[2]
  assert header.endswith('| FoolsGold | FLDetector | FLAIN | FLAIN (warm-start init) |')
  assert 'DeepSight' not in header  # no deepsight run
  lines = {l.split(' | ')[1]: l for l in text.splitlines() if l.startswith('| pixel |')}
  assert set(lines) == {'a3fl', 'data_poison'}
  titles = header.strip('| ').split(' | ')
  a3fl = lines['a3fl'].strip('| ').split(' | ')
  assert a3fl[titles.index('FLDetector')] == '-'  # a cell without runs is missing, not 0
  assert a3fl[titles.index('Krum')] == '0.550 ± 0.071'
  dp = dict(zip(titles, lines['data_poison'].strip('| ').split(' | ')))
  assert dp['FLDetector'] == '0.550 ± 0.071' and dp['Krum'] == '-'
  row = next(r for r in flat if r['attack'] == 'a3fl')
  assert row['FLDetector mean'] is None and 'DeepSight mean' not in row


def _detection_final(tp, fn, fp, tn, free_fpr=None):
  final = {'test_accuracy': 0.9, 'backdoor_accuracy': 0.1, 'detection_tp': tp,
           'detection_fn': fn, 'detection_fp': fp, 'detection_tn': tn,
           'detection_tpr': tp / (tp + fn), 'detection_fpr': fp / (fp + tn),
           'detection_fpr_attack_rounds': fp / (fp + tn)}
  if free_fpr is not None:
    final['detection_fpr_attack_free'] = free_fpr
  return final


def test_detection_tables_read_final_json_or_the_rows_and_leave_out_old_records(tmp_path):
  rows = [{'round': 0, 'test_accuracy': 0.9, 'backdoor_accuracy': 0.1}]
  # The same counts in the metrics rows only (a final.json without totals).
  row_counts = [dict(rows[0], detection_tp=1, detection_fn=1, detection_fp=0, detection_tn=8)]
  sweep = _sweep(tmp_path, [
      (_matrix_flags('pixel', 'boost', 'krum', 0), _detection_final(2, 0, 1, 7), rows),
      (_matrix_flags('pixel', 'boost', 'krum', 1), _detection_final(1, 1, 3, 5, 0.25), rows),
      (_matrix_flags('pixel', 'boost', 'flame', 0), {'test_accuracy': 0.9,
                                                     'backdoor_accuracy': 0.1}, row_counts),
      # a record from before issue 39: no detection fields anywhere, so no cell
      (_matrix_flags('pixel', 'boost', 'bulyan', 0), {'test_accuracy': 0.9,
                                                      'backdoor_accuracy': 0.1}, rows),
      (_matrix_flags('targeted', 'boost', 'bulyan', 0), {'test_accuracy': 0.9,
                                                         'backdoor_accuracy': 0.1}, rows)])
  runs = reproduction.load_runs([sweep])
  tpr, fpr, free = reproduction.FAMILIES['matrix_detection']
  text, flat = reproduction.cross_markdown(runs, tpr)
  assert [l for l in text.splitlines() if l.startswith('| ')][2:] == [
      '| pixel | boost | 1/2 | - | 0.750 ± 0.354 | - | - | - | 0.500 | - | - | - | - |']
  assert flat[0]['Bulyan mean'] is None
  text, _ = reproduction.cross_markdown(runs, fpr)
  assert text.splitlines()[-1] == (
      '| pixel | boost | 1/2 | - | 0.250 ± 0.177 | - | - | - | 0.000 | - | - | - | - |')
  text, _ = reproduction.cross_markdown(runs, free)
  assert text.splitlines()[-1] == '| pixel | boost | 1 | - | 0.250 | - | - | - | - | - | - | - | - |'
  only_old = reproduction.load_runs([sweep])[3:]
  assert reproduction.render(only_old, tpr) == [f'**{tpr.title}**: no finished run yet']


def _collect_wheres(dest):
  """The --where grids of REPRODUCTION.md's collect_records command into `dest`."""
  import shlex  # pylint: disable=g-import-not-at-top
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO, 'REPRODUCTION.md')) as f:
    lines = [l.strip() for l in f.read().splitlines()]
  start = next(i for i, l in enumerate(lines)
               if 'experiments.collect_records' in l and l.split()[4] == dest)
  text = lines[start]
  while text.endswith('\\'):
    start += 1
    text = text[:-1] + ' ' + lines[start]
  return [sweep_grid.parse_grid(a.split('=', 1)[1]) for a in shlex.split(text)
          if a.startswith('--where=')]


def _grid_configs(name):
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  return sweep_grid.expand(sweep_grid.read_grid_file(
      os.path.join(REPO, 'experiments', 'grids', name)))


def test_the_extended_matrix_grid_and_its_record_split_never_count_a_cell_twice():
  """Every run of femnist_matrix_ext.grid goes to exactly one committed directory; the new
  cells are none of femnist_attacks.grid's (the matrix tables read both), the reruns are all
  of its filtering-defense cells; seed 0 runs first."""
  from experiments import collect_records  # pylint: disable=g-import-not-at-top
  ext = _grid_configs('femnist_matrix_ext.grid')
  old = {frozenset(c.items()) for c in _grid_configs('femnist_attacks.grid')}
  new_where = _collect_wheres('experiments/results/femnist_matrix_ext')
  rerun_where = _collect_wheres('experiments/results/femnist_matrix_detection')
  new = [c for c in ext if collect_records._selected(c, new_where)]
  reruns = [c for c in ext if collect_records._selected(c, rerun_where)]
  assert len(ext) == 489 and len(new) + len(reruns) == len(ext)
  assert not any(frozenset(c.items()) in old for c in new)
  assert all(frozenset(c.items()) in old for c in reruns)
  filtering = {v for _, v in reproduction._FILTERING_DEFENSES} - {'fldetector', 'deepsight'}
  assert {(c['attack'], c['defense'], c['task'], c['seed']) for c in reruns} == {
      (a, d, t, s) for a in ('data_poison', 'boost', 'norm_bounded', 'neurotoxin',
                             'constrain_scale')
      for d in filtering for t in ('pixel', 'targeted') for s in '012'}
  seeds = [c['seed'] for c in ext]
  assert seeds.index('1') == seeds.count('0') and seeds.count('0') == 83 + 80
  # The new cells in the matrix: both new rows, both new columns, 3 seeds in every cell.
  runs = [reproduction.RunSummary('r', c, {'backdoor': 0.5}) for c in new]
  text, flat = reproduction.cross_markdown(runs, reproduction.MATRIX_TABLES[4])
  assert 'FLDetector | DeepSight | FLAIN' in text.splitlines()[2]
  assert {(r['task'], r['attack']) for r in flat if r['attack'] in ('anticipate', 'a3fl')} == {
      ('pixel', 'anticipate'), ('targeted', 'anticipate'), ('pixel', 'a3fl')}
  a3fl = next(r for r in flat if r['attack'] == 'a3fl')
  assert a3fl['seeds'] == '3' and a3fl['DeepSight mean'] == 0.5 and a3fl['clip mean'] == 0.5


def test_the_fldetector_window_grid_and_table():
  """femnist_matrix_fldetector_window.grid: FLDetector at N = 3 in every matrix row, 3 seeds,
  seed 0 first, each config otherwise one of the extended matrix's FLDetector cells; its table
  reads only N = 3 runs, one row per cell."""
  runs_ext = {frozenset(c.items()) for c in _grid_configs('femnist_matrix_ext.grid')
              if c['defense'] == 'fldetector'}
  window = _grid_configs('femnist_matrix_fldetector_window.grid')
  assert len(window) == 39 and [c['seed'] for c in window[:13]] == ['0'] * 13
  assert all(c['defense'] == 'fldetector' and c['fldetector_window'] == '3' for c in window)
  assert {frozenset({k: v for k, v in c.items() if k != 'fldetector_window'}.items())
          for c in window} == runs_ext
  table, = reproduction.FAMILIES['matrix_fldetector_window']
  values = {'window_backdoor': 0.4, 'window_test': 0.9, 'detection_tpr': 0.5,
            'detection_fpr_attack_rounds': 0.0}
  runs = [reproduction.RunSummary('r', c, values) for c in window]
  runs.append(reproduction.RunSummary('n10', dict(window[0], fldetector_window='10'),
                                      dict(values, detection_tpr=0.0)))
  text, flat = reproduction.cross_markdown(runs, table)
  assert len(flat) == 13 and {r['seeds'] for r in flat} == {'3'}
  assert {r['TPR mean'] for r in flat} == {0.5}  # the N = 10 run is not read
  assert text.splitlines()[2] == '| task | attack | seeds | backdoor | main | TPR | FPR |'
