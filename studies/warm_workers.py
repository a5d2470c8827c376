"""The sweep's warm workers: configurations run in long-lived `studies.sweep_worker` processes.

`WarmLauncher` keeps up to `parallel` workers, each a process of its own session behind
`workers.die_with_parent_argv` (SIGINT when the sweep dies), as a run's own process would be.
A run goes to an idle worker (a new one if none is idle); its answer line gives the exit code
the run would have had alone. A worker is retired after `max_runs` runs, after a run that
leaves it untrusted, after a run that leaves it and its TFF worker holding more than
`MAX_RSS_MB`, and when the sweep ends; one that dies takes only its current run with it
(FAILED with the worker's exit code, its log says why) and the next run gets a new worker.
Stopping a run (Ctrl-C) interrupts its worker's process group and ends the worker.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from typing import Dict, List, Optional, Tuple

from tff_backdoor.execution import workers

from studies.sweep_plan import Run, SweepSpec
from studies.sweep_processes import has_exited, prepare_run_dir, reap

WORKER_LOG = 'sweep_workers.log'  # in OUTPUT_DIR: what the workers print between runs
MAX_RUNS = 25  # runs per worker before a fresh one (bounds what a long process accumulates)
# Resident MB (the worker and its TFF worker_binary) above which a worker is retired after its
# run: the worker_binary keeps what computations allocated (2026-12-06, FEMNIST matrix runs
# with FLDetector: 6.2 GB after 8 runs), so the run budget alone let two workers and a third
# sweep near the 24 GiB machine's end. A femnist_full Sun worker holds about 4.3 GB.
MAX_RSS_MB = 6144


class WarmWorker:
  """One `python -m studies.sweep_worker` process and the pipes to it."""

  def __init__(self, spec: SweepSpec, env: Dict[str, str], log_path: str):
    with open(log_path, 'a') as log:
      self.proc = subprocess.Popen(
          workers.die_with_parent_argv(
              [spec.python, '-m', 'studies.sweep_worker', f'--program={spec.program}',
               f'--log={log_path}'], signal.SIGINT, reset_sigint=True),
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
          start_new_session=True)
    self.runs = 0
    self.rss_mb = 0.0  # after its last run, as it answered
    self._pending = b''

  def submit(self, run: Run, log_path: str) -> None:
    request = {'args': list(run.command[3:]), 'log': os.path.abspath(log_path)}
    self.proc.stdin.write((json.dumps(request) + '\n').encode())
    self.proc.stdin.flush()
    self.runs += 1

  def answer(self) -> Optional[Tuple[int, bool]]:
    """(exit code, reusable) of the current run once the worker answered (never blocks)."""
    fd = self.proc.stdout.fileno()
    while b'\n' not in self._pending and select.select([fd], [], [], 0)[0]:
      chunk = os.read(fd, 4096)
      if not chunk:
        break
      self._pending += chunk
    if b'\n' not in self._pending:
      return None
    line, self._pending = self._pending.split(b'\n', 1)
    answer = json.loads(line)
    self.rss_mb = float(answer.get('rss_mb', 0.0))
    return int(answer['code']), bool(answer['reusable'])

  def retire(self) -> None:
    """Closes its stdin: it finishes and exits (reaped by `WarmLauncher.close`)."""
    try:
      self.proc.stdin.close()
    except OSError:
      pass


class WarmRun:
  """A configuration running in a warm worker (the sweep's handle, as `ProcessRun`)."""

  def __init__(self, launcher: 'WarmLauncher', worker: WarmWorker, log_path: str):
    self.launcher, self.worker, self.log_path = launcher, worker, log_path
    self.answer: Optional[Tuple[int, bool]] = None

  def exited(self) -> bool:
    if self.answer is None:
      self.answer = self.worker.answer()
    return self.answer is not None or has_exited(self.worker.proc)

  def finish(self) -> int:
    """The run's exit code; a worker that died without answering gives its own."""
    if self.exited() and self.answer is not None:
      code, reusable = self.answer
      self.launcher.release(self.worker, reusable)
      return code
    self.launcher.drop(self.worker)
    code = self.worker.proc.returncode
    with open(self.log_path, 'a') as log:  # the run's log names where the reason is
      log.write(f'error: the warm sweep worker (pid {self.worker.proc.pid}) exited with code '
                f'{code} before this run ended; its own log: {self.launcher.log_path}\n')
    return code

  def interrupt(self) -> None:
    workers.signal_quietly(self.worker.proc.pid, signal.SIGINT, group=True)

  def kill(self) -> None:
    self.launcher.drop(self.worker)


class WarmLauncher:
  """Starts each configuration in a warm worker (config programs only, see sweep_worker)."""

  def __init__(self, spec: SweepSpec, env: Dict[str, str], max_runs: Optional[int] = None):
    self.spec, self.env, self.max_runs = spec, env, max_runs or MAX_RUNS
    self.max_rss_mb = MAX_RSS_MB
    self.log_path = os.path.join(spec.output_dir, WORKER_LOG)
    self.idle: List[WarmWorker] = []
    self.retired: List[WarmWorker] = []

  def start(self, run: Run) -> WarmRun:
    while self.idle and has_exited(self.idle[-1].proc):
      self.drop(self.idle.pop())
    worker = self.idle.pop() if self.idle else WarmWorker(self.spec, self.env, self.log_path)
    log_path, run = prepare_run_dir(run, self.spec, f'warm sweep worker pid {worker.proc.pid} '
                               f'(its run {worker.runs + 1})')
    worker.submit(run, log_path)
    return WarmRun(self, worker, log_path)

  def release(self, worker: WarmWorker, reusable: bool) -> None:
    """Back to the idle workers, or retired (after `max_runs`, a run it does not trust, or
    holding more than `max_rss_mb`)."""
    if (reusable and worker.runs < self.max_runs and worker.rss_mb <= self.max_rss_mb and
        not has_exited(worker.proc)):
      self.idle.append(worker)
    else:
      worker.retire()
      self.retired.append(worker)

  def drop(self, worker: WarmWorker) -> None:
    """Kills a worker and what it started (its process group) and reaps it."""
    worker.retire()
    reap(worker.proc)

  def close(self, grace_s: float) -> None:
    """Lets idle and retired workers exit (stdin closed), up to `grace_s`; kills the rest."""
    ending, self.idle, self.retired = self.idle + self.retired, [], []
    workers.interrupt_then_kill(ending, grace_s, interrupt=lambda w: w.retire(),
                                exited=lambda w: has_exited(w.proc),
                                kill=lambda w: reap(w.proc), poll_s=0.05)
