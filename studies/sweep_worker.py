"""A warm sweep worker: one process that runs many configurations of a config program.

  python -m studies.sweep_worker --program=experiments.emnist_backdoor --log=WORKER_LOG

A run started as its own process pays the interpreter, the TensorFlow and TFF imports and the
start of a TFF worker before its first round (about 11 s of an 87 s Sun run, bench/RESULTS.md,
issue 28). This worker pays them once: it imports the program and TensorFlow, starts one TFF
worker (`contexts.local_execution`, shared by every run) and then reads one request per line on
stdin, `{"args": [FLAGS...], "log": RUN_LOG}`. For each it clears Keras' session (layer names
and so captured variable names restart as in a new process), parses the flags on a fresh
FlagValues (`cli.config_from_argv`), runs `PROGRAM.run_config(config)` with file descriptors 1
and 2 on RUN_LOG (TensorFlow's C++ lines too), and answers `{"code": N}` on its own stdout (with
`"reusable"`, below, and `"rss_mb"`, what it and its TFF worker hold): the exit code the run would have had as `python -m PROGRAM` (0 finished, 1
a one-line error, 2 bad flags). Every random choice of a run flows from its `--seed` into
generators it builds itself, so a run gives the same numbers here as in a process of its own
(tests/test_sweep_worker.py checks it bit for bit).

After an unexpected exception (code 1 with a traceback in RUN_LOG) the worker answers
`"reusable": false` and exits: its state is not trusted for another run. Ctrl-C or SIGINT (the
sweep stopping it) ends the worker with code 130, as it would end a run's own process. Only
programs whose flags are the ExperimentConfig's (`run_checks.CONFIG_FLAG_PROGRAMS`) and that
define `run_config` can run here. The sweep side is `studies.warm_workers`.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import traceback
from types import ModuleType
from typing import IO, Optional, Sequence, Tuple

from tff_backdoor import interrupts

REUSABLE = (0, 1, 2)  # codes after which the worker takes another run (a clean exit of the run)


def _redirect(path: str) -> Tuple[int, int]:
  """Points file descriptors 1 and 2 at `path` (appended); returns copies of the old ones."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = (os.dup(1), os.dup(2))
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  os.close(fd)
  return saved


def _restore(saved: Tuple[int, int]) -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  for target, fd in zip((1, 2), saved):
    os.dup2(fd, target)
    os.close(fd)


def _rss_mb(pid: str = 'self') -> float:
  """A process's resident memory now (MB; 0 where /proc is missing or it has exited)."""
  try:
    with open(f'/proc/{pid}/statm', encoding='ascii') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
  except (OSError, ValueError, IndexError):
    return 0.0


def tree_rss_mb() -> float:
  """Resident memory (MB) of this worker and its children: the TFF worker_binary keeps what
  the runs' computations allocated, so it is most of what a long-lived worker accumulates."""
  return _rss_mb() + sum(_rss_mb(str(pid)) for pid, _ in interrupts.child_processes())


def _exit_code(e: SystemExit) -> int:
  if e.code is None:
    return 0
  if isinstance(e.code, int):
    return e.code
  print(e.code, file=sys.stderr)
  return 1


def run_request(program: ModuleType, args: Sequence[str]) -> Tuple[int, bool]:
  """(exit code, whether this process may take another run) of one configuration."""
  from tff_backdoor import cli  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.keras.backend.clear_session()
  gc.collect()
  try:
    config = cli.config_from_argv(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 2, True
  try:
    program.run_config(config)
  except SystemExit as e:
    code = _exit_code(e)
    return code, code in REUSABLE
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr, flush=True)
    raise
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    return 1, False
  return 0, True


def serve(program: ModuleType, requests: IO[str], answers: IO[str]) -> int:
  """Runs each request line of `requests`, answering on `answers`, until EOF (exit 0) or a
  run leaves this process untrusted (exit 1)."""
  from tff_backdoor.execution import contexts  # pylint: disable=g-import-not-at-top
  served = 0
  with contexts.local_execution():
    for line in requests:
      request = json.loads(line)
      saved = _redirect(request['log'])
      try:
        code, reusable = run_request(program, request['args'])
        served += 1
        rss = tree_rss_mb()
        print(f'# warm sweep worker pid {os.getpid()}: {rss:.0f} MB resident with its TFF '
              f'worker after its run {served}', flush=True)
      finally:
        _restore(saved)
      answers.write(json.dumps({'code': code, 'reusable': reusable, 'rss_mb': rss}) + '\n')
      answers.flush()
      if not reusable:
        return 1
  return 0


def _start(program_name: str, log: str) -> Tuple[ModuleType, IO[str]]:
  """The program module and the answer stream; fds 1 and 2 go to `log` from here on (the TFF
  worker, started later, inherits them), the answers to a private copy of stdout."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from tff_backdoor import cli  # pylint: disable=g-import-not-at-top
  from tff_backdoor.execution import contexts  # pylint: disable=g-import-not-at-top
  from tff_backdoor.execution import workers  # pylint: disable=g-import-not-at-top
  from studies import run_checks  # pylint: disable=g-import-not-at-top
  if program_name not in run_checks.CONFIG_FLAG_PROGRAMS:
    cli.fail(f'--program={program_name} cannot run in a warm worker (only '
             f'{", ".join(run_checks.CONFIG_FLAG_PROGRAMS)})')
  answers = os.fdopen(os.dup(1), 'w')
  fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  os.close(fd)
  logging.set_verbosity(logging.WARNING)
  contexts.quiet_tensorflow_logs()
  contexts.fast_path_defaults()  # before TensorFlow is imported
  workers.stop_workers_at_exit()
  cli.exit_on_sigterm()
  program = importlib.import_module(program_name)
  if not callable(getattr(program, 'run_config', None)):
    cli.fail(f'--program={program_name} defines no run_config(config)')
  importlib.import_module('tff_backdoor.run.driver')  # TensorFlow and TFF, once
  return program, answers


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Starts the worker and serves requests until stdin ends; returns the exit code (130 on
  Ctrl-C)."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--program', required=True)
  parser.add_argument('--log', required=True, help="the worker's own log (between runs)")
  args = parser.parse_args(argv)
  try:
    program, answers = _start(args.program, args.log)
    return serve(program, sys.stdin, answers)
  except KeyboardInterrupt:
    return 130


if __name__ == '__main__':
  sys.exit(main())
