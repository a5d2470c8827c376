"""What the population size changes: one family's table at two populations, cell by cell.

The Sun et al. study ran first on 293 FEMNIST writers (`experiments/results/sun_authors*`),
then on the whole LEAF population of 3,580 (`experiments/results/sun_full*`), with the same
grid flags. A `Comparison` joins the two studies' rows of one family by their label (a
reference row or a value of the varied flag) and prints, per metric, both means and the
change. The runs of each population are told apart by their sweep directory's name, since
their grid flags are the same.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tff_backdoor import metrics_io

from studies import reproduction

Row = Dict[str, Any]


def sweep_name(run: reproduction.RunSummary) -> str:
  """The name of the sweep directory a run belongs to (e.g. 'sun_full_30')."""
  return os.path.basename(os.path.dirname(os.path.normpath(run.directory)))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """`family` of sweep `small` beside `full_family` of sweep `full`, joined row by row."""
  key: str
  title: str
  small: Tuple[str, str]  # (sweep directory name, its population as the table shows it)
  full: Tuple[str, str]
  family: reproduction.Family
  full_family: reproduction.Family
  metrics: Tuple[str, ...] = ('window_backdoor', 'window_test', 'window_collateral')

  def rows(self, runs: Sequence[reproduction.RunSummary]) -> List[Row]:
    """One row per label found in either population, in the full population's order."""
    small = self._labelled(runs, self.small[0], self.family)
    full = self._labelled(runs, self.full[0], self.full_family)
    labels = list(full) + [label for label in small if label not in full]
    return [self._row(label, small.get(label), full.get(label)) for label in labels]

  @staticmethod
  def _labelled(runs, sweep: str, family: reproduction.Family) -> Dict[str, Row]:
    mine = [r for r in runs if sweep_name(r) == sweep]
    references, values = reproduction.family_rows(mine, family)
    out = {f'{r["label"]} (reference)': r for r in references}
    out.update({str(r['label']): r for r in values})
    return out

  def _row(self, label: str, small: Optional[Row], full: Optional[Row]) -> Row:
    row: Row = {'label': label, 'n_small': small['n'] if small else 0,
                'n_full': full['n'] if full else 0}
    for metric in self.metrics:
      a = small.get(f'{metric}_mean') if small else None
      b = full.get(f'{metric}_mean') if full else None
      row[f'{metric}_small'], row[f'{metric}_full'] = a, b
      row[f'{metric}_change'] = None if a is None or b is None else b - a
    return row

  def markdown(self, rows: Sequence[Row]) -> str:
    """The comparison as a titled markdown table: per metric, both means and the change."""
    small, full = self.small[1], self.full[1]
    header = [self.family.vary, f'seeds ({small} / {full})']
    for metric in self.metrics:
      title = reproduction.METRIC_TITLES[metric]
      header += [f'{title}, {small}', f'{title}, {full}', 'change']
    lines = ['| ' + ' | '.join(header) + ' |', '| --- | ---: |' + ' ---: |' * 3 * len(self.metrics)]
    for row in rows:
      cells = [row['label'], f'{row["n_small"]} / {row["n_full"]}']
      for metric in self.metrics:
        cells += [_number(row[f'{metric}_small']), _number(row[f'{metric}_full']),
                  _number(row[f'{metric}_change'], signed=True)]
      lines.append('| ' + ' | '.join(cells) + ' |')
    return f'**{self.title}**\n\n' + '\n'.join(lines)

  def render(self, runs: Sequence[reproduction.RunSummary],
             output_dir: Optional[str] = None) -> List[str]:
    """The table, then the path of its CSV (with `output_dir`); one line if a side is empty."""
    rows = self.rows(runs)
    if not any(r['n_small'] for r in rows) or not any(r['n_full'] for r in rows):
      return [f'**{self.title}**: needs finished runs of both {self.small[0]} and '
              f'{self.full[0]}']
    out = [self.markdown(rows)]
    if output_dir:
      out.append(metrics_io.write_csv(os.path.join(output_dir, f'{self.key}.csv'), rows))
    return out


def _number(value: Optional[float], signed: bool = False) -> str:
  if value is None:
    return '-'
  return f'{value:+.3f}' if signed else f'{value:.3f}'


def _family(families: Sequence[Any], key: str) -> reproduction.Family:
  return next(f for f in families if getattr(f, 'key', None) == key)


def _pairs(small_sweep: str, full_sweep: str, small_families, full_families, suffixes,
           where: str) -> Tuple[Comparison, ...]:
  small_prefix, full_prefix = f'{small_sweep}_', f'{full_sweep}_'
  return tuple(
      Comparison(f'population_{full_sweep}_{suffix}',
                 f'{_family(full_families, full_prefix + suffix).title}: 293 writers vs '
                 f'3,580 ({where})', (small_sweep, '293'), (full_sweep, '3,580'),
                 _family(small_families, small_prefix + suffix),
                 _family(full_families, full_prefix + suffix))
      for suffix in suffixes)


# The families both populations ran, at 5 and at 30 writers a round.
_FAMILIES_5 = ('c_clip_boost', 'c_clip_norm_bounded', 'd_noise', 'b_tasks', 'a_frequency',
               'a_fraction')
_FAMILIES_30 = ('c_clip_boost', 'c_clip_norm_bounded', 'd_noise', 'a_fraction')
SUN_POPULATION = (
    _pairs('sun_authors', 'sun_full', reproduction.SUN_AUTHORS_FAMILIES,
           reproduction.SUN_FULL_FAMILIES, _FAMILIES_5, '5 writers a round')
    + _pairs('sun_authors_30', 'sun_full_30', reproduction.SUN_AUTHORS_30_FAMILIES,
             reproduction.SUN_FULL_30_FAMILIES, _FAMILIES_30, '30 writers a round'))
