"""experiments.collect_records: finished runs' records copied, models left, records kept."""
import json
import os
import subprocess
import sys

import pytest

from experiments import collect_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(root):
  runs = []
  for name, final in (('done', {'rounds': 2, 'test_accuracy': 0.5}), ('cut', None),
                      ('wrong_rounds', {'rounds': 1})):
    d = root / name
    d.mkdir(parents=True)
    (d / 'config.json').write_text(json.dumps({'rounds': 2}))
    (d / 'metrics.jsonl').write_text('{"round": 0}\n')
    (d / 'final_model.keras').write_text('model')
    if final is not None:
      (d / 'final.json').write_text(json.dumps(final))
    runs.append({'name': name, 'flags': {}, 'group': 'g', 'status': 'finished'})
  (root / 'sweep.json').write_text(json.dumps({'runs': runs}))
  return str(root)


def test_only_finished_runs_are_copied_without_models(tmp_path):
  sweep, dest = _sweep(tmp_path / 'sweep'), str(tmp_path / 'dest')
  assert collect_records.collect(sweep, dest) == ['done']
  assert sorted(os.listdir(dest)) == ['done', 'sweep.json']
  assert sorted(os.listdir(os.path.join(dest, 'done'))) == ['config.json', 'final.json',
                                                            'metrics.jsonl']
  assert collect_records.collect(sweep, dest) == []  # the same bytes: nothing to do


def test_no_finished_run_to_copy_leaves_the_destination_alone(tmp_path):
  sweep, dest = _sweep(tmp_path / 'sweep'), str(tmp_path / 'dest')
  result = subprocess.run([sys.executable, '-m', 'experiments.collect_records', sweep, dest,
                           '--where=attack=a3fl'], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert '0 run record(s) copied' in result.stdout and not os.path.exists(dest)


def test_a_committed_record_with_other_bytes_is_refused_in_one_line(tmp_path):
  sweep, dest = _sweep(tmp_path / 'sweep'), str(tmp_path / 'dest')
  collect_records.collect(sweep, dest)
  with open(os.path.join(sweep, 'done', 'final.json'), 'w') as f:
    json.dump({'rounds': 2, 'test_accuracy': 0.9}, f)
  result = subprocess.run([sys.executable, '-m', 'experiments.collect_records', sweep, dest],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and result.stderr.count('\n') == 1
  assert 'done/final.json differs' in result.stderr
  with open(os.path.join(dest, 'done', 'final.json')) as f:
    assert json.load(f)['test_accuracy'] == 0.5  # kept
  assert collect_records.collect(sweep, dest, replace=True) == ['done']
  with open(os.path.join(dest, 'done', 'final.json')) as f:
    assert json.load(f)['test_accuracy'] == 0.9


def test_where_copies_only_the_runs_whose_grid_flags_match_one_of_them(tmp_path):
  root = tmp_path / 'sweep'
  runs = []
  for name, flags in (('a3fl_krum', {'attack': 'a3fl', 'defense': 'krum'}),
                      ('boost_krum', {'attack': 'boost', 'defense': 'krum'}),
                      ('boost_deepsight', {'attack': 'boost', 'defense': 'deepsight'})):
    d = root / name
    d.mkdir(parents=True)
    (d / 'config.json').write_text(json.dumps({'rounds': 2}))
    (d / 'metrics.jsonl').write_text('{"round": 0}\n')
    (d / 'final.json').write_text(json.dumps({'rounds': 2, 'test_accuracy': 0.5}))
    (d / 'flain_origin_quantile').mkdir()  # FLAIN applied afterwards: its result is a record
    (d / 'flain_origin_quantile' / 'flain.json').write_text('{"after": {}}')
    (d / 'flain_origin_quantile' / 'model.keras').write_text('model')  # not a record
    runs.append({'name': name, 'flags': flags, 'group': 'g', 'status': 'finished'})
  (root / 'sweep.json').write_text(json.dumps({'runs': runs}))
  dest = str(tmp_path / 'new')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.collect_records', str(root), dest,
       '--where=attack=a3fl', '--where=defense=deepsight,fldetector'],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(dest)) == ['a3fl_krum', 'boost_deepsight', 'sweep.json']
  assert os.listdir(os.path.join(dest, 'a3fl_krum', 'flain_origin_quantile')) == ['flain.json']
  reruns = str(tmp_path / 'reruns')
  from studies import sweep_grid  # pylint: disable=g-import-not-at-top
  assert collect_records.collect(str(root), reruns, where=[sweep_grid.parse_grid(
      'attack=boost;defense=krum,bulyan')]) == ['boost_krum']
  bad = subprocess.run(
      [sys.executable, '-m', 'experiments.collect_records', str(root), dest, '--where=attack'],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('inside', ['done', 'records', '.'])
def test_a_destination_inside_the_sweep_is_refused_in_one_line(tmp_path, inside):
  sweep = _sweep(tmp_path / 'sweep')
  before = sorted(os.listdir(sweep)), sorted(os.listdir(os.path.join(sweep, 'done')))
  result = subprocess.run([sys.executable, '-m', 'experiments.collect_records', sweep,
                           os.path.join(sweep, inside)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode != 0 and result.stderr.count('\n') == 1, result.stderr
  assert 'is inside the sweep directory' in result.stderr
  assert (sorted(os.listdir(sweep)), sorted(os.listdir(os.path.join(sweep, 'done')))) == before
