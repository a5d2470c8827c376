"""Remote execution: two TFF workers on loopback give the same rounds as local execution."""
import os
import socket
import subprocess
import sys

import numpy as np
import portpicker
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow.python.data.experimental.ops import testing as tf_data_testing  # A sleep.

from tests import tiny
from tff_backdoor import aggregators
from tff_backdoor.attacks import AttackConfig, make_client_data
from tff_backdoor.execution import remote
from tff_backdoor.execution import workers as workers_lib
from tff_backdoor.learning import process as process_lib

NUM_CLIENTS = 5
ROUNDS = 2


@pytest.fixture(scope='module')
def workers():
  started = workers_lib.start_local_workers(2)
  try:
    yield [w.address for w in started]
  finally:
    tff.backends.native.set_sync_local_cpp_execution_context()
    workers_lib.stop_workers(started)


@pytest.fixture
def on_workers(workers):
  """Installs the remote context for one test; the default local one is restored after."""
  contexts = []

  def install(**kwargs):
    contexts.append(remote.set_remote_execution_context(workers, **kwargs))
    return contexts[-1]

  try:
    yield install
  finally:
    tff.backends.native.set_sync_local_cpp_execution_context()
    for context in contexts:
      context.close()


def _client_data(indexed: bool = False):
  """Five clients of different sizes; client 1 attacks (boost), so updates differ a lot.
  `indexed`: with their population indices, for a side channel's ClientInfo."""
  empty = tiny.dataset(0, seed=99)
  return [make_client_data(tiny.dataset(8 + i, seed=i),
                           tiny.dataset(4, seed=50 + i) if i == 1 else empty, i == 1, i,
                           client_index=i if indexed else None)
          for i in range(NUM_CLIENTS)]


def _run_rounds(learning_process, indexed: bool = False):
  state = learning_process.initialize()
  metrics = []
  data = _client_data(indexed)
  for _ in range(ROUNDS):
    output = learning_process.next(state, data)
    state = output.state
    metrics.append(output.metrics)
  return learning_process.get_model_weights(state).trainable, metrics


def _leaves(structure):
  return [np.asarray(x) for x in tf.nest.flatten(structure)]


def _assert_same_run(local, remote_run):
  """Equal to 1e-6: only the order of floating-point sums differs (merged partial sums)."""
  (local_weights, local_metrics), (remote_weights, remote_metrics) = local, remote_run
  for a, b in zip(local_weights, remote_weights):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
  assert tf.nest.map_structure(lambda _: 0, local_metrics) == tf.nest.map_structure(
      lambda _: 0, remote_metrics)
  for a, b in zip(_leaves(local_metrics), _leaves(remote_metrics)):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('defense', [None, 'clip', 'multi_krum'])
def test_rounds_on_two_workers_equal_local_rounds(on_workers, defense):
  factory = None if defense is None else aggregators.build_defense(
      aggregators.DefenseConfig(name=defense), clients_per_round=NUM_CLIENTS, seed=0)
  learning_process = process_lib.build_attacked_fed_avg(
      tiny.model_fn(), tff.learning.optimizers.build_sgdm(0.1), batch_size=4,
      attack=AttackConfig('boost', boost=3.0), model_aggregator=factory)
  local = _run_rounds(learning_process)
  context = on_workers(non_mergeable='error')
  remote_run = _run_rounds(learning_process)
  _assert_same_run(local, remote_run)
  # Rounds were split over the workers; initialize/get_model_weights ran on one worker.
  assert context.stats == {'mergeable': ROUNDS, 'one_worker': 2, 'not_mergeable': 0}
  assert remote_run[1][-1]['client_work']['num_attackers'] == 1


@pytest.mark.parametrize('defense', ['fltrust', 'foolsgold'])
def test_side_channel_rounds_on_two_workers_equal_local_rounds(on_workers, defense):
  """g0 sent down and handed on, identities sent up: still one mergeable round."""
  factory = aggregators.build_defense(
      aggregators.DefenseConfig(name=defense, foolsgold_clients=NUM_CLIENTS), NUM_CLIENTS, seed=0)
  learning_process = process_lib.build_attacked_fed_avg(
      tiny.model_fn(), tff.learning.optimizers.build_sgdm(0.1), batch_size=4,
      attack=AttackConfig('boost', boost=3.0), model_aggregator=factory, client_info=True,
      root=tiny.arrays(8, seed=7) if defense == 'fltrust' else None, root_seed=3)
  local = _run_rounds(learning_process, indexed=True)
  context = on_workers(non_mergeable='error')
  _assert_same_run(local, _run_rounds(learning_process, indexed=True))
  assert context.stats['mergeable'] == ROUNDS


_CLIENT_FLOATS = tff.FederatedType(np.float32, tff.CLIENTS)


@tff.tensorflow.computation(np.float32, np.float32)
def _multiply(a, b):
  return a * b


@tff.federated_computation(_CLIENT_FLOATS)
def _dependent_aggregations(x):
  """sum_i x_i * sum_j x_j: the second aggregation needs the first, so it is not mergeable."""
  total = tff.federated_broadcast(tff.federated_sum(x))
  return tff.federated_sum(tff.federated_map(_multiply, (x, total)))


def test_non_mergeable_computation_runs_on_one_worker_or_raises(on_workers):
  context = on_workers()
  assert _dependent_aggregations([1.0, 2.0, 3.0]) == 36.0
  assert context.stats['not_mergeable'] == 1
  on_workers(non_mergeable='error')
  with pytest.raises(ValueError, match='not mergeable.*aggregate dependent on another'):
    _dependent_aggregations([1.0, 2.0, 3.0])


@tff.tensorflow.computation(np.int64)
def _sleep_then_increment(microseconds):
  slow = tf.data.Dataset.range(1).apply(tf_data_testing.sleep(microseconds))
  return slow.reduce(microseconds + 1, lambda total, _: total)


@tff.federated_computation(tff.FederatedType(np.int64, tff.CLIENTS))
def _per_client_and_sum(x):
  y = tff.federated_map(_sleep_then_increment, x)
  return y, tff.federated_sum(y)


def test_per_client_results_keep_client_order_when_first_worker_is_slower(on_workers):
  on_workers(non_mergeable='error')
  per_client, total = _per_client_and_sum([300000, 1])  # Worker 1 finishes first.
  assert list(per_client) == [300001, 2]
  assert total == 300003


@tff.federated_computation(_CLIENT_FLOATS)
def _sum(x):
  return tff.federated_sum(x)


def test_worker_that_dies_is_named_instead_of_retried_forever():
  (worker,) = workers_lib.start_local_workers(1)
  context = None
  try:
    context = remote.set_remote_execution_context([worker.address], unavailable_timeout_s=0)
    assert _sum([1.0, 2.0]) == 3.0
    workers_lib.stop_workers([worker])
    with pytest.raises(ConnectionError, match=f'127.0.0.1:{worker.port} has been unavailable'):
      _sum([1.0, 2.0])
  finally:
    tff.backends.native.set_sync_local_cpp_execution_context()
    workers_lib.stop_workers([worker])
    if context is not None:
      context.close()


@pytest.mark.parametrize('spec,expected', [
    ('a:1', [('a', 1)]),
    (' host-a:8000, 10.0.0.2:8001 ', [('host-a', 8000), ('10.0.0.2', 8001)]),
    ('[::1]:9000', [('::1', 9000)]),
])
def test_parse_workers(spec, expected):
  assert workers_lib.parse_workers(spec) == expected


@pytest.mark.parametrize('spec,message', [
    ('', 'empty value'),
    ('a:1,,b:2', 'empty worker'),
    ('a:1,', 'empty worker'),
    ('host', "not 'host:port'"),
    (':80', "not 'host:port'"),
    ('::1:80', 'IPv6'),
    ('a:http', 'port must be an integer'),
    ('a:0', 'port must be an integer in 1..65535'),
    ('a:70000', '1..65535'),
    ('a:-1', 'port must be'),
    ('a:1,a:1', 'listed twice'),
])
def test_parse_workers_errors_are_one_line(spec, message):
  with pytest.raises(ValueError, match=message) as error:
    workers_lib.parse_workers(spec)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('timeout', ['-5', '0', 'nan', 'inf'])
def test_check_blames_a_bad_timeout_on_the_flag_not_the_worker(timeout, capsys):
  assert workers_lib.main(['check', '--workers=127.0.0.1:1', f'--timeout_s={timeout}']) == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --timeout_s must be a positive'), lines


def test_unreachable_worker_is_named():
  port = portpicker.pick_unused_port()  # Nothing listens there.
  with pytest.raises(ConnectionError, match=f'127.0.0.1:{port} did not answer within 1 s'):
    remote.set_remote_execution_context([('127.0.0.1', port)], timeout_s=1.0)


def test_local_worker_that_cannot_bind_is_reported_at_once():
  with socket.socket() as busy:
    busy.bind(('127.0.0.1', 0))
    busy.listen()
    port = busy.getsockname()[1]
    with pytest.raises(RuntimeError, match=f'127.0.0.1:{port} exited'):
      workers_lib.start_local_workers(1, ports=[port], timeout_s=30.0)


def test_serve_cli_on_a_taken_port_exits_non_zero_in_one_line():
  """It used to print 'serving', then a kilobyte of gRPC bind error, and exit 0."""
  with socket.socket() as busy:
    busy.bind(('127.0.0.1', 0))
    busy.listen()
    port = busy.getsockname()[1]
    code, lines = tiny.program_stderr('tff_backdoor.execution.workers', 'serve', f'--port={port}')
  assert (code, lines) == (2, [f'error: cannot serve on port {port}: Address already in use'])


def test_serve_cli_execs_a_worker_that_check_reaches():
  port = portpicker.pick_unused_port()
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  server = subprocess.Popen([sys.executable, '-m', 'tff_backdoor.execution.workers', 'serve',
                             f'--port={port}', '--max_concurrent_computation_calls=2'], env=env)
  try:
    workers_lib.wait_for_workers([('127.0.0.1', port)], timeout_s=60.0, processes=[server])
    assert workers_lib.main(['check', f'--workers=127.0.0.1:{port}', '--timeout_s=5']) == 0
    with open(f'/proc/{server.pid}/cmdline', 'rb') as f:  # exec'd: the binary, not Python.
      assert f.read().split(b'\0')[0] == workers_lib.worker_binary_path().encode()
  finally:
    workers_lib.stop_workers([server])
  assert server.returncode is not None


def _experiment_rows(idx_dir: str, out, **kw):
  """Runs the experiment program's loop on the tiny idx data; returns its metrics rows."""
  import json  # pylint: disable=g-import-not-at-top
  from tff_backdoor import config as config_lib
  from tff_backdoor.run import driver
  params = dict(
      dataset='idx', data_dir=idx_dir, model='tiny_cnn', partition='iid', num_clients=12,
      clients_per_round=4, rounds=2, batch_size=10, server_holdout=30, task='targeted',
      source_class=2, target_class=0, num_tasks=2, schedule='fixed_frequency',
      attack='boost', seed=2, verbose=False, tensorboard=False, output_dir=str(out))
  params.update(kw)
  try:
    driver.run_experiment(config_lib.ExperimentConfig.from_flat(**params))
  finally:
    tff.backends.native.set_sync_local_cpp_execution_context()
  with open(out / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def _without_times(rows):
  return [{k: v for k, v in row.items() if k != 'round_seconds'} for row in rows]


def test_experiment_on_two_loopback_workers_matches_local(workers, tmp_path):
  """The experiment program's --workers path: same per-round metrics as local execution."""
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  local = _experiment_rows(idx_dir, tmp_path / 'local')
  remote_rows = _experiment_rows(idx_dir, tmp_path / 'remote',
                                 workers=','.join(f'{h}:{p}' for h, p in workers))
  assert len(local) == len(remote_rows) == 2
  for a, b in zip(local, remote_rows):
    assert a.keys() == b.keys()
    for key in a:
      if key != 'round_seconds' and isinstance(a[key], float):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
      elif key != 'round_seconds':
        assert a[key] == b[key], key


def test_sun_cnn_on_two_workers_gives_exactly_the_local_numbers(workers, tmp_path):
  """The default model (dropout, many weights) on two workers: every metric bit-identical.

  Training amplifies a last-bit difference of the aggregated weights into visible metric
  differences within a round or two, so "equal up to the order of float sums" is not enough:
  the default one share per client merges in the local executor's order, and the dropout
  masks are a function of each client's seed (models.StatelessDropout), not of the worker.
  """
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'), n_train=360)
  kw = dict(model='sun_cnn', num_clients=6, clients_per_round=4, rounds=3, batch_size=5,
            client_lr=0.2, attack='boost')
  local = _experiment_rows(idx_dir, tmp_path / 'local', **kw)
  remote_rows = _experiment_rows(idx_dir, tmp_path / 'remote',
                                 workers=','.join(f'{h}:{p}' for h, p in workers), **kw)
  assert len(local) == 3 and local[0]['test_loss'] != local[-1]['test_loss']  # It trained.
  assert _without_times(remote_rows) == _without_times(local)


def test_closed_local_execution_never_restarts_its_worker():
  """A call still in flight when the context closes (Ctrl-C interrupts only the main thread's
  wait; TFF retries on its event-loop thread) fails instead of starting a new worker."""
  from tff_backdoor.execution import contexts
  with contexts.local_execution() as execution:
    started = execution.worker
  assert started.poll() is not None  # close() stopped it
  with pytest.raises(RuntimeError, match='closed'):
    execution._restart_if_exited()  # pylint: disable=protected-access
  assert execution.worker is started


def test_a_nested_local_execution_shares_the_open_one():
  """A warm sweep worker's runs each enter `local_execution`: inside the worker's own block
  they share its TFF worker, which outlives them; options of their own get a new one."""
  from tff_backdoor.execution import contexts
  with contexts.local_execution() as outer:
    with contexts.local_execution() as inner:
      assert inner is outer
    assert outer.worker.poll() is None  # still serving the next run
    with contexts.local_execution(max_concurrent_computation_calls=2) as own:
      assert own is not outer
    assert own.worker.poll() is not None and outer.worker.poll() is None
  assert outer.worker.poll() is not None
