"""Checkpoints: manifests, keeping the last K, falling back past damage, kill-then-resume.

The crash-during-write tests (a real SIGKILL at chosen points of `save_checkpoint`) are in
tests/test_faults.py; these are the file-level guarantees, fast.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import tiny
from tff_backdoor import config as config_lib
from tff_backdoor.run import checkpoint
from tff_backdoor.run import driver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'n': np.int64(4)}


def _save(directory, round_num, keep=checkpoint.DEFAULT_KEEP):
  state = {'w': STATE['w'] + round_num, 'n': np.int64(round_num)}
  return checkpoint.save_checkpoint(str(directory), round_num, state,
                                    {'next_round': round_num}, keep=keep)


def _restore(directory):
  lines = []
  restored = checkpoint.restore_newest(str(directory), STATE, warn=lines.append)
  return restored, lines


def test_round_trip_keeps_the_last_k_and_ignores_partial_writes(tmp_path):
  for r in (1, 2, 3):
    _save(tmp_path, r)
  # An interrupted later write: a temporary directory that never got renamed.
  (tmp_path / '.ckpt-000004.tmp-12345').mkdir()
  (tmp_path / '.ckpt-000004.tmp-12345' / 'state.npz').write_bytes(b'garbage')
  (state, meta, path), lines = _restore(tmp_path)
  assert path.endswith('ckpt-000003') and lines == []
  np.testing.assert_array_equal(state['w'], STATE['w'] + 3)
  assert state['n'] == 3 and meta['next_round'] == 3
  assert sorted(os.listdir(tmp_path)) == ['.ckpt-000004.tmp-12345', 'LATEST', 'ckpt-000002',
                                          'ckpt-000003']
  manifest = json.loads((tmp_path / 'ckpt-000003' / 'MANIFEST.json').read_text())
  assert sorted(manifest['files']) == ['meta.json', 'state.npz']
  _save(tmp_path, 4, keep=3)
  assert sorted(os.listdir(tmp_path)) == ['LATEST', 'ckpt-000002', 'ckpt-000003', 'ckpt-000004']
  with pytest.raises(ValueError, match='different configuration'):
    checkpoint.load_checkpoint(checkpoint.latest_checkpoint(str(tmp_path)), {'w': STATE['w']})


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(1000 if os.path.getsize(path) > 1000 else os.path.getsize(path) // 2)


def _flip_bit(path):
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x10
  open(path, 'wb').write(bytes(data))


@pytest.mark.parametrize('damage,why', [
    (_truncate, 'state.npz has .* bytes'),
    (_flip_bit, 'state.npz fails its SHA-256'),
    (lambda p: os.remove(p), 'state.npz missing'),
])
def test_damaged_newest_checkpoint_falls_back_with_one_line(tmp_path, damage, why):
  for r in (2, 4):
    _save(tmp_path, r)
  damage(str(tmp_path / 'ckpt-000004' / 'state.npz'))
  (state, meta, path), lines = _restore(tmp_path)
  assert path.endswith('ckpt-000002') and meta['next_round'] == 2
  np.testing.assert_array_equal(state['w'], STATE['w'] + 2)
  assert len(lines) == 1 and '\n' not in lines[0]
  assert 'ckpt-000004' in lines[0] and 'resuming from ckpt-000002' in lines[0]
  assert __import__('re').search(why, lines[0])
  # The next save of round 4 replaces the damaged one; round 2 stays as the fallback.
  _save(tmp_path, 4)
  assert _restore(tmp_path)[0][2].endswith('ckpt-000004')
  assert sorted(os.listdir(tmp_path)) == ['LATEST', 'ckpt-000002', 'ckpt-000004']


def test_no_intact_checkpoint_is_one_line_naming_the_directory(tmp_path):
  for r in (2, 4):
    _save(tmp_path, r)
  _flip_bit(str(tmp_path / 'ckpt-000004' / 'state.npz'))
  _truncate(str(tmp_path / 'ckpt-000002' / 'meta.json'))
  with pytest.raises(checkpoint.CheckpointError, match='no intact checkpoint in ' + str(tmp_path)
                     ) as error:
    _restore(tmp_path)
  assert '\n' not in str(error.value) and 'ckpt-000002' in str(error.value)
  assert isinstance(error.value, ValueError)  # The programs print it as one line, exit 1.
  assert checkpoint.restore_newest(str(tmp_path / 'none'), STATE, print) is None


def test_nothing_is_deleted_before_the_successor_is_verified(tmp_path, monkeypatch):
  for r in (1, 2):
    _save(tmp_path, r)
  before = {p: (tmp_path / p / 'state.npz').read_bytes() for p in ('ckpt-000001', 'ckpt-000002')}
  real = checkpoint.damage
  monkeypatch.setattr(checkpoint, 'damage',  # The new checkpoint reads back wrong.
                      lambda path: 'bad disk' if path.endswith('ckpt-000003') else real(path))
  with pytest.raises(OSError, match='did not read back intact'):
    _save(tmp_path, 3)
  monkeypatch.setattr(checkpoint, 'damage', real)
  for name, data in before.items():
    assert (tmp_path / name / 'state.npz').read_bytes() == data
  assert (tmp_path / 'LATEST').read_text().strip() == 'ckpt-000002'


def test_checkpoint_without_manifest_named_by_latest_still_loads(tmp_path):
  """Run directories written before manifests existed keep resuming."""
  _save(tmp_path, 2)
  os.remove(tmp_path / 'ckpt-000002' / 'MANIFEST.json')
  (state, _, path), lines = _restore(tmp_path)
  assert path.endswith('ckpt-000002') and lines == [] and state['n'] == 2
  (tmp_path / 'LATEST').write_text('ckpt-000009\n')  # Not named by LATEST: not trusted.
  with pytest.raises(checkpoint.CheckpointError, match='no MANIFEST.json'):
    _restore(tmp_path)


def _flags(idx_dir, out):
  return [f'--dataset=idx', f'--data_dir={idx_dir}', '--model=tiny_cnn', '--partition=iid',
          '--num_clients=12', '--clients_per_round=4', '--rounds=5', '--batch_size=10',
          '--server_holdout=30', '--task=targeted', '--source_class=2', '--target_class=0',
          '--num_tasks=2', '--schedule=random_fraction', '--malicious_fraction=0.25',
          '--attack=boost', '--seed=5', '--checkpoint_every=1', f'--output_dir={out}']


def test_resume_state_starts_afresh_when_the_checkpoints_vanish_after_the_check(
    tmp_path, monkeypatch):
  # A deletion between `has_checkpoints` and `restore_newest`: a fresh start, not a TypeError.
  monkeypatch.setattr(checkpoint, 'has_checkpoints', lambda directory: True)
  streams = {name: np.random.default_rng(0) for name in ('round_data', 'sampling')}
  cfg = _config(str(tmp_path / 'idx'), tmp_path / 'run', resume=True)
  state, next_round, meta = driver.resume_state(cfg, STATE, streams)
  assert state is STATE and next_round == 0 and meta == {}


def _config(idx_dir, out, **kw):
  params = dict(
      dataset='idx', data_dir=idx_dir, model='tiny_cnn', partition='iid', num_clients=12,
      clients_per_round=4, rounds=5, batch_size=10, server_holdout=30, task='targeted',
      source_class=2, target_class=0, num_tasks=2, schedule='random_fraction',
      malicious_fraction=0.25, attack='boost', seed=5, checkpoint_every=1,
      output_dir=str(out), verbose=False)
  params.update(kw)
  return config_lib.ExperimentConfig.from_flat(**params)


def _rows(out):
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k != 'round_seconds'} for r in rows]


def test_kill_and_resume_gives_identical_metrics(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  reference = driver.run_experiment(_config(idx_dir, tmp_path / 'ref'))

  out = tmp_path / 'killed'
  log = open(tmp_path / 'killed.log', 'w')
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.emnist_backdoor',
                           *_flags(idx_dir, out)], cwd=REPO, stdout=log, stderr=log,
                          start_new_session=True)
  latest = out / 'checkpoints' / 'LATEST'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if latest.exists() and latest.read_text().strip() >= 'ckpt-000002':
      break
    time.sleep(0.2)
  assert proc.poll() is None, 'the run ended before it could be killed'
  os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the TFF worker dies too
  proc.wait()
  assert not (out / 'final.json').exists()

  resumed = driver.run_experiment(_config(idx_dir, out, resume=True))
  assert _rows(out) == _rows(tmp_path / 'ref')
  assert [r['round'] for r in _rows(out)] == list(range(5))
  for key in ('test_accuracy', 'backdoor_accuracy', 'test_loss'):
    assert resumed[key] == reference[key]


@pytest.mark.parametrize('damage', [_truncate, _flip_bit])
def test_resume_after_damaged_newest_checkpoint_gives_identical_metrics(tmp_path, damage,
                                                                        capfd):
  """The issue's scenario: the newest checkpoint damaged, --resume redoes its rounds from the
  one before and every metric equals the undamaged run's."""
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  out = tmp_path / 'run'
  driver.run_experiment(_config(idx_dir, out, rounds=4))
  reference = _rows(out)
  damage(str(out / 'checkpoints' / 'ckpt-000004' / 'state.npz'))
  (out / 'final.json').unlink()  # killed after its last checkpoint: a finished run is refused
  capfd.readouterr()
  driver.run_experiment(_config(idx_dir, out, rounds=4, resume=True))
  err = capfd.readouterr().err
  assert 'damaged checkpoint ckpt-000004' in err and 'resuming from ckpt-000003' in err
  assert _rows(out) == reference and len(reference) == 4


def test_resume_refuses_a_different_configuration(tmp_path):
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  cfg = _config(idx_dir, tmp_path / 'run')
  cfg.fed_avg.rounds = 1
  driver.run_experiment(cfg)
  (tmp_path / 'run' / 'final.json').unlink()  # unfinished, or it is refused as finished
  other = _config(idx_dir, tmp_path / 'run', resume=True)
  other.fed_avg.rounds, other.run.seed = 1, 6
  with pytest.raises(ValueError, match='seed'):
    driver.run_experiment(other)


def test_a_run_written_before_newer_defense_settings_resumes(tmp_path):
  """A run whose config.json predates some `defense` settings (they keep their defaults) and
  whose checkpoints carry that version's identity resumes to the same rows; a changed nested
  setting is still refused."""
  from tff_backdoor.run import ownership  # pylint: disable=g-import-not-at-top
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  clip = {'name': 'clip', 'clip_norm': 5.0}
  out = tmp_path / 'run'
  driver.run_experiment(_config(idx_dir, out, rounds=4, defense=clip))
  reference = _rows(out)
  saved = json.loads((out / 'config.json').read_text())
  newer = [k for k in saved['defense'] if k.startswith(('fldetector', 'deepsight'))]
  assert newer, 'expected defense settings to drop'
  for key in newer:  # what an older version wrote: those keys did not exist
    del saved['defense'][key]
  (out / 'config.json').write_text(json.dumps(saved))
  old_identity = ownership.legacy_identity(saved, driver._IDENTITY_IGNORED)
  assert old_identity != driver.run_identity(_config(idx_dir, out, rounds=4, defense=clip))
  for ckpt in sorted((out / 'checkpoints').glob('ckpt-*')):
    manifest = json.loads((ckpt / 'MANIFEST.json').read_text())
    manifest['owner']['run'] = old_identity
    (ckpt / 'MANIFEST.json').write_text(json.dumps(manifest))
  _flip_bit(str(out / 'checkpoints' / 'ckpt-000004' / 'state.npz'))  # redo round 4
  (out / 'final.json').unlink()  # as if killed before its end (a finished run is refused)
  driver.run_experiment(_config(idx_dir, out, rounds=4, defense=clip, resume=True))
  assert _rows(out) == reference
  # A setting the old version had, changed (on the run unfinished again):
  (out / 'final.json').unlink()
  changed = _config(idx_dir, out, rounds=4, defense={**clip, 'clip_norm': 7.0}, resume=True)
  with pytest.raises(ValueError, match='different defense'):
    driver.run_experiment(changed)
