"""PNG plots of experiment outputs: one run, a sweep, or a directory of runs.

`plot_all(path)` finds the runs and writes, where the data exists:
- `curves.png`: main (test) accuracy and backdoor accuracy per round, one panel each; one
  line per run, or for a sweep one line per configuration group (mean over seeds) with a
  band (min-max or +-std over seeds);
- `flain.png`: test and backdoor accuracy before and after FLAIN (final.json 'flain');
- `anomaly_auc[_RUN].png`, `bias_scores[_RUN].png`: from `captures/` (--capture_rounds),
  with `anomaly.localization_table` and `anomaly_plots`.

Layouts: a run directory (metrics.jsonl or final.json), a sweep directory (sweep.json from
`studies.sweeps`), or a directory whose subdirectories are runs. Uses matplotlib's
object API with the Agg canvas (no pyplot state).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tff_backdoor import metrics_io
from tff_backdoor.analysis import anomaly
from tff_backdoor.analysis import captures as captures_lib
from tff_backdoor.run import rundir

from studies import anomaly_plots
from studies import sweep_plan
from studies import sweep_results

BANDS = ('minmax', 'std', 'none')
CURVE_METRICS = (('test_accuracy', 'main (test) accuracy'),
                 ('backdoor_accuracy', 'backdoor accuracy'))
FLAIN_METRICS = CURVE_METRICS


@dataclasses.dataclass
class RunData:
  """One run's outputs."""
  name: str
  directory: str
  rows: List[Dict[str, Any]]  # metrics.jsonl
  final: Optional[Dict[str, Any]]  # final.json (None while unfinished)


@dataclasses.dataclass
class Group:
  """Runs that differ only in the seed (one run outside sweeps)."""
  label: str
  runs: List[RunData]


def _read_json(path: str) -> Optional[Dict[str, Any]]:
  return metrics_io.read_json(path) if os.path.exists(path) else None


def _is_run(directory: str) -> bool:
  return any(os.path.exists(os.path.join(directory, f)) for f in (rundir.METRICS_JSONL,
                                                                rundir.FINAL_FILE))


def load_run(directory: str, name: Optional[str] = None) -> RunData:
  """A run's metrics rows and final.json (None if unfinished), named `name` or its
  directory's base name."""
  directory = os.path.abspath(directory)
  return RunData(name or os.path.basename(directory), directory, rundir.read_rows(directory),
                 _read_json(os.path.join(directory, rundir.FINAL_FILE)))


def find_groups(path: str) -> Tuple[str, List[Group]]:
  """('run' | 'sweep' | 'runs', groups) for a run, sweep or parent directory of runs."""
  if not os.path.isdir(path):
    raise ValueError(f'no such directory: {path}')
  if os.path.exists(os.path.join(path, sweep_plan.SWEEP_FILE)):
    groups: Dict[str, Group] = {}
    for label, directory, _ in sweep_results.iter_run_dirs(path):
      if _is_run(directory):
        groups.setdefault(label, Group(label, [])).runs.append(load_run(directory))
    if not groups:
      raise ValueError(f'sweep {path} has no run with metrics.jsonl or final.json yet')
    return 'sweep', list(groups.values())
  if _is_run(path):
    run = load_run(path)
    return 'run', [Group(run.name, [run])]
  subdirs = sorted(d for d in os.listdir(path) if _is_run(os.path.join(path, d)))
  if subdirs:
    return 'runs', [Group(d, [load_run(os.path.join(path, d))]) for d in subdirs]
  raise ValueError(f'{path} has no metrics.jsonl, final.json or sweep.json, nor '
                   'subdirectories with them')


def _save(fig: Figure, path: str) -> str:
  FigureCanvasAgg(fig)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  return path


def curve(rows: Sequence[Dict[str, Any]], key: str) -> Dict[int, float]:
  """{rounds completed (round + 1): value} of the rows where `key` was evaluated."""
  points = {}
  for row in rows:
    value = metrics_io.number(row.get(key))
    if value is not None and isinstance(row.get('round'), int):
      points[row['round'] + 1] = value
  return points


def aggregate(curves: Sequence[Dict[int, float]], band: str = 'minmax'
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(x, mean, low, high) over runs at every round any run has; band: minmax, std or none."""
  if band not in BANDS:
    raise ValueError(f'unknown band {band!r}; choose one of {", ".join(BANDS)}')
  xs = sorted(set().union(*[c.keys() for c in curves])) if curves else []
  mean, low, high = [], [], []
  for x in xs:
    values = np.array([c[x] for c in curves if x in c])
    mean.append(values.mean())
    if band == 'minmax':
      low.append(values.min())
      high.append(values.max())
    else:
      spread = values.std(ddof=1) if band == 'std' and len(values) > 1 else 0.0
      low.append(values.mean() - spread)
      high.append(values.mean() + spread)
  return np.array(xs), np.array(mean), np.array(low), np.array(high)


def plot_curves(groups: Sequence[Group], path: str, band: str = 'minmax',
                title: Optional[str] = None) -> Optional[str]:
  """Accuracy per round, one panel per metric present; None if no run has any."""
  metrics = [(k, label) for k, label in CURVE_METRICS
             if any(curve(r.rows, k) for g in groups for r in g.runs)]
  if not metrics:
    return None
  fig = Figure(figsize=(5.0 * len(metrics) + (2.5 if len(groups) > 1 else 0.0), 3.8))
  axes = [fig.add_subplot(1, len(metrics), i + 1) for i in range(len(metrics))]
  colors = [f'C{i % 10}' for i in range(len(groups))]
  for ax, (key, label) in zip(axes, metrics):
    for group, color in zip(groups, colors):
      curves = [c for c in (curve(r.rows, key) for r in group.runs) if c]
      if not curves:
        continue
      x, mean, low, high = aggregate(curves, band)
      name = group.label + (f' (n={len(curves)})' if len(curves) > 1 else '')
      ax.plot(x, mean, color=color, marker='o' if len(x) < 25 else None, markersize=3,
              label=name)
      if len(curves) > 1 and band != 'none':
        ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('rounds completed')
    ax.set_ylabel(label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(label)
  seeds = any(len(g.runs) > 1 for g in groups)
  note = {'minmax': ' (band: min-max over seeds)', 'std': ' (band: ±1 std over seeds)',
          'none': ''}[band] if seeds else ''
  if len(groups) > 1 or seeds:
    axes[-1].legend(fontsize=7, loc='center left', bbox_to_anchor=(1.02, 0.5))
  fig.suptitle((title or 'Accuracy per round') + note, fontsize=10)
  return _save(fig, path)


def _flain_values(run: RunData, when: str, key: str) -> Optional[float]:
  flain = (run.final or {}).get('flain') or {}
  return metrics_io.number((flain.get(when) or {}).get(key))


def plot_flain(groups: Sequence[Group], path: str, title: Optional[str] = None
               ) -> Optional[str]:
  """Bars of test and backdoor accuracy before/after FLAIN per group (mean, std error bars)."""
  groups = [g for g in groups
            if any(_flain_values(r, 'after', k) is not None
                   for r in g.runs for k, _ in FLAIN_METRICS)]
  if not groups:
    return None
  metrics = [(k, label) for k, label in FLAIN_METRICS
             if any(_flain_values(r, 'after', k) is not None for g in groups for r in g.runs)]
  fig = Figure(figsize=(max(4.0, 1.0 + 1.2 * len(groups)) * len(metrics), 4.0))
  x = np.arange(len(groups))
  width = 0.38
  seeds = any(len(g.runs) > 1 for g in groups)
  for i, (key, label) in enumerate(metrics):
    ax = fig.add_subplot(1, len(metrics), i + 1)
    for offset, when, color in ((-width / 2, 'before', 'tab:gray'),
                                (width / 2, 'after', 'tab:blue')):
      means, errs = [], []
      for group in groups:
        values = [v for v in (_flain_values(r, when, key) for r in group.runs) if v is not None]
        means.append(np.mean(values) if values else np.nan)
        errs.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
      ax.bar(x + offset, np.nan_to_num(means), width, yerr=errs if seeds else None,
             color=color, capsize=3, label=f'{when} FLAIN')
    ax.set_xticks(x)
    ax.set_xticklabels([g.label for g in groups], rotation=30 if len(groups) > 2 else 0,
                       ha='right' if len(groups) > 2 else 'center', fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel(label)
    ax.set_title(label)
    ax.legend(fontsize=7)
  note = ' (mean over seeds, error bar: std)' if seeds else ''
  fig.suptitle((title or 'FLAIN: before vs after') + note, fontsize=10)
  return _save(fig, path)


def _bias_variable(capture_dir: str) -> str:
  first = captures_lib.capture_files(capture_dir)[0]
  with np.load(first, allow_pickle=False) as data:
    names = [str(v) for v in data['variable_names']]
  return anomaly.default_bias_variable(names)


def plot_anomaly(run: RunData, output_dir: str, suffix: str = '') -> List[str]:
  """AUC-per-variable and bias-score plots of a run's captures ([] without captures)."""
  capture_dir = os.path.join(run.directory, rundir.CAPTURES_DIR)
  if not captures_lib.capture_files(capture_dir):
    return []
  files = []
  rows = anomaly.localization_table(captures_lib.iter_captures(capture_dir))
  files.append(anomaly_plots.plot_localization_auc(
      rows, os.path.join(output_dir, f'anomaly_auc{suffix}.png'),
      title=f'{run.name}: where the backdoor shows (AUC per variable)'))
  try:
    bias = _bias_variable(capture_dir)
  except ValueError:  # No bias variable in this model.
    return files
  files.append(anomaly_plots.plot_bias_scores(
      captures_lib.load_captures(capture_dir, variables=[bias]),
      os.path.join(output_dir, f'bias_scores{suffix}.png'),
      title=f'{run.name}: {bias} score, attackers vs honest'))
  return files


def plot_all(path: str, output_dir: Optional[str] = None, band: str = 'minmax') -> List[str]:
  """Writes every plot the data allows to output_dir (default PATH/plots); returns the files."""
  kind, groups = find_groups(path)
  output_dir = output_dir or os.path.join(path, 'plots')
  title = os.path.basename(os.path.abspath(path))
  files = []
  for written in (plot_curves(groups, os.path.join(output_dir, 'curves.png'), band,
                              title=f'{title}: accuracy per round'),
                  plot_flain(groups, os.path.join(output_dir, 'flain.png'),
                             title=f'{title}: FLAIN before vs after')):
    if written:
      files.append(written)
  for group in groups:
    for run in group.runs:
      files += plot_anomaly(run, output_dir, suffix='' if kind == 'run' else f'_{run.name}')
  if not files:
    raise ValueError(f'nothing to plot in {path}: no accuracy in metrics.jsonl, no FLAIN '
                     'results, no captures')
  return files
