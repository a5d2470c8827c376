"""Warm starts (--init_from): the contract of tff_backdoor/run/warm_start.py, on tiny local data."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import tiny
from tff_backdoor import models
from tff_backdoor.analysis import captures as captures_lib
from tff_backdoor.run import driver
from tff_backdoor.run import setup as setup_lib
from tff_backdoor.run import warm_start

from studies import sweep_grid
from studies import sweep_plan
from studies import sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')), n_train=260, n_test=60)


def _config(idx_dir, out, **overrides):
  """Full participation, one full batch per client: no random draw changes the training."""
  base = dict(num_clients=4, clients_per_round=4, rounds=2, batch_size=1000, client_lr=0.5,
              seed=2)
  return tiny.run_config(idx_dir, out, **{**base, **overrides})


def _json(path):
  with open(path) as f:
    return json.load(f)


def _rows(out):
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'round_seconds'} for line in f]


def _read_rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _npz(path):
  with np.load(path) as npz:
    return [npz[f'arr_{i}'] for i in range(len(npz.files))]


def _final_weights(run_dir, idx_dir):
  model = models.build_model('tiny_cnn', tiny.SHAPE, tiny.NUM_CLASSES, seed=0)
  model.load_weights(os.path.join(run_dir, 'final_model.keras'))
  return model.get_weights()


@pytest.fixture(scope='module')
def source(idx_dir, tmp_path_factory):
  """A finished 2-round run to warm-start from."""
  out = tmp_path_factory.mktemp('source')
  driver.run_experiment(_config(idx_dir, out))
  return str(out)


def test_warm_start_from_a_finished_run_equals_continuing_it(idx_dir, source, tmp_path):
  warm = driver.run_experiment(_config(idx_dir, tmp_path / 'warm', init_from=source))
  longer = driver.run_experiment(_config(idx_dir, tmp_path / 'longer', rounds=4))
  warm_w = _final_weights(tmp_path / 'warm', idx_dir)
  source_w = _final_weights(source, idx_dir)
  for a, b in zip(warm_w, _final_weights(tmp_path / 'longer', idx_dir)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # 2 + 2 rounds == 4 rounds
  assert warm['test_loss'] == pytest.approx(longer['test_loss'], rel=1e-4)
  assert any(not np.allclose(a, b) for a, b in zip(warm_w, source_w))  # it did train on
  # Its round 0 is the source's final model, and config.json says where that came from.
  for a, b in zip(_npz(tmp_path / 'warm' / 'initial_weights.npz'), source_w):
    assert np.array_equal(a, b)
  config = _json(tmp_path / 'warm' / 'config.json')
  assert config['init_from'] == source
  assert config['init_from_file'] == os.path.join(source, 'final_model.keras')
  assert config['init_from_sha256'] == _json(os.path.join(source, 'final.json'))['model_sha256']
  assert config['init_from_sha256'] == warm_start.weights_sha256(source_w)
  assert config['init_from_rounds'] == 2
  assert [r['round'] for r in _rows(tmp_path / 'warm')] == [0, 1]  # its own rounds
  # A warm start of a warm start counts all the rounds behind its model.
  assert warm_start.resolve(str(tmp_path / 'warm'))[1] == 4


def test_warm_start_draws_the_randomness_of_the_same_run_from_scratch(idx_dir, source,
                                                                       tmp_path):
  """Same participants, attackers and schedule (its own round numbers); only the model differs."""
  flags = dict(num_clients=8, clients_per_round=3, batch_size=10, rounds=3, task='targeted',
               source_class=2, target_class=0, schedule='fixed_frequency', attack_every=1,
               attack_start=1, attack='boost', capture_rounds='all', seed=7)
  driver.run_experiment(_config(idx_dir, tmp_path / 'warm', init_from=source, **flags))
  driver.run_experiment(_config(idx_dir, tmp_path / 'scratch', **flags))
  warm = captures_lib.load_captures(str(tmp_path / 'warm' / 'captures'))
  scratch = captures_lib.load_captures(str(tmp_path / 'scratch' / 'captures'))
  assert [c.client_ids for c in warm] == [c.client_ids for c in scratch]
  assert [c.malicious.tolist() for c in warm] == [c.malicious.tolist() for c in scratch]
  assert [r['num_attackers'] for r in _rows(tmp_path / 'warm')] == [0, 1, 1]  # from round 1
  assert not np.allclose(warm[0].updates[-1], scratch[0].updates[-1])  # other round-0 model


def test_warm_start_from_the_newest_checkpoint_of_an_unfinished_run(idx_dir, tmp_path):
  unfinished = tmp_path / 'unfinished'
  driver.run_experiment(_config(idx_dir, unfinished, checkpoint_every=1))
  sha = _json(unfinished / 'final.json')['model_sha256']
  for name in ('final_model.keras', 'final.json'):  # as if stopped after its last checkpoint
    os.remove(unfinished / name)
  driver.run_experiment(_config(idx_dir, tmp_path / 'warm', rounds=1,
                                    init_from=str(unfinished)))
  config = _json(tmp_path / 'warm' / 'config.json')
  assert config['init_from_file'] == str(unfinished / 'checkpoints' / 'ckpt-000002')
  assert config['init_from_sha256'] == sha  # the checkpoint's model is the run's last model
  assert config['init_from_rounds'] == 2
  assert warm_start.weights_sha256(_npz(tmp_path / 'warm' / 'initial_weights.npz')) == sha


def test_resume_continues_a_warm_started_run_and_refuses_a_changed_source(idx_dir, source,
                                                                          tmp_path):
  own_source = str(tmp_path / 'source')
  shutil.copytree(source, own_source)
  flags = dict(init_from=own_source, rounds=3, checkpoint_every=1, num_clients=8,
               clients_per_round=3, batch_size=10)
  reference = driver.run_experiment(_config(idx_dir, tmp_path / 'ref', **flags))
  setup = setup_lib.prepare(_config(idx_dir, tmp_path / 'run', **flags))
  setup.process = tiny.StopAfter(setup.process, 2)
  with pytest.raises(KeyboardInterrupt):
    driver.run_prepared(setup)
  resumed = driver.run_experiment(_config(idx_dir, tmp_path / 'run', resume=True, **flags))
  assert _rows(tmp_path / 'run') == _rows(tmp_path / 'ref')
  assert resumed['model_sha256'] == reference['model_sha256']
  # The source's model changes: the run can no longer be resumed as the same experiment.
  (tmp_path / 'run' / 'final.json').unlink()  # unfinished again (a finished run is refused)
  model = models.build_model('tiny_cnn', tiny.SHAPE, tiny.NUM_CLASSES, seed=9)
  model.save(os.path.join(own_source, 'final_model.keras'))
  with pytest.raises(ValueError, match='init_from_sha256'):
    driver.run_experiment(_config(idx_dir, tmp_path / 'run', resume=True, **flags))


def test_bad_sources_fail_in_one_line(idx_dir, source, tmp_path):
  with pytest.raises(ValueError, match='no such run directory'):
    warm_start.check_source(_config(idx_dir, tmp_path / 'a', init_from=str(tmp_path / 'nope')))
  with pytest.raises(ValueError, match='output_dir of this run'):
    warm_start.check_source(_config(idx_dir, source, init_from=source))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(ValueError, match='neither final_model.keras nor a checkpoint'):
    warm_start.check_source(_config(idx_dir, tmp_path / 'a', init_from=str(tmp_path / 'empty')))
  other = models.build_model('sun_cnn', (28, 28, 1), 10, seed=0)
  with pytest.raises(ValueError, match='does not fit'):
    warm_start.load(source, other)
  truncated = str(tmp_path / 'truncated')
  shutil.copytree(source, truncated)
  with open(os.path.join(truncated, 'final_model.keras'), 'r+b') as f:
    f.truncate(3000)
  model = models.build_model('tiny_cnn', tiny.SHAPE, tiny.NUM_CLASSES, seed=0)
  with pytest.raises(ValueError, match=r'truncated/final_model\.keras: not a complete \.keras '
                     r'archive \(3000 bytes: truncated'):
    warm_start.load(truncated, model)
  # Issue 41: a byte flipped in place keeps the size (and the zip directory): a CRC error.
  flipped = str(tmp_path / 'flipped')
  shutil.copytree(source, flipped)
  path = os.path.join(flipped, 'final_model.keras')
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ValueError, match=r'flipped/final_model\.keras: damaged \.keras archive'):
    warm_start.check_source(_config(idx_dir, tmp_path / 'a', init_from=flipped))  # before TF
  with pytest.raises(OSError, match=r'flipped/final_model\.keras: damaged \.keras archive'):
    models.load_weights_file(model, os.path.join(flipped, 'final_model.keras'))
  # A model gone NaN is refused: it would train nothing and exit 0.
  broken = str(tmp_path / 'nonfinite')
  shutil.copytree(source, broken)
  weights = model.get_weights()
  weights[0][...] = np.nan
  model.set_weights(weights)
  model.save(os.path.join(broken, 'final_model.keras'))
  with pytest.raises(ValueError, match=rf'is not finite \({weights[0].size} of \d+ weights NaN'):
    warm_start.load(broken, models.build_model('tiny_cnn', tiny.SHAPE, tiny.NUM_CLASSES, seed=0))


def test_a_weights_file_that_is_not_one_is_named_with_the_reason(tmp_path):
  model = models.build_model('tiny_cnn', tiny.SHAPE, tiny.NUM_CLASSES, seed=0)
  (tmp_path / 'w.h5').write_bytes(b'not hdf5')
  with pytest.raises(OSError, match=r'w\.h5: not a readable Keras weights file'):
    models.load_weights_file(model, str(tmp_path / 'w.h5'))
  (tmp_path / 'w.npz').write_bytes(b'\x80\x04 pickled')
  with pytest.raises(ValueError, match=r'w\.npz: not a complete \.npz archive \(10 bytes'):
    models.read_weights_npz(str(tmp_path / 'w.npz'))
  np.savez(tmp_path / 'named.npz', kernel=np.zeros(2))
  with pytest.raises(ValueError, match=r'named\.npz: not an \.npz of weight arrays'):
    models.read_weights_npz(str(tmp_path / 'named.npz'))


def test_cli_reports_a_bad_init_from_in_one_line(tmp_path):
  code, lines = tiny.program_stderr('experiments.emnist_backdoor',
                                    f'--init_from={tmp_path / "missing"}',
                                    f'--output_dir={tmp_path}')
  assert code != 0 and len(lines) == 1, lines
  assert lines[0].startswith('error:') and 'init_from' in lines[0]


# ----------------------------------------------------------------------------- sweeps

# A TensorFlow-free stand-in for experiments.emnist_backdoor: config.json records --init_from
# and the sha of the model found there (the pretraining's final.json), final.json a model_sha256
# that depends on the flags; --mode=crash fails.
FAKE_PROGRAM = '''
import hashlib, json, os, sys
args = dict(a.lstrip('-').partition('=')[::2] for a in sys.argv[1:])
out = args.pop('output_dir')
os.makedirs(out, exist_ok=True)
config = dict(args)
if 'init_from' in args:
  with open(os.path.join(args['init_from'], 'final.json')) as f:
    config['init_from_sha256'] = json.load(f)['model_sha256']
with open(os.path.join(out, 'config.json'), 'w') as f:
  json.dump(config, f)
if args.get('mode') == 'crash':
  print('error: mode crash is not supported', file=sys.stderr)
  sys.exit(3)
sha = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()
with open(os.path.join(out, 'final.json'), 'w') as f:
  json.dump({'test_accuracy': float(args.get('seed', 0)) / 10, 'model_sha256': sha}, f)
'''


@pytest.fixture
def fake_program(tmp_path, monkeypatch):
  root = tmp_path / 'prog'
  root.mkdir()
  (root / 'fake_warm_program.py').write_text(FAKE_PROGRAM)
  monkeypatch.syspath_prepend(str(root))
  return 'fake_warm_program'


def _spec(out, program, pretrain_flags, grid='mode=a,b;seed=1,2'):
  return sweep_plan.SweepSpec(str(out), [sweep_grid.parse_grid(grid)], base_flags=['--rounds=5'],
                          program=program, pretrain_flags=pretrain_flags)


def test_sweep_runs_one_pretraining_first_and_warm_starts_every_configuration(tmp_path,
                                                                             fake_program):
  out = tmp_path / 'sweep'
  started = []
  result = sweeps.run_sweep(_spec(out, fake_program, ['--rounds=9', '--mode=clean']),
                            parallel=2, out=lambda s: None,
                            on_finish=lambda run, state: started.append(run.name))
  assert result.exit_code == 0 and result.pretrain_status == sweep_plan.FINISHED
  assert started[0] == sweep_plan.PRETRAIN and len(started) == 5  # first, and once
  pre = _json(out / 'pretrain' / 'config.json')
  assert pre['rounds'] == '9' and pre['mode'] == 'clean'  # pretrain flags override base flags
  sha = _json(out / 'pretrain' / 'final.json')['model_sha256']
  for name in ('mode=a,seed=1', 'mode=b,seed=2'):
    config = _json(out / name / 'config.json')
    assert config['init_from'] == str(out / 'pretrain') and config['init_from_sha256'] == sha
    assert config['rounds'] == '5'
  assert _json(out / sweep_plan.SWEEP_FILE)['pretrain']['status'] == sweep_plan.FINISHED
  assert len(_read_rows(out / sweep_plan.RUNS_CSV)) == 4  # the pretraining is not a table row
  again = sweeps.run_sweep(_spec(out, fake_program, ['--rounds=9', '--mode=clean']),
                           out=lambda s: None)
  assert again.ran == [] and len(again.skipped) == 4

  # Other pretraining flags: refused, or with replace_mismatched the pretraining and every
  # configuration built on the old one run again.
  other = _spec(out, fake_program, ['--rounds=10', '--mode=clean'])
  with pytest.raises(ValueError, match='pretrain'):
    sweeps.run_sweep(other, out=lambda s: None)
  redone = sweeps.run_sweep(other, replace_mismatched=True, out=lambda s: None)
  assert redone.pretrain_status == sweep_plan.FINISHED and len(redone.ran) == 4
  new_sha = _json(out / 'pretrain' / 'final.json')['model_sha256']
  assert new_sha != sha
  assert _json(out / 'mode=a,seed=1' / 'config.json')['init_from_sha256'] == new_sha


def test_a_failed_pretraining_runs_no_configuration(tmp_path, fake_program):
  out = tmp_path / 'sweep'
  lines = []
  result = sweeps.run_sweep(_spec(out, fake_program, ['--mode=crash']), out=lines.append)
  assert result.exit_code == 1 and result.pretrain_status == sweep_plan.FAILED
  assert list(result.failed) == [sweep_plan.PRETRAIN] and result.ran == []
  assert set(result.status.values()) == {sweep_plan.NOT_RUN}
  assert not (out / 'mode=a,seed=1').exists()
  assert any('pretrain' in l and 'mode crash' in l for l in lines)


def test_pretraining_and_init_from_do_not_mix(tmp_path, fake_program):
  with pytest.raises(sweep_grid.GridError, match='init_from'):
    _spec(tmp_path, fake_program, [], grid='init_from=a,b').validate()
  with pytest.raises(sweep_grid.GridError, match='output_dir'):
    _spec(tmp_path, fake_program, ['--output_dir=x']).validate()
  plain = sweep_plan.plan(_spec(tmp_path, fake_program, None))
  assert not any('init_from' in a for run in plain for a in run.args)  # no pretraining


def test_sweep_with_pretraining_end_to_end_on_the_experiment(idx_dir, tmp_path):
  base = (f'--dataset=idx --data_dir={idx_dir} --model=tiny_cnn --partition=iid '
          '--num_clients=4 --clients_per_round=2 --rounds=1 --batch_size=20 '
          '--server_holdout=20')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  cmd = [sys.executable, '-m', 'experiments.sweep', f'--base_flags={base}',
         '--pretrain_flags=--rounds=2', '--grid=client_lr=0.05', f'--output_dir={tmp_path}']
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  run = tmp_path / 'client_lr=0.05'
  assert _json(run / 'config.json')['init_from_sha256'] == _json(
      tmp_path / 'pretrain' / 'final.json')['model_sha256']
  assert _json(run / 'config.json')['init_from_rounds'] == 2
  assert len(_rows(run)) == 1
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
  assert again.returncode == 0 and '1 skipped as already finished' in again.stdout
