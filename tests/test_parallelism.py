"""Thread settings for runs sharing the cores, and the sweep handing them to its children."""
import os

from studies import sweep_processes
from tff_backdoor.execution import parallelism


def test_runs_keep_tf_defaults_at_every_parallel_and_record_it():
  for parallel in (1, 2, 8):  # measured: fewer threads saved no CPU and lost wall time
    assert parallel_env(parallel) == {parallelism.PARALLEL: str(parallel)}


def parallel_env(parallel, environ=None):
  return parallelism.thread_env(parallel, cpu_count=2, environ=environ or {})


def test_the_users_own_thread_settings_win():
  env = parallel_env(2, {parallelism.INTRA_OP: '1', parallelism.INTER_OP: '2'})
  assert env[parallelism.INTRA_OP] == '1' and env[parallelism.INTER_OP] == '2'


def test_sweep_children_get_the_settings_and_record_them(monkeypatch):
  monkeypatch.setenv(parallelism.INTRA_OP, '1')
  monkeypatch.delenv(parallelism.INTER_OP, raising=False)
  env = sweep_processes.child_env('/repo', parallel=2)
  assert env[parallelism.INTRA_OP] == '1' and env[parallelism.PARALLEL] == '2'
  assert parallelism.INTER_OP not in env
  assert env['PYTHONPATH'].split(':')[0] == '/repo'
  monkeypatch.setattr(parallelism.os, 'environ', env)
  assert parallelism.effective_threads() == {'intra_op_threads': 1, 'inter_op_threads': 0,
                                             'parallel_runs': 2}


def test_default_parallel_is_one_run_per_core_within_free_memory():
  gib = 2**30
  assert parallelism.default_parallel(cpu_count=2, available_bytes=24 * gib) == 2
  assert parallelism.default_parallel(cpu_count=64, available_bytes=9 * gib) == 4  # memory-bound
  assert parallelism.default_parallel(cpu_count=8, available_bytes=gib) == 1  # never 0
  assert parallelism.default_parallel(cpu_count=3, available_bytes=0) == 3  # unknown memory
  assert 1 <= parallelism.default_parallel() <= (os.cpu_count() or 1)
