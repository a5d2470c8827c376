"""The TFF C++ worker processes: addresses, start, wait, stop, and the `serve`/`check` CLI.

Every child process of this package and of the sweeps ends through `interrupt_then_kill` and,
where it must not outlive its parent, starts behind `die_with_parent_argv`. TFF 0.87 runs
computations in a `worker_binary` subprocess and only stops it from `ServiceManager.__del__`,
which often never runs at interpreter exit: the orphaned worker then keeps the parent's
stdout/stderr open, so a shell pipeline (`... | tail`) or CI hangs. Programs call
`stop_workers_at_exit()` (through `cli.one_line_flags_parser`) to prevent that; importing this
module changes nothing. TensorFlow-free.

Starting workers on other hosts (each host needs this package and the same TFF 0.87 stack,
e.g. `make venv`):

  host-a$ .venv/bin/python -m tff_backdoor.execution.workers serve --port=8000
  host-b$ .venv/bin/python -m tff_backdoor.execution.workers serve --port=8000 \
      --max_concurrent_computation_calls=4

`serve` replaces itself with the worker binary of the installed TFF, so nothing needs the
venv's internal path. The worker listens on ALL network interfaces of its host (the binary
has no address flag) and speaks unauthenticated, unencrypted gRPC that runs any TFF/TF
computation it is sent: run workers only on a trusted network, or firewall the port and
reach it through an SSH tunnel (`ssh -L 8000:127.0.0.1:8000 host-a`, then use
`127.0.0.1:8000`). Check that the driver can reach them:

  $ .venv/bin/python -m tff_backdoor.execution.workers check --workers=host-a:8000,host-b:8000

On one machine, `start_local_workers(n)` starts n workers on loopback (used by the tests).
"""
from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tff_backdoor import interrupts
from tff_backdoor.execution import tff_private

Worker = Tuple[str, int]

_BINARY_NAME = 'worker_binary'
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000  # As TFF's local context.
_GRPC_OPTIONS = [('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
                 ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
                 ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES)]
_at_exit: List[bool] = []  # whether stop_workers_at_exit registered its hook


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


# Run as `python -I -S -c _DIE_WITH_PARENT <parent pid> <signal> <reset SIGINT> <argv...>`: asks
# the kernel to send <signal> to this process when its parent ends (PR_SET_PDEATHSIG = 1, kept
# across exec), exits if the parent is already gone, then execs argv (same pid, PATH searched).
# With <reset SIGINT> = 1 the child gets SIGINT's default action back (a parent started in the
# background of a script ignores it). No preexec_fn: a child forked from a process with TensorFlow's
# threads should run no Python code before exec.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if sys.argv[3] == '1':
    signal.signal(signal.SIGINT, signal.SIG_DFL)
if ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2]), 0, 0, 0) != 0:
    sys.exit('prctl(PR_SET_PDEATHSIG) failed: errno %d' % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execvp(sys.argv[4], sys.argv[4:])
"""


def die_with_parent_argv(argv: Sequence[str], sig: int = signal.SIGKILL,
                         reset_sigint: bool = False) -> List[str]:
  """`argv` behind a launcher that sends it `sig` when this process ends, even on SIGKILL.

  Linux only. The kernel sends the parent-death signal when the *thread* that started the
  child ends, so start such children from the main thread or another thread that lives as
  long as they do. `reset_sigint` gives the child SIGINT's default action back.
  """
  return [sys.executable, '-I', '-S', '-c', _DIE_WITH_PARENT, str(os.getpid()), str(int(sig)),
          '1' if reset_sigint else '0', *argv]


def interrupt_then_kill(targets: Sequence[Any], grace_s: float, *,
                        interrupt: Callable[[Any], None], exited: Callable[[Any], bool],
                        kill: Callable[[Any], None], poll_s: float = 0.05) -> None:
  """The end of every child process here: `interrupt` each target (SIGINT, so Python children
  run their exit hooks and TFF workers shut down), wait up to `grace_s` until all `exited`,
  then call `kill` on each (which kills and reaps what is left)."""
  for target in targets:
    interrupt(target)
  deadline = time.monotonic() + grace_s
  while time.monotonic() < deadline and not all(exited(t) for t in targets):
    time.sleep(poll_s)
  for target in targets:
    kill(target)


def signal_quietly(pid: int, sig: int, *, group: bool = False) -> None:
  """`os.kill` (or `os.killpg` for a process group) that ignores a process already gone."""
  try:
    (os.killpg if group else os.kill)(pid, sig)
  except (ProcessLookupError, PermissionError):
    pass


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
  def kill(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
      worker.kill()
    worker.wait()
    if worker in _started:
      _started.remove(worker)
  def interrupt(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
      signal_quietly(worker.pid, signal.SIGINT)
  interrupt_then_kill(workers, timeout_s, interrupt=interrupt,
                      exited=lambda w: w.poll() is not None, kill=kill)


def _stop_started() -> None:
  stop_workers(list(_started))


def channel(worker: Worker) -> Any:
  """An insecure gRPC channel to a worker, with TFF's message size limits."""
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
  channels = [channel(w) for w in workers] if own else list(channels)
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
                'with `python -m tff_backdoor.execution.workers serve --port=PORT` and check '
                'host, port and firewall')
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


def stop_workers_at_exit() -> None:
  """Registers `stop_local_workers` with atexit, once: no TFF worker outlives the program."""
  if not _at_exit:
    atexit.register(stop_local_workers)
    _at_exit.append(True)


def _child_worker_pids() -> List[int]:
  """PIDs of this process's direct children whose command is TFF's worker binary."""
  return [pid for pid, name in interrupts.child_processes()
          if name.startswith(_BINARY_NAME[:15])]


def stop_local_workers(timeout_s: float = 5.0) -> int:
  """Stops the TFF worker binaries this process started; returns how many were signalled."""
  tff_private.disarm_service_managers()
  pids = _child_worker_pids()

  def exited(pid: int) -> bool:
    try:
      return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
      return True
  interrupt_then_kill(pids, timeout_s, interrupt=lambda pid: signal_quietly(pid, signal.SIGINT),
                      exited=exited,
                      kill=lambda pid: exited(pid) or signal_quietly(pid, signal.SIGKILL))
  return len(pids)


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
  parser = argparse.ArgumentParser(prog='python -m tff_backdoor.execution.workers',
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
    if not 0 < args.timeout_s < float('inf'):
      raise ValueError(f'--timeout_s must be a positive number of seconds, found {args.timeout_s}')
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
