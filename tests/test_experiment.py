"""The experiment program end to end on tiny local idx data: outputs, determinism, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import tiny
from tff_backdoor import config as config_lib
from tff_backdoor import models
from tff_backdoor.aggregators import registry as defense_registry
from tff_backdoor.analysis import captures as captures_lib
from tff_backdoor.learning import update_capture
from tff_backdoor.run import client_inputs
from tff_backdoor.run import driver
from tff_backdoor.run import flain_hook
from tff_backdoor.run import setup as setup_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')))


def _config(idx_dir, out, **overrides):
  base = dict(dataset='idx', data_dir=idx_dir, model='tiny_cnn', partition='iid',
              num_clients=12, clients_per_round=4, rounds=3, batch_size=10, client_lr=0.1,
              server_holdout=30, seed=3, output_dir=str(out), verbose=False, tensorboard=True,
              task='targeted', source_class=2, target_class=0, num_tasks=2,
              schedule='fixed_frequency', attack_every=1, attack='boost')
  base.update(overrides)
  return config_lib.ExperimentConfig.from_flat(**base)


def _rows(out):
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop('round_seconds')
  return rows


def test_run_writes_metrics_files_and_is_deterministic(idx_dir, tmp_path):
  final = driver.run_experiment(_config(idx_dir, tmp_path / 'a'))
  driver.run_experiment(_config(idx_dir, tmp_path / 'b'))
  rows_a, rows_b = _rows(tmp_path / 'a'), _rows(tmp_path / 'b')
  assert [r['round'] for r in rows_a] == [0, 1, 2]
  assert rows_a == rows_b  # same seed, same numbers
  assert all(r['num_attackers'] == 1 for r in rows_a)
  assert rows_a[-1]['test_accuracy'] == final['test_accuracy']
  assert final['backdoor_accuracy'] == rows_a[-1]['backdoor_accuracy']  # the last round, whole
  assert final['backdoor_loss'] == rows_a[-1]['backdoor_loss'] > 0
  assert rows_a[0]['mean_malicious_update_norm'] > rows_a[0]['mean_honest_update_norm']
  with open(tmp_path / 'a' / 'metrics.csv') as f:
    header = f.readline().strip().split(',')
  assert {'round', 'test_accuracy', 'backdoor_accuracy', 'num_attackers'} <= set(header)
  assert any(n.startswith('events') for n in os.listdir(tmp_path / 'a' / 'tensorboard'))
  for name in ('config.json', 'final.json', 'initial_weights.npz', 'final_model.keras'):
    assert os.path.exists(tmp_path / 'a' / name)
  with open(tmp_path / 'a' / 'config.json') as f:
    saved = json.load(f)  # what ran it is recorded, and the config still reads back
  assert {'onednn', 'intra_op_threads', 'cpu_model', 'cpu_simd'} <= set(saved['execution'])
  assert config_lib.ExperimentConfig.from_dict(saved).to_dict() == _config(
      idx_dir, tmp_path / 'a').to_dict()
  other = driver.run_experiment(_config(idx_dir, tmp_path / 'c', seed=4, rounds=1))
  assert other['test_loss'] != rows_a[0]['test_loss']  # a different seed changes the run


def test_capture_saves_updates_without_changing_training(idx_dir, tmp_path):
  plain = _config(idx_dir, tmp_path / 'plain', rounds=2, defense=defense_registry.DefenseConfig())
  captured = _config(idx_dir, tmp_path / 'cap', rounds=2, capture_rounds='0-1')
  driver.run_experiment(plain)
  setup = setup_lib.prepare(captured)
  driver.run_prepared(setup)
  assert _rows(tmp_path / 'plain') == _rows(tmp_path / 'cap')
  w_plain = np.load(tmp_path / 'plain' / 'initial_weights.npz')
  w_cap = np.load(tmp_path / 'cap' / 'initial_weights.npz')
  assert all(np.array_equal(w_plain[k], w_cap[k]) for k in w_plain.files)
  captures = captures_lib.load_captures(str(tmp_path / 'cap' / 'captures'))
  assert [c.round_num for c in captures] == [0, 1]
  assert all(c.num_clients == 4 and c.malicious.sum() == 1 for c in captures)
  assert captures[0].variable_names[-1] == 'logits/bias'


def test_captured_updates_are_what_the_round_aggregated(idx_dir, tmp_path):
  config = _config(idx_dir, tmp_path, rounds=1, server_lr=1.0)
  setup = setup_lib.prepare(config)
  state = setup.process.initialize()
  participants = setup.schedule.sample_round(0, setup.client_ids, 4, np.random.default_rng(0))
  client_data, _ = client_inputs.round_client_data(setup, participants, np.random.default_rng(1))
  updates = update_capture.capture_client_updates(
      setup.client_work, state, setup.process.get_model_weights(state), client_data)
  weights = [float(sum(len(b['y']) for b in d['benign'])) for d in client_data]
  before = setup.process.get_model_weights(state).trainable
  after = setup.process.get_model_weights(setup.process.next(state, client_data).state).trainable
  for v in range(len(before)):
    mean = sum(w * u[v] for w, u in zip(weights, updates)) / sum(weights)
    np.testing.assert_allclose(before[v] - after[v], mean, rtol=1e-4, atol=1e-6)


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'experiments.emnist_backdoor', *args],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize('args,message', [
    (['--dataset=nope'], 'dataset'),
    (['--num_clients=10', '--clients_per_round=20'], 'clients_per_round'),
    (['--client_lr=-0.1'], 'client_lr'),
    (['--batch_size=0'], 'batch_size'),
    (['--defense=clip', '--clip_norm=-1'], 'clip'),
    (['--task=targeted', '--task_min_samples=-2'], 'task_min_samples'),
    (['--dataset=idx', '--data_dir=/nonexistent/dir', '--rounds=1'], '/nonexistent/dir'),
])
def test_bad_flags_exit_nonzero_with_one_line(args, message):
  result = _cli(*args)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode != 0
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('error:') and message in lines[0]
  assert 'Traceback' not in result.stderr


def test_flain_after_training_reports_before_after_and_saves_the_model(idx_dir, tmp_path):
  final = driver.run_experiment(_config(
      idx_dir, tmp_path, rounds=2, flain=True, flain_aux_per_class=5, server_holdout=30))
  flain = final['flain']
  assert set(flain) == {'before', 'after', 'report'}
  assert flain['before']['test_accuracy'] == final['test_accuracy']
  # The saved FLAIN model, on the same backdoor set rebuilt from the seed, gives 'after'.
  x, y = setup_lib.prepare(_config(idx_dir, tmp_path / 'check', rounds=2, flain=True,
                                   flain_aux_per_class=5, server_holdout=30)).eval_sets['backdoor']
  saved = tf.keras.models.load_model(tmp_path / 'flain_model.keras',
                                     custom_objects=models.CUSTOM_OBJECTS)
  hits = np.argmax(saved.predict(np.asarray(x, np.float32), verbose=0), axis=-1) == np.ravel(y)
  assert flain['after']['backdoor_accuracy'] == pytest.approx(np.mean(hits), abs=1e-6)
  assert flain['report']['num_aux'] == 15  # 5 per class x 3 classes, from the server split
  assert list(flain['report']['layers']) == ['dense_features']
  assert os.path.exists(tmp_path / 'flain_model.keras')
  with open(tmp_path / 'flain.json') as f:
    assert json.load(f)['after'] == flain['after']


@pytest.mark.parametrize('overrides,message', [
    (dict(flain_layer='nope'), 'no layer'),
    (dict(flain_layer='conv1'), 'not Dense'),
    (dict(flain_aux_per_class=500), 'per_class'),
])
def test_bad_flain_settings_fail_before_training(idx_dir, tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    setup_lib.prepare(_config(idx_dir, tmp_path, flain=True, **overrides))
  assert not os.path.exists(tmp_path / 'metrics.jsonl')


def test_reapply_flain_to_a_finished_run_matches_running_it_with_flain(idx_dir, tmp_path):
  with_flain = driver.run_experiment(_config(
      idx_dir, tmp_path / 'a', rounds=2, flain=True, flain_aux_per_class=5))
  driver.run_experiment(_config(idx_dir, tmp_path / 'b', rounds=2))
  again = flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / 'b_flain'),
                                   flain_aux_per_class=5)
  assert again['before'] == with_flain['flain']['before']  # same splits and evaluation sets
  assert again['after'] == with_flain['flain']['after']
  assert again['report']['num_flipped'] == with_flain['flain']['report']['num_flipped']
  for name in ('flain.json', 'flain_model.keras', 'config.json'):
    assert os.path.exists(tmp_path / 'b_flain' / name)
  with pytest.raises(ValueError, match='differ'):
    flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / 'b'))
  # Nothing finished is overwritten: its own result, or another run's directory.
  kept = {p: p.read_bytes() for p in (tmp_path / 'b_flain' / 'flain.json',
                                      tmp_path / 'a' / 'config.json')}
  for output, held in (('b_flain', r'flain\.json'), ('a', r'(flain|final)\.json')):
    with pytest.raises(ValueError, match=fr'already holds {held}: FLAIN overwrites no'):
      flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / output),
                               flain_mode='absolute')
  assert {p: p.read_bytes() for p in kept} == kept
  with pytest.raises(ValueError, match='not FLAIN options'):
    flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / 'c'), rounds=3)
  with pytest.raises(FileNotFoundError, match='config.json'):
    flain_hook.reapply_flain(str(tmp_path / 'nope'), str(tmp_path / 'c'))
  # Another round-0 model (a warm start's pretraining init): FLAIN flips other updates.
  own = np.load(tmp_path / 'b' / 'initial_weights.npz')
  other = tmp_path / 'other_init.npz'
  np.savez(other, *[own[f'arr_{i}'] * 0.5 for i in range(len(own.files))])
  moved = flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / 'b_other'), str(other),
                                   flain_aux_per_class=5)
  assert moved['before'] == again['before']
  assert moved['after'] != again['after']
  with pytest.raises(ValueError, match='--initial_weights=.*no such file'):
    flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / 'c'), str(tmp_path / 'x.npz'))
  (tmp_path / 'pickled.npz').write_bytes(b'\x80\x04 not an archive')
  with pytest.raises(ValueError, match=r'pickled\.npz: not a complete \.npz archive'):
    flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / 'c'),
                             str(tmp_path / 'pickled.npz'), flain_aux_per_class=5)
  np.savez(tmp_path / 'other_model.npz', np.zeros(3))
  with pytest.raises(ValueError, match=r"other_model\.npz: its 1 arrays do not fit the run's"):
    flain_hook.reapply_flain(str(tmp_path / 'b'), str(tmp_path / 'c'),
                             str(tmp_path / 'other_model.npz'), flain_aux_per_class=5)


def test_apply_flain_program_refuses_a_directory_that_is_not_a_run(tmp_path):
  code, lines = tiny.program_stderr('experiments.apply_flain', str(tmp_path),
                                    f'--output_dir={tmp_path / "out"}')
  assert code != 0 and len(lines) == 1, lines
  assert lines[0].startswith('error:') and 'config.json' in lines[0]


def test_apply_flain_program_refuses_an_empty_output_flag(tmp_path):
  code, lines = tiny.program_stderr('experiments.apply_flain', str(tmp_path), '--output_dir=')
  assert code == 2 and lines == ['error: --output_dir is empty'], lines
  (tmp_path / 'a_file').write_text('x')
  code, lines = tiny.program_stderr('experiments.apply_flain', str(tmp_path),
                                    f'--output_dir={tmp_path / "a_file"}')
  assert code == 2 and lines == [f'error: --output_dir={tmp_path / "a_file"} is a file: give '
                                 'a folder'], lines


def test_apply_flain_program_keeps_the_runs_own_options_it_is_not_given(idx_dir, tmp_path):
  driver.run_experiment(_config(idx_dir, tmp_path / 'run', rounds=1, flain_aux_per_class=5))
  code, lines = tiny.program_stderr('experiments.apply_flain', str(tmp_path / 'run'),
                                    f'--output_dir={tmp_path / "out"}', '--flain_mode=absolute')
  assert code == 0, lines
  with open(tmp_path / 'out' / 'config.json') as f:
    config = json.load(f)
  assert (config['flain_mode'], config['flain_aux_per_class']) == ('absolute', 5)
  with open(tmp_path / 'out' / 'flain.json') as f:
    assert json.load(f)['report']['num_aux'] == 15  # the run's 5 per class, not the default


def test_apply_flain_program_sweep_mode_takes_a_subdir_and_no_run_dirs(tmp_path):
  code, lines = tiny.program_stderr('experiments.apply_flain', f'--sweep_dir={tmp_path}',
                                    f'--output_dir={tmp_path / "out"}')
  assert code != 0 and lines == [
      'error: --sweep_dir takes --output_subdir and no run directories'], lines
