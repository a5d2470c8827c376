"""A run directory belongs to one run (issue 31, item 1; README "Faults").

The three sequences end in one refusal line or a correct run, never in mixed rounds:
kill / fresh restart / resume; the same command with another seed; two concurrent runs.
A "kill" in-process is a KeyboardInterrupt raised after k rounds (what is on disk is what a
SIGKILL leaves: rows and checkpoints are written before the next round starts); the
concurrent-run test uses a real second process and SIGKILL.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow_federated as tff

from tests import tiny
from tff_backdoor.run import driver
from tff_backdoor.run import ownership
from tff_backdoor.run import setup as setup_lib

_RUN = dict(num_clients=8, clients_per_round=3, rounds=5, batch_size=10, server_holdout=30,
            task='targeted', source_class=2, target_class=0, num_tasks=2,
            schedule='random_fraction', malicious_fraction=0.25, attack='boost', seed=5,
            checkpoint_every=1)


def _config(idx_dir, out, **kw):
  return tiny.run_config(idx_dir, out, **{**_RUN, **kw})


def _rows(out):
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'round_seconds'} for line in f]


def _killed_after(idx_dir, out, rounds, **kw):
  """A run interrupted after `rounds` rounds (their rows and checkpoints written)."""
  setup = setup_lib.prepare(_config(idx_dir, out, **kw))
  setup.process = tiny.StopAfter(setup.process, rounds)
  with pytest.raises(KeyboardInterrupt):
    driver.run_prepared(setup)
  tff.backends.native.set_sync_local_cpp_execution_context()


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')))


@pytest.fixture(scope='module')
def reference(idx_dir, tmp_path_factory):
  """Every metric of the uninterrupted run."""
  out = tmp_path_factory.mktemp('ref') / 'run'
  driver.run_experiment(_config(idx_dir, out))
  return _rows(out)


def test_kill_then_fresh_restart_is_refused_and_resume_finishes_the_run(idx_dir, reference,
                                                                        tmp_path):
  out = tmp_path / 'run'
  _killed_after(idx_dir, out, 4)
  with pytest.raises(ownership.RunDirectoryError,
                     match=r'holds an unfinished run \(4 rounds.*--resume continues it'):
    driver.run_experiment(_config(idx_dir, out))
  assert len(_rows(out)) == 4  # nothing written by the refused start
  driver.run_experiment(_config(idx_dir, out, resume=True))
  assert _rows(out) == reference


def test_fresh_restart_with_overwrite_move_keeps_the_old_run_and_resumes_only_its_own(
    idx_dir, reference, tmp_path):
  """The issue's sequence: A killed at round 4, B started over and killed at round 2,
  --resume: B's rounds 0-4 (not A's checkpoint 4 after B's rows 0, 1)."""
  out = tmp_path / 'run'
  _killed_after(idx_dir, out, 4)
  a_rows = _rows(out)
  _killed_after(idx_dir, out, 2, overwrite='move')
  assert _rows(tmp_path / 'run.old-1') == a_rows  # A moved aside whole, nothing deleted
  assert os.path.isdir(tmp_path / 'run.old-1' / 'checkpoints' / 'ckpt-000004')
  assert sorted(os.listdir(out / 'checkpoints')) == ['LATEST', 'ckpt-000001', 'ckpt-000002']
  driver.run_experiment(_config(idx_dir, out, resume=True))
  assert _rows(out) == reference
  # Issue 41: A, moved, resumes where it now is (was: "was run with different output_dir").
  driver.run_experiment(_config(idx_dir, tmp_path / 'run.old-1', resume=True))
  assert _rows(tmp_path / 'run.old-1') == reference


def test_resume_refuses_a_checkpoint_of_another_run(idx_dir, tmp_path):
  """A directory holding seed 5's checkpoint under seed 1's config.json (what starting over
  with another seed used to leave): --resume with seed 1 refuses in one line."""
  a, b = tmp_path / 'a', tmp_path / 'b'
  _killed_after(idx_dir, a, 3)
  _killed_after(idx_dir, b, 1, seed=1)
  shutil.copytree(a / 'checkpoints' / 'ckpt-000003', b / 'checkpoints' / 'ckpt-000003')
  with pytest.raises(ownership.RunDirectoryError, match='written by another run'):
    driver.run_experiment(_config(idx_dir, b, seed=1, resume=True))
  assert [r['round'] for r in _rows(b)] == [0]


def test_a_torn_last_row_is_recomputed_not_dropped(idx_dir, reference, tmp_path):
  """The row of round 3 torn (metrics.jsonl cut mid-line): checkpoint 4 no longer has its rows,
  so --resume starts from checkpoint 3 and redoes round 3 (it used to skip it for good)."""
  out = tmp_path / 'run'
  _killed_after(idx_dir, out, 4)
  path = out / 'metrics.jsonl'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 40])
  driver.run_experiment(_config(idx_dir, out, resume=True))
  assert _rows(out) == reference


def test_same_command_with_another_seed_on_a_finished_run_is_refused(idx_dir, tmp_path):
  out = tmp_path / 'run'
  driver.run_experiment(_config(idx_dir, out, rounds=1, checkpoint_every=0))
  before = {name: (out / name).read_bytes() for name in ('final.json', 'metrics.jsonl')}
  with pytest.raises(ownership.RunDirectoryError, match='holds a finished run'):
    driver.run_experiment(_config(idx_dir, out, rounds=1, checkpoint_every=0, seed=1))
  # --resume, with changed flags or the same, is refused too (it used to start over, or
  # to rewrite final.json with eval_seconds 0).
  for seed in (1, 5):
    with pytest.raises(ownership.RunDirectoryError, match='finished run: nothing to resume'):
      driver.run_experiment(_config(idx_dir, out, rounds=1, checkpoint_every=0, seed=seed,
                                    resume=True))
  assert {name: (out / name).read_bytes() for name in before} == before
  driver.run_experiment(_config(idx_dir, out, rounds=1, checkpoint_every=0, seed=1,
                                overwrite='move'))
  assert json.loads((out / 'config.json').read_text())['seed'] == 1
  assert (tmp_path / 'run.old-1' / 'final.json').read_bytes() == before['final.json']


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')


def test_two_concurrent_runs_second_refused_and_the_lock_dies_with_its_holder(idx_dir,
                                                                             tmp_path):
  out = tmp_path / 'run'
  flags = [f'--{k}={v}' for k, v in dict(_RUN, dataset='idx', data_dir=idx_dir,
                                             model='tiny_cnn', partition='iid',
                                             output_dir=out, rounds=500).items()]
  with open(tmp_path / 'a.log', 'w') as log:
    first = subprocess.Popen([sys.executable, '-m', 'experiments.emnist_backdoor', *flags],
                             cwd=tiny.REPO, env=_env(), stdout=log, stderr=log,
                             start_new_session=True)
  try:
    deadline = time.time() + 180
    while time.time() < deadline and first.poll() is None and not (
        (out / 'checkpoints' / 'LATEST').exists()):
      time.sleep(0.2)
    assert first.poll() is None, (tmp_path / 'a.log').read_text()[-2000:]
    code, lines = tiny.program_stderr('experiments.emnist_backdoor', *flags)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0] == (f'error: another run is using {out} (pid {first.pid}); wait for it '
                        'or use another --output_dir')
    # The same refusal in-process: --resume is no way around the lock.
    with pytest.raises(ownership.RunDirectoryError, match='another run is using'):
      driver.run_experiment(_config(idx_dir, out, rounds=500, resume=True))
  finally:
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
  # The holder is dead, and its lock with it: the directory can be claimed again, and the
  # killed run's rows are whole rounds in order.
  with ownership.claim(str(out), resume=True, overwrite='refuse'):
    assert [r['round'] for r in _rows(out)] == list(range(len(_rows(out))))


def test_a_run_that_failed_before_its_first_round_is_moved_aside_not_refused(tmp_path):
  """A run that wrote config.json and no row (it failed in setup) holds nothing to continue:
  the same command starts over without --overwrite=move, keeping the failed run beside it."""
  out = tmp_path / 'run'
  out.mkdir()
  (out / 'config.json').write_text('{"seed": 1}')
  (out / 'metrics.jsonl').write_text('')
  said = []
  ownership.check_fresh_start(str(out), 'refuse', say=said.append)
  assert os.listdir(out) == [] and said == [
      f'moved an unfinished run (0 rounds in metrics.jsonl) in {out} to {out}.old-1']
  assert (tmp_path / 'run.old-1' / 'config.json').read_text() == '{"seed": 1}'
  (out / 'config.json').write_text('{"seed": 1}')
  (out / 'metrics.jsonl').write_text('{"round": 0}\n')  # one round: --resume's business
  with pytest.raises(ownership.RunDirectoryError, match=r'holds an unfinished run \(1 round in'):
    ownership.check_fresh_start(str(out), 'refuse', say=said.append)
  assert sorted(os.listdir(out)) == ['config.json', 'metrics.jsonl']
