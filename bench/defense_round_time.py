"""Time per round of every defense, read off the attack x defense matrix's run records.

  python -m bench.defense_round_time [--results=experiments/results/femnist_attacks] \
      [--attacks=neurotoxin,constrain_scale] [--output=FILE.json]

The matrix (REPRODUCTION.md section 6: FEMNIST digits, 10 writers a round, 1 local epoch, 2
attackers a round, every round evaluated on 4,000 test digits and the backdoor sets) ran the
rows of `--attacks` against every defense in one sweep (2 tasks x 3 seeds each, two runs at a
time on the same machine, interleaved), so those runs compare the defenses under one load;
the older rows ran in other sessions. Each run's metrics.jsonl holds `round_seconds`
(sampling, client datasets, `process.next` and the evaluation); round 0 also pays for the
first call of each computation and is reported apart. Per defense: the median of the later
rounds over all its runs, their 10th-90th percentiles, and that median over no defense's.
Prints a Markdown table on stderr and the JSON report on stdout.
"""
from __future__ import annotations

import collections
import glob
import os
from typing import Any, Dict, List

import numpy as np
from absl import app
from absl import flags

from bench import common
from tff_backdoor import metrics_io

flags.DEFINE_string('results', os.path.join('experiments', 'results', 'femnist_attacks'),
                    'A sweep folder of matrix runs (config.json and metrics.jsonl per run).')
flags.DEFINE_list('attacks', ['neurotoxin', 'constrain_scale'],
                  'Rows (attack modes) whose runs count: those that met every defense in one '
                  'sweep.')
flags.DEFINE_string('output', None, 'Also write the JSON report here.')

# The matrix's cells (studies.reproduction._MATRIX_WHERE): 20% attackers, one trigger.
_CELL = {'malicious_fraction': 0.2, 'distributed_parts': 1}


def round_times(results: str, attacks: List[str]) -> Dict[str, Dict[str, List[float]]]:
  """defense -> {'first': [round-0 seconds], 'later': [seconds of rounds 1...]} of the cells
  whose attack is one of `attacks`."""
  times: Dict[str, Dict[str, List[float]]] = collections.defaultdict(
      lambda: {'first': [], 'later': []})
  for path in sorted(glob.glob(os.path.join(results, '*', 'config.json'))):
    config = metrics_io.read_json(path)
    if (any(config.get(k) != v for k, v in _CELL.items()) or config.get('schedule') == 'none'
        or config.get('attack') not in attacks):
      continue
    metrics = os.path.join(os.path.dirname(path), 'metrics.jsonl')
    if not os.path.exists(os.path.join(os.path.dirname(path), 'final.json')):
      continue  # unfinished
    for row in metrics_io.read_jsonl(metrics):
      key = 'first' if row['round'] == 0 else 'later'
      times[config['defense']['name']][key].append(float(row['round_seconds']))
  if not times:
    raise ValueError(f'--results={results}: no finished matrix run of --attacks='
                     f'{",".join(attacks)} (config.json + final.json)')
  return times


def report(results: str, attacks: List[str]) -> Dict[str, Any]:
  times = round_times(results, attacks)
  base = float(np.median(times['none']['later'])) if 'none' in times else None
  rows = {}
  for name, t in sorted(times.items(), key=lambda kv: np.median(kv[1]['later'])):
    later = np.asarray(t['later'])
    median = float(np.median(later))
    rows[name] = {'runs': len(t['first']), 'rounds': int(later.size),
                  'seconds_median': round(median, 3),
                  'seconds_p10': round(float(np.percentile(later, 10)), 3),
                  'seconds_p90': round(float(np.percentile(later, 90)), 3),
                  'first_round_median': round(float(np.median(t['first'])), 3),
                  'x_none': round(median / base, 3) if base else None}
  lines = ['| defense | runs | s / round (median, rounds 1-7) | 10th-90th pct | x none | '
           'round 0 (median) |', '| --- | ---: | ---: | ---: | ---: | ---: |']
  for name, r in rows.items():
    lines.append(f"| {name} | {r['runs']} | {r['seconds_median']:.2f} | {r['seconds_p10']:.2f}"
                 f"-{r['seconds_p90']:.2f} | {r['x_none'] if r['x_none'] is not None else '-'} "
                 f"| {r['first_round_median']:.2f} |")
  common.log('\n'.join(lines))
  return {'results': results, 'attacks': attacks, 'defenses': rows}


def main(argv: List[str]) -> None:
  common.json_main(lambda: report(flags.FLAGS.results, flags.FLAGS.attacks))(argv)


if __name__ == '__main__':
  app.run(main)
