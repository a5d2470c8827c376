"""REPRODUCTION.md's tables and figures, computed from sweep directories (`sweeps.py`).

A *family* is the set of a sweep's configurations that differ in one flag, the x axis of one
of the papers' figures (e.g. Sun et al.'s backdoor accuracy vs the number of tasks). Each
configuration's seeds are averaged: final main and backdoor accuracy, their means over the
attack window (rounds from --attack_start on: a boosted backdoor comes and goes from round to
round, so one final round says little), and wall-clock seconds per run. A *cross table* puts
one flag in the columns (e.g. the defense) and several in the rows (e.g. task, partition and
malicious share), one metric per cell. The papers' constants (Sun et al.'s settings, the
families of each figure, the FLAIN and matrix tables) live here, with the tables that use them.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tff_backdoor import metrics_io
from tff_backdoor.run import detection
from tff_backdoor.run import rundir

from studies import plots
from studies import sweep_plan

from studies import sweep_results

# (key, column title) of the per-run numbers a table can show.
METRICS = (('test', 'main acc (final)'), ('backdoor', 'backdoor acc (final)'),
           ('window_test', 'main acc (attack rounds)'),
           ('window_backdoor', 'backdoor acc (attack rounds)'),
           ('flain_test', 'main acc after FLAIN'), ('flain_backdoor', 'backdoor acc after FLAIN'),
           ('collateral', 'collateral (final)'), ('flain_collateral', 'collateral after FLAIN'),
           ('window_collateral', 'collateral (attack rounds)'), ('seconds', 's / run'))
# FLAIN re-applied after training by `experiments.apply_flain --output_subdir=DIR` (e.g. from a
# warm start's pretraining init, in both threshold modes): read only where RUN_DIR/DIR exists,
# so a family's CSV gets these columns only if some of its runs have them.
POSTHOC_FLAIN = {'flain_origin_quantile': 'flain_origin', 'flain_origin_absolute': 'flain_abs'}
OPTIONAL_METRICS = tuple(
    (f'{prefix}_{key}', f'{title} after FLAIN ({sub})')
    for sub, prefix in POSTHOC_FLAIN.items()
    for key, title in (('test', 'main acc'), ('backdoor', 'backdoor acc'),
                       ('collateral', 'collateral')))
# A run longer than the horizon of the 60-round studies also gets their window (rounds from
# --attack_start to 59), so a 300-round run says whether a 60-round verdict still holds.
SHORT_HORIZON = 60
OPTIONAL_METRICS += tuple((f'first{SHORT_HORIZON}_{key}', f'{title} (rounds < {SHORT_HORIZON})')
                          for key, title in (('test', 'main acc'), ('backdoor', 'backdoor acc'),
                                             ('collateral', 'collateral')))
# The backdoor's lifespan after the last attack round (final.json of runs since issue 39).
OPTIONAL_METRICS += (('lifespan', 'lifespan (rounds)'), ('lifespan_censored', 'share still above'))
# A run whose attackers stop (--attack_stop): its window ends there; these are the last attack
# round and the clean rounds after it.
OPTIONAL_METRICS += tuple((f'{prefix}_{key}', f'{title} ({when})')
                          for prefix, when in (('last_attack', 'last attack round'),
                                               ('after', 'rounds after the attack'))
                          for key, title in (('test', 'main acc'), ('backdoor', 'backdoor acc'),
                                             ('collateral', 'collateral')))
# Whom a filtering defense caught (`run.detection` totals, runs since issue 39): TPR over the
# rounds with attackers, FPR over them and over the rounds without.
DETECTION_METRICS = (('detection_tpr', 'detection TPR (attack rounds)'),
                     ('detection_fpr_attack_rounds', 'detection FPR (attack rounds)'),
                     ('detection_fpr_attack_free', 'detection FPR (attack-free rounds)'))
OPTIONAL_METRICS += DETECTION_METRICS
METRIC_TITLES = dict(METRICS + OPTIONAL_METRICS)


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """The numbers of one finished run that the tables use."""
  name: str
  flags: Mapping[str, str]  # the sweep's grid flags, as given (strings)
  values: Mapping[str, Optional[float]]  # keys of METRICS
  directory: str = ''  # the run directory (its metrics.jsonl gives the curves)
  diverged_round: Optional[int] = None  # final.json's: the round its model diverged at


@dataclasses.dataclass(frozen=True)
class Family:
  """Configurations differing in `vary`; `where` selects them, `free` flags may vary too."""
  key: str
  title: str
  vary: str
  where: Mapping[str, str]
  free: Tuple[str, ...] = ()
  references: Tuple[Tuple[str, Mapping[str, str]], ...] = ()  # (row label, where) rows
  metrics: Tuple[str, ...] = ('window_test', 'window_backdoor', 'test', 'backdoor', 'seconds')
  curves: bool = False  # also write FAMILY_curves.png (accuracy per round, mean ± std)
  wall_clock: bool = False  # a line under the table: what the runs of its rows cost


@dataclasses.dataclass(frozen=True)
class PlateauCheck:
  """Has the main task stopped improving? Mean test accuracy of the runs matching `where`
  over the last two windows of `window` evaluated rounds, and the change between them."""
  key: str
  title: str
  where: Mapping[str, str]
  window: int = 10


def window_means(rows: Sequence[Mapping[str, Any]], start: int, end: float = math.inf,
                 prefix: str = 'window') -> Dict[str, Optional[float]]:
  """Mean test and backdoor accuracy and collateral rate over the evaluated rounds in
  [start, end), as PREFIX_test, PREFIX_backdoor and PREFIX_collateral."""
  out = {}
  for key, metric in ((f'{prefix}_test', 'test_accuracy'),
                      (f'{prefix}_backdoor', 'backdoor_accuracy'),
                      (f'{prefix}_collateral', 'collateral_accuracy')):
    values = [metrics_io.number(r.get(metric)) for r in rows
              if start <= r.get('round', -1) < end]
    values = [v for v in values if v is not None]
    out[key] = float(np.mean(values)) if values else None
  return out


def attack_stop(config: Mapping[str, Any]) -> float:
  """The round the attackers stop (`--attack_stop`; inf when they never do: None or 0)."""
  return int(config.get('attack_stop') or 0) or math.inf


def _after_attack(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]
                  ) -> Dict[str, Optional[float]]:
  """For a run whose attackers stop: the means at the last attack round (last_attack_*) and
  over the clean rounds after it (after_*); nothing for a run attacked to the end."""
  stop = attack_stop(config)
  if stop == math.inf:
    return {}
  last = window_means(rows, stop - 1, stop, 'last_attack')
  return {**last, **window_means(rows, stop, prefix='after')}


def lifespan_values(final: Mapping[str, Any]) -> Dict[str, Optional[float]]:
  """final.json's backdoor lifespan (analysis.lifespan) and whether it was censored (1.0: the
  backdoor was still above the threshold at the end, so the lifespan is a lower bound; a
  cell's mean of it is the share of seeds still above). None for runs without one."""
  rounds = metrics_io.number(final.get('lifespan_rounds'))
  if rounds is None:
    return {'lifespan': None, 'lifespan_censored': None}
  return {'lifespan': rounds, 'lifespan_censored': float(bool(final.get('lifespan_censored')))}


def detection_values(final: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
                     ) -> Dict[str, Optional[float]]:
  """DETECTION_METRICS of a run: final.json's detection totals, or the same totals summed
  from its metrics rows (`detection.totals`) if final.json has none; None for a run whose
  defense reported no per-client decisions, or that predates them."""
  totals = final if any(k in final for k, _ in DETECTION_METRICS) else detection.totals(rows)
  return {key: metrics_io.number(totals.get(key)) for key, _ in DETECTION_METRICS}


def summarize_run(directory: str, flags: Mapping[str, str],
                  name: Optional[str] = None) -> Optional[RunSummary]:
  """A finished run's numbers (None while final.json is missing or lacks what a finished
  run writes, e.g. `{}`)."""
  run = plots.load_run(directory, name)
  final = run.final
  if final is None or rundir.missing_final_fields(final):
    return None
  config_path = os.path.join(directory, rundir.CONFIG_FILE)
  config = metrics_io.read_json(config_path) if os.path.exists(config_path) else {}
  after = (final.get('flain') or {}).get('after') or {}
  values = {key: metrics_io.number(record.get(name)) for key, record, name in (
      ('test', final, 'test_accuracy'), ('backdoor', final, 'backdoor_accuracy'),
      ('flain_test', after, 'test_accuracy'), ('flain_backdoor', after, 'backdoor_accuracy'),
      ('collateral', final, 'collateral_accuracy'),
      ('flain_collateral', after, 'collateral_accuracy'), ('seconds', final, 'seconds'))}
  start = int(config.get('attack_start', 0))
  values.update(window_means(run.rows, start, attack_stop(config)))
  values.update(_after_attack(run.rows, config))
  if int(config.get('rounds', 0)) > SHORT_HORIZON:
    values.update(window_means(run.rows, start, SHORT_HORIZON, f'first{SHORT_HORIZON}'))
  values.update(lifespan_values(final))
  values.update(detection_values(final, run.rows))
  values.update(_posthoc_flain(directory))
  return RunSummary(run.name, dict(flags), values, directory, final.get('diverged_round'))


def _posthoc_flain(directory: str) -> Dict[str, Optional[float]]:
  """The OPTIONAL_METRICS of RUN_DIR/<POSTHOC_FLAIN dir>/flain.json (none when missing)."""
  values = {}
  for sub, prefix in POSTHOC_FLAIN.items():
    path = os.path.join(directory, sub, rundir.FLAIN_FILE)
    if os.path.exists(path):
      after = metrics_io.read_json(path).get('after') or {}
      for key in ('test', 'backdoor', 'collateral'):
        values[f'{prefix}_{key}'] = metrics_io.number(after.get(f'{key}_accuracy'))
  return values


def load_runs(sweep_dirs: Sequence[str]) -> List[RunSummary]:
  """Every finished run of the given sweep directories."""
  runs = []
  for sweep_dir in sweep_dirs:
    if not os.path.exists(os.path.join(sweep_dir, sweep_plan.SWEEP_FILE)):
      raise ValueError(f'{sweep_dir} is not a sweep directory (no {sweep_plan.SWEEP_FILE})')
    for _, directory, flags in sweep_results.iter_run_dirs(sweep_dir):
      summary = summarize_run(directory, flags)
      if summary is not None:
        runs.append(summary)
  return runs


def matches(run: RunSummary, where: Mapping[str, str]) -> bool:
  """Whether the run's grid flags have every value of `where` (compared as strings)."""
  return all(str(run.flags.get(k)) == str(v) for k, v in where.items())


def aggregate_runs(runs: Sequence[RunSummary], label: str) -> Dict[str, Any]:
  """{'label', 'n', KEY_mean, KEY_std for every metric} over the runs (seeds)."""
  row: Dict[str, Any] = {'label': label, 'n': len(runs)}
  diverged = sum(r.diverged_round is not None for r in runs)
  if diverged:  # a column only where a run diverged: tables of healthy runs keep their CSVs
    row['diverged'] = diverged
  present = [key for key, _ in OPTIONAL_METRICS if any(r.values.get(key) is not None
                                                         for r in runs)]
  for key in [k for k, _ in METRICS] + present:
    values = [r.values[key] for r in runs if r.values.get(key) is not None]
    row[f'{key}_mean'], row[f'{key}_std'] = sweep_results.mean_std(values)
  return row


def _sort_key(value: str) -> Tuple[int, Any]:
  try:
    return 0, float(value)
  except ValueError:
    return 1, value


Groups = List[Tuple[str, List[RunSummary]]]


def family_groups(runs: Sequence[RunSummary], family: Family) -> Tuple[Groups, Groups]:
  """([(reference label, its runs)], [(value of family.vary, its runs)] in numeric order)."""
  ignored = {family.vary, *family.free}
  where = {k: v for k, v in family.where.items() if k not in ignored}
  by_value: Dict[str, List[RunSummary]] = {}
  for run in runs:
    if matches(run, where) and family.vary in run.flags:
      by_value.setdefault(str(run.flags[family.vary]), []).append(run)
  references = [(label, [r for r in runs if matches(r, ref)]) for label, ref in family.references]
  return ([(label, rs) for label, rs in references if rs],
          [(v, by_value[v]) for v in sorted(by_value, key=_sort_key)])


def family_rows(runs: Sequence[RunSummary], family: Family
                ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
  """(reference rows, one row per value of family.vary in numeric order), seeds averaged."""
  references, values = family_groups(runs, family)
  return ([aggregate_runs(rs, label) for label, rs in references],
          [aggregate_runs(rs, value) for value, rs in values])


def plot_family_curves(runs: Sequence[RunSummary], family: Family, path: str) -> Optional[str]:
  """Main and backdoor accuracy per round, mean ± std band over seeds, per value and reference."""
  references, values = family_groups(runs, family)
  groups = [plots.Group(label, [plots.load_run(r.directory) for r in rs])
            for label, rs in [*references, *[(f'{family.vary}={v}', rs) for v, rs in values]]]
  return plots.plot_curves(groups, path, band='std', title=family.title)


def cell(row: Mapping[str, Any], key: str) -> str:
  """'mean ± std' of KEY in an aggregated row ('-' if absent; seconds without decimals)."""
  mean, std = row.get(f'{key}_mean'), row.get(f'{key}_std')
  if mean is None:
    return '-'
  if key == 'seconds':
    return f'{mean:.0f}' + ('' if std is None else f' ± {std:.0f}')
  return f'{mean:.3f}' + ('' if std is None else f' ± {std:.3f}')


def markdown_table(first_column: str, rows: Sequence[Mapping[str, Any]],
                   metrics: Sequence[str]) -> str:
  """One markdown row per entry: label, seeds, 'mean ± std' of each metric."""
  header = [first_column, 'seeds', *[METRIC_TITLES[m] for m in metrics]]
  lines = ['| ' + ' | '.join(header) + ' |',
           '| --- | ---: |' + ' ---: |' * len(metrics)]
  for row in rows:
    # A run whose model diverged (health.DIVERGED_*) is counted, and marked with its count.
    seeds = str(row['n']) + (f' ({row["diverged"]} diverged)' if row.get('diverged') else '')
    lines.append('| ' + ' | '.join([str(row['label']), seeds,
                                    *[cell(row, m) for m in metrics]]) + ' |')
  return '\n'.join(lines)


def family_markdown(runs: Sequence[RunSummary], family: Family,
                    metrics: Optional[Sequence[str]] = None) -> str:
  """The family's titled markdown table: its reference rows, then one row per value (only
  the references, said so, while none of its own has finished); ValueError if none has."""
  metrics = family.metrics if metrics is None else metrics
  references, rows = family_rows(runs, family)
  if not rows and not references:
    raise ValueError(f'no finished run of family {family.key!r} ({family.title})')
  labelled = [dict(r, label=f'{r["label"]} (reference)') for r in references]
  waiting = '' if rows else f': no {family.vary} row has finished yet, its references have'
  return (f'**{family.title}**{waiting}\n\n'
          + markdown_table(family.vary, labelled + rows, metrics))


def plot_family(runs: Sequence[RunSummary], family: Family, path: str,
                metrics: Sequence[str] = ('window_test', 'window_backdoor')) -> str:
  """Mean ± std over seeds of each metric against family.vary; references as dashed lines."""
  references, rows = family_rows(runs, family)
  if not rows:
    raise ValueError(f'no finished run of family {family.key!r} ({family.title})')
  fig = Figure(figsize=(4.6 * len(metrics), 3.6))
  x = np.arange(len(rows))
  for i, key in enumerate(metrics):
    ax = fig.add_subplot(1, len(metrics), i + 1)
    mean = [r[f'{key}_mean'] for r in rows]
    std = [r[f'{key}_std'] or 0.0 for r in rows]
    ax.errorbar(x, mean, yerr=std, marker='o', capsize=3, color='C0', label='mean ± std')
    for j, ref in enumerate(references):
      if ref[f'{key}_mean'] is not None:
        ax.axhline(ref[f'{key}_mean'], color=f'C{j + 1}', linestyle='--', linewidth=1,
                   label=ref['label'])
    ax.set_xticks(x)
    ax.set_xticklabels([r['label'] for r in rows])
    ax.set_xlabel(family.vary)
    ax.set_ylabel(METRIC_TITLES[key])
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if i == len(metrics) - 1:
      ax.legend(fontsize=7)
  fig.suptitle(family.title + f' (n = {min(r["n"] for r in rows)}+ seeds)', fontsize=9)
  FigureCanvasAgg(fig)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  return path


def cross_rows(runs: Sequence[RunSummary], row_flags: Sequence[str], column_flag: str,
               where: Mapping[str, str] = ()) -> Dict[Tuple[str, ...], Dict[str, Dict[str, Any]]]:
  """{row flag values: {column value: aggregated seeds}} of the runs matching `where`."""
  cells: Dict[Tuple[str, ...], Dict[str, List[RunSummary]]] = {}
  for run in runs:
    if not matches(run, dict(where)) or any(f not in run.flags for f in row_flags):
      continue
    key = tuple(str(run.flags[f]) for f in row_flags)
    cells.setdefault(key, {}).setdefault(str(run.flags.get(column_flag, '')), []).append(run)
  return {key: {col: aggregate_runs(rs, col) for col, rs in columns.items()}
          for key, columns in sorted(cells.items(),
                                     key=lambda kv: [_sort_key(v) for v in kv[0]])}


@dataclasses.dataclass(frozen=True)
class CrossTable:
  """Rows: the values of `row_flags`; columns: (title, value of column_flag, metric)."""
  key: str
  title: str
  row_flags: Tuple[str, ...]
  column_flag: str
  columns: Tuple[Tuple[str, str, str], ...]
  where: Mapping[str, str] = dataclasses.field(default_factory=dict)
  heatmap: bool = False  # also write KEY.png: the cell means as a heat map
  # Column values shown only if some run of the table has them (defenses added after the
  # table's first records, whose CSVs then keep their bytes).
  optional_values: Tuple[str, ...] = ()
  # A metric key: runs without it are left out (records older than the metric), so a row or a
  # seed count is only what measured it.
  only_with: Optional[str] = None

  def selected(self, runs: Sequence[RunSummary]) -> List[RunSummary]:
    """The runs the table reads: those matching `where` (and having `only_with`)."""
    return [r for r in runs if matches(r, self.where) and
            (self.only_with is None or r.values.get(self.only_with) is not None)]

  def shown_columns(self, runs: Sequence[RunSummary]) -> Tuple[Tuple[str, str, str], ...]:
    """The columns, without the optional ones no selected run has."""
    present = {str(r.flags.get(self.column_flag, '')) for r in self.selected(runs)}
    return tuple(c for c in self.columns
                 if c[1] not in self.optional_values or c[1] in present)


def cross_markdown(runs: Sequence[RunSummary], table: CrossTable) -> Tuple[str, List[Dict]]:
  """(markdown, flat rows for a CSV): 'mean ± std' per cell, the seed count in each row."""
  runs = table.selected(runs)
  table = dataclasses.replace(table, columns=table.shown_columns(runs))
  cells = cross_rows(runs, table.row_flags, table.column_flag, table.where)
  if not cells:
    raise ValueError(f'no finished run of table {table.key!r} ({table.title})')
  header = [*table.row_flags, 'seeds', *[title for title, _, _ in table.columns]]
  lines = [f'**{table.title}**', '', '| ' + ' | '.join(header) + ' |',
           '| ' + ' | '.join(['---'] * len(table.row_flags)) + ' | ---: |' +
           ' ---: |' * len(table.columns)]
  flat = []
  for key, columns in cells.items():
    seeds = sorted({columns[v]['n'] for _, v, _ in table.columns if v in columns})
    row_cells, flat_row = [], dict(zip(table.row_flags, key))
    for title, value, metric in table.columns:
      agg = columns.get(value)
      row_cells.append(cell(agg, metric) if agg else '-')
      flat_row[f'{title} mean'] = agg and agg.get(f'{metric}_mean')
      flat_row[f'{title} std'] = agg and agg.get(f'{metric}_std')
    diverged = sum(columns[v].get('diverged', 0) for _, v, _ in table.columns if v in columns)
    flat_row['seeds'] = '/'.join(map(str, seeds)) + (f' ({diverged} diverged)' if diverged
                                                      else '')
    flat.append(flat_row)
    lines.append('| ' + ' | '.join([*key, flat_row['seeds'] or '0', *row_cells]) + ' |')
  return '\n'.join(lines), flat


def plot_cross_heatmap(flat: Sequence[Mapping[str, Any]], table: CrossTable, path: str) -> str:
  """The cell means of a cross table (rows x columns) as a heat map, 'mean ± std' written in."""
  titles = [title for title, _, _ in table.columns]
  means = np.array([[np.nan if r.get(f'{t} mean') is None else r[f'{t} mean'] for t in titles]
                    for r in flat], dtype=float)
  fig = Figure(figsize=(1.0 + 0.9 * len(titles), 1.2 + 0.45 * len(flat)))
  ax = fig.add_subplot(1, 1, 1)
  image = ax.imshow(means, vmin=0.0, vmax=1.0, cmap='viridis', aspect='auto')
  for i, row in enumerate(flat):
    for j, title in enumerate(titles):
      if not np.isnan(means[i, j]):
        std = row.get(f'{title} std')
        text = f'{means[i, j]:.2f}' + ('' if std is None else f'\n±{std:.2f}')
        ax.text(j, i, text, ha='center', va='center', fontsize=6,
                color='white' if means[i, j] < 0.5 else 'black')
  ax.set_xticks(range(len(titles)))
  ax.set_xticklabels(titles, rotation=45, ha='right', fontsize=7)
  ax.set_yticks(range(len(flat)))
  ax.set_yticklabels([' / '.join(str(r[f]) for f in table.row_flags) + f" (n={r['seeds']})"
                      for r in flat], fontsize=7)
  fig.colorbar(image, ax=ax, fraction=0.03)
  ax.set_title(table.title, fontsize=8)
  FigureCanvasAgg(fig)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  return path


def wall_clock_markdown(label: str, seconds: Sequence[float]) -> str:
  """One line on what a set of runs cost: count, mean ± std per run, total hours."""
  mean, std = sweep_results.mean_std(list(seconds))
  if mean is None:
    return f'{label}: no finished run'
  spread = '' if std is None else f' ± {std:.0f}'
  runs = f'{len(seconds)} run' + ('' if len(seconds) == 1 else 's')
  return (f'{label}: {runs}, {mean:.0f}{spread} s per run, '
          f'{sum(seconds) / 3600:.2f} run-hours')


def run_seconds(runs: Sequence[RunSummary]) -> List[float]:
  """The recorded wall seconds of the runs that have them."""
  return [r.values['seconds'] for r in runs if r.values.get('seconds') is not None]


def family_wall_clock(runs: Sequence[RunSummary], family: Family) -> str:
  """The wall clock of the runs in a family's rows (its references are other families' rows)."""
  _, values = family_groups(runs, family)
  seconds = run_seconds([r for _, rs in values for r in rs])
  return wall_clock_markdown(f'wall clock of {family.key} (its {family.vary} rows)', seconds)


def plateau_markdown(runs: Sequence[RunSummary], check: PlateauCheck) -> str:
  """One line: mean ± std over seeds of the test accuracy in each of the last two windows."""
  windows = []
  for run in [r for r in runs if matches(r, check.where)]:
    accuracy = [metrics_io.number(row.get('test_accuracy'))
                for row in plots.load_run(run.directory).rows]
    accuracy = [a for a in accuracy if a is not None]
    if len(accuracy) >= 2 * check.window:
      windows.append((np.mean(accuracy[-2 * check.window:-check.window]),
                      np.mean(accuracy[-check.window:])))
  if not windows:
    return f'**{check.title}**: no finished run yet'
  (before, before_std), (last, last_std) = (sweep_results.mean_std([w[i] for w in windows])
                                            for i in (0, 1))
  spread = lambda std: '' if std is None else f' ± {std:.3f}'
  seeds = f'{len(windows)} seed' + ('' if len(windows) == 1 else 's')
  return (f'**{check.title}** ({seeds}): main accuracy {before:.3f}'
          f'{spread(before_std)} over the {check.window} evaluated rounds before the last '
          f'{check.window}, {last:.3f}{spread(last_std)} over the last {check.window}: '
          f'change {last - before:+.3f}')


def render(runs: Sequence[RunSummary], spec: Any, output_dir: Optional[str] = None) -> List[str]:
  """Markdown of a Family, CrossTable, PlateauCheck or any spec with a `render(runs,
  output_dir)` method, then the PNG/CSV paths written.

  A spec with no finished run yet (a sweep still running) gives one line saying so.
  """
  if isinstance(spec, PlateauCheck):
    return [plateau_markdown(runs, spec)]
  if hasattr(spec, 'render'):  # a table type of its own module (e.g. population.Comparison)
    return spec.render(runs, output_dir)
  if isinstance(spec, CrossTable):
    if not cross_rows(spec.selected(runs), spec.row_flags, spec.column_flag, spec.where):
      return [f'**{spec.title}**: no finished run yet']
    text, flat = cross_markdown(runs, spec)
    out = [text]
    if output_dir:
      out.append(metrics_io.write_csv(os.path.join(output_dir, f'{spec.key}.csv'), flat))
      if spec.heatmap:
        shown = dataclasses.replace(spec, columns=spec.shown_columns(runs))
        out.append(plot_cross_heatmap(flat, shown, os.path.join(output_dir, f'{spec.key}.png')))
    return out
  references, rows = family_rows(runs, spec)
  if not rows and not references:
    return [f'**{spec.title}**: no finished run yet']
  out = [family_markdown(runs, spec)]
  if spec.wall_clock and rows:
    out.append(family_wall_clock(runs, spec))
  if output_dir:
    if rows:
      out.append(plot_family(runs, spec, os.path.join(output_dir, f'{spec.key}.png')))
    if spec.curves:
      out.append(plot_family_curves(runs, spec, os.path.join(output_dir,
                                                             f'{spec.key}_curves.png')))
    out.append(metrics_io.write_csv(os.path.join(output_dir, f'{spec.key}.csv'), references + rows))
  return out


# ----------------------------------------------------------------------------- Sun et al.

# Flags of experiments/grids/sun.grid: one boosted attacker every round, one task, no defense.
SUN_BASE = {'schedule': 'fixed_frequency', 'attack_every': '1', 'malicious_fraction': '0.1',
            'num_tasks': '1', 'attack': 'boost', 'norm_bound': '0.33', 'defense': 'none',
            'clip_norm': '3', 'dp_sigma': '0.025'}
SUN_CLEAN = dict(SUN_BASE, schedule='none')
_NO_ATTACK = ('no attacker', SUN_CLEAN)
_NO_DEFENSE = ('boosted attacker every round, no defense', SUN_BASE)
SUN_FAMILIES = (
    Family('sun_a_fraction', '(a) Random sampling: boosted attackers are a fraction of the '
           'population, sampled at their natural rate', 'malicious_fraction',
           dict(SUN_BASE, schedule='random_fraction'), references=(_NO_ATTACK,)),
    Family('sun_a_frequency', '(a) Fixed frequency: one boosted attacker every k-th round',
           'attack_every', SUN_BASE, references=(_NO_ATTACK,)),
    Family('sun_b_tasks', '(b) Number of targeted tasks (one boosted attacker every round)',
           'num_tasks', SUN_BASE, references=(_NO_ATTACK,)),
    Family('sun_c_clip_boost', '(c) Norm clipping at bound M: boosted attacker every round',
           'clip_norm', dict(SUN_BASE, defense='clip'), references=(_NO_ATTACK, _NO_DEFENSE)),
    Family('sun_c_clip_norm_bounded', '(c) Norm clipping at bound M: norm-bounded attacker '
           '(radius M / boost) every round', 'clip_norm',
           dict(SUN_BASE, defense='clip', attack='norm_bounded'), free=('norm_bound',),
           references=(_NO_ATTACK, _NO_DEFENSE)),
    Family('sun_d_weak_dp', '(d) Weak DP: clip at M = 3, Gaussian noise of std sigma on the '
           'average; boosted attacker every round', 'dp_sigma',
           dict(SUN_BASE, defense='weak_dp'), references=(_NO_ATTACK, _NO_DEFENSE)),
)

# The same families on FEMNIST writers (experiments/grids/sun_femnist.grid): the norm-bounded
# attacker keeps the code default radius; every table also shows the collateral rate, and
# every family gets its per-round curves.
_FEMNIST_METRICS = ('window_test', 'window_backdoor', 'window_collateral', 'test', 'backdoor',
                    'collateral', 'seconds')
_NORM_BOUNDED_NO_DEFENSE = ('norm-bounded attacker every round, no defense',
                           dict(SUN_BASE, attack='norm_bounded'))
SUN_FEMNIST_FAMILIES = tuple(
    dataclasses.replace(
        f, key=f.key.replace('sun_', 'sun_femnist_', 1), metrics=_FEMNIST_METRICS, curves=True,
        title=f.title.replace('(radius M / boost)', '(radius 0.33, boosted by 5)'),
        references=f.references + ((_NORM_BOUNDED_NO_DEFENSE,) if 'norm_bounded' in f.key
                                   else ()))
    for f in SUN_FAMILIES)

# The paper's 30 writers a round (experiments/grids/sun_femnist_30.grid, seed 0): clipping
# against one boosted attacker that is 1/30 of a round instead of 1/5.
_BOOST_30 = {'schedule': 'fixed_frequency', 'attack': 'boost', 'defense': 'clip'}
SUN_FEMNIST_30_FAMILIES = (Family(
    'sun_femnist_30_clip', '(c) at 30 writers a round: norm clipping at bound M, boosted '
    'attacker every round (seed 0)', 'clip_norm', _BOOST_30,
    references=(('no attacker', {'schedule': 'none'}),
                ('boosted attacker every round, no defense', dict(_BOOST_30, defense='none')),
                ('norm-bounded attacker every round, no defense',
                 dict(_BOOST_30, attack='norm_bounded', defense='none'))),
    metrics=_FEMNIST_METRICS, curves=True),)

# Sun et al. at the authors' code defaults (experiments/grids/sun_authors.grid, issue 27):
# 30 target writers, the authors' unweighted aggregation ('sun_mean' without a bound, 'sun_dp'
# with one), writers drawn with replacement, 60 rounds. The same families at 30 writers a
# round (sun_authors_30.grid) for the defense claims and the fraction.
SUN_AUTHORS_BASE = {'schedule': 'fixed_frequency', 'attack_every': '1',
                    'malicious_fraction': '0.1', 'num_tasks': '30', 'attack': 'boost',
                    'defense': 'sun_mean', 'clip_norm': '1', 'sum_noise_stddev': '0'}
_AUTHORS_NO_ATTACK = ('no attacker', dict(SUN_AUTHORS_BASE, schedule='none'))
_AUTHORS_BOOST = ('boosted attacker every round, no defense', SUN_AUTHORS_BASE)
_AUTHORS_NORM_BOUNDED = ('norm-bounded attacker every round, no defense',
                         dict(SUN_AUTHORS_BASE, attack='norm_bounded'))
# What every authors' family prints: the collateral too, per-round curves, its wall clock.
_AUTHORS_OUTPUTS = dict(metrics=_FEMNIST_METRICS, curves=True, wall_clock=True)
_AUTHORS_FRACTION = Family(
    'sun_authors_a_fraction', '(a) Random sampling: boosted attackers are a fraction of the '
    '293 writers, sampled at their natural rate', 'malicious_fraction',
    dict(SUN_AUTHORS_BASE, schedule='random_fraction'), references=(_AUTHORS_NO_ATTACK,),
    **_AUTHORS_OUTPUTS)
_AUTHORS_DEFENSES = (
    Family('sun_authors_c_clip_boost', '(c) Norm bound M of the authors\' aggregation: '
           'boosted attacker every round', 'clip_norm',
           dict(SUN_AUTHORS_BASE, defense='sun_dp'),
           references=(_AUTHORS_NO_ATTACK, _AUTHORS_BOOST), **_AUTHORS_OUTPUTS),
    Family('sun_authors_c_clip_norm_bounded', '(c) Norm bound M of the authors\' aggregation: '
           'norm-bounded attacker (radius 0.33, boosted by the clients per round) every round',
           'clip_norm', dict(SUN_AUTHORS_BASE, defense='sun_dp', attack='norm_bounded'),
           references=(_AUTHORS_NO_ATTACK, _AUTHORS_BOOST, _AUTHORS_NORM_BOUNDED),
           **_AUTHORS_OUTPUTS),
    Family('sun_authors_d_noise', '(d) Weak DP of the authors\' aggregation: M = 1, Gaussian '
           'noise of std sigma on the SUM; boosted attacker every round', 'sum_noise_stddev',
           dict(SUN_AUTHORS_BASE, defense='sun_dp'),
           references=(_AUTHORS_NO_ATTACK, _AUTHORS_BOOST), **_AUTHORS_OUTPUTS))
SUN_AUTHORS_FAMILIES = (
    PlateauCheck('sun_authors_plateau', 'Has the clean run plateaued?',
                 dict(SUN_AUTHORS_BASE, schedule='none')),
    *_AUTHORS_DEFENSES,
    Family('sun_authors_b_tasks', '(b) Number of tasks (target writers whose 7s, labelled 1, '
           'form the malicious batch); boosted attacker every round, no defense', 'num_tasks',
           SUN_AUTHORS_BASE, references=(_AUTHORS_NO_ATTACK,), **_AUTHORS_OUTPUTS),
    Family('sun_authors_a_frequency', '(a) Fixed frequency: one boosted attacker every k-th '
           'round, no defense', 'attack_every', SUN_AUTHORS_BASE,
           references=(_AUTHORS_NO_ATTACK,), **_AUTHORS_OUTPUTS),
    _AUTHORS_FRACTION)
SUN_AUTHORS_30_FAMILIES = tuple(
    dataclasses.replace(f, key=f.key.replace('sun_authors_', 'sun_authors_30_', 1),
                        title=f.title + ' (30 writers a round)')
    for f in (SUN_AUTHORS_FAMILIES[0], *_AUTHORS_DEFENSES, _AUTHORS_FRACTION))

# The same families on the whole LEAF FEMNIST population (experiments/grids/sun_full*.grid,
# issue 38): 3,580 digit writers instead of 293; (b) goes to 300 tasks, and at the paper's 30
# writers a round every family runs, as at 5.
def _on_full_population(family: Any, prefix: str) -> Any:
  return dataclasses.replace(
      family, key=family.key.replace('sun_authors_', prefix, 1),
      title=family.title.replace('the 293 writers', 'the 3,580 writers'))


SUN_FULL_FAMILIES = tuple(_on_full_population(f, 'sun_full_') for f in SUN_AUTHORS_FAMILIES)
SUN_FULL_30_FAMILIES = tuple(
    dataclasses.replace(f, title=f.title + ' (30 writers a round)')
    for f in (_on_full_population(f, 'sun_full_30_') for f in SUN_AUTHORS_FAMILIES))

# The paper's horizon (experiments/grids/sun_full_300.grid): 300 rounds at 30 writers a round;
# the first-60 columns are the window of the 60-round tables, read off the same runs.
_FULL_300_METRICS = ('first60_backdoor', 'window_test', 'window_backdoor', 'test', 'backdoor',
                     'collateral', 'seconds')
SUN_FULL_300_FAMILIES = (
    PlateauCheck('sun_full_300_plateau', 'Has the clean run plateaued by round 300?',
                 dict(SUN_AUTHORS_BASE, schedule='none'), window=50),
    Family('sun_full_300_boost', '300 rounds, 30 writers a round: the boosted attacker every '
           'round against the authors\' aggregation at M = 1, with noise of std sigma on the SUM',
           'sum_noise_stddev', dict(SUN_AUTHORS_BASE, defense='sun_dp'),
           references=(_AUTHORS_NO_ATTACK, _AUTHORS_BOOST), metrics=_FULL_300_METRICS,
           curves=True, wall_clock=True),
    Family('sun_full_300_norm_bounded', '300 rounds, 30 writers a round: the norm-bounded '
           'attacker every round against the authors\' aggregation at bound M', 'clip_norm',
           dict(SUN_AUTHORS_BASE, defense='sun_dp', attack='norm_bounded'),
           references=(_AUTHORS_NO_ATTACK, _AUTHORS_NORM_BOUNDED), metrics=_FULL_300_METRICS,
           curves=True, wall_clock=True))

# ----------------------------------------------------------------------------- FLAIN

_DEFENSE_COLUMNS = (('clip', 'clip'), ('weak DP', 'weak_dp'), ('median', 'median'),
                    ('trimmed mean', 'trimmed_mean'), ('Multi-Krum', 'multi_krum'))
FLAIN_TABLES = tuple(
    CrossTable(f'flain_{metric}', title, ('task', 'partition', 'malicious_fraction'), 'defense',
               (('no defense', 'none', metric), ('FLAIN', 'none', f'flain_{metric}'),
                *[(name, value, metric) for name, value in _DEFENSE_COLUMNS]))
    for metric, title in (
        ('backdoor', 'FLAIN table, attack success (backdoor accuracy of the final model; '
                     'malicious_fraction 0 = no attacker)'),
        ('test', 'FLAIN table, main-task (test) accuracy of the final model')))

# ----------------------------------------------------------------------------- the matrix

# Every attack x task against every defense (experiments/grids/femnist_attacks.grid); FLAIN is
# applied after training to the undefended runs.
_MATRIX_DEFENSES = (('none', 'none'), ('clip', 'clip'), ('adaptive clip', 'adaptive_clip'),
                    ('zeroing', 'zeroing'), ('clip mean', 'clip_mean'), ('weak DP', 'weak_dp'),
                    ('median', 'median'), ('trimmed mean', 'trimmed_mean'), ('Krum', 'krum'),
                    ('Multi-Krum', 'multi_krum'), ('bias filter', 'bias_filter'),
                    # the peer suites' defenses (issue 29)
                    ('geometric median', 'geomed'), ('Bulyan', 'bulyan'),
                    ('centered clip', 'centered_clip'), ('RLR', 'rlr'), ('FLAME', 'flame'),
                    ('CRFL', 'crfl'), ('FLTrust', 'fltrust'), ('FoolsGold', 'foolsgold'),
                    # issue 39's detectors: columns once their runs exist (femnist_matrix_ext)
                    ('FLDetector', 'fldetector'), ('DeepSight', 'deepsight'))
_MATRIX_NEW_DEFENSES = ('fldetector', 'deepsight')


# The matrix's cells: 20% attackers, the square trigger (femnist_attacks.grid's FLAIN study adds
# other shares and DBA to the same sweep).
_MATRIX_WHERE = {'malicious_fraction': '0.2', 'distributed_parts': '1'}


def _matrix_table(metric: str, title: str, flain: bool = False) -> CrossTable:
  """FLAIN columns: measured from the pretraining's round-0 model, and from the warm start."""
  columns = tuple((name, value, metric) for name, value in _MATRIX_DEFENSES)
  if flain:
    columns += (('FLAIN', 'none', f'flain_origin_{metric}'),
                ('FLAIN (warm-start init)', 'none', f'flain_{metric}'))
  return CrossTable(f'matrix_{metric}', f'Attack x defense matrix: {title}', ('task', 'attack'),
                    'defense', columns, where=_MATRIX_WHERE, heatmap=True,
                    optional_values=_MATRIX_NEW_DEFENSES)


MATRIX_TABLES = (
    _matrix_table('window_test', 'main accuracy over the attack rounds'),
    _matrix_table('window_backdoor', 'backdoor accuracy over the attack rounds'),
    _matrix_table('window_collateral', 'collateral rate over the attack rounds (targeted)'),
    _matrix_table('test', 'main accuracy at the end', flain=True),
    _matrix_table('backdoor', 'backdoor accuracy at the end', flain=True),
    _matrix_table('collateral', 'collateral rate at the end (targeted)', flain=True))

# Whom the matrix's filtering defenses caught (`run.detection`; femnist_matrix_ext.grid): per
# defense that admits or rejects clients, TPR and FPR over the attack rounds (every round of
# the matrix has attackers) and, where a run has rounds without attackers, FPR over those.
# Runs without detection fields (recorded before issue 39) are left out, not shown as 0.
_FILTERING_DEFENSES = (('zeroing', 'zeroing'), ('Krum', 'krum'), ('Multi-Krum', 'multi_krum'),
                       ('bias filter', 'bias_filter'), ('Bulyan', 'bulyan'), ('FLAME', 'flame'),
                       ('FLTrust', 'fltrust'), ('FoolsGold', 'foolsgold'),
                       ('FLDetector', 'fldetector'), ('DeepSight', 'deepsight'))
DETECTION_TABLES = tuple(
    CrossTable(f'matrix_{metric}', f'Attack x defense matrix, detection: {title}',
               ('task', 'attack'), 'defense',
               tuple((name, value, metric) for name, value in _FILTERING_DEFENSES),
               where=_MATRIX_WHERE, heatmap=True, only_with=metric)
    for metric, title in (
        ('detection_tpr', 'TPR over the attack rounds (attackers flagged / attackers received)'),
        ('detection_fpr_attack_rounds', 'FPR over the attack rounds (honest clients flagged / '
                                        'honest clients received)'),
        ('detection_fpr_attack_free', 'FPR over the rounds without attackers')))

# FLDetector with the window the matrix's 8 attack rounds can fill
# (femnist_matrix_fldetector_window.grid): N = 3 judges rounds 4-7 (0-based); the matrix's
# column keeps the paper's N = 10, which judges none. One row per matrix cell.
FLDETECTOR_WINDOW_TABLES = (
    CrossTable('fldetector_window3', 'FLDetector at window N = 3 in the matrix setting: '
               'accuracies and detection rates over the 8 attack rounds (it judges rounds 4-7; '
               'in rounds 0-3 it admits everyone, so TPR is at most 0.5)',
               ('task', 'attack'), 'defense',
               (('backdoor', 'fldetector', 'window_backdoor'),
                ('main', 'fldetector', 'window_test'),
                ('TPR', 'fldetector', 'detection_tpr'),
                ('FPR', 'fldetector', 'detection_fpr_attack_rounds')),
               where={**_MATRIX_WHERE, 'fldetector_window': '3'}),)

# FLAIN on FEMNIST writers (femnist_attacks.grid): pixel trigger (distributed_parts 1) and DBA
# (4 parts), data poisoning; FLAIN in both threshold modes from the pretraining's round-0 model
# (apply_flain afterwards), and quantile mode from the warm start (the run's own --flain).
_FLAIN_FEMNIST_COLUMNS = (('FLAIN quantile', 'none', 'flain_origin_{}'),
                          ('FLAIN absolute', 'none', 'flain_abs_{}'),
                          ('FLAIN quantile (warm-start init)', 'none', 'flain_{}'),
                          ('clip', 'clip', '{}'), ('weak DP', 'weak_dp', '{}'),
                          ('median', 'median', '{}'), ('Multi-Krum', 'multi_krum', '{}'))
FLAIN_FEMNIST_TABLES = tuple(
    CrossTable(f'flain_femnist_{metric}', title, ('distributed_parts', 'malicious_fraction'),
               'defense', (('no defense', 'none', metric),
                           *[(n, v, m.format(metric)) for n, v, m in _FLAIN_FEMNIST_COLUMNS]),
               where={'task': 'pixel', 'attack': 'data_poison'})
    for metric, title in (
        ('backdoor', 'FLAIN on FEMNIST writers, attack success (backdoor accuracy of the final '
                     'model; distributed_parts 4 = DBA; malicious_fraction 0 = no attacker)'),
        ('test', 'FLAIN on FEMNIST writers, main-task (test) accuracy of the final model')))

# Durability (durability.grid): attackers in rounds 0-9, then clean rounds; the lifespan of
# the backdoor after the last attack round, per attack and defense.
_DURABILITY_DEFENSES = (('no defense', 'none'), ('clip', 'clip'), ('median', 'median'),
                        ('Multi-Krum', 'multi_krum'))
DURABILITY_TABLES = tuple(
    CrossTable(f'durability_{metric}', title, ('task', 'attack'), 'defense',
               tuple((name, value, metric) for name, value in _DURABILITY_DEFENSES),
               where={'attack_stop': '10'})
    for metric, title in (
        ('lifespan', 'Durability: rounds after the last attack round until backdoor accuracy '
                     'stays below 0.5 (a censored run counts the rounds it observed)'),
        ('lifespan_censored', 'Durability: share of seeds whose backdoor is still >= 0.5 at '
                              'the end (their lifespan is a lower bound)'),
        ('window_backdoor', 'Durability: backdoor accuracy over the attack rounds (0-9): '
                            'whether there was a backdoor to outlive'),
        ('last_attack_backdoor', 'Durability: backdoor accuracy at the last attack round (9): '
                                 'what the attackers left'),
        ('after_backdoor', 'Durability: backdoor accuracy over the 20 clean rounds after the '
                           'attack (10-29)'),
        ('backdoor', 'Durability: backdoor accuracy at the end (20 rounds after the attack)'),
        ('test', 'Durability: main accuracy at the end')))

FAMILIES = {'sun': SUN_FAMILIES, 'sun_femnist': SUN_FEMNIST_FAMILIES,
            'sun_femnist_30': SUN_FEMNIST_30_FAMILIES, 'sun_authors': SUN_AUTHORS_FAMILIES,
            'sun_authors_30': SUN_AUTHORS_30_FAMILIES, 'sun_full': SUN_FULL_FAMILIES,
            'sun_full_30': SUN_FULL_30_FAMILIES, 'sun_full_300': SUN_FULL_300_FAMILIES,
            'flain': FLAIN_TABLES,
            'matrix': MATRIX_TABLES, 'matrix_detection': DETECTION_TABLES,
            'matrix_fldetector_window': FLDETECTOR_WINDOW_TABLES,
            'flain_femnist': FLAIN_FEMNIST_TABLES,
            'durability': DURABILITY_TABLES}


# ----------------------------------------------------------------------------- Bilgin

# summary.csv columns of experiments.anomaly_localization shown per factor value.
BILGIN_COLUMNS = (('bias_auc', 'bias AUC'), ('bias_auc_early', 'bias AUC early'),
                  ('bias_rank_early', 'bias rank early'), ('tpr_at_fpr_1pct', 'TPR@1%FPR'),
                  ('fpr_at_z', 'FPR@z'), ('tpr_at_z', 'TPR@z'),
                  ('accumulated_auc', 'per-client AUC'), ('train_seconds', 's / run'))


def read_study_rows(study_dirs: Sequence[str]) -> List[Dict[str, str]]:
  """The summary.csv rows of anomaly-localization studies, each with its run directory."""
  rows = []
  for study in study_dirs:
    path = os.path.join(study, rundir.SUMMARY_CSV)
    if not os.path.exists(path):
      raise ValueError(f'{study} is not an anomaly-localization study (no '
                       f'{rundir.SUMMARY_CSV})')
    rows.extend(dict(row, run_dir=os.path.join(study, 'runs', row['run']))
                for row in metrics_io.read_csv(path))
  return rows


def _floats(rows: Sequence[Mapping[str, str]], column: str) -> List[float]:
  out = []
  for row in rows:
    try:
      value = float(row.get(column, ''))
    except ValueError:
      continue
    if math.isfinite(value):
      out.append(value)
  return out


def _stat_cell(values: Sequence[float], digits: int = 3) -> str:
  mean, std = sweep_results.mean_std(values)
  if mean is None:
    return '-'
  return f'{mean:.{digits}f}' + ('' if std is None else f' ± {std:.{digits}f}')


def _unique_runs(rows: Sequence[Mapping[str, str]]) -> List[Mapping[str, str]]:
  """One row per run: the baseline run appears once per factor in summary.csv."""
  seen, out = set(), []
  for row in rows:
    if row['run_dir'] not in seen:
      seen.add(row['run_dir'])
      out.append(row)
  return out


def bilgin_localization(rows: Sequence[Mapping[str, str]], window: str = 'early'
                        ) -> Tuple[str, List[Dict[str, Any]]]:
  """AUC per variable (mean ± std over seeds) of the baseline runs, per task and partition.

  Reads each run's localization_{window}.csv ('' = all captured rounds).
  """
  suffix = f'_{window}' if window else ''
  groups: Dict[Tuple[str, str], List[Mapping[str, str]]] = {}
  for row in _unique_runs([r for r in rows if r.get('is_baseline') == 'True']):
    groups.setdefault((row['task'], row['partition']), []).append(row)
  if not groups:
    raise ValueError('no baseline run in the studies')
  aucs: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
  variables: List[str] = []
  for key, runs in groups.items():
    for run in runs:
      for line in metrics_io.read_csv(os.path.join(run['run_dir'], f'localization{suffix}.csv')):
        aucs.setdefault(key, {}).setdefault(line['variable'], []).append(float(line['auc']))
        if line['variable'] not in variables:
          variables.append(line['variable'])
  header = ['task', 'partition', 'seeds', *variables]
  lines = ['| ' + ' | '.join(header) + ' |', '| --- | --- | ---: |' + ' ---: |' * len(variables)]
  flat = []
  for (task, partition), runs in sorted(groups.items()):
    cells = [_stat_cell(aucs[(task, partition)].get(v, [])) for v in variables]
    lines.append('| ' + ' | '.join([task, partition, str(len(runs)), *cells]) + ' |')
    flat.append({'task': task, 'partition': partition, 'seeds': len(runs),
                 **{v: sweep_results.mean_std(aucs[(task, partition)].get(v, []))[0]
                    for v in variables}})
  title = (f'**Bilgin: ROC-AUC of each variable\'s anomaly score, attacker vs honest updates, '
           f'{window or "all"} rounds, baseline runs (mean ± std over seeds)**')
  return title + '\n\n' + '\n'.join(lines), flat


def bilgin_factor_table(rows: Sequence[Mapping[str, str]], factor: str
                        ) -> Tuple[str, List[Dict[str, Any]]]:
  """One factor's sweep: per task, partition and value, mean ± std over seeds."""
  chosen = [r for r in rows if r['factor'] == factor]
  if not chosen:
    raise ValueError(f'no run of factor {factor!r} in the studies')
  groups: Dict[Tuple[str, str, str], List[Mapping[str, str]]] = {}
  for row in chosen:
    groups.setdefault((row['task'], row['partition'], row['value']), []).append(row)
  header = ['task', 'partition', factor, 'seeds', *[t for _, t in BILGIN_COLUMNS]]
  lines = ['| ' + ' | '.join(header) + ' |',
           '| --- | --- | ---: | ---: |' + ' ---: |' * len(BILGIN_COLUMNS)]
  flat = []
  for key in sorted(groups, key=lambda k: (k[0], k[1], _sort_key(k[2]))):
    runs = groups[key]
    cells = [_stat_cell(_floats(runs, c), {'train_seconds': 0, 'bias_rank_early': 1}.get(c, 3))
             for c, _ in BILGIN_COLUMNS]
    value = key[2] if _sort_key(key[2])[0] else f'{float(key[2]):.4g}'
    lines.append('| ' + ' | '.join([key[0], key[1], value, str(len(runs)), *cells]) + ' |')
    flat.append({'task': key[0], 'partition': key[1], factor: key[2], 'seeds': len(runs),
                 **{c: sweep_results.mean_std(_floats(runs, c))[0] for c, _ in BILGIN_COLUMNS}})
  title = f'**Bilgin factor sweep: {factor} (the other two factors at the baseline)**'
  return title + '\n\n' + '\n'.join(lines), flat


def bilgin_detector_facts(rows: Sequence[Mapping[str, str]], max_attackers: int = 4
                          ) -> Tuple[str, List[Dict[str, Any]]]:
  """Per task and partition, over every finished run: is the bias first, and does z flag honest?

  "bias first" counts, per seed, the runs with at most max_attackers attackers (below the
  median's breakdown point) whose early-round top variable is the final layer's bias, and
  names the variable that was first otherwise (tied variables joined by ' = ').
  """
  groups: Dict[Tuple[str, str], List[Mapping[str, str]]] = {}
  for row in _unique_runs(rows):
    groups.setdefault((row['task'], row['partition']), []).append(row)
  if not groups:
    raise ValueError('no run in the studies')
  header = ['task', 'partition', 'runs',
            f'bias first early (≤ {max_attackers} attackers), by seed', 'first otherwise',
            'FPR@z min-max', 'runs with TPR@1%FPR > 0', 'max TPR@1%FPR']
  lines = ['| ' + ' | '.join(header) + ' |', '| --- | --- | ---: | --- | --- | --- | ---: | ---: |']
  flat = []
  for (task, partition), runs in sorted(groups.items()):
    minority = [r for r in runs if 0 < sum(_floats([r], 'num_malicious')) <= max_attackers]
    by_seed: Dict[str, List[bool]] = {}
    others: collections.Counter = collections.Counter()
    for r in minority:
      first = r.get('bias_rank_early') == '1'
      by_seed.setdefault(r['seed'], []).append(first)
      if not first:  # a tie is 'a|b' in summary.csv; '|' would split the markdown cell
        others[(r.get('top_variable_early') or '?').replace('|', ' = ')] += 1
    seeds = sorted(by_seed, key=_sort_key)
    first_cell = ', '.join(f'seed {s}: {sum(by_seed[s])}/{len(by_seed[s])}' for s in seeds) or '-'
    other_cell = ', '.join(f'{v} ({n})' for v, n in others.most_common())
    fpr, tpr = _floats(runs, 'fpr_at_z'), _floats(runs, 'tpr_at_fpr_1pct')
    fpr_cell = f'{min(fpr):.2f}-{max(fpr):.2f}' if fpr else '-'
    caught = sum(t > 0 for t in tpr)
    lines.append('| ' + ' | '.join([task, partition, str(len(runs)), first_cell, other_cell or '-',
                                    fpr_cell, f'{caught} of {len(tpr)}',
                                    f'{max(tpr):.3f}' if tpr else '-']) + ' |')
    flat.append({'task': task, 'partition': partition, 'runs': len(runs),
                 **{f'bias_first_seed{s}': sum(by_seed[s]) for s in seeds},
                 **{f'minority_runs_seed{s}': len(by_seed[s]) for s in seeds},
                 'fpr_at_z_min': min(fpr) if fpr else None,
                 'fpr_at_z_max': max(fpr) if fpr else None,
                 'runs_tpr_1pct_positive': caught,
                 'tpr_at_fpr_1pct_max': max(tpr) if tpr else None})
  z = sorted({f'{v:g}' for v in _floats(rows, 'z_threshold')}) or ['?']
  title = (f'**Bilgin: is the bias first, and what the fixed z = {", ".join(z)} costs '
           '(every finished run of the studies)**')
  return title + '\n\n' + '\n'.join(lines), flat


def plot_bilgin_factor(rows: Sequence[Mapping[str, str]], factor: str, path: str,
                       metrics: Sequence[str] = ('bias_auc', 'bias_auc_early')) -> str:
  """One panel per (task, metric): mean ± std over seeds vs the factor, a line per partition."""
  chosen = [r for r in rows if r['factor'] == factor]
  tasks = sorted({r['task'] for r in chosen})
  if not chosen:
    raise ValueError(f'no run of factor {factor!r} in the studies')
  fig = Figure(figsize=(4.2 * len(metrics), 3.3 * len(tasks)))
  titles = dict(BILGIN_COLUMNS)
  for i, task in enumerate(tasks):
    for j, metric in enumerate(metrics):
      ax = fig.add_subplot(len(tasks), len(metrics), i * len(metrics) + j + 1)
      for k, partition in enumerate(sorted({r['partition'] for r in chosen if r['task'] == task})):
        runs = [r for r in chosen if r['task'] == task and r['partition'] == partition]
        values = sorted({r['value'] for r in runs}, key=_sort_key)
        points = [(float(v),
                   *sweep_results.mean_std(_floats([r for r in runs if r['value'] == v], metric)))
                  for v in values]
        points = [p for p in points if p[1] is not None]  # metric missing from these runs
        if points:
          ax.errorbar([p[0] for p in points], [p[1] for p in points],
                      yerr=[p[2] or 0.0 for p in points], marker='o', capsize=3,
                      color=f'C{k}', label=partition)
      ax.set_xscale('log' if factor != 'num_malicious' else 'linear')
      ax.set_ylim(-0.02, 1.02)
      ax.axhline(0.5, color='grey', linewidth=0.8, linestyle=':')
      ax.set_xlabel(factor)
      ax.set_ylabel(titles.get(metric, metric))
      ax.set_title(f'{task}', fontsize=9)
      ax.grid(alpha=0.3)
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
  fig.subplots_adjust(hspace=0.5, wspace=0.3)
  fig.suptitle(f'Bilgin: final-layer bias AUC vs {factor} (mean ± std over seeds)', fontsize=9)
  FigureCanvasAgg(fig)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  return path


def render_bilgin(study_dirs: Sequence[str], factors: Sequence[str],
                  output_dir: Optional[str] = None) -> List[str]:
  """The localization table, one table per factor and the detector facts; CSVs in output_dir."""
  rows = read_study_rows(study_dirs)
  costs = (_floats([r], 'train_seconds') + _floats([r], 'analysis_seconds')
           for r in _unique_runs(rows))
  seconds = [sum(parts) for parts in costs if parts]
  out = [wall_clock_markdown('wall clock (train + analysis)', seconds)]
  tables = [('bilgin_localization', bilgin_localization(rows), None),
            *[(f'bilgin_{f}', bilgin_factor_table(rows, f), f) for f in factors],
            ('bilgin_detector', bilgin_detector_facts(rows), None)]
  for key, (text, flat), factor in tables:
    out.append(text)
    if output_dir:
      out.append(metrics_io.write_csv(os.path.join(output_dir, f'{key}.csv'), flat))
      if factor:
        out.append(plot_bilgin_factor(rows, factor, os.path.join(output_dir, f'{key}.png')))
  return out
