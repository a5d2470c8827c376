"""A sweep's results: one record per run, mean and std over seeds per group, the CSV and
markdown tables, and reading finished sweeps back."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tff_backdoor import metrics_io
from tff_backdoor.run import rundir

from studies.sweep_plan import FINISHED, NOT_RUN, PRETRAIN, RESULTS_CSV, RESULTS_MD, RUNS_CSV, Run
from studies.sweep_plan import SWEEP_FILE, SweepResult, SweepSpec, dotted_get, read_final


def summary_line(final: Optional[Mapping[str, Any]], metrics: Sequence[str]) -> str:
  """'metric=0.1234 ...' of the numeric `metrics` in a run's done file (for the log)."""
  parts = []
  for m in metrics:
    value = metrics_io.number(dotted_get(final or {}, m))
    if value is not None:
      parts.append(f'{m}={value:.4f}')
  return ' '.join(parts)


def _column(metric: str) -> str:
  return metric.replace('.', '_')


def run_records(spec: SweepSpec, result: SweepResult) -> List[Dict[str, Any]]:
  """One dict per configuration: name, grid flags, status, metrics (finished runs only)."""
  records = []
  for run in result.runs:
    record: Dict[str, Any] = {'name': run.name, **run.flags,
                              'status': result.status.get(run.name, NOT_RUN)}
    final = read_final(run, spec) if record['status'] == FINISHED else None
    for metric in spec.metrics:
      record[_column(metric)] = metrics_io.number(dotted_get(final or {}, metric))
    records.append(record)
  return records


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
  """(mean, sample std) of the values; None for what the count does not allow."""
  if not values:
    return None, None
  mean = float(np.mean(values))
  return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def group_rows(spec: SweepSpec, result: SweepResult
               ) -> Tuple[List[str], List[str], List[Dict[str, Any]]]:
  """(flag columns, metrics present, rows): one row per group, mean/std over finished seeds."""
  records = run_records(spec, result)
  flag_columns: List[str] = []
  for run in result.runs:
    flag_columns.extend(k for k in run.flags if k != spec.seed_flag and k not in flag_columns)
  metrics = [m for m in spec.metrics
             if any(r[_column(m)] is not None for r in records)]
  groups: Dict[str, List[Tuple[Run, Dict[str, Any]]]] = {}
  for run, record in zip(result.runs, records):
    groups.setdefault(run.group, []).append((run, record))
  rows = []
  for members in groups.values():
    flags = members[0][0].flags
    row: Dict[str, Any] = {k: flags.get(k, '') for k in flag_columns}
    finished = [rec for _, rec in members if rec['status'] == FINISHED]
    row['n_seeds'] = len(finished)
    for metric in metrics:
      values = [rec[_column(metric)] for rec in finished if rec[_column(metric)] is not None]
      row[f'{_column(metric)}_mean'], row[f'{_column(metric)}_std'] = mean_std(values)
    rows.append(row)
  return flag_columns, metrics, rows


def markdown_table(spec: SweepSpec, flag_columns: Sequence[str], metrics: Sequence[str],
                   rows: Sequence[Mapping[str, Any]], total_runs: int) -> str:
  """results.md: one row per group, mean ± std over seeds of each metric."""
  header = [*flag_columns, 'n_seeds', *metrics]
  lines = [f'# Sweep results: {spec.program}', '',
           f'Mean ± sample standard deviation over seeds (--{spec.seed_flag}) of the final '
           f'metrics in {spec.done_file}; '
           f'{sum(r["n_seeds"] for r in rows)} of {total_runs} runs finished.', '',
           '| ' + ' | '.join(header) + ' |',
           '| ' + ' | '.join(['---'] * len(flag_columns) + ['---:'] * (1 + len(metrics))) + ' |']
  for row in rows:
    cells = [str(row[k]) for k in flag_columns] + [str(row['n_seeds'])]
    for metric in metrics:
      mean, std = row[f'{_column(metric)}_mean'], row[f'{_column(metric)}_std']
      cells.append('' if mean is None else
                   f'{mean:.4f}' + ('' if std is None else f' ± {std:.4f}'))
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_outputs(spec: SweepSpec, result: SweepResult) -> None:
  """Writes sweep.json, runs.csv, results.csv and results.md in the sweep directory."""
  out = spec.output_dir
  plan_record = {
      'program': spec.program, 'base_flags': spec.base_flags, 'seed_flag': spec.seed_flag,
      'output_flag': spec.output_flag, 'done_file': spec.done_file,
      'grids': [[[name, list(values)] for name, values in grid] for grid in spec.grids],
      'runs': [{'name': r.name, 'flags': r.flags, 'group': r.group,
                'status': result.status.get(r.name, NOT_RUN)} for r in result.runs]}
  if spec.pretrain_flags is not None:
    plan_record['pretrain'] = {'name': PRETRAIN, 'flags': spec.pretrain_flags,
                               'status': result.pretrain_status or NOT_RUN}
  metrics_io.write_json(os.path.join(out, SWEEP_FILE), plan_record)
  records = run_records(spec, result)
  flag_names: List[str] = []
  for run in result.runs:
    flag_names.extend(k for k in run.flags if k not in flag_names)
  metrics_io.write_csv(os.path.join(out, RUNS_CSV), records,
                       ['name', *flag_names, 'status', *[_column(m) for m in spec.metrics]])
  flag_columns, metrics, rows = group_rows(spec, result)
  stats = [f'{_column(m)}_{s}' for m in metrics for s in ('mean', 'std')]
  metrics_io.write_csv(os.path.join(out, RESULTS_CSV), rows, [*flag_columns, 'n_seeds', *stats])
  with open(os.path.join(out, RESULTS_MD), 'w') as f:
    f.write(markdown_table(spec, flag_columns, metrics, rows, len(result.runs)))


def load_sweep(directory: str) -> Dict[str, Any]:
  """The sweep.json of a sweep directory (for plots)."""
  return metrics_io.read_json(os.path.join(directory, SWEEP_FILE))


def iter_run_dirs(directory: str) -> Iterator[Tuple[str, str, Dict[str, str]]]:
  """(group label, run directory, flags) of each run listed in a sweep directory."""
  for run in load_sweep(directory)['runs']:
    yield run['group'], os.path.join(directory, run['name']), run['flags']


def finished_run_dirs(directory: str, where: Mapping[str, str]) -> List[str]:
  """The finished runs (final.json written) of a sweep whose grid flags match `where`."""
  return [run_dir for _, run_dir, flags in iter_run_dirs(directory)
          if all(str(flags.get(k)) == str(v) for k, v in where.items())
          and os.path.exists(os.path.join(run_dir, rundir.FINAL_FILE))]
