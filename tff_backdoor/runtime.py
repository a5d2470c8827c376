"""TFF execution contexts, and cleanup of the C++ worker processes TFF starts.

TFF 0.87 runs computations in a `worker_binary` subprocess and only stops it from
`ServiceManager.__del__`, which often never runs at interpreter exit: the orphaned worker
then keeps the parent's stdout/stderr open, so a shell pipeline (`... | tail`) or CI hangs.
Programs call `stop_workers_at_exit()` (through `cli.one_line_flags_parser`) to prevent that;
importing this module changes nothing. No atexit hook runs on SIGKILL (or an OOM kill), and
TFF's own launch (`subprocess.Popen` inside `local_cpp_executor_factory`) offers no hook for
a parent-death signal.

So the programs run on `local_execution()` instead of TFF's stock local context: the same
TFF `SyncExecutionContext` over gRPC to one `worker_binary`, but a worker we start ourselves
through `remote.die_with_parent_argv`, which the kernel SIGKILLs when the program ends, however
it ends. The context is installed explicitly and the previous one restored on exit.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import platform
import signal
import time
from typing import Any, Dict, Iterator, List, Optional

_WORKER_NAME = 'worker_binary'
_at_exit: List[bool] = []  # whether stop_workers_at_exit registered its hook


def quiet_tensorflow_logs() -> None:
  """TF_CPP_MIN_LOG_LEVEL=2 unless set: else TF and every TFF worker log INFO lines.

  Call it before TensorFlow is imported (workers inherit it at launch).
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def fast_path_defaults() -> None:
  """TF_ENABLE_ONEDNN_OPTS=1 unless set, before TensorFlow is imported (workers inherit it).

  TF 2.14 turns its oneDNN kernels on by default only on CPUs with AVX-512-class features;
  measured on the Sun CNN, they are faster on both kinds of CPU this project runs on (AMD
  AVX2: about 2x; AMD with AVX-512: vanilla TFF round 1.34 s on vs 2.75 s off; BUILD_NOTES).
  `TF_ENABLE_ONEDNN_OPTS=0` in the environment still turns them off. oneDNN and Eigen give
  different float results, so `execution_settings` records which one ran.
  """
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def execution_settings() -> Dict[str, Any]:
  """What decides this process's float results and speed, for the run's config.json.

  oneDNN on or off (as TensorFlow reports it), the intra/inter-op threads of this process
  and of its TFF worker (which inherits the environment; 0 = TF's default, one per core; see
  `parallelism`), how many runs shared the machine, the cores and the CPU model. Same seed,
  same settings, same CPU: same numbers; another CPU may print other digits.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  from tff_backdoor import parallelism  # pylint: disable=g-import-not-at-top
  threads = parallelism.effective_threads()
  for key, get in (('intra_op_threads', tf.config.threading.get_intra_op_parallelism_threads),
                   ('inter_op_threads', tf.config.threading.get_inter_op_parallelism_threads)):
    threads[key] = get() or threads[key]  # set in Python wins over the environment
  return {'onednn': bool(_pywrap_util_port.IsMklEnabled()), **threads,
          'cpu_count': os.cpu_count(), 'cpu_model': _cpu_model(),
          'tensorflow': tf.__version__}


def stop_workers_at_exit() -> None:
  """Registers `stop_local_workers` with atexit, once: no TFF worker outlives the program."""
  if not _at_exit:
    atexit.register(stop_local_workers)
    _at_exit.append(True)


def _child_worker_pids() -> List[int]:
  """PIDs of this process's direct children whose command is TFF's worker binary."""
  me = os.getpid()
  pids = []
  try:
    entries = os.listdir('/proc')
  except OSError:  # Not Linux: nothing we can do cheaply.
    return pids
  for entry in entries:
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', 'rb') as f:
        stat = f.read().decode(errors='replace')
    except OSError:
      continue
    # Format: pid (comm) state ppid ...; comm may contain spaces, so split at the last ')'.
    comm = stat[stat.find('(') + 1:stat.rfind(')')]
    fields = stat[stat.rfind(')') + 2:].split()
    if len(fields) > 1 and int(fields[1]) == me and comm.startswith(_WORKER_NAME[:15]):
      pids.append(int(entry))
  return pids


def _disarm_service_managers() -> None:
  """Stops TFF's ServiceManager.__del__ from running at shutdown (we stop the worker instead).

  Run at interpreter exit it fails with "Exception ignored ... 'NoneType' object has no
  attribute 'Popen'" because module globals are already torn down.
  """
  import gc  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if 'tensorflow_federated' not in sys.modules:
    return
  for obj in gc.get_objects():
    cls = type(obj)
    if cls.__name__ == 'ServiceManager' and cls.__module__.endswith('executor_factory'):
      cls.__del__ = lambda self: None


def stop_local_workers(timeout_s: float = 5.0) -> int:
  """Stops the TFF worker binaries this process started; returns how many were signalled."""
  _disarm_service_managers()
  pids = _child_worker_pids()
  for pid in pids:
    try:
      os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
      pass
  deadline = time.time() + timeout_s
  for pid in pids:
    while time.time() < deadline:
      try:
        done, _ = os.waitpid(pid, os.WNOHANG)
      except ChildProcessError:
        break
      if done:
        break
      time.sleep(0.05)
    else:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  return len(pids)


class LocalExecution:
  """A TFF sync context on one `worker_binary` that dies with this process (see module doc).

  Equivalent to `tff.backends.native.create_sync_local_cpp_execution_context()`: the same
  compiler and executor (`RemoteExecutor` to a local worker, unknown client cardinality 0).
  If the worker exits (e.g. killed), the next computation restarts it on the same port, as
  TFF's own service manager does. `close()` stops the worker.
  """

  def __init__(self, max_concurrent_computation_calls: int = -1, stream_structs: bool = False):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
    from tff_backdoor import remote  # pylint: disable=g-import-not-at-top
    self._remote = remote
    self._max_calls = max_concurrent_computation_calls
    (self.worker,) = remote.start_local_workers(
        1, max_concurrent_computation_calls=max_concurrent_computation_calls)
    self._channel = remote._channel(self.worker.address)  # pylint: disable=protected-access
    self.context = remote.context_on_worker(
        tff.framework.RemoteExecutorGrpcStub(self._channel), stream_structs, sync=True,
        before_each=self._restart_if_exited)

  def _restart_if_exited(self) -> None:
    if self.worker.poll() is None:
      return
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning('TFF worker on port %d exited with code %s; restarting it',
                    self.worker.port, self.worker.returncode)
    (self.worker,) = self._remote.start_local_workers(
        1, ports=[self.worker.port], max_concurrent_computation_calls=self._max_calls)

  def close(self) -> None:
    """Stops the worker and closes the channel (the context is unusable after)."""
    self._remote.stop_workers([self.worker])
    self._channel.close()


@contextlib.contextmanager
def local_execution(enabled: bool = True, **kwargs: Any) -> Iterator[Optional[LocalExecution]]:
  """Runs TFF computations of this thread on a `LocalExecution` worker inside the block.

  Restores the previous default context and stops the worker on exit, normal or not. With
  `enabled=False` it does nothing (e.g. when `--workers` names remote workers instead).
  Call it from the main thread (the worker dies with the thread that started it).
  """
  if not enabled:
    yield None
    return
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  previous = tff.framework.get_context_stack().current
  execution = LocalExecution(**kwargs)
  try:
    tff.framework.set_default_context(execution.context)
    yield execution
  finally:
    tff.framework.set_default_context(previous)
    execution.close()


@contextlib.contextmanager
def remote_execution(workers: Optional[str], num_subrounds: Optional[int] = None
                     ) -> Iterator[Optional[Any]]:
  """Runs TFF computations on remote `workers` ('host:port,...') inside the block, if given.

  Installs `remote.set_remote_execution_context`'s context and restores the previous one
  (closing this one) on exit; with no workers it leaves the current context alone.
  """
  if not workers:
    yield None
    return
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from tff_backdoor import remote  # pylint: disable=g-import-not-at-top
  previous = tff.framework.get_context_stack().current
  context = remote.set_remote_execution_context(remote.parse_workers(workers),
                                                num_subrounds=num_subrounds)
  try:
    yield context
  finally:
    tff.framework.set_default_context(previous)
    context.close()
