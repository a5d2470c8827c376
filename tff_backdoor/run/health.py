"""The global model's health after every round: finite, and how far the round moved it.

Every metrics row gets `model_finite`, `model_norm` (L2 norm of every weight), and
`model_update_norm` (the norm of the update the round applied, new model minus old), with
`update_vs_model` (that update over the norm of the model it updated) and
`update_vs_previous` (over the median applied update of the earlier rounds).

- A model with a NaN or Inf weight is an error: `NonFiniteStop` raises `NonFiniteModel` once
  the round's row is written (every row stays; no checkpoint of the broken model is saved),
  and the program prints it in one line naming the round, exit 1. Left running, such a model
  trains nothing (every client update is non-finite, zeroed) and ends with exit 0.
- A finite divergence is a result, not an error: the first round whose update is more than
  `DIVERGED_VS_MODEL` times the model's norm or `DIVERGED_VS_PREVIOUS` times the earlier
  updates' median is marked `model_diverged` in its row and recorded as final.json's
  `diverged_round` (None when it never happened); the run's last lines say so in words.
  Honest training and boosted attacks move a model by a fraction of its norm; Sun et al.'s
  study met an honest update of norm 4.6e8 (1e8 times the earlier rounds') at round 57.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from tff_backdoor.run import loop

DIVERGED_VS_MODEL = 10.0  # an update ten times the size of the whole model
DIVERGED_VS_PREVIOUS = 1e4  # or ten thousand times the earlier rounds' (median) updates


class NonFiniteModel(ValueError):
  """The global model has NaN or Inf weights after a round (a one-line message)."""


def _norm(weights: Sequence[np.ndarray]) -> float:
  return float(np.sqrt(sum(np.sum(np.square(w, dtype=np.float64)) for w in weights)))


def _nonfinite(weights: Sequence[np.ndarray]) -> int:
  return int(sum(np.size(w) - np.count_nonzero(np.isfinite(w)) for w in weights))


def model_weights(process: Any, state: Any) -> List[np.ndarray]:
  """The global model's trainable then non-trainable weights, as float64 arrays."""
  weights = process.get_model_weights(state)
  return [np.asarray(w, np.float64) for w in [*weights.trainable, *weights.non_trainable]]


def diverged(update_norm: float, model_norm: float, previous: Sequence[float]) -> bool:
  """Whether an applied update of `update_norm` on a model of `model_norm` is a divergence,
  given the earlier rounds' applied update norms `previous`."""
  if model_norm and update_norm > DIVERGED_VS_MODEL * model_norm:
    return True
  return bool(previous) and update_norm > DIVERGED_VS_PREVIOUS * float(np.median(previous))


class HealthHook(loop.Hook):
  """Measures the model after each round into its row (before the row is written);
  `diverged_round` goes to final.json. `rows` are the rows kept from before a resume."""

  def __init__(self, process: Any, state: Any, rows: Sequence[Dict[str, Any]] = ()):
    self.previous = model_weights(process, state)
    self.updates = [r['model_update_norm'] for r in rows
                    if isinstance(r.get('model_update_norm'), float)]
    self.diverged_round: Optional[int] = next(
        (r['round'] for r in rows if r.get('model_diverged')), None)

  def after_round(self, r: loop.Round) -> None:
    weights = model_weights(r.process, r.state)
    bad = _nonfinite(weights)
    r.row['model_finite'] = not bad
    r.row['nonfinite_weights'] = bad
    if bad:
      return
    before = _norm(self.previous)
    update = _norm([new - old for new, old in zip(weights, self.previous)])
    r.row['model_norm'] = _norm(weights)
    r.row['model_update_norm'] = update
    r.row['update_vs_model'] = update / before if before else None
    r.row['update_vs_previous'] = (update / float(np.median(self.updates))
                                   if self.updates and np.median(self.updates) else None)
    r.row['model_diverged'] = self.diverged_round is None and diverged(update, before,
                                                                       self.updates)
    if r.row['model_diverged']:
      self.diverged_round = r.number
    self.updates.append(update)
    self.previous = weights

  def end(self, state: Any, final: Dict[str, Any]) -> None:
    final['diverged_round'] = self.diverged_round


class NonFiniteStop(loop.Hook):
  """Ends the run with `NonFiniteModel` after a round that left the model non-finite; put it
  after the hook that writes the row and before the one that saves checkpoints."""

  def __init__(self, output_dir: str):
    self.output_dir = output_dir

  def after_round(self, r: loop.Round) -> None:
    if r.row.get('model_finite') is False:
      raise NonFiniteModel(
          f'the global model is not finite after round {r.number} '
          f'({r.row["nonfinite_weights"]} weights NaN or Inf); stopped, its metrics rows are '
          f'in {self.output_dir}')


def divergence_line(rows: Sequence[Dict[str, Any]]) -> Optional[str]:
  """The run's divergence in words (the first diverged row), or None."""
  row = next((r for r in rows if r.get('model_diverged')), None)
  if row is None:
    return None
  previous = row.get('update_vs_previous')
  against = f', {previous:.3g} times the earlier rounds\' median' if previous else ''
  return (f'the model DIVERGED at round {row["round"]}: that round applied an update of norm '
          f'{row["model_update_norm"]:.3g}, {row["update_vs_model"]:.3g} times the model\'s '
          f'own norm{against}; the numbers after it are of a broken model')
