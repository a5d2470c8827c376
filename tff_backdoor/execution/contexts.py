"""The TFF execution contexts the programs install: local (one worker) or remote workers.

No atexit hook runs on SIGKILL (or an OOM kill), and TFF's own launch (`subprocess.Popen`
inside `local_cpp_executor_factory`) offers no hook for a parent-death signal. So the programs
run on `local_execution()` instead of TFF's stock local context: the same TFF
`SyncExecutionContext` over gRPC to one `worker_binary`, but a worker we start ourselves
(`workers.start_local_workers`, behind `workers.die_with_parent_argv`), which the kernel
SIGKILLs when the program ends, however it ends. The context is installed explicitly and the
previous one restored on exit; importing this module changes nothing.
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Any, Dict, Iterator, List, Optional

from tff_backdoor.execution import workers as workers_lib

CPUINFO = '/proc/cpuinfo'  # Linux's description of the CPU: its model name and flags


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


def _cpuinfo_field(name: str) -> str:
  """The first `name : value` of /proc/cpuinfo ('' where there is none, e.g. not Linux)."""
  try:
    with open(CPUINFO, encoding='utf-8') as f:
      for line in f:
        if line.split(':', 1)[0].strip() == name:
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return ''


def _cpu_model() -> str:
  return _cpuinfo_field('model name') or platform.processor() or platform.machine()


def _cpu_simd() -> List[str]:
  """The CPU's vector-instruction flags (AVX*, AVX-512*, AMX*, FMA*), sorted.

  oneDNN picks its kernels by them, so one model name ("AMD EPYC") with and without AVX-512
  gives other float results from round 0 on; the model name alone cannot tell them apart.
  """
  return sorted(flag for flag in _cpuinfo_field('flags').split()
                if flag.startswith(('avx', 'amx', 'fma')))


def execution_settings() -> Dict[str, Any]:
  """What decides this process's float results and speed, for the run's config.json.

  oneDNN on or off (as TensorFlow reports it), the intra/inter-op threads of this process
  and of its TFF worker (which inherits the environment; 0 = TF's default, one per core; see
  `parallelism`), how many runs shared the machine, the cores, the CPU model and its vector
  flags (`cpu_simd`). Same seed, same settings, same CPU: same numbers; another CPU may print
  other digits.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  from tff_backdoor.execution import parallelism  # pylint: disable=g-import-not-at-top
  threads = parallelism.effective_threads()
  for key, get in (('intra_op_threads', tf.config.threading.get_intra_op_parallelism_threads),
                   ('inter_op_threads', tf.config.threading.get_inter_op_parallelism_threads)):
    threads[key] = get() or threads[key]  # set in Python wins over the environment
  return {'onednn': bool(_pywrap_util_port.IsMklEnabled()), **threads,
          'cpu_count': os.cpu_count(), 'cpu_model': _cpu_model(), 'cpu_simd': _cpu_simd(),
          'tensorflow': tf.__version__}


class LocalExecution:
  """A TFF sync context on one `worker_binary` that dies with this process (see module doc).

  Equivalent to `tff.backends.native.create_sync_local_cpp_execution_context()`: the same
  compiler and executor (`RemoteExecutor` to a local worker, unknown client cardinality 0).
  If the worker exits (e.g. killed), the next computation restarts it on the same port, as
  TFF's own service manager does. `close()` stops the worker for good: a computation still in
  flight on TFF's event-loop thread (Ctrl-C interrupts only the main thread's wait) then fails
  instead of starting a new worker.
  """

  def __init__(self, max_concurrent_computation_calls: int = -1, stream_structs: bool = False):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
    from tff_backdoor.execution import remote  # pylint: disable=g-import-not-at-top
    self._max_calls = max_concurrent_computation_calls
    self._closed = False
    (self.worker,) = workers_lib.start_local_workers(
        1, max_concurrent_computation_calls=max_concurrent_computation_calls)
    self._channel = workers_lib.channel(self.worker.address)
    self.context = remote.context_on_worker(
        tff.framework.RemoteExecutorGrpcStub(self._channel), stream_structs, sync=True,
        before_each=self._restart_if_exited)

  def _restart_if_exited(self) -> None:
    if self._closed:  # TFF retries a call whose worker vanished; after close() it must not.
      raise RuntimeError('the local TFF execution context is closed')
    if self.worker.poll() is None:
      return
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning('TFF worker on port %d exited with code %s; restarting it',
                    self.worker.port, self.worker.returncode)
    (self.worker,) = workers_lib.start_local_workers(
        1, ports=[self.worker.port], max_concurrent_computation_calls=self._max_calls)

  def close(self) -> None:
    """Stops the worker and closes the channel (the context is unusable after)."""
    self._closed = True
    workers_lib.stop_workers([self.worker])
    self._channel.close()


_OPEN: List[LocalExecution] = []  # the local executions whose blocks are running, innermost last


@contextlib.contextmanager
def local_execution(enabled: bool = True, **kwargs: Any) -> Iterator[Optional[LocalExecution]]:
  """Runs TFF computations of this thread on a `LocalExecution` worker inside the block.

  Restores the previous default context and stops the worker on exit, normal or not. With
  `enabled=False` it does nothing (e.g. when `--workers` names remote workers instead).
  Nested inside another `local_execution` block whose context is still the default, with no
  options of its own, it shares that one (a sweep's warm worker keeps one TFF worker for all
  its runs). Call it from the main thread (the worker dies with the thread that started it).
  """
  if not enabled:
    yield None
    return
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  previous = tff.framework.get_context_stack().current
  if _OPEN and not kwargs and previous is _OPEN[-1].context:
    yield _OPEN[-1]
    return
  execution = LocalExecution(**kwargs)
  _OPEN.append(execution)
  try:
    tff.framework.set_default_context(execution.context)
    yield execution
  finally:
    _OPEN.remove(execution)
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
  from tff_backdoor.execution import remote  # pylint: disable=g-import-not-at-top
  previous = tff.framework.get_context_stack().current
  context = remote.set_remote_execution_context(workers_lib.parse_workers(workers),
                                                num_subrounds=num_subrounds)
  try:
    yield context
  finally:
    tff.framework.set_default_context(previous)
    context.close()
