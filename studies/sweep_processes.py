"""A sweep's child processes: start each run in its own session behind the launcher of
`execution.workers` (it gets SIGINT if the sweep dies), stop them all on Ctrl-C/SIGTERM, reap
what they leave, and lock the output directory against a second sweep."""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from typing import IO, Any, Dict, Sequence, Tuple

from tff_backdoor import metrics_io
from tff_backdoor.execution import parallelism
from tff_backdoor.execution import workers

from tff_backdoor.run import rundir
from studies.sweep_plan import LOCK_FILE, LOG_FILE, RUN_RECORD, Run, SweepSpec
from studies.sweep_plan import config_mismatches

RESUME_FLAG = 'resume'  # the program's flag that continues a run from its newest checkpoint


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt(f'signal {signum}')


class SigtermInterrupts:
  """Turns SIGTERM into KeyboardInterrupt while a sweep runs (main thread only)."""

  def __enter__(self):
    self._old = None
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, _raise_interrupt)
    return self

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    return False


def has_exited(proc: subprocess.Popen) -> bool:
  """True once `proc` exited, without reaping it (its process group id stays ours)."""
  if proc.returncode is not None:
    return True
  try:
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
  except (AttributeError, ChildProcessError):
    return proc.poll() is not None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  """Signals the process group of a child started with start_new_session (not yet reaped)."""
  if proc.returncode is None:
    workers.signal_quietly(proc.pid, sig, group=True)


def reap(proc: subprocess.Popen) -> int:
  """Kills what the exited child left in its process group (TFF workers), then reaps it."""
  _signal_group(proc, signal.SIGKILL)
  return proc.wait()


def last_error(log_path: str) -> str:
  try:
    with open(log_path, errors='replace') as f:
      lines = [l.strip() for l in f.readlines()[-200:] if l.strip()]
  except OSError:
    return ''
  for line in reversed(lines):
    if line.startswith('error:') or 'Error' in line.split(':')[0]:
      return line[:300]
  return lines[-1][:300] if lines else ''


def prepare_run_dir(run: Run, spec: SweepSpec, how: str) -> Tuple[str, Run]:
  """Readies the run's directory and writes its sweep record and the first line of its log
  (the command that runs it alone); returns the log's path and the run to start. `how` says
  what runs it. A partial run that left a checkpoint of the same flags is continued with
  `--resume` (its log goes on); any other directory is emptied first."""
  resumed = resumable(run, spec)
  if resumed:
    run = dataclasses.replace(run, command=[*run.command, f'--{RESUME_FLAG}'])
  elif os.path.isdir(run.directory):
    shutil.rmtree(run.directory)
  os.makedirs(run.directory, exist_ok=True)
  metrics_io.write_json(os.path.join(run.directory, RUN_RECORD), {
      'name': run.name, 'flags': run.flags, 'program': spec.program, 'args': run.args,
      'command': run.command, 'cwd': os.getcwd(), 'started': time.time(), 'ran_in': how})
  log_path = os.path.join(run.directory, LOG_FILE)
  with open(log_path, 'a' if resumed else 'w') as log:
    log.write(f'# {shlex.join(run.command)}\n' + ('' if how == 'process' else f'# ran in {how}\n'))
  return log_path, run


def resumable(run: Run, spec: SweepSpec) -> bool:
  """Whether an unfinished run directory can be continued: it holds a checkpoint and a
  config.json of the requested flags (runs with --checkpoint_every only)."""
  directory = run.directory
  checkpoints = os.path.join(directory, rundir.CHECKPOINTS_DIR)
  if (os.path.exists(os.path.join(directory, spec.done_file)) or not os.path.isdir(checkpoints)
      or not os.listdir(checkpoints)):
    return False
  try:
    config = metrics_io.read_json(os.path.join(directory, rundir.CONFIG_FILE))
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and not config_mismatches(config, run.args,
                                                            ignore=(spec.output_flag,))


class ProcessRun:
  """A configuration running as its own `python -m PROGRAM` process (the sweep's handle)."""

  def __init__(self, proc: subprocess.Popen):
    self.proc = proc

  def exited(self) -> bool:
    return has_exited(self.proc)

  def finish(self) -> int:
    """Its exit code, once `exited`; kills what it left in its process group."""
    return reap(self.proc)

  def interrupt(self) -> None:
    _signal_group(self.proc, signal.SIGINT)

  def kill(self) -> None:
    reap(self.proc)


class ProcessLauncher:
  """Starts each configuration in a process of its own (any program)."""

  def __init__(self, spec: SweepSpec, env: Dict[str, str]):
    self.spec, self.env = spec, env

  def start(self, run: Run) -> ProcessRun:
    """Starts a run's program in its own session; SIGINT stops it cleanly, also when the sweep
    dies (the kernel sends it SIGINT then, and it gets SIGINT's default action back: a sweep
    started in the background of a script inherits SIGINT ignored)."""
    log_path, run = prepare_run_dir(run, self.spec, 'process')
    with open(log_path, 'a') as log:
      return ProcessRun(subprocess.Popen(
          workers.die_with_parent_argv(run.command, signal.SIGINT, reset_sigint=True),
          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
          start_new_session=True))

  def close(self, grace_s: float) -> None:
    del grace_s  # nothing outlives its run


def stop_runs(handles: Sequence[Any], grace_s: float) -> None:
  """SIGINT to every running configuration, up to `grace_s` to end, then SIGKILL."""
  workers.interrupt_then_kill(handles, grace_s, interrupt=lambda h: h.interrupt(),
                              exited=lambda h: h.exited(), kill=lambda h: h.kill(), poll_s=0.1)


def child_env(root: str, parallel: int = 1) -> Dict[str, str]:
  """The children's environment: the package on the path, and TF threads for `parallel`
  runs sharing the cores (`parallelism.thread_env`; the user's own settings win)."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([root] + [p for p in [env.get('PYTHONPATH')] if p])
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env.update(parallelism.thread_env(parallel))
  return env


def lock_output_dir(output_dir: str) -> IO[str]:
  """Holds an exclusive lock on OUTPUT_DIR/.sweep.lock, or raises if another sweep has it."""
  import fcntl  # pylint: disable=g-import-not-at-top
  handle = open(os.path.join(output_dir, LOCK_FILE), 'w')
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.close()
    raise ValueError(f'another sweep is running in {output_dir}') from None
  return handle
