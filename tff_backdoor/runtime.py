"""TFF execution contexts, and cleanup of the C++ worker processes TFF starts.

TFF 0.87 runs computations in a `worker_binary` subprocess and only stops it from
`ServiceManager.__del__`, which often never runs at interpreter exit: the orphaned worker
then keeps the parent's stdout/stderr open, so a shell pipeline (`... | tail`) or CI hangs.
Importing `tff_backdoor` registers `stop_local_workers` with `atexit` to prevent that.
"""
from __future__ import annotations

import atexit
import os
import signal
import time
from typing import List

_WORKER_NAME = 'worker_binary'

# The worker inherits this at launch; without it, every client computation logs INFO lines.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


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


atexit.register(stop_local_workers)
