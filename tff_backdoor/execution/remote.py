"""Runs the simulation on TFF's C++ worker binaries, possibly on other hosts.

TFF 0.87 executes every computation in a C++ `worker_binary` that it starts on the local
machine. The same binary can serve on other hosts; `set_remote_execution_context` installs a
TFF context that sends each round to a list of such workers, in TFF's mergeable form: the
round's clients are split into `num_subrounds` shares (by default one per client), the
workers train and partially aggregate their shares at the same time, the partial aggregates
are merged in client order, and the server step runs on one worker. With one client per
share the merges add the clients' contributions in the same order as TFF's local executor
folds them, so rounds are bit-identical to local execution (on the same kind of CPU); with
fewer, larger shares they equal it up to the order of floating-point sums, and training
amplifies that last-bit difference over rounds (measured: 1.5e-8 in the weights after one
round of the Sun CNN became 0.03 in the next round's client updates).

Starting workers on other hosts (each host needs this package and the same TFF 0.87 stack,
e.g. `make venv`):

  host-a$ .venv/bin/python -m tff_backdoor.execution.remote serve --port=8000
  host-b$ .venv/bin/python -m tff_backdoor.execution.remote serve --port=8000 \
      --max_concurrent_computation_calls=4

`serve` replaces itself with the worker binary of the installed TFF, so nothing needs the
venv's internal path. The worker listens on ALL network interfaces of its host (the binary
has no address flag) and speaks unauthenticated, unencrypted gRPC that runs any TFF/TF
computation it is sent: run workers only on a trusted network, or firewall the port and
reach it through an SSH tunnel (`ssh -L 8000:127.0.0.1:8000 host-a`, then use
`127.0.0.1:8000`). Check that the driver can reach them:

  $ .venv/bin/python -m tff_backdoor.execution.remote check --workers=host-a:8000,host-b:8000

The experiment then runs as usual with `--workers=host-a:8000,host-b:8000`, which calls
`set_remote_execution_context(parse_workers(FLAGS.workers))` before the learning process is
built; the driver keeps the data, samples clients, evaluates, and ships each share of client
datasets to its worker every round. On one machine, `start_local_workers(n)` starts n
workers on loopback (used by the tests).

Which computations go where:
* A computation whose argument has clients (a round: `process.next`, client work) is
  compiled to TFF's mergeable form and split over the workers. Aggregations must be
  mergeable: all of TFF's, and ours including the server-side rules that stack every update
  with one `federated_aggregate` (`aggregators.robust_rules.federated_stack`).
* A computation without clients in its argument (`initialize`, `get_model_weights`, pure
  TF computations) runs whole on the first worker: the mergeable context would run it on
  every worker and keep one result.
* A computation that does not compile to mergeable form (two aggregations where one depends
  on the other) runs whole on the first worker with a logged warning, or raises if
  `non_mergeable='error'`.
If a worker stops answering during a run, the call is retried (TFF backs off to every 30 s)
with a logged warning, so a worker restarted at the same address resumes the run; after
`unavailable_timeout_s` (default 300 s) a ConnectionError names the worker.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import concurrent.futures
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import types
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from absl import logging

Worker = Tuple[str, int]

_BINARY_NAME = 'worker_binary'
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000  # As TFF's local context.
_GRPC_OPTIONS = [('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
                 ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
                 ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES)]
NON_MERGEABLE_MODES = ('one_worker', 'error')


def parse_workers(spec: str) -> List[Worker]:
  """'host:port,host:port' (IPv6 as '[::1]:port') -> [(host, port), ...]; one-line errors."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError("workers must be 'host:port[,host:port...]', found an empty value")
  workers: List[Worker] = []
  for item in spec.split(','):
    item = item.strip()
    if not item:
      raise ValueError(f'empty worker in {spec!r} (a stray comma?)')
    if item.startswith('['):  # [IPv6]:port
      host, sep, port_text = item[1:].partition(']:')
    else:
      host, sep, port_text = item.rpartition(':')
    if not sep or not host or ':' in port_text or (':' in host and not item.startswith('[')):
      raise ValueError(f"worker {item!r} is not 'host:port' (write IPv6 as '[addr]:port')")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
      raise ValueError(f'worker {item!r}: port must be an integer in 1..65535')
    worker = (host, int(port_text))
    if worker in workers:
      raise ValueError(f'worker {item!r} is listed twice (use num_subrounds for more shares)')
    workers.append(worker)
  return workers


def worker_address(worker: Worker) -> str:
  """gRPC target of a worker: 'host:port', with IPv6 hosts in brackets."""
  host, port = worker
  return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'


def worker_binary_path() -> str:
  """Path of the installed TFF's C++ worker binary (found without importing TFF)."""
  spec = importlib.util.find_spec('tensorflow_federated')
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError('tensorflow_federated is not installed in this Python '
                       f'({sys.executable}); run `make venv`')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'data', _BINARY_NAME)
  if not os.access(path, os.X_OK):
    raise RuntimeError(f'TFF worker binary not found or not executable at {path}')
  return path


def _worker_argv(port: int, max_concurrent_computation_calls: int) -> List[str]:
  return [worker_binary_path(), f'--port={port}',
          f'--max_concurrent_computation_calls={max_concurrent_computation_calls}']


def _worker_env() -> Dict[str, str]:
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Else INFO lines for every client call.
  return env


# Run as `python -I -S -c _DIE_WITH_PARENT <parent pid> <argv...>`: asks the kernel to SIGKILL
# this process when its parent ends (PR_SET_PDEATHSIG = 1, kept across exec), exits if the
# parent is already gone, then execs argv (same pid). No preexec_fn: a child forked from a
# process with TensorFlow's threads should run no Python code before exec.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:
    sys.exit('prctl(PR_SET_PDEATHSIG) failed: errno %d' % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.argv[2], sys.argv[2:])
"""


def die_with_parent_argv(argv: Sequence[str]) -> List[str]:
  """`argv` behind a launcher that makes it die with this process, even on SIGKILL (Linux).

  The kernel sends the parent-death signal when the *thread* that started the child ends, so
  start such children from the main thread or another thread that lives as long as they do.
  """
  return [sys.executable, '-I', '-S', '-c', _DIE_WITH_PARENT, str(os.getpid()), *argv]


class LocalWorker(subprocess.Popen):
  """A worker binary started by `start_local_workers`; `address` is (host, port) for it.

  The kernel SIGKILLs it when the process that started it ends, however that ends
  (`die_with_parent_argv`), so a killed driver leaves no worker behind.
  """

  def __init__(self, port: int, max_concurrent_computation_calls: int = -1):
    self.port = port
    self.address: Worker = ('127.0.0.1', port)
    super().__init__(die_with_parent_argv(_worker_argv(port, max_concurrent_computation_calls)),
                     env=_worker_env())


_started: List[LocalWorker] = []
_started_hook: List[bool] = []


def start_local_workers(n: int, ports: Optional[Sequence[int]] = None, *,
                        max_concurrent_computation_calls: int = -1,
                        timeout_s: float = 60.0) -> List[LocalWorker]:
  """Starts `n` worker binaries on this machine and waits until each answers on 127.0.0.1.

  Ports default to free ones from portpicker. The workers are stopped by `stop_workers`, and
  at interpreter exit at the latest. Raises RuntimeError if one exits or never answers.
  """
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'n must be a positive integer, found {n!r}')
  if ports is None:
    import portpicker  # pylint: disable=g-import-not-at-top
    ports = [portpicker.pick_unused_port() for _ in range(n)]
  ports = list(ports)
  if len(ports) != n:
    raise ValueError(f'{len(ports)} ports given for {n} workers')
  if not _started_hook:  # registered by the first start, not at import
    atexit.register(_stop_started)
    _started_hook.append(True)
  workers: List[LocalWorker] = []
  try:
    for port in ports:
      worker = LocalWorker(int(port), max_concurrent_computation_calls)
      workers.append(worker)
      _started.append(worker)
    wait_for_workers([w.address for w in workers], timeout_s, processes=workers)
  except BaseException:
    stop_workers(workers)
    raise
  return workers


def stop_workers(workers: Sequence[subprocess.Popen], timeout_s: float = 5.0) -> None:
  """Stops worker processes (SIGINT, as TFF does; SIGKILL after `timeout_s`); idempotent."""
  for worker in workers:
    if worker.poll() is None:
      try:
        worker.send_signal(signal.SIGINT)
      except ProcessLookupError:
        pass
  deadline = time.monotonic() + timeout_s
  for worker in workers:
    try:
      worker.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      worker.kill()
      worker.wait()
    if worker in _started:
      _started.remove(worker)


def _stop_started() -> None:
  stop_workers(list(_started))


def _channel(worker: Worker):
  import grpc  # pylint: disable=g-import-not-at-top
  return grpc.insecure_channel(worker_address(worker), _GRPC_OPTIONS)


def wait_for_workers(workers: Sequence[Worker], timeout_s: float = 60.0, *,
                     processes: Optional[Sequence[subprocess.Popen]] = None,
                     channels: Optional[Sequence[Any]] = None) -> None:
  """Blocks until every worker answers gRPC; one-line ConnectionError naming those that don't.

  Each worker is sent a call to a method it does not have, with `wait_for_ready`: any gRPC
  answer (UNIMPLEMENTED) means the server is up; DEADLINE_EXCEEDED means it never was.
  (`grpc.channel_ready_future` polls from a thread that can crash when the channel closes.)
  `processes` (local workers, same order) turn an early exit into an immediate error;
  `channels` reuses existing gRPC channels instead of opening (and closing) new ones.
  """
  import grpc  # pylint: disable=g-import-not-at-top
  own = channels is None
  channels = [_channel(w) for w in workers] if own else list(channels)
  calls = []
  try:
    calls = [c.unary_unary('/tff_backdoor.remote/Ping').future(
        b'', timeout=timeout_s, wait_for_ready=True) for c in channels]
    pending = list(range(len(workers)))
    while pending:
      for i in list(pending):
        if calls[i].done():
          if calls[i].code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            names = ', '.join(worker_address(workers[j]) for j in pending)
            raise ConnectionError(
                f'TFF worker(s) {names} did not answer within {timeout_s:g} s; start each '
                'with `python -m tff_backdoor.execution.remote serve --port=PORT` and check host, port '
                'and firewall')
          pending.remove(i)
        elif processes is not None and processes[i].poll() is not None:
          raise RuntimeError(f'TFF worker {worker_address(workers[i])} exited with code '
                             f'{processes[i].returncode} before answering (port in use?)')
      if pending:
        time.sleep(0.05)
  finally:
    for call in calls:
      call.cancel()
    if own:
      for c in channels:
        c.close()


def _first_sentence(error: BaseException, limit: int = 160) -> str:
  """A short one-line reason from an exception (TFF's messages can dump whole ASTs)."""
  text = str(error).strip()
  if not text:
    return type(error).__name__
  line = text.splitlines()[0]
  line = line.split('. ')[0].rstrip('.')
  return line if len(line) <= limit else line[:limit] + '...'


class _OutageWatch:
  """The part of `_watched_stub`'s class that does not need TFF: a mixin before TFF's stub."""

  def __init__(self, channel, address: str, unavailable_timeout_s: Optional[float]):
    super().__init__(channel)
    self._address = address
    self._unavailable_timeout_s = unavailable_timeout_s
    self._down_since: Optional[float] = None

  def _watch(self, call, request, can_give_up: bool = True):
    """`call(request)`, logging an outage and raising ConnectionError once it lasts too long."""
    # pylint: disable-next=g-import-not-at-top
    from tensorflow_federated.python.core.impl.executors import executors_errors
    try:
      response = call(request)
    except executors_errors.RetryableError as e:
      now = time.monotonic()
      if self._down_since is None:
        self._down_since = now
        logging.warning('TFF worker %s is unavailable; retrying (gives up after %s s)',
                        self._address, self._unavailable_timeout_s)
      if (can_give_up and self._unavailable_timeout_s is not None and
          now - self._down_since > self._unavailable_timeout_s):
        raise ConnectionError(f'TFF worker {self._address} has been unavailable for '
                              f'{now - self._down_since:.0f} s; giving up') from e
      raise
    if self._down_since is not None:
      logging.warning('TFF worker %s answers again', self._address)
      self._down_since = None
    return response


# The stub's calls, each watched, and whether an outage may end it with ConnectionError: TFF's
# clean-up catches only gRPC and retryable errors from the two dispose calls.
_STUB_CALLS = {'get_executor': True, 'create_value': True, 'create_struct': True,
               'create_call': True, 'create_selection': True, 'compute': True,
               'dispose': False, 'dispose_executor': False}


def _watched_call(name: str, can_give_up: bool):
  """The `_OutageWatch` method that sends `name` to TFF's stub through `_watch`."""
  def call(self, request):
    return self._watch(getattr(super(_OutageWatch, self), name), request, can_give_up)
  call.__name__ = call.__qualname__ = name
  return call


for _name, _can_give_up in _STUB_CALLS.items():
  setattr(_OutageWatch, _name, _watched_call(_name, _can_give_up))


_watched_stub_class = None


def _watched_stub(channel, worker: Worker, unavailable_timeout_s: Optional[float]):
  """TFF's gRPC stub to one worker, which reports outages instead of retrying silently.

  TFF retries calls that fail with UNAVAILABLE forever (backing off to every 30 s), logging
  at INFO level only, so a dead worker hangs the round without a word. This stub logs a
  warning when a worker stops answering and, once it has been down `unavailable_timeout_s`,
  raises ConnectionError (not retried by TFF) naming it. None keeps TFF's retry forever.
  """
  global _watched_stub_class
  if _watched_stub_class is None:  # defined on first use, so that importing skips TFF
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
    _watched_stub_class = type(
        'WatchedStub', (_OutageWatch, tff.framework.RemoteExecutorGrpcStub),
        {'__doc__': 'See `_watched_stub`.', '__module__': __name__})
  return _watched_stub_class(channel, worker_address(worker), unavailable_timeout_s)


def context_on_worker(stub, stream_structs: bool = False, *, sync: bool = False,
                      before_each: Optional[Any] = None):
  """A TFF async (or `sync`) context that runs computations on the worker behind `stub`.

  Built like `tff.backends.native.create_async_local_cpp_execution_context` (or its sync
  twin), minus starting the binary; unknown client cardinality defaults to 0, as there.
  `before_each()`, if given, runs before each computation's executor is made.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff
  from tensorflow_federated.python.core.backends.native import compiler as native_compiler
  from tensorflow_federated.python.core.environments.tensorflow_frontend import (
      tensorflow_computation)
  # pylint: enable=g-import-not-at-top

  def stack_fn(cardinalities):
    if before_each is not None:
      before_each()
    cardinalities = dict(cardinalities)
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = 0
    executor = tff.framework.RemoteExecutor(stub, stream_structs=stream_structs)
    executor.set_cardinalities(cardinalities)
    return executor

  context_class = (tff.framework.SyncExecutionContext if sync else
                   tff.framework.AsyncExecutionContext)
  return context_class(
      executor_fn=tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn),
      compiler_fn=native_compiler.desugar_and_transform_to_native,
      transform_args=tensorflow_computation.transform_args,
      transform_result=tensorflow_computation.transform_result)


@functools.lru_cache(maxsize=None)
def _tff() -> types.SimpleNamespace:
  """TFF and the (partly private) TFF modules the remote context uses, imported on first use."""
  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff
  from tensorflow_federated.python.common_libs import async_utils
  from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
  from tensorflow_federated.python.core.environments.tensorflow_frontend import (
      tensorflow_computation)
  from tensorflow_federated.python.core.impl.execution_contexts import (
      mergeable_comp_execution_context as mergeable_lib)
  from tensorflow_federated.python.core.impl.executors import cardinalities_utils
  from tensorflow_federated.python.core.impl.types import type_analysis
  from tensorflow_federated.python.core.impl.types import type_conversions
  # pylint: enable=g-import-not-at-top
  return types.SimpleNamespace(
      tff=tff, async_utils=async_utils, mergeable_comp_compiler=mergeable_comp_compiler,
      tensorflow_computation=tensorflow_computation, mergeable_lib=mergeable_lib,
      cardinalities_utils=cardinalities_utils, type_analysis=type_analysis,
      type_conversions=type_conversions)


def _server_only(type_spec) -> bool:
  """True if a result has no per-client part, so one `after_merge` call computes it."""
  tff = _tff().tff
  return _tff().type_analysis.contains_only(
      type_spec, lambda t: not isinstance(t, tff.FederatedType) or t.all_equal)


class _RemoteContext:
  """Splits each computation's clients over remote workers, in TFF's mergeable form.

  Runs TFF's `MergeableCompForm` itself instead of TFF's MergeableCompExecutionContext,
  for two reasons measured with TFF 0.87: (1) that context awaits every worker on one
  event loop, but `RemoteExecutor` makes blocking gRPC calls, so its subrounds run one
  after another; here each worker has its own thread and event loop, so they run at the
  same time. (2) It merges partial aggregates, and concatenates per-client results, in the
  order the workers finish; here both follow the client order, so results do not depend
  on worker speed (per-client outputs stay aligned with their inputs).

  `stats` counts invocations by route: 'mergeable' (split over the workers), 'one_worker'
  (no clients in the argument), 'not_mergeable' (run whole on the first worker).
  """

  def __init__(self, workers: Sequence[Worker], channels: Sequence[Any],
               num_subrounds: Optional[int], non_mergeable: str, stream_structs: bool,
               unavailable_timeout_s: Optional[float]):
    self.workers = list(workers)
    self._channels = list(channels)
    self._contexts = [
        context_on_worker(_watched_stub(c, w, unavailable_timeout_s), stream_structs)
        for c, w in zip(self._channels, self.workers)]
    self._runners = [_tff().async_utils.AsyncThreadRunner() for _ in self._contexts]
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(self._contexts), thread_name_prefix='tff_worker')
    self._num_subrounds = num_subrounds  # None: one share per client.
    self._non_mergeable = non_mergeable
    self._forms: Dict[Any, Any] = {}  # Computation -> MergeableCompForm, or None.
    self.stats = {'mergeable': 0, 'one_worker': 0, 'not_mergeable': 0}

  def _form(self, comp):
    if comp not in self._forms:
      try:
        self._forms[comp] = _tff().mergeable_comp_compiler.compile_to_mergeable_comp_form(comp)
      except Exception as e:  # pylint: disable=broad-except
        reason = _first_sentence(e)
        if self._non_mergeable == 'error':
          raise ValueError(f'computation {comp.type_signature} is not mergeable, so it '
                           f'cannot be split over workers: {reason}') from e
        logging.warning('Not mergeable, running whole on worker %s: %s (%s)',
                        worker_address(self.workers[0]), comp.type_signature, reason)
        self._forms[comp] = None
    return self._forms[comp]

  def _num_clients(self, comp, arg) -> Optional[int]:
    """Clients in `arg` (0 if none); None if TFF cannot tell (the mergeable path raises)."""
    if arg is None:
      return 0
    try:
      cardinalities = _tff().cardinalities_utils.infer_cardinalities(
          arg, comp.type_signature.parameter)
    except (TypeError, ValueError):
      return None
    return cardinalities.get(_tff().tff.CLIENTS) or 0

  def _on(self, index: int, comp, arg):
    """Runs `comp(arg)` on worker `index`, from any thread."""
    return self._runners[index].run_coro_and_return_result(
        self._contexts[index].invoke(comp, arg))

  def _map_shares(self, comp, args: Sequence[Any]) -> List[Any]:
    """`comp` on every arg, each sent to the next free worker; results in `args` order."""
    queue = collections.deque(enumerate(args))
    results: List[Any] = [None] * len(args)
    lock = threading.Lock()
    failed = threading.Event()

    def drain(index: int) -> None:
      while not failed.is_set():
        with lock:
          if not queue:
            return
          i, arg = queue.popleft()
        try:
          results[i] = self._on(index, comp, arg)
        except BaseException:
          failed.set()
          raise

    futures = [self._pool.submit(drain, w) for w in range(min(len(self._contexts), len(args)))]
    for future in futures:
      future.result()  # Re-raises a worker's error.
    return results

  def _invoke_mergeable(self, form, arg, num_clients: Optional[int]):
    """up_to_merge on each share, merges in share order, then after_merge."""
    t = _tff()
    num_shares = self._num_subrounds or num_clients or len(self.workers)
    shares = t.mergeable_lib.MergeableCompExecutionContextValue(
        arg, form.up_to_merge.type_signature.parameter, num_shares).value()
    partials = self._map_shares(form.up_to_merge, shares)
    merged = partials[0]
    for partial in partials[1:]:
      merged = self._on(0, form.merge, t.tff.structure.Struct.unnamed(merged, partial))
    result_type = form.after_merge.type_signature.result
    after_args = [t.tff.structure.Struct.unnamed(share, merged) for share in shares]
    if _server_only(result_type):
      result = self._on(0, form.after_merge, after_args[0])
    else:
      result = t.mergeable_lib._repackage_partitioned_values(  # pylint: disable=protected-access
          self._map_shares(form.after_merge, after_args), result_type_spec=result_type)
    return t.tensorflow_computation.transform_result(
        t.type_conversions.type_to_py_container(result, result_type))

  def invoke(self, comp, arg):
    num_clients = self._num_clients(comp, arg)
    if num_clients != 0:
      form = self._form(comp)
      if form is not None:
        self.stats['mergeable'] += 1
        return self._invoke_mergeable(form, arg, num_clients)
      self.stats['not_mergeable'] += 1
    else:
      self.stats['one_worker'] += 1
    return self._on(0, comp, arg)

  def close(self) -> None:
    """Stops the threads and closes the gRPC channels (the context is unusable after)."""
    self._pool.shutdown(wait=True)
    for channel in self._channels:
      channel.close()


def _make_context_class():
  """RemoteExecutionContext (`_RemoteContext` as a TFF SyncContext), made on first use."""
  return type('RemoteExecutionContext', (_RemoteContext, _tff().tff.framework.SyncContext),
              {'__doc__': _RemoteContext.__doc__, '__module__': __name__})


_context_class = None


def create_remote_execution_context(
    workers: Union[str, Sequence[Worker]], num_subrounds: Optional[int] = None, *,
    timeout_s: float = 60.0, non_mergeable: str = 'one_worker',
    unavailable_timeout_s: Optional[float] = 300.0, stream_structs: bool = False):
  """The context `set_remote_execution_context` installs, without installing it.

  Waits up to `timeout_s` for every worker to answer (one-line ConnectionError otherwise).
  """
  global _context_class
  if isinstance(workers, str):
    workers = parse_workers(workers)
  workers = [(str(h), int(p)) for h, p in workers]
  if not workers:
    raise ValueError('at least one worker is needed')
  if num_subrounds is not None and (isinstance(num_subrounds, bool) or
                                    not isinstance(num_subrounds, int) or num_subrounds < 1):
    raise ValueError(f'num_subrounds must be a positive integer or None, found {num_subrounds!r}')
  if unavailable_timeout_s is not None and not unavailable_timeout_s >= 0:
    raise ValueError(f'unavailable_timeout_s must be >= 0 or None, found {unavailable_timeout_s}')
  if non_mergeable not in NON_MERGEABLE_MODES:
    raise ValueError(f'non_mergeable must be one of {NON_MERGEABLE_MODES}, found {non_mergeable!r}')
  channels = [_channel(w) for w in workers]
  try:
    wait_for_workers(workers, timeout_s, channels=channels)
  except BaseException:
    for c in channels:
      c.close()
    raise
  if _context_class is None:
    _context_class = _make_context_class()
  return _context_class(workers, channels, num_subrounds, non_mergeable, stream_structs,
                        unavailable_timeout_s)


def set_remote_execution_context(
    workers: Union[str, Sequence[Worker]], num_subrounds: Optional[int] = None, *,
    timeout_s: float = 60.0, non_mergeable: str = 'one_worker',
    unavailable_timeout_s: Optional[float] = 300.0, stream_structs: bool = False):
  """Makes TFF run computations on `workers` [(host, port), ...]; returns the context.

  Args:
    workers: Worker addresses, or a 'host:port,...' string (see `parse_workers`).
    num_subrounds: Shares each round's clients are split into; more shares than workers
      queue up on the workers that finish first. None = one share per client, merged in
      client order: bit-identical to TFF's local execution. A smaller number sends the
      model fewer times a round but sums in another order (equal up to float rounding).
    timeout_s: How long to wait for every worker to answer before raising ConnectionError.
    non_mergeable: 'one_worker' runs computations TFF cannot split whole on the first worker
      (with a warning); 'error' raises ValueError instead.
    unavailable_timeout_s: A worker that stops answering during a run is retried (it may be
      restarted at the same address) for this long, then ConnectionError names it. None
      retries forever, as TFF does.
    stream_structs: TFF's option to send large structures piecewise.

  Undo with `tff.backends.native.set_sync_local_cpp_execution_context()`.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  context = create_remote_execution_context(
      workers, num_subrounds, timeout_s=timeout_s, non_mergeable=non_mergeable,
      unavailable_timeout_s=unavailable_timeout_s, stream_structs=stream_structs)
  tff.framework.set_default_context(context)
  return context


def check_port_free(port: int) -> None:
  """OSError (one line) if a server cannot bind `port` on all interfaces, as the worker will.

  The worker binary reports a failed bind in a kilobyte of gRPC log and exits 0; binding here
  first turns that into one line and a non-zero exit.
  """
  import socket  # pylint: disable=g-import-not-at-top
  family, address = ((socket.AF_INET6, ('::', port)) if socket.has_ipv6
                     else (socket.AF_INET, ('0.0.0.0', port)))
  try:
    probe = socket.socket(family, socket.SOCK_STREAM)
  except OSError:
    probe, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ('0.0.0.0', port)
  with probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
    try:
      probe.bind(address)
    except OSError as e:
      raise OSError(f'cannot serve on port {port}: {e.strerror or e}') from None


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`serve` execs a worker binary; `check` waits for workers to answer."""
  parser = argparse.ArgumentParser(prog='python -m tff_backdoor.execution.remote',
                                   description='TFF C++ workers for tff_backdoor.')
  commands = parser.add_subparsers(dest='command', required=True)
  serve = commands.add_parser('serve', help='run a TFF worker on this host (all interfaces)')
  serve.add_argument('--port', type=int, required=True)
  serve.add_argument('--max_concurrent_computation_calls', type=int, default=-1,
                     help='parallel calls per computation on this worker; <= 0: no limit')
  check = commands.add_parser('check', help='wait until workers answer')
  check.add_argument('--workers', required=True, help='host:port,host:port')
  check.add_argument('--timeout_s', type=float, default=10.0)
  args = parser.parse_args(argv)
  try:
    if args.command == 'serve':
      if not 0 < args.port < 65536:
        raise ValueError(f'--port must be in 1..65535, found {args.port}')
      argv_ = _worker_argv(args.port, args.max_concurrent_computation_calls)
      check_port_free(args.port)
      print(f'TFF worker serving on port {args.port} (all interfaces)', file=sys.stderr,
            flush=True)
      os.execve(argv_[0], argv_, _worker_env())
    workers = parse_workers(args.workers)
    wait_for_workers(workers, args.timeout_s)
    print(f'ok: {len(workers)} worker(s) answered')
    return 0
  except (ValueError, RuntimeError, ConnectionError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  try:
    sys.exit(main())
  except KeyboardInterrupt:  # `check` waiting: one line, like the absl programs (cli.run_program)
    print('interrupted', file=sys.stderr)
    sys.exit(130)
