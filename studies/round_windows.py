"""How a long run's numbers move: means over successive windows of rounds, per configuration.

Sun et al.'s central claim is about 300 rounds, and the 60-round tables are only the first
window of such a run. A `WindowTable` prints, for one metric, one row per configuration (a
label and the flags its runs match) and one column per window of `width` rounds
([0, width), [width, 2 width), ...): the mean over each run's rounds in the window, then mean ±
std over its seeds. The last round is left out of every window: a run evaluates it on the
whole test set (final.json's numbers, the tables' "final" columns), the others on the
`--eval_subset` digits.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tff_backdoor import metrics_io

from studies import plots
from studies import reproduction
from studies import sweep_results

Row = Dict[str, Any]


def run_windows(rows: Sequence[Mapping[str, Any]], metric: str,
                width: int) -> List[Optional[float]]:
  """The mean of `metric` over each window of `width` rounds, the last round left out."""
  last = max((r.get('round', -1) for r in rows), default=-1)
  by_window: Dict[int, List[float]] = {}
  for row in rows:
    value, round_ = metrics_io.number(row.get(metric)), row.get('round', -1)
    if value is not None and 0 <= round_ < last:
      by_window.setdefault(round_ // width, []).append(value)
  count = -(-last // width) if last > 0 else 0
  return [float(np.mean(by_window[k])) if k in by_window else None for k in range(count)]


@dataclasses.dataclass(frozen=True)
class WindowTable:
  """`metric` of each configuration in `configurations` over windows of `width` rounds."""
  key: str
  title: str
  metric: str  # a metrics.jsonl column, e.g. 'backdoor_accuracy'
  configurations: Tuple[Tuple[str, Mapping[str, str]], ...]  # (label, flags its runs match)
  width: int = 60

  def rows(self, runs: Sequence[reproduction.RunSummary]) -> List[Row]:
    """One row per configuration with runs: label, n, and W<k>_mean / W<k>_std per window."""
    out = []
    for label, where in self.configurations:
      mine = [r for r in runs if reproduction.matches(r, where)]
      if not mine:
        continue
      loaded = [plots.load_run(r.directory).rows for r in mine]
      per_run = [run_windows(rows, self.metric, self.width) for rows in loaded]
      last = max(max((r.get('round', -1) for r in rows), default=-1) for rows in loaded)
      row: Row = {'label': label, 'n': len(mine), 'last_round': last}
      for k in range(max(len(w) for w in per_run)):
        values = [w[k] for w in per_run if k < len(w) and w[k] is not None]
        row[f'w{k}_mean'], row[f'w{k}_std'] = sweep_results.mean_std(values)
      out.append(row)
    return out

  def markdown(self, rows: Sequence[Row]) -> str:
    """The titled table: a column per window, labelled by its rounds."""
    windows = max(len([k for k in r if k.endswith('_mean')]) for r in rows)
    last = max(r['last_round'] for r in rows)  # left out of the windows
    header = ['', 'seeds'] + [f'rounds {k * self.width}-{min((k + 1) * self.width, last) - 1}'
                              for k in range(windows)]
    lines = ['| ' + ' | '.join(header) + ' |', '| --- | ---: |' + ' ---: |' * windows]
    for row in rows:
      cells = [reproduction.cell(row, f'w{k}') for k in range(windows)]
      lines.append('| ' + ' | '.join([row['label'], str(row['n']), *cells]) + ' |')
    return f'**{self.title}**\n\n' + '\n'.join(lines)

  def render(self, runs: Sequence[reproduction.RunSummary],
             output_dir: Optional[str] = None) -> List[str]:
    """The table (or one line while no configuration has a run) and, with `output_dir`, its
    CSV."""
    rows = self.rows(runs)
    if not rows:
      return [f'**{self.title}**: no finished run yet']
    out = [self.markdown(rows)]
    if output_dir:
      out.append(metrics_io.write_csv(os.path.join(output_dir, f'{self.key}.csv'), rows))
    return out



_BASE = reproduction.SUN_AUTHORS_BASE
_SUN_FULL_300_CONFIGURATIONS = (
    ('no attacker', dict(_BASE, schedule='none')),
    ("boosted attacker, the authors' mean (no defense)", _BASE),
    ('boosted attacker, M = 1', dict(_BASE, defense='sun_dp')),
    ('boosted attacker, M = 1, sigma = 0.025',
     dict(_BASE, defense='sun_dp', sum_noise_stddev='0.025')),
    ("norm-bounded attacker, the authors' mean (no defense)", dict(_BASE, attack='norm_bounded')),
    ('norm-bounded attacker, M = 1', dict(_BASE, attack='norm_bounded', defense='sun_dp')))
# experiments/grids/sun_full_300.grid by 60-round window: the first is the 60-round tables'.
SUN_FULL_300_WINDOWS = tuple(
    WindowTable(f'sun_full_300_windows_{key}', f'300 rounds by 60-round window: {title}', metric,
                _SUN_FULL_300_CONFIGURATIONS)
    for key, metric, title in (
        ('backdoor', 'backdoor_accuracy', "backdoor accuracy (the target writers' 7s called 1)"),
        ('heldout', 'backdoor_heldout_accuracy',
         "the target writers' held-out 7s called 1"),
        ('collateral', 'collateral_accuracy', "collateral (every other writer's 7s called 1)"),
        ('test', 'test_accuracy', 'main accuracy (the 4,000 evaluation digits)')))
