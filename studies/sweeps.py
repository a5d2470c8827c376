"""The sweep engine of every study: configurations, one directory each, finished ones skipped.

A program's grid runs one process per configuration (`run_sweep`, below); a study that trains
through the library runs its configurations in this process (`run_in_process`). Both record a
run as a `Run` and report a `SweepResult`.

Each configuration runs as `python -m PROGRAM BASE_FLAGS GRID_FLAGS --output_dir=RUN_DIR`
(grid flags come last, so they override a base flag of the same name). RUN_DIR is
`OUTPUT_DIR/<flag>=<value>,<flag>=<value>` in grid order, e.g. `runs/s/defense=clip,seed=1`
(a value with characters other than letters, digits and `._+-` is shortened and gets a hash
suffix). A run is finished when its `final.json` exists; a finished run is skipped when its
`config.json` matches the requested flags, and anything else in RUN_DIR (a crash, an
interrupted run) is deleted and run again from scratch. So an interrupted sweep, re-run with
the same command, only runs what is missing.

A shared pretraining (`--pretrain_flags`, `SweepSpec.pretrain_flags`): the sweep first runs
`python -m PROGRAM BASE_FLAGS PRETRAIN_FLAGS --output_dir=OUTPUT_DIR/pretrain` (pretrain flags
override base flags; grid flags do not apply), once, with the same skip/redo rules, and every
configuration gets `--init_from=OUTPUT_DIR/pretrain` after the base flags: N attack
configurations pay for one clean pretraining instead of N. A finished configuration is only
reused if its config.json's `init_from_sha256` is the pretraining's final `model_sha256`
(otherwise it was built on another pretraining: a mismatch). If the pretraining fails, no
configuration runs and the sweep exits 1.

Outputs in OUTPUT_DIR: `sweep.json` (the plan and each run's status), `runs.csv` (one row per
configuration), `results.csv` and `results.md` (one row per configuration group = the grid
flags except the seed flag, final metrics as mean and sample std over seeds, `n_seeds`).
Each RUN_DIR also gets `run.log` (the program's stdout and stderr) and `sweep_run.json`.
"""
from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from studies.sweep_grid import group_label
from studies.sweep_plan import FAILED, FINISHED, FOREIGN, LOG_FILE, MISMATCH, NEW, NOT_RUN, PARTIAL
from studies.sweep_plan import PRETRAIN, RESULTS_CSV, RESULTS_MD, RUNS_CSV, Run, SweepResult
from studies.sweep_plan import run_status
from studies.sweep_plan import SweepSpec, check_flags, plan, pretrain_run, read_final
from studies.sweep_plan import resolve_program
from studies import run_checks
from studies import sweep_estimate
from studies.sweep_processes import ProcessLauncher, SigtermInterrupts, child_env, last_error
from studies.sweep_processes import lock_output_dir, resumable, stop_runs
from studies.warm_workers import WarmLauncher
from studies.sweep_results import summary_line, write_outputs


def run_sweep(spec: SweepSpec, parallel: int = 1, dry_run: bool = False,
              replace_mismatched: bool = False, grace_s: float = 20.0, warm: bool = True,
              out: Callable[[str], None] = lambda s: print(s, flush=True),
              on_finish: Optional[Callable[[Run, str], None]] = None) -> SweepResult:
  """Runs every unfinished configuration, `parallel` at a time, and writes the tables.

  Raises ValueError (before running anything) for a bad spec, an unknown program, or run
  directories holding results of other flags (unless `replace_mismatched`). Ctrl-C/SIGTERM
  stops the running children (their directories are redone next time) and returns a result
  with `interrupted=True`. `on_finish(run, state)` is called after each run (tests use it).
  With `warm` (default), configurations of a config program run in warm workers
  (`studies.warm_workers`: TensorFlow imported once per worker, not once per run; the same
  numbers); other programs, or warm=False, run each configuration in a process of its own.
  With a pretraining (`spec.pretrain_flags`), it runs first, alone; if it does not finish,
  no configuration runs.
  """
  if parallel < 1:
    raise ValueError(f'--parallel must be >= 1, got {parallel}')
  runs = plan(spec)
  pretrain = pretrain_run(spec)
  root = resolve_program(spec.program)
  check_flags(spec)
  states = {run.name: run_status(run, spec) for run in runs + ([pretrain] if pretrain else [])}
  if not dry_run:
    _check_reusable(spec, [pretrain] if pretrain else [], states, replace_mismatched)
    _check_reusable(spec, runs, states, replace_mismatched)
  skipped = [r.name for r in runs if states[r.name][0] == FINISHED]
  todo = [r for r in runs if states[r.name][0] != FINISHED]
  out(f'sweep {spec.output_dir}: {len(runs)} configurations of {spec.program}, '
      f'{len(skipped)} finished (skipped), {len(todo)} to run'
      + (f', {parallel} at a time' if parallel > 1 and not dry_run else '')
      + (f'; pretraining {PRETRAIN}/ {states[PRETRAIN][0]}' if pretrain else ''))
  if todo and skipped:
    finals = {r.name: read_final(r, spec) for r in runs if states[r.name][0] == FINISHED}
    out(sweep_estimate.describe(sweep_estimate.estimate(runs, finals, todo)))
  if dry_run:
    for run in ([pretrain] if pretrain else []) + runs:
      state, detail = states[run.name]
      label = {FINISHED: 'skip', NEW: 'run',
               PARTIAL: 'resume' if resumable(run, spec) else 'rerun'}.get(state, state)
      out(f'[{label}] {run.name}' + (f' ({detail})' if detail and state != PARTIAL else ''))
      out(f'  {shlex.join(run.command)}')
    return SweepResult(runs, {r.name: states[r.name][0] for r in runs}, skipped, [], {},
                       dry_run=True,
                       pretrain_status=states[PRETRAIN][0] if pretrain else None)

  os.makedirs(spec.output_dir, exist_ok=True)
  lock = lock_output_dir(spec.output_dir)
  try:
    status = {r.name: (FINISHED if r.name in skipped else NOT_RUN) for r in runs}
    result = SweepResult(runs, status, skipped, [], {})
    if pretrain is not None:
      result.pretrain_status = FINISHED if states[PRETRAIN][0] == FINISHED else NOT_RUN
    write_outputs(spec, result)
    try:
      if pretrain is not None and result.pretrain_status != FINISHED:
        todo = _run_pretraining(spec, pretrain, runs, result, replace_mismatched,
                                _launcher(spec, child_env(root), warm), grace_s, out,
                                on_finish)
      _execute(todo, result, parallel, _launcher(spec, child_env(root, parallel), warm),
               grace_s, out, on_finish, spec)
    finally:
      for run in runs:  # A child may finish while the sweep is being interrupted.
        if result.status[run.name] == NOT_RUN and run_status(run, spec)[0] == FINISHED:
          result.status[run.name] = FINISHED
      write_outputs(spec, result)
  finally:
    lock.close()
  _report(spec, result, out)
  return result


def _launcher(spec: SweepSpec, env: Dict[str, str], warm: bool):
  if warm and spec.program in run_checks.CONFIG_FLAG_PROGRAMS:
    return WarmLauncher(spec, env)
  return ProcessLauncher(spec, env)


def _check_reusable(spec: SweepSpec, runs: Sequence[Run], states: Mapping[str, Tuple[str, str]],
                    replace_mismatched: bool) -> None:
  """Raises ValueError if a run directory holds another program's files or other results."""
  blocked = [(r, states[r.name]) for r in runs if states[r.name][0] == FOREIGN
             or (states[r.name][0] == MISMATCH and not replace_mismatched)]
  if blocked:
    run, (state, detail) = blocked[0]
    hint = ('move it away' if state == FOREIGN else
            'use another --output_dir or pass --replace_mismatched to run it again')
    raise ValueError(f'{len(blocked)} run director{"y" if len(blocked) == 1 else "ies"} in '
                     f'{spec.output_dir} cannot be reused (e.g. {run.name}: {detail}); {hint}')


def _run_pretraining(spec: SweepSpec, pretrain: Run, runs: Sequence[Run], result: SweepResult,
                     replace_mismatched: bool, launcher: Any, grace_s: float,
                     out: Callable[[str], None],
                     on_finish: Optional[Callable[[Run, str], None]]) -> List[Run]:
  """Runs the pretraining; returns the configurations to run after it (none if it failed).

  Configurations that were finished are checked again against the new pretraining's model.
  """
  own = SweepResult([pretrain], {PRETRAIN: NOT_RUN}, [], [], {})
  out(f'[pretraining] start {PRETRAIN}')
  _execute([pretrain], own, 1, launcher, grace_s, out, on_finish, None)
  result.pretrain_status, result.interrupted = own.status[PRETRAIN], own.interrupted
  result.failed.update(own.failed)
  if result.pretrain_status != FINISHED:
    result.skipped.clear()  # their pretraining is gone: nothing is known to be finished
    for run in runs:
      result.status[run.name] = NOT_RUN
    return []
  states = {run.name: run_status(run, spec) for run in runs}
  _check_reusable(spec, runs, states, replace_mismatched)
  result.skipped[:] = [r.name for r in runs if states[r.name][0] == FINISHED]
  for run in runs:
    result.status[run.name] = FINISHED if run.name in result.skipped else NOT_RUN
  return [r for r in runs if states[r.name][0] != FINISHED]


def _execute(todo: Sequence[Run], result: SweepResult, parallel: int, launcher: Any,
             grace_s: float, out: Callable[[str], None],
             on_finish: Optional[Callable[[Run, str], None]],
             tables_of: Optional[SweepSpec]) -> None:
  """Runs `todo`, `parallel` at a time, through `launcher`; the tables of `tables_of` are
  rewritten after each run (None: not)."""
  spec = launcher.spec
  pending = list(todo)
  running: Dict[str, Tuple[Run, Any, float]] = {}
  total, started = len(todo), 0
  with SigtermInterrupts():
    try:
      while pending or running:
        while pending and len(running) < parallel:
          run = pending.pop(0)
          started += 1
          out(f'[{started}/{total}] start {run.name}')
          result.ran.append(run.name)
          running[run.name] = (run, launcher.start(run), time.time())
        done = [name for name, (_, handle, _) in running.items() if handle.exited()]
        for name in done:
          run, handle, t0 = running.pop(name)
          code = handle.finish()
          final = read_final(run, spec)
          seconds = time.time() - t0
          if code == 0 and final is not None:
            result.status[name] = FINISHED
            out(f'finished {name} in {seconds:.0f}s: {summary_line(final, spec.metrics)}')
          else:
            log = os.path.join(run.directory, LOG_FILE)
            why = (f'exit code {code}' if code != 0 else
                   f'exited 0 without writing {spec.done_file}')
            last = last_error(log)
            result.status[name] = FAILED
            result.failed[name] = f'{why}' + (f': {last}' if last else '') + f' (log: {log})'
            out(f'FAILED {name} after {seconds:.0f}s: {result.failed[name]}')
          if tables_of is not None:
            write_outputs(tables_of, result)
          if on_finish is not None:
            on_finish(run, result.status[name])
        if not done:
          time.sleep(0.2)
    except KeyboardInterrupt:
      result.interrupted = True
      out(f'interrupted: stopping {len(running)} running configuration(s)')
    finally:  # Also on other errors: never leave children behind.
      old = None
      if running and threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Let the cleanup finish.
      try:
        stop_runs([handle for _, handle, _ in running.values()], grace_s)
        launcher.close(grace_s)
      finally:
        if old is not None:
          signal.signal(signal.SIGINT, old)


def _report(spec: SweepSpec, result: SweepResult, out: Callable[[str], None]) -> None:
  finished = sum(1 for s in result.status.values() if s == FINISHED)
  out(f'{finished}/{len(result.runs)} configurations finished '
      f'({len(result.skipped)} skipped as already finished, {len(result.ran)} started now)'
      + (f'; pretraining {result.pretrain_status}' if result.pretrain_status else ''))
  out('results: ' + ', '.join(os.path.join(spec.output_dir, f)
                              for f in (RESULTS_MD, RESULTS_CSV, RUNS_CSV)))
  if result.interrupted:
    out('interrupted: run the same command again to finish the remaining configurations')
  if result.failed:
    out(f'{len(result.failed)} configuration(s) failed:')
    for name, why in result.failed.items():
      out(f'  {name}: {why}')


def in_process_run(name: str, flags: Mapping[str, Any], directory: str,
                   seed_flag: str = 'seed') -> Run:
  """The record of a configuration run by a study in this process (no command line)."""
  flags = {k: str(v) for k, v in flags.items()}
  return Run(name, flags, group_label(flags, seed_flag), directory, [], [])


def run_in_process(runs: Sequence[Run], execute: Callable[[Run], Any],
                   is_finished: Callable[[Run], bool], run_missing: bool = True,
                   log: Callable[[str], None] = print) -> SweepResult:
  """Runs `execute(run)` in this process for every run that `is_finished` says is not done.

  The in-process counterpart of `run_sweep` for studies that train through the library (one
  TensorFlow import for all runs): the same skip-finished rule and `SweepResult`. With
  run_missing=False nothing runs and the unfinished runs stay NOT_RUN. An error of `execute`
  or `is_finished` (e.g. a finished run made with other settings) propagates.
  """
  result = SweepResult(list(runs), {r.name: NOT_RUN for r in runs}, [], [], {})
  for i, run in enumerate(runs, start=1):
    prefix = f'[{i}/{len(runs)}] {run.name}:'
    if is_finished(run):
      log(f'{prefix} done already, skipped')
      result.skipped.append(run.name)
    elif not run_missing:
      log(f'{prefix} not run, left out of the summary')
      continue
    else:
      log(f'{prefix} running')
      result.ran.append(run.name)
      execute(run)
    result.status[run.name] = FINISHED
  return result
