"""How long a backdoor lasts after the attackers stop: its lifespan, in rounds (pure NumPy).

Lifespan (Neurotoxin, Zhang et al. 2022; A3FL and Chameleon report the same quantity): the
number of rounds after the last attack round until backdoor accuracy falls below a threshold
and stays there. With L the last round that had an attacker and r* the first evaluated round
after L from which every evaluated round is below the threshold, the lifespan is r* - (L + 1):
0 when the first round without attackers already has the backdoor below it (so also for a
backdoor that never reached the threshold: read it beside the backdoor accuracy at the stop).

- Rounds with no evaluation (`--eval_every` > 1) are skipped: r* is an evaluated round, so the
  lifespan has the resolution of the evaluation (the fall happened after the evaluated round
  before r*, at most `eval_every` - 1 rounds earlier than r* says).
- If the backdoor is still at or above the threshold at the last evaluated round, the lifespan
  is censored: the value is the rounds observed after L (a lower bound) and `censored` is
  True. Tables show it as ">= value".
- A run with no attack round, or no evaluated round after L, has no lifespan (None).

BackFed's code (thinh-dao/BackFed at ab3bcbd) logs backdoor accuracy after its
`poison_end_round` but computes no lifespan, so the threshold's default, 0.5, is the one of
Neurotoxin's durability figures (backdoor accuracy below 50%), not a BackFed constant.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Lifespan:
  """A run's backdoor lifespan (see the module docstring); `rounds` None when undefined."""
  rounds: Optional[int]
  censored: bool
  last_attack_round: Optional[int]
  threshold: float


def lifespan(rounds: Sequence[int], backdoor: Sequence[Optional[float]],
             attacked: Sequence[bool], threshold: float = DEFAULT_THRESHOLD) -> Lifespan:
  """The lifespan from per-round numbers: round index, backdoor accuracy (None or NaN where
  the round was not evaluated) and whether the round had an attacker."""
  rounds = np.asarray(rounds, dtype=np.int64)
  values = np.asarray([np.nan if v is None else float(v) for v in backdoor], dtype=np.float64)
  attacked = np.asarray(attacked, dtype=bool)
  if not attacked.any():
    return Lifespan(None, False, None, threshold)
  last = int(rounds[attacked].max())
  after = (rounds > last) & np.isfinite(values)
  if not after.any():
    return Lifespan(None, False, last, threshold)
  order = np.argsort(rounds[after], kind='stable')
  later, curve = rounds[after][order], values[after][order]
  above = np.flatnonzero(curve >= threshold)
  if above.size == 0:
    return Lifespan(int(later[0] - (last + 1)), False, last, threshold)
  if above[-1] == curve.size - 1:
    return Lifespan(int(later[-1] - last), True, last, threshold)
  return Lifespan(int(later[above[-1] + 1] - (last + 1)), False, last, threshold)


def from_rows(rows: Sequence[Mapping[str, Any]],
              threshold: float = DEFAULT_THRESHOLD) -> Dict[str, Any]:
  """final.json's lifespan fields from metrics.jsonl rows (`round`, `num_attackers`,
  `backdoor_accuracy`): `lifespan_rounds`, `lifespan_censored`, `last_attack_round`,
  `lifespan_threshold`."""
  result = lifespan([int(r['round']) for r in rows],
                    [r.get('backdoor_accuracy') for r in rows],
                    [(r.get('num_attackers') or 0) > 0 for r in rows], threshold)
  return {'lifespan_rounds': result.rounds, 'lifespan_censored': result.censored,
          'last_attack_round': result.last_attack_round, 'lifespan_threshold': threshold}
