"""Sweeps: grid syntax, skip/redo rules, results tables, failures, interruption and resume."""
import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from tests import tiny

from studies import sweep_grid
from studies import sweep_plan
from studies import sweep_results
from studies import sweep_processes
from studies import sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ('--dataset=idx --data_dir={} --model=tiny_cnn --partition=iid --num_clients=12 '
              '--clients_per_round=4 --rounds=2 --batch_size=10 --server_holdout=30 '
              '--task=targeted --source_class=2 --target_class=0 --num_tasks=2 '
              '--schedule=fixed_frequency --attack=boost')

# A stand-in absl-like program without TensorFlow: writes config.json and final.json like
# experiments.emnist_backdoor, and fails (exit 3, one error line) for --mode=crash.
FAKE_PROGRAM = '''
import json, os, sys
args = dict(a.lstrip('-').partition('=')[::2] for a in sys.argv[1:])
out = args.pop('output_dir')
os.makedirs(out, exist_ok=True)
scale = float(args.get('scale', 1))
with open(os.path.join(out, 'config.json'), 'w') as f:
  json.dump({'mode': args['mode'], 'seed': int(args['seed']), 'scale': scale}, f)
print('starting', sorted(args.items()), flush=True)
if args['mode'] == 'crash':
  print('error: mode crash is not supported', file=sys.stderr)
  sys.exit(3)
with open(os.path.join(out, 'final.json'), 'w') as f:
  json.dump({'test_accuracy': int(args['seed']) * scale / 10, 'extra': {'x': 1.5},
             'seconds': 100 * int(args['seed'])}, f)
'''


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _final_mtimes(directory):
  return {name: os.stat(os.path.join(directory, name, 'final.json')).st_mtime_ns
          for name in os.listdir(directory)
          if os.path.exists(os.path.join(directory, name, 'final.json'))}


# ----------------------------------------------------------------------------- grid syntax


def test_parse_grid_axes_values_whitespace_and_quotes():
  assert sweep_grid.parse_grid('defense=none,clip;seed=0,1') == [
      ('defense', ('none', 'clip')), ('seed', ('0', '1'))]
  assert sweep_grid.parse_grid(' --defense = none , clip ;seed=0; ') == [
      ('defense', ('none', 'clip')), ('seed', ('0',))]
  assert sweep_grid.parse_grid('capture_rounds="0-9,20",all;flain_layer="";x="a;b"') == [
      ('capture_rounds', ('0-9,20', 'all')), ('flain_layer', ('',)), ('x', ('a;b',))]


@pytest.mark.parametrize('spec,message', [
    ('', 'empty grid'),
    (' ; ', 'empty grid'),
    ('defense', "has no '='"),
    ('def-ense=a', 'bad flag name'),
    ('=a,b', 'bad flag name'),
    ('seed=0,,1', 'empty value'),
    ('seed=', 'empty value'),
    ('seed=0,0', 'repeats the value'),
    ('clip_norm=3,3.0', r"repeats the value '3' \(as '3.0'\)"),  # issue 41: one value
    ('clip_norm=0.001,1e-3', "repeats the value '0.001'"),
    ('seed=0;seed=1', 'appears twice'),
    ('x="a', 'unbalanced double quote'),
    ('x=a"b"', 'misplaced double quote'),
])
def test_malformed_grids_raise_one_line_errors(spec, message):
  with pytest.raises(sweep_grid.GridError, match=message) as info:
    sweep_grid.parse_grid(spec)
  assert '\n' not in str(info.value)


def test_grid_file_lines_comments_and_separators(tmp_path):
  path = tmp_path / 'grid.txt'
  path.write_text('# baseline\ndefense=none\nseed=0,1\n\n---\ndefense=clip;clip_norm=1,3\n'
                  'seed=0,1  \n')
  grids = sweep_grid.read_grid_file(str(path))
  assert grids == [[('defense', ('none',)), ('seed', ('0', '1'))],
                   [('defense', ('clip',)), ('clip_norm', ('1', '3')), ('seed', ('0', '1'))]]
  configs = sweep_grid.expand(grids)
  assert len(configs) == 2 + 4
  assert configs[0] == {'defense': 'none', 'seed': '0'}
  assert configs[2] == {'defense': 'clip', 'clip_norm': '1', 'seed': '0'}
  path.write_text('seed=0,1\n\nseed=2\n')
  with pytest.raises(sweep_grid.GridError, match=r'grid.txt:3: flag .seed. appears twice'):
    sweep_grid.read_grid_file(str(path))
  with pytest.raises(sweep_grid.GridError, match='cannot read'):
    sweep_grid.read_grid_file(str(tmp_path / 'missing.txt'))


def test_expand_is_the_ordered_union_without_duplicates():
  grids = [sweep_grid.parse_grid('a=1,2;b=x,y'), sweep_grid.parse_grid('b=y;a=2'),
           sweep_grid.parse_grid('a=3')]
  assert sweep_grid.expand(grids) == [{'a': '1', 'b': 'x'}, {'a': '1', 'b': 'y'},
                                  {'a': '2', 'b': 'x'}, {'a': '2', 'b': 'y'}, {'a': '3'}]


def test_expand_runs_values_that_parse_to_the_same_number_once():
  grids = [sweep_grid.parse_grid('clip_norm=3;seed=0'),
           sweep_grid.parse_grid('clip_norm=3.0,4;seed=0')]
  assert sweep_grid.expand(grids) == [{'clip_norm': '3', 'seed': '0'},
                                      {'clip_norm': '4', 'seed': '0'}]


def test_a_final_json_without_a_finished_runs_fields_is_redone(tmp_path):
  """Issue 41: a final.json of {} or {"test_accuracy": 0.99} counted as a finished seed."""
  spec = sweep_plan.SweepSpec(str(tmp_path), [sweep_grid.parse_grid('seed=0')])
  directory = str(tmp_path / 'run')
  os.makedirs(directory)
  for final, why in (({}, 'lacks rounds, test_accuracy, partition'),
                     ({'test_accuracy': 0.99}, 'lacks rounds, partition'),
                     ({'rounds': 3, 'test_accuracy': 0.5, 'partition': {}}, '')):
    with open(os.path.join(directory, 'final.json'), 'w') as f:
      json.dump(final, f)
    assert why in sweep_plan._unfinished(directory, spec)  # pylint: disable=protected-access
    assert bool(why) == bool(sweep_plan._unfinished(directory, spec))  # pylint: disable=protected-access


def test_run_names_are_deterministic_safe_and_distinct():
  assert sweep_grid.run_name({'defense': 'clip', 'seed': '1'}) == 'defense=clip,seed=1'
  names = {sweep_grid.run_name({'data_dir': v}) for v in ('/a/b', '_a_b', 'a b', '..', '')}
  assert len(names) == 5
  assert all('/' not in n and ' ' not in n and n != 'data_dir=..' for n in names)
  assert sweep_grid.run_name({'data_dir': '/a/b'}) == sweep_grid.run_name({'data_dir': '/a/b'})
  assert len(sweep_grid.run_name({f'flag{i}': 'x' * 40 for i in range(20)})) <= 200


def test_base_flags_and_spec_validation():
  assert sweep_grid.parse_base_flags("--a=1 --b='x y' --flain", ['--c=2']) == [
      '--a=1', '--b=x y', '--flain', '--c=2']
  with pytest.raises(sweep_grid.GridError, match="unexpected '3'"):
    sweep_grid.parse_base_flags('--rounds 3')
  with pytest.raises(sweep_grid.GridError, match='cannot split'):
    sweep_grid.parse_base_flags("--a='x")
  grid = [sweep_grid.parse_grid('seed=0,1')]
  with pytest.raises(sweep_grid.GridError, match='remove it from the grid'):
    sweep_plan.SweepSpec('out', [sweep_grid.parse_grid('output_dir=a,b')]).validate()
  with pytest.raises(sweep_grid.GridError, match='remove it from --base_flags'):
    sweep_plan.SweepSpec('out', grid, base_flags=['--output_dir=x']).validate()
  with pytest.raises(sweep_grid.GridError, match='empty grid'):
    sweep_plan.SweepSpec('out', []).validate()
  with pytest.raises(ValueError, match='unknown --program=experiments.nope'):
    sweep_plan.resolve_program('experiments.nope')
  with pytest.raises(ValueError, match='unknown --program=nonexistent_pkg.mod'):
    sweep_plan.resolve_program('nonexistent_pkg.mod')
  assert sweep_plan.resolve_program('experiments.emnist_backdoor') == REPO


def test_config_mismatches_follow_flag_semantics():
  config = {'rounds': 2, 'client_lr': 0.1, 'flain': True, 'data_dir': None,
            'output_dir': '/old/place', 'defense': {'name': 'clip', 'clip_norm': 3.0}}
  same = ['--rounds=2', '--client_lr=0.10', '--flain', '--defense=clip', '--clip_norm=3',
          '--verbosity=1', '--output_dir=/new/place']
  assert sweep_plan.config_mismatches(config, same, ignore=('output_dir',)) == []
  assert sweep_plan.config_mismatches(config, ['--rounds=3', '--rounds=2']) == []  # Last wins.
  for args, flag in ((['--clip_norm=1'], 'clip_norm'), (['--defense=none'], 'defense'),
                     (['--noflain'], 'flain'), (['--flain=false'], 'flain'),
                     (['--data_dir=/x'], 'data_dir'), (['--rounds=two'], 'rounds')):
    diffs = sweep_plan.config_mismatches(config, args)
    assert len(diffs) == 1 and diffs[0].startswith(f'--{flag}:'), (args, diffs)


# ----------------------------------------------------------------------------- fake program


@pytest.fixture
def fake_program(tmp_path, monkeypatch):
  root = tmp_path / 'prog'
  root.mkdir()
  (root / 'fake_sweep_program.py').write_text(FAKE_PROGRAM)
  monkeypatch.syspath_prepend(str(root))  # The sweep passes this root on to the children.
  return 'fake_sweep_program'


def test_failures_are_reported_without_stopping_others_and_rerun(tmp_path, fake_program):
  out = str(tmp_path / 'sweep')
  spec = sweep_plan.SweepSpec(out, [sweep_grid.parse_grid('mode=a,crash,b;seed=1,2,3')],
                          base_flags=['--scale=2'], program=fake_program,
                          metrics=('test_accuracy', 'extra.x', 'missing.metric'))
  lines = []
  result = sweeps.run_sweep(spec, parallel=3, out=lines.append)
  assert result.exit_code == 1 and not result.interrupted
  assert sorted(result.failed) == [f'mode=crash,seed={s}' for s in (1, 2, 3)]
  assert all('exit code 3: error: mode crash is not supported' in why
             for why in result.failed.values())
  assert sum(s == sweep_plan.FINISHED for s in result.status.values()) == 6
  assert any(l.startswith('3 configuration(s) failed') for l in lines)
  with open(os.path.join(out, 'mode=crash,seed=2', sweep_plan.LOG_FILE)) as f:
    log = f.read()
  assert '--mode=crash --seed=2' in log and 'error: mode crash' in log

  rows = _read_csv(os.path.join(out, sweep_plan.RESULTS_CSV))
  assert [(r['mode'], r['n_seeds']) for r in rows] == [('a', '3'), ('crash', '0'), ('b', '3')]
  assert float(rows[0]['test_accuracy_mean']) == pytest.approx(0.4)  # (0.2 + 0.4 + 0.6) / 3
  assert float(rows[0]['test_accuracy_std']) == pytest.approx(0.2)
  assert float(rows[2]['extra_x_mean']) == 1.5
  assert 'missing_metric_mean' not in rows[0]  # Absent from every run: left out.
  runs = _read_csv(os.path.join(out, sweep_plan.RUNS_CSV))
  assert len(runs) == 9 and {r['status'] for r in runs} == {'finished', 'failed'}
  with open(os.path.join(out, sweep_plan.RESULTS_MD)) as f:
    md = f.read()
  assert '| a | 3 | 0.4000 ± 0.2000 | 1.5000 ± 0.0000 |' in md

  before = _final_mtimes(out)
  lines = []
  again = sweeps.run_sweep(spec, parallel=3, out=lines.append)
  assert sorted(again.ran) == sorted(result.failed)  # Only the failed ones are redone.
  # The 3 crash configurations have no finished seed of their own: the median of all 6
  # finished (100, 200, 300 s, twice) is 200 s each.
  assert ('time left: about 0.2 h of runs one at a time (3 from the median of all 6 '
          'finished, 200 s; wall clock of the finished runs on their machine)') in lines
  assert len(again.skipped) == 6 and _final_mtimes(out) == before


def test_mismatched_or_foreign_directories_block_the_sweep(tmp_path, fake_program):
  out = str(tmp_path / 'sweep')
  grid = [sweep_grid.parse_grid('mode=a;seed=1,2')]
  spec = sweep_plan.SweepSpec(out, grid, base_flags=['--scale=2'], program=fake_program)
  assert sweeps.run_sweep(spec, out=lambda s: None).exit_code == 0
  before = _final_mtimes(out)
  other = sweep_plan.SweepSpec(out, grid, base_flags=['--scale=3'], program=fake_program)
  with pytest.raises(ValueError, match=r"2 run directories .* --scale: 2.0 in config.json, "
                                       r"'3' requested.*--replace_mismatched"):
    sweeps.run_sweep(other, out=lambda s: None)
  assert _final_mtimes(out) == before  # Nothing was touched.
  replaced = sweeps.run_sweep(other, replace_mismatched=True, out=lambda s: None)
  assert sorted(replaced.ran) == ['mode=a,seed=1', 'mode=a,seed=2']

  fresh = str(tmp_path / 'fresh')
  os.makedirs(os.path.join(fresh, 'mode=a,seed=1'))
  with open(os.path.join(fresh, 'mode=a,seed=1', 'notes.txt'), 'w') as f:
    f.write('mine')
  with pytest.raises(ValueError, match='not made by a sweep'):
    sweeps.run_sweep(sweep_plan.SweepSpec(fresh, grid, program=fake_program), out=lambda s: None)


def test_dry_run_lists_commands_and_touches_nothing(tmp_path, fake_program):
  out = str(tmp_path / 'sweep')
  spec = sweep_plan.SweepSpec(out, [sweep_grid.parse_grid('mode=a,b;seed=1')], program=fake_program,
                          base_flags=['--scale=2'])
  lines = []
  result = sweeps.run_sweep(spec, dry_run=True, out=lines.append)
  assert result.dry_run and result.exit_code == 0 and result.ran == []
  assert not os.path.exists(out)
  commands = [l.strip() for l in lines if l.startswith('  ')]
  assert commands == [
      f'{sys.executable} -m {fake_program} --scale=2 --mode={m} --seed=1 '
      f'--output_dir={os.path.join(os.path.abspath(out), f"mode={m},seed=1")}'
      for m in ('a', 'b')]
  assert '[run] mode=a,seed=1' in lines


def test_sweep_program_gives_one_line_error_for_a_malformed_grid(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', '--grid=defense=none,clip;seed',
       f'--output_dir={tmp_path}'], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2
  assert lines == ["error: grid axis 'seed' has no '=': write flag=value1,value2,..."], \
      result.stderr
  assert os.listdir(tmp_path) == []


def test_sweep_program_gives_one_line_error_for_a_missing_grid_file(tmp_path):
  missing = tmp_path / 'no.grid'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', f'--grid_file={missing}',
       f'--output_dir={tmp_path / "out"}'], cwd=REPO, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2, result.stderr
  assert lines == [f'error: cannot read --grid_file={missing}: No such file or directory'], lines
  assert not (tmp_path / 'out').exists()


def test_a_run_with_a_corrupt_final_json_is_rerun_not_averaged(tmp_path, fake_program):
  out = str(tmp_path / 'sweep')
  spec = sweep_plan.SweepSpec(out, [sweep_grid.parse_grid('mode=a;seed=1,2,3')], program=fake_program)
  assert sweeps.run_sweep(spec, out=lambda s: None).exit_code == 0
  final = os.path.join(out, 'mode=a,seed=2', 'final.json')
  with open(final) as f:
    text = f.read()
  with open(final, 'w') as f:
    f.write(text[:len(text) // 2])  # torn: not JSON
  assert sweep_plan.run_status(sweep_plan.plan(spec)[1], spec)[0] == sweep_plan.PARTIAL
  again = sweeps.run_sweep(spec, out=lambda s: None)
  assert again.ran == ['mode=a,seed=2'] and again.exit_code == 0
  (row,) = _read_csv(os.path.join(out, sweep_plan.RESULTS_CSV))
  assert row['n_seeds'] == '3'
  assert float(row['test_accuracy_mean']) == pytest.approx(0.2)  # (0.1 + 0.2 + 0.3) / 3


def test_bad_flags_of_any_configuration_stop_the_sweep_before_it_starts(tmp_path):
  """An unknown grid flag, a bad value in one grid cell, a bad pretraining flag: one line each
  on stderr naming the configuration, exit 2, nothing started (no run directory)."""
  out = tmp_path / 'sweep'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', '--grid=defnse=clip;seed=0',
       '--grid=rounds=2,0;seed=0',
       f'--base_flags={TINY_FLAGS.format(tiny.write_idx_dataset(str(tmp_path / "idx")))}',
       '--pretrain_flags=--attack=nope', f'--output_dir={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2, result.stderr
  assert lines == [
      "error: configuration defnse=clip,seed=0: Unknown command line flag 'defnse'. "
      'Did you mean: defense ?',
      'error: configuration rounds=0,seed=0: --rounds must be >= 1, got 0',
      'error: configuration pretrain: flag --attack=nope: value should be one of '
      '<data_poison|boost|norm_bounded|neurotoxin|constrain_scale|anticipate|a3fl>'], lines
  assert not out.exists() and result.stdout == ''


# ----------------------------------------------------------------------------- real runs


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  out = str(tmp_path / 'sweep')
  spec = sweep_plan.SweepSpec(out, [sweep_grid.parse_grid('defense=none,clip;seed=0,1')],
                          base_flags=sweep_grid.parse_base_flags(TINY_FLAGS.format(idx_dir)))

  def interrupt(run, state):  # Same path as Ctrl-C: stop the running children.
    assert state == sweep_plan.FINISHED, run.name
    raise KeyboardInterrupt

  first = sweeps.run_sweep(spec, parallel=2, on_finish=interrupt, out=lambda s: None)
  assert first.interrupted and first.exit_code == 130
  finished = _final_mtimes(out)
  assert 1 <= len(finished) < 4
  # Unfinished directories (the interrupted child, or a crash) are redone from scratch.
  for run in sweep_plan.plan(spec):
    if run.name not in finished:
      os.makedirs(run.directory, exist_ok=True)
      if not os.path.exists(os.path.join(run.directory, sweep_plan.RUN_RECORD)):
        with open(os.path.join(run.directory, sweep_plan.RUN_RECORD), 'w') as f:
          f.write('{}')
      with open(os.path.join(run.directory, 'stale.txt'), 'w') as f:
        f.write('left by a crash')

  second = sweeps.run_sweep(spec, parallel=2, out=lambda s: None)
  assert second.exit_code == 0, second.failed
  assert sorted(second.skipped) == sorted(finished)
  assert sorted(second.ran) == sorted(set(r.name for r in second.runs) - set(finished))
  now = _final_mtimes(out)
  assert len(now) == 4
  assert {name: now[name] for name in finished} == finished  # Not redone.
  finals = {}
  for run in second.runs:
    assert not os.path.exists(os.path.join(run.directory, 'stale.txt'))
    with open(os.path.join(run.directory, 'config.json')) as f:
      config = json.load(f)
    assert config['defense']['name'] == run.flags['defense']
    assert config['seed'] == int(run.flags['seed']) and config['rounds'] == 2
    with open(os.path.join(run.directory, 'final.json')) as f:
      finals[run.name] = json.load(f)
    with open(os.path.join(run.directory, sweep_plan.LOG_FILE)) as f:
      assert 'round    2/2' in f.read()

  rows = _read_csv(os.path.join(out, sweep_plan.RESULTS_CSV))
  assert [(r['defense'], r['n_seeds']) for r in rows] == [('none', '2'), ('clip', '2')]
  for row in rows:
    for metric in ('test_accuracy', 'backdoor_accuracy'):
      values = [finals[f'defense={row["defense"]},seed={s}'][metric] for s in (0, 1)]
      assert float(row[f'{metric}_mean']) == pytest.approx(statistics.mean(values))
      assert float(row[f'{metric}_std']) == pytest.approx(statistics.stdev(values), abs=1e-12)
  runs = _read_csv(os.path.join(out, sweep_plan.RUNS_CSV))
  assert [r['status'] for r in runs] == ['finished'] * 4
  with open(os.path.join(out, sweep_plan.SWEEP_FILE)) as f:
    assert [r['group'] for r in json.load(f)['runs']] == ['defense=none'] * 2 + [
        'defense=clip'] * 2


def test_finished_run_dirs_select_by_grid_flags_and_final_json(tmp_path):
  entries = []
  for i, (defense, done) in enumerate((('none', True), ('clip', True), ('none', False))):
    os.makedirs(tmp_path / f'r{i}')
    if done:
      (tmp_path / f'r{i}' / 'final.json').write_text('{}')
    entries.append({'name': f'r{i}', 'flags': {'defense': defense, 'seed': '0'},
                    'group': 'g', 'status': 'finished' if done else 'running'})
  (tmp_path / sweep_plan.SWEEP_FILE).write_text(json.dumps({'runs': entries}))
  assert sweep_results.finished_run_dirs(str(tmp_path), {'defense': 'none'}) == [
      os.path.join(str(tmp_path), 'r0')]
  assert len(sweep_results.finished_run_dirs(str(tmp_path), {})) == 2


# A program that checkpoints, then dies the first time (as a run cut by the end of a session);
# with --resume it needs its checkpoint and finishes.
CHECKPOINTING_PROGRAM = '''
import json, os, sys
args = dict(a.lstrip('-').partition('=')[::2] for a in sys.argv[1:])
out = args.pop('output_dir')
resumed = 'resume' in args
ckpt = os.path.join(out, 'checkpoints', 'round_0001')
if resumed and not os.path.isdir(ckpt):
  sys.exit('error: --resume without a checkpoint')
os.makedirs(ckpt, exist_ok=True)
with open(os.path.join(out, 'config.json'), 'w') as f:
  json.dump({'seed': int(args['seed'])}, f)
with open(os.path.join(out, 'trace.txt'), 'a') as f:
  f.write('resumed\\n' if resumed else 'started\\n')
if not resumed:
  sys.exit(9)
with open(os.path.join(out, 'final.json'), 'w') as f:
  json.dump({'test_accuracy': 0.5}, f)
'''


def test_a_partial_run_with_a_checkpoint_is_resumed_not_redone(tmp_path, monkeypatch):
  root = tmp_path / 'prog'
  root.mkdir()
  (root / 'ckpt_program.py').write_text(CHECKPOINTING_PROGRAM)
  monkeypatch.syspath_prepend(str(root))
  out = str(tmp_path / 'sweep')
  spec = sweep_plan.SweepSpec(out, [sweep_grid.parse_grid('seed=1')], program='ckpt_program',
                              metrics=('test_accuracy',))
  first = sweeps.run_sweep(spec, out=lambda s: None, warm=False)
  assert list(first.failed) == ['seed=1']
  lines = []
  sweeps.run_sweep(spec, dry_run=True, out=lines.append)
  assert '[resume] seed=1' in lines
  second = sweeps.run_sweep(spec, out=lambda s: None, warm=False)
  assert second.exit_code == 0 and second.ran == ['seed=1']
  with open(os.path.join(out, 'seed=1', 'trace.txt')) as f:
    assert f.read().split() == ['started', 'resumed']  # the directory was kept
  with open(os.path.join(out, 'seed=1', sweep_plan.LOG_FILE)) as f:
    log = f.read()
  assert log.count('# ') == 2 and log.rstrip().splitlines()[-1].endswith('--resume')
  # Without a checkpoint, or with other flags in config.json, the run starts from scratch.
  run = sweep_plan.plan(spec)[0]
  os.remove(os.path.join(out, 'seed=1', 'final.json'))
  assert sweep_processes.resumable(run, spec)
  with open(os.path.join(out, 'seed=1', 'config.json'), 'w') as f:
    json.dump({'seed': 2}, f)
  assert not sweep_processes.resumable(run, spec)
