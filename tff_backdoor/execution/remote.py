"""A TFF execution context over remote C++ worker binaries, possibly on other hosts.

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

Workers are started and checked with `workers` (`python -m tff_backdoor.execution.workers
serve --port=P` on each host; see there for the network caveats).

The experiment then runs as usual with `--workers=host-a:8000,host-b:8000`, which calls
`set_remote_execution_context(parse_workers(FLAGS.workers))` before the learning process is
built; the driver keeps the data, samples clients, evaluates, and ships each share of client
datasets to its worker every round.

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

import collections
import concurrent.futures
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from absl import logging

from tff_backdoor.execution.tff_private import internals
from tff_backdoor.execution import workers as workers_lib

NON_MERGEABLE_MODES = ('one_worker', 'error')


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
    try:
      response = call(request)
    except internals().executors_errors.RetryableError as e:
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


def _watched_stub(channel, worker: workers_lib.Worker, unavailable_timeout_s: Optional[float]):
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
  return _watched_stub_class(channel, workers_lib.worker_address(worker), unavailable_timeout_s)


def context_on_worker(stub: Any, stream_structs: bool = False, *, sync: bool = False,
                      before_each: Optional[Any] = None) -> Any:
  """A TFF async (or `sync`) context that runs computations on the worker behind `stub`.

  Built like `tff.backends.native.create_async_local_cpp_execution_context` (or its sync
  twin), minus starting the binary; unknown client cardinality defaults to 0, as there.
  `before_each()`, if given, runs before each computation's executor is made.
  """
  t = internals()
  tff = t.tff

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
      compiler_fn=t.native_compiler.desugar_and_transform_to_native,
      transform_args=t.tensorflow_computation.transform_args,
      transform_result=t.tensorflow_computation.transform_result)


def _server_only(type_spec) -> bool:
  """True if a result has no per-client part, so one `after_merge` call computes it."""
  tff = internals().tff
  return internals().type_analysis.contains_only(
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

  def __init__(self, workers: Sequence[workers_lib.Worker], channels: Sequence[Any],
               num_subrounds: Optional[int], non_mergeable: str, stream_structs: bool,
               unavailable_timeout_s: Optional[float]):
    self.workers = list(workers)
    self._channels = list(channels)
    self._contexts = [
        context_on_worker(_watched_stub(c, w, unavailable_timeout_s), stream_structs)
        for c, w in zip(self._channels, self.workers)]
    self._runners = [internals().async_utils.AsyncThreadRunner() for _ in self._contexts]
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(self._contexts), thread_name_prefix='tff_worker')
    self._num_subrounds = num_subrounds  # None: one share per client.
    self._non_mergeable = non_mergeable
    self._forms: Dict[Any, Any] = {}  # Computation -> MergeableCompForm, or None.
    self.stats = {'mergeable': 0, 'one_worker': 0, 'not_mergeable': 0}

  def _form(self, comp):
    if comp not in self._forms:
      try:
        self._forms[comp] = internals().tff.backends.native.compile_to_mergeable_comp_form(comp)
      except Exception as e:  # pylint: disable=broad-except
        reason = _first_sentence(e)
        if self._non_mergeable == 'error':
          raise ValueError(f'computation {comp.type_signature} is not mergeable, so it '
                           f'cannot be split over workers: {reason}') from e
        logging.warning('Not mergeable, running whole on worker %s: %s (%s)',
                        workers_lib.worker_address(self.workers[0]), comp.type_signature, reason)
        self._forms[comp] = None
    return self._forms[comp]

  def _num_clients(self, comp, arg) -> Optional[int]:
    """Clients in `arg` (0 if none); None if TFF cannot tell (the mergeable path raises)."""
    if arg is None:
      return 0
    try:
      cardinalities = internals().cardinalities_utils.infer_cardinalities(
          arg, comp.type_signature.parameter)
    except (TypeError, ValueError):
      return None
    return cardinalities.get(internals().tff.CLIENTS) or 0

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
    t = internals()
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

  def invoke(self, comp: Any, arg: Any) -> Any:
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
  return type('RemoteExecutionContext', (_RemoteContext, internals().tff.framework.SyncContext),
              {'__doc__': _RemoteContext.__doc__, '__module__': __name__})


_context_class = None


def create_remote_execution_context(
    workers: Union[str, Sequence[workers_lib.Worker]], num_subrounds: Optional[int] = None, *,
    timeout_s: float = 60.0, non_mergeable: str = 'one_worker',
    unavailable_timeout_s: Optional[float] = 300.0, stream_structs: bool = False
) -> _RemoteContext:
  """The context `set_remote_execution_context` installs, without installing it.

  Waits up to `timeout_s` for every worker to answer (one-line ConnectionError otherwise).
  """
  global _context_class
  if isinstance(workers, str):
    workers = workers_lib.parse_workers(workers)
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
  channels = [workers_lib.channel(w) for w in workers]
  try:
    workers_lib.wait_for_workers(workers, timeout_s, channels=channels)
  except BaseException:
    for c in channels:
      c.close()
    raise
  if _context_class is None:
    _context_class = _make_context_class()
  return _context_class(workers, channels, num_subrounds, non_mergeable, stream_structs,
                        unavailable_timeout_s)


def set_remote_execution_context(
    workers: Union[str, Sequence[workers_lib.Worker]], num_subrounds: Optional[int] = None, *,
    timeout_s: float = 60.0, non_mergeable: str = 'one_worker',
    unavailable_timeout_s: Optional[float] = 300.0, stream_structs: bool = False
) -> _RemoteContext:
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
