"""The cells of `bench.tff_overhead` and the cost fit over them (no flags: importable anywhere).

A cell is the first C clients of a round with the first E examples of each; the fit is
least squares of seconds on [1, clients, examples]: a cost per round, per client, per example.
"""
from __future__ import annotations

import collections
from typing import Dict, Sequence

import numpy as np

FULL = 'full'  # the cell of the whole round, timed but not part of the fit


def cells(xs: Sequence, ys: Sequence, clients: Sequence[int],
          examples: Sequence[int]) -> Dict[str, tuple]:
  """name ('CxE') -> (xs, ys) of every cut cell, and the whole round as FULL."""
  out = collections.OrderedDict()
  for c in clients:
    for e in examples:
      out[f'{c}x{e}'] = ([x[:e] for x in xs[:c]], [y[:e] for y in ys[:c]])
  out[FULL] = (xs, ys)
  return out


def fit(by_name: Dict[str, tuple], best: Dict[str, float]) -> Dict[str, float]:
  """Least squares of best seconds on [1, clients, examples] over the cut cells of `cells`."""
  names = [n for n in best if n != FULL]
  design = np.array([[1.0, len(by_name[n][1]), sum(len(y) for y in by_name[n][1])]
                     for n in names])
  coef, *_ = np.linalg.lstsq(design, np.array([best[n] for n in names]), rcond=None)
  return {'per_round_s': round(float(coef[0]), 4), 'per_client_ms': round(1e3 * coef[1], 2),
          'per_example_ms': round(1e3 * coef[2], 4)}
