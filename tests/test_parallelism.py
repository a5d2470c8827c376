"""Thread settings for runs sharing the cores, and the sweep handing them to its children."""
from studies import sweeps
from tff_backdoor import parallelism


def test_one_run_keeps_tf_defaults_and_n_runs_share_the_cores():
  assert parallelism.thread_env(1, cpu_count=2, environ={}) == {parallelism.PARALLEL: '1'}
  env = parallelism.thread_env(2, cpu_count=2, environ={})
  assert env[parallelism.INTRA_OP] == '1' and env[parallelism.INTER_OP] == '2'
  env = parallelism.thread_env(4, cpu_count=16, environ={})
  assert env[parallelism.INTRA_OP] == '4' and env[parallelism.INTER_OP] == '5'
  env = parallelism.thread_env(8, cpu_count=2, environ={})  # more runs than cores: one each
  assert env[parallelism.INTRA_OP] == '1'


def test_the_users_own_thread_settings_win():
  env = parallelism.thread_env(2, cpu_count=2, environ={parallelism.INTRA_OP: '3'})
  assert env[parallelism.INTRA_OP] == '3' and env[parallelism.INTER_OP] == '2'


def test_sweep_children_get_the_share_and_record_it(monkeypatch):
  monkeypatch.delenv(parallelism.INTRA_OP, raising=False)
  monkeypatch.delenv(parallelism.INTER_OP, raising=False)
  monkeypatch.setattr(parallelism.os, 'cpu_count', lambda: 2)
  env = sweeps._child_env('/repo', parallel=2)  # pylint: disable=protected-access
  assert env[parallelism.INTRA_OP] == '1' and env[parallelism.PARALLEL] == '2'
  assert env['PYTHONPATH'].split(':')[0] == '/repo'
  monkeypatch.setattr(parallelism.os, 'environ', env)
  assert parallelism.effective_threads() == {'intra_op_threads': 1, 'inter_op_threads': 2,
                                             'parallel_runs': 2}
