"""One table of the package's costs: examples/s and peak memory of every configuration.

  python -m bench.run_all --output=bench/RESULTS.md [--repeats=3]

Each configuration runs `bench.fedavg_throughput` in its own process (so its peak RSS,
Python + TFF worker, is its own) on the reference setting: Sun et al. CNN, Fashion-MNIST,
10 clients x 600 examples, batch 20, one local epoch. Ratios are to vanilla
`tff.learning.algorithms.build_weighted_fed_avg` measured in the same invocation. Also: FLAIN's
time (bench/flain_time.py) and how a round of our process grows with clients per round.
Writes Markdown (--output) and JSON (same name, .json).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

from absl import app
from absl import flags

from tff_backdoor import cli

flags.DEFINE_string('output', 'bench/RESULTS.md', 'Markdown table to write (+ .json beside it).')
flags.DEFINE_integer('repeats', 3, 'Timed rounds per configuration (after one warm-up).')
flags.DEFINE_list('configs', ['keras', 'vanilla', 'ours', 'ours_boost_attacker',
                              'ours_norm_bounded_attacker', 'ours_data_poison_attacker',
                              'capture', 'clip', 'adaptive_clip', 'zeroing', 'clip_mean',
                              'weak_dp', 'median', 'trimmed_mean', 'krum', 'multi_krum',
                              'bias_filter'],
                  'Configurations (bench.fedavg_throughput variants).')
flags.DEFINE_list('scaling_clients', ['5', '10', '20', '40'],
                  'Clients per round for the scaling rows (our process, no attacker).')
flags.DEFINE_bool('flain', True, 'Include FLAIN timing (bench/flain_time.py).')
FLAGS = flags.FLAGS

_DESCRIPTIONS = {
    'keras': 'plain Keras model.fit, one epoch on the same 6000 examples',
    'vanilla': 'tff.learning.algorithms.build_weighted_fed_avg',
    'ours': 'our composed process, attack machinery, no attacker',
    'capture': 'ours + every client update handed over by the same round (--capture_rounds)',
    'capture_save': 'capture + writing the round\'s captures/round_NNNN.npz',
    'capture_stack': 'capture stacked into the measurements (the way with --workers)',
    'capture_rerun': 'the old capture: every client\'s training run again',
    'ours_boost_attacker': 'ours, 1 of 10 clients attacks (boost)',
    'ours_norm_bounded_attacker': 'ours, 1 of 10 clients attacks (norm_bounded, R=5)',
    'ours_data_poison_attacker': 'ours, 1 of 10 clients attacks (data_poison)',
}


def _run_throughput(variant: str, clients: int, repeats: int) -> Dict[str, Any]:
  with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
    out = f.name
  cmd = [sys.executable, '-m', 'bench.fedavg_throughput', f'--variants={variant}',
         f'--num_clients={clients}', f'--repeats={repeats}', f'--output={out}']
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f'{variant} failed: {result.stderr.strip().splitlines()[-1:]}')
  with open(out) as f:
    report = json.load(f)
  os.remove(out)
  row = report['results'][variant]
  row['peak_rss_mb'] = report['peak_rss_mb']['total']
  return row


def _run_flain() -> Dict[str, Any]:
  result = subprocess.run([sys.executable, 'bench/flain_time.py'], capture_output=True,
                          text=True)
  if result.returncode != 0:
    raise RuntimeError(f'flain bench failed: {result.stderr.strip().splitlines()[-1:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def run(configs: List[str], scaling: List[int], repeats: int, with_flain: bool) -> Dict:
  """Runs every configuration in its own process; returns the table as a dict."""
  rows = {}
  for name in configs:
    rows[name] = _run_throughput(name, 10, repeats)
    print(f'{name}: {rows[name]["seconds"]:.2f}s', file=sys.stderr, flush=True)
  scaling_rows = {}
  for clients in scaling:
    scaling_rows[clients] = _run_throughput('ours', clients, repeats)
    print(f'ours x{clients} clients: {scaling_rows[clients]["seconds"]:.2f}s', file=sys.stderr,
          flush=True)
  base = rows.get('vanilla', {}).get('seconds')
  for row in rows.values():
    row['ratio_to_vanilla'] = round(row['seconds'] / base, 3) if base else None
  return {'rows': rows, 'scaling': scaling_rows,
          'flain': _run_flain() if with_flain else None}


def to_markdown(report: Dict, command: str) -> str:
  lines = ['# Benchmarks', '', f'Made by `{command}` on this machine (2 cores, no GPU).', '',
           'Setting: Sun et al. CNN, Fashion-MNIST, 10 clients x 600 examples, batch 20, '
           'one local epoch; median of the timed rounds after one warm-up; one process per '
           'row (peak RSS = Python + TFF worker).', '',
           '| configuration | what | s / round | examples/s | x vanilla | peak RSS (MB) |',
           '| --- | --- | ---: | ---: | ---: | ---: |']
  for name, r in report['rows'].items():
    what = _DESCRIPTIONS.get(name, f'ours + defense `{name}`')
    lines.append(f'| {name} | {what} | {r["seconds"]:.2f} | {r["examples_per_s"]:.0f} | '
                 f'{r["ratio_to_vanilla"]:.2f} | {r["peak_rss_mb"]:.0f} |')
  lines += ['', '## Round time vs clients per round (ours, no attacker, 600 examples each)', '',
            '| clients per round | s / round | examples/s | peak RSS (MB) |',
            '| ---: | ---: | ---: | ---: |']
  for clients, r in report['scaling'].items():
    lines.append(f'| {clients} | {r["seconds"]:.2f} | {r["examples_per_s"]:.0f} | '
                 f'{r["peak_rss_mb"]:.0f} |')
  if report.get('flain'):
    lines += ['', '## FLAIN (Sun CNN, 800 auxiliary images)', '', '```json',
              json.dumps(report['flain'], indent=1), '```']
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  scaling = [int(c) for c in FLAGS.scaling_clients]
  report = cli.run_or_fail(lambda: run(FLAGS.configs, scaling, FLAGS.repeats, FLAGS.flain))
  command = 'python -m bench.run_all ' + ' '.join(sys.argv[1:])
  with open(FLAGS.output, 'w') as f:
    f.write(to_markdown(report, command.strip()))
  with open(os.path.splitext(FLAGS.output)[0] + '.json', 'w') as f:
    json.dump(report, f, indent=2)
  print(to_markdown(report, command.strip()))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
