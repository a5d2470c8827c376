"""Ctrl-C ends a run at any moment in one line, `interrupted`, with exit code 130; SIGTERM
(`kill`, a batch scheduler) in `terminated`, exit code 143.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to
be, and some places lose it or make it loud: inside an import (a traceback of the import
chain), inside a callback Python reports as "unraisable" (jax's `_xla_gc_callback` prints
"Exception ignored" and the run goes on, on a TFF worker restarted after the same Ctrl-C
killed it), in an atexit hook, or in the spawned LEAF parsers (a `SpawnProcess` traceback
each). So the run program's first statement calls `exit_on_interrupt`: its handler records
the interrupt and ends the process itself, printing one line, SIGKILLing this process's
children (TFF's worker_binary, the parsers) and leaving with `os._exit(130)`, skipping the
unwinding that can fail. SIGTERM takes the same way out: unwinding from it (`sys.exit`)
took 1.5-2.3 s, and once in a CI run (two test processes on 2 cores) had not ended the run
60 s later. Nothing written is lost: metrics rows are written and closed one at a time,
checkpoints are renamed into place whole (a torn last row or a hidden partial checkpoint is
what `--resume` already recovers from).

Standard library only: it is imported before anything else. What it cannot cover is the
interpreter's own start-up before the program's first statement (the `site` module and the
venv's .pth files: 0.03-0.1 s on an idle machine, seen up to ~1 s at load 17 on 2 cores),
where Python itself prints `Fatal Python error: init_import_site` or dies of the signal.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator, List, Tuple

# The line each handled signal prints; the exit code is 128 + signum, what a shell reports.
_LINES = {signal.SIGINT: b'interrupted\n', signal.SIGTERM: b'terminated\n'}

_received: List[int] = []  # the signals handled, for tests and for re-checks


def interrupted() -> bool:
  """True once `exit_on_interrupt`'s handler has run (it does not return, but threads may)."""
  return bool(_received)


def _processes() -> Iterator[Tuple[int, str, List[str]]]:
  """(pid, command name, the stat fields after the name) of every process (Linux /proc)."""
  try:
    entries = [e for e in os.listdir('/proc') if e.isdigit()]
  except OSError:
    return
  for entry in entries:
    try:
      with open(f'/proc/{entry}/stat', 'rb') as f:
        stat = f.read().decode(errors='replace')
    except OSError:
      continue
    # Format: pid (comm) state ppid pgrp session ...; comm may hold spaces: split at the last ')'.
    yield int(entry), stat[stat.find('(') + 1:stat.rfind(')')], stat[stat.rfind(')') + 2:].split()


def child_processes() -> List[Tuple[int, str]]:
  """(pid, command name) of this process's direct children ([] where there is no /proc)."""
  me = str(os.getpid())
  return [(pid, name) for pid, name, fields in _processes() if fields[1:2] == [me]]


def session_processes(sid: int) -> List[str]:
  """'pid name' of every live (not zombie) process of session `sid`: what a Ctrl-C of a
  program started with `start_new_session=True` left behind."""
  return [f'{pid} {name}' for pid, name, fields in _processes()
          if len(fields) > 3 and fields[0] != 'Z' and fields[3] == str(sid)]


def _handle(signum: int, frame) -> None:
  """Ends the process: one line, children SIGKILLed, exit 128 + signum, no unwinding."""
  del frame
  for ignored in _LINES:  # a second Ctrl-C or a SIGTERM must not interrupt this
    signal.signal(ignored, signal.SIG_IGN)
  _received.append(signum)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except  (a closed or broken stream)
      pass
  os.write(2, _LINES[signum])
  for pid, _ in child_processes():
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass
  os._exit(128 + signum)  # pylint: disable=protected-access


def exit_on_interrupt() -> None:
  """Installs the handler for SIGINT and SIGTERM (main thread only; call it first thing in a
  program's __main__)."""
  signal.signal(signal.SIGINT, _handle)
  signal.signal(signal.SIGTERM, _handle)


@contextlib.contextmanager
def held_while_starting_children() -> Iterator[None]:
  """Blocks SIGINT in this thread while it starts child processes, which inherit the mask
  through exec, so a Ctrl-C in their start-up cannot print a traceback; children call
  `ignore_in_child` first. A Ctrl-C in the block is delivered when it ends (or to another
  thread at once), not lost."""
  old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_in_child() -> None:
  """A worker process's initializer: Ctrl-C is its parent's to handle (it then kills it)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
