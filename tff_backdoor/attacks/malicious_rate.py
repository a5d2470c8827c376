"""A backdoor task whose attackers train at a fixed malicious data rate (Bilgin's factor study).

Malicious data rate r: an attacker holding n examples trains, every round, on m = round(r * n)
malicious and n - m benign examples (a seeded subset of its own
data), so r = m / (n_benign + m) exactly and the attacker's example count (its FedAvg weight
under data_poison) equals an honest client's.
- targeted: the m malicious examples are drawn from the task's fixed relabelled set (the
  source-class images of `num_tasks` chosen clients) without replacement when it is large
  enough, else the set is repeated (like extra malicious epochs) and the rest drawn;
- pixel (source_class -1 = every class but the target): m of the attacker's non-target images
  get the trigger and the target label; if it has fewer than m, all are poisoned and the benign
  part shrinks so that the rate is still r (the attacker then trains on fewer than n).
Every `attacker_data` call is logged in `MaliciousRateTask.log` (`studies.localization_study`
records it in `study_run.json`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tff_backdoor.attacks import tasks as tasks_lib
from tff_backdoor.data.core import ArrayPair, float_images


def rate_counts(n_local: int, rate: float, n_candidates: Optional[int] = None
                ) -> Tuple[int, int]:
  """(malicious, benign) example counts for an attacker holding `n_local` examples.

  m = round(rate * n_local) (at least 1), benign = n_local - m. `n_candidates` caps m (the
  pixel task can only poison non-target images); when it binds, benign is shrunk to
  round(m * (1 - rate) / rate) so that m / (m + benign) stays at `rate`.
  """
  if not 0 < rate <= 1:
    raise ValueError(f'malicious rate must be in (0, 1], got {rate}')
  if n_local < 1:
    return 0, 0
  m = max(1, int(math.floor(rate * n_local + 0.5)))
  benign = n_local - m
  if n_candidates is not None and m > n_candidates:
    m = int(n_candidates)
    benign = min(n_local - m, int(math.floor(m * (1 - rate) / rate + 0.5)))
  return m, benign


class MaliciousRateTask(tasks_lib.BackdoorTask):
  """Wraps a targeted or pixel task so that attackers train at a fixed malicious data rate.

  See the module docstring. Honest data and evaluation sets are the wrapped task's; every
  `attacker_data` call is logged in `log` (client, local size, benign, malicious, distinct
  malicious, achieved rate).
  """

  def __init__(self, base: tasks_lib.BackdoorTask, rate: float):
    if not isinstance(base, (tasks_lib.TargetedTask, tasks_lib.PixelTriggerTask)):
      raise TypeError(f'MaliciousRateTask wraps a TargetedTask or PixelTriggerTask, got '
                      f'{type(base).__name__}')
    rate_counts(1, rate)  # validates the rate
    self.base = base
    self.rate = float(rate)
    self.name = f'{base.name}@rate{rate:.4g}'
    self.target_class = base.target_class
    self.log: List[Dict[str, Any]] = []
    self._pixel = isinstance(base, tasks_lib.PixelTriggerTask)

  def honest_data(self, client_id: str, x: np.ndarray, y: np.ndarray) -> ArrayPair:
    return self.base.honest_data(client_id, x, y)

  def eval_sets(self) -> Dict[str, ArrayPair]:
    return self.base.eval_sets()

  def attacker_data(self, client_id: str, x: np.ndarray, y: np.ndarray, attacker_index: int,
                    rng: np.random.Generator) -> Tuple[ArrayPair, ArrayPair]:
    """((benign_x, benign_y), (mal_x, mal_y)) at the configured rate; logs the counts."""
    if self._pixel:
      out, distinct = self._pixel_data(x, y, attacker_index, rng)
    else:
      out, distinct = self._targeted_data(client_id, x, y, rng)
    (bx, by), (mx, my) = out
    total = len(by) + len(my)
    self.log.append({'client_id': str(client_id), 'n_local': int(len(y)),
                     'n_benign': int(len(by)), 'n_malicious': int(len(my)),
                     'n_malicious_distinct': int(distinct),
                     'rate': len(my) / total if total else float('nan')})
    return out

  def _targeted_data(self, client_id: str, x: np.ndarray, y: np.ndarray,
                     rng: np.random.Generator) -> Tuple[Tuple[ArrayPair, ArrayPair], int]:
    bx, by = self.base.honest_data(client_id, x, y)
    (_, _), (pool_x, pool_y) = self.base.attacker_data(client_id, x, y, 0, rng)
    m, benign = rate_counts(len(by), self.rate)
    keep = np.sort(rng.choice(len(by), size=benign, replace=False))
    pool = len(pool_y)
    if pool == 0:
      raise ValueError('the targeted task has no malicious example')
    if m <= pool:
      picked = rng.choice(pool, size=m, replace=False)
    else:
      picked = np.concatenate([np.tile(np.arange(pool), m // pool),
                               rng.choice(pool, size=m % pool, replace=False)])
    return ((bx[keep], by[keep]), (pool_x[picked], pool_y[picked])), min(m, pool)

  def _pixel_data(self, x: np.ndarray, y: np.ndarray, attacker_index: int,
                  rng: np.random.Generator) -> Tuple[Tuple[ArrayPair, ArrayPair], int]:
    x = float_images(x)  # uint8 = codes k/255 (FEMNIST's compact storage)
    y = np.asarray(y, np.int32).reshape(-1)
    candidates = np.flatnonzero(self.base.is_source(y))
    m, benign = rate_counts(len(y), self.rate, n_candidates=len(candidates))
    chosen = np.sort(rng.choice(candidates, size=m, replace=False))
    rest = np.setdiff1d(np.arange(len(y)), chosen)
    kept = np.sort(rng.choice(rest, size=benign, replace=False))
    return ((x[kept], y[kept]), self.base.poison(x[chosen], attacker_index)), m
