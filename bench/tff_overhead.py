"""Where a FedAvg round's time goes beyond Keras': a fixed cost per round and per client.

  python -m bench.tff_overhead [--clients=1,10,30] [--examples=20,100] [--repeats=5]
      [--variants=keras,vanilla,ours]

Takes the FEMNIST Sun round of `bench.fedavg_throughput --setting=femnist_sun` (30 real
writers, the Sun CNN, batch 20) and cuts it into cells: the first C writers, each with the
first E examples of its training order, for every C in `--clients` and E in `--examples`,
plus the whole round (30 writers, all their examples: the cell the issue's bar is about).
Each cell is timed for plain Keras `fit` on the same examples (always, all cells first,
before any TFF worker exists), then for each TFF variant in turn (`--repeats` rounds after a
warm-up; one learning process per variant serves all cells). Best-of and median per cell, and
a least-squares fit per variant of the best times

    seconds = per_round + per_client * clients + per_example * examples

over the cut cells, so the per-client cost (what TFF pays per client beyond the examples'
training) can be read off beside Keras' per-example cost. Prints one JSON object.
"""
from __future__ import annotations

import collections
import statistics
from typing import Dict, List, Sequence

from absl import app
from absl import flags

from bench import common
from bench import cost_model
from bench import fedavg_throughput as throughput
from tff_backdoor import cli

# --variants, --repeats, --data_dir, --seed and --output are bench.fedavg_throughput's flags.
flags.DEFINE_list('clients', ['1', '10', '30'], 'Clients per round of the cut cells.')
flags.DEFINE_list('examples', ['20', '100'], 'Examples per client of the cut cells.')
for _name in ('clients', 'examples'):
  flags.register_validator(_name, lambda v: all(x.isdigit() and int(x) > 0 for x in v),
                           message='a list of positive integers')
FLAGS = flags.FLAGS

BATCH_SIZE = 20


def _time(fn, repeats: int) -> List[float]:
  fn()  # warm-up: tracing, and the first call's allocations
  return common.timed(fn, repeats)


def run(clients: Sequence[int], examples: Sequence[int], variants: Sequence[str],
        repeats: int, data_dir, seed: int) -> Dict:
  """Times Keras and the TFF variants on every cell; returns the report with the fits."""
  for name in variants:
    if name not in throughput.VARIANTS:
      raise ValueError(f'--variants: unknown variant {name!r}')
  variants = [v for v in variants if v != 'keras']  # Keras is the reference, always timed
  xs, ys, summary = throughput.load_setting('femnist_sun', 0, 0, 0, data_dir, seed)
  cells = cost_model.cells(xs, ys, clients, examples)
  times = {v: {} for v in ('keras', *variants)}
  for cell, (cx, cy) in cells.items():  # Keras first: no TFF worker alive yet
    times['keras'][cell] = _time(
        throughput.build_variant('keras', cx, cy, BATCH_SIZE, seed), repeats)
    common.log(f'keras {cell}: best {min(times["keras"][cell]):.3f}s')
  # One process per variant for all cells: its client data are read from `live` each round.
  live_x, live_y = list(xs), list(ys)
  fns = {v: throughput.build_variant(v, live_x, live_y, BATCH_SIZE, seed) for v in variants}
  for cell, (cx, cy) in cells.items():
    live_x[:], live_y[:] = cx, cy
    for v in variants:
      times[v][cell] = _time(fns[v], repeats)
      common.log(f'{v} {cell}: best {min(times[v][cell]):.3f}s')
  results = collections.OrderedDict()
  for v, per_cell in times.items():
    best = {c: min(t) for c, t in per_cell.items()}
    results[v] = {'cells': {c: {'best_s': round(best[c], 3),
                                'median_s': round(statistics.median(t), 3),
                                'ratio_to_keras_best': round(best[c] / min(times['keras'][c]), 3)}
                            for c, t in per_cell.items()},
                  'fit': cost_model.fit(cells, best)}
    common.log(f'{v}: {results[v]["fit"]}; whole round best {best[cost_model.FULL]:.2f}s '
               f'({results[v]["cells"][cost_model.FULL]["ratio_to_keras_best"]:.3f}x Keras best)')
  return {'setting': {**summary, 'batch_size': BATCH_SIZE, 'repeats': repeats,
                      'cells': {c: [len(y), sum(len(v) for v in y)] for c, (_, y) in cells.items()}},
          'results': results}


main = common.json_main(lambda: run([int(c) for c in FLAGS.clients],
                                     [int(e) for e in FLAGS.examples], FLAGS.variants,
                                     FLAGS.repeats, FLAGS.data_dir, FLAGS.seed))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
