"""Who was caught: a defense's per-client decisions joined with the round's true attackers.

Defenses that admit, reject or weight clients report `client_decisions` in their measurements
(`aggregators._common.DECISIONS_KEY`): one number per client received, in the order the
round received them (the order of `Round.participants`, which sampling with replacement may
repeat). A client is *flagged* when its decision is 0 (rejected, zeroed, or given weight 0)
or NaN; a positive weight, however small, counts as admitted; a negative one
(`aggregators._common.ABSENT`: the client took no part, e.g. the non-finite guard zeroed its
update) is the defense's to judge no more than a client never sampled, so it is counted apart
(`detection_absent`) and in none of the four cells. Positives are the attackers, so per round:
TP = flagged attackers, FP = flagged honest clients, FN = admitted attackers, TN = admitted
honest clients; TPR = TP / (TP + FN), FPR = FP / (FP + TN), precision = TP / (TP + FP), each
absent (not 0) when its denominator is 0: a round without attackers has no TPR, and FPR then
counts false alarms. BackFed logs the same quantities per round.

The join is by position only: the decisions carry no client identity, so it holds where the
aggregator sees the clients in the order sampled, as in this package's local worker and its
remote context (contiguous shares merged in order); an execution context that merges partial
aggregates in the order they finish would need the clients' identities joined instead.

`DetectionHook` adds a round's counts and rates to its metrics row; `totals` sums the rows of
a run for final.json, with the FPR over attack-free rounds (false alarms on clean training)
and over attack rounds reported separately. A defense without per-client decisions (median,
trimmed mean, clipping, DP, ...) adds nothing.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

from tff_backdoor import metrics_io
from tff_backdoor.run import loop

DECISIONS_KEY = 'client_decisions'  # = aggregators._common.DECISIONS_KEY (TF-free here)
COUNTS = ('tp', 'fp', 'fn', 'tn')
ABSENT_COUNT = 'absent'  # clients that took no part (decision < 0): in no cell
PREFIX = 'detection_'


def decisions_in(flat_metrics: Mapping[str, Any]) -> Optional[list]:
  """The aggregator's per-client decisions in flattened round metrics, or None."""
  for key, value in flat_metrics.items():
    if key.startswith('aggregator/') and key.rsplit('/', 1)[-1] == DECISIONS_KEY:
      return list(value)
  return None


def confusion(decisions: Sequence[float], attackers: Sequence[bool]) -> Dict[str, int]:
  """{tp, fp, fn, tn, absent} of one round: flagged = decision 0 or NaN (None once written
  as JSON), absent = decision < 0, positive = attacker."""
  if len(decisions) != len(attackers):
    raise ValueError(f'{len(decisions)} decisions for {len(attackers)} participants: the '
                     f'aggregator must report one per client, in the order received')
  counts = dict.fromkeys(COUNTS + (ABSENT_COUNT,), 0)
  for decision, attacker in zip(decisions, attackers):
    if decision is not None and decision < 0:
      counts[ABSENT_COUNT] += 1
      continue
    flagged = not (decision is not None and decision > 0)  # also a NaN weight
    counts[('t' if flagged == attacker else 'f') + ('p' if flagged else 'n')] += 1
  return counts


def rates(counts: Mapping[str, int]) -> Dict[str, float]:
  """TPR, FPR, precision of `counts`; a rate whose denominator is 0 is left out."""
  out = {}
  for name, numerator, other in (('tpr', 'tp', 'fn'), ('fpr', 'fp', 'tn'),
                                 ('precision', 'tp', 'fp')):
    total = counts[numerator] + counts[other]
    if total:
      out[name] = counts[numerator] / total
  return out


def round_metrics(decisions: Sequence[float], attackers: Sequence[bool]) -> Dict[str, Any]:
  """A metrics row's detection part: detection_tp ... detection_precision."""
  counts = confusion(decisions, attackers)
  return {PREFIX + k: v for k, v in {**counts, **rates(counts)}.items()}


def _summed(rows: Iterable[Mapping[str, Any]]) -> Dict[str, int]:
  """The counts summed over `rows`; rows written before `detection_absent` existed add 0."""
  return {k: int(sum(r.get(PREFIX + k) or 0 for r in rows)) for k in COUNTS + (ABSENT_COUNT,)}


def _attacked(row: Mapping[str, Any]) -> bool:
  """Whether a round had attackers, received by the defense or not (`num_attackers`)."""
  return max(row.get('num_attackers') or 0, row[PREFIX + 'tp'] + row[PREFIX + 'fn']) > 0


def totals(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """final.json's detection totals over a run's metrics rows (empty if no row has any).

  detection_tp ... detection_precision over every round; detection_fpr_attack_free over
  the rounds without an attacker, detection_fpr_attack_rounds over the others.
  """
  rows = [r for r in rows if PREFIX + 'tp' in r]
  if not rows:
    return {}
  counts = _summed(rows)
  out = {PREFIX + k: v for k, v in {**counts, **rates(counts)}.items()}
  out[PREFIX + 'rounds'] = len(rows)
  for suffix, attacked in (('attack_free', False), ('attack_rounds', True)):
    part = [r for r in rows if _attacked(r) == attacked]
    fpr = rates(_summed(part)).get('fpr') if part else None
    if fpr is not None:
      out[f'{PREFIX}fpr_{suffix}'] = fpr
  return out


class DetectionHook(loop.Hook):
  """Adds the round's detection counts and rates to its row; runs before the row is written."""

  def after_round(self, r: loop.Round) -> None:
    decisions = decisions_in(metrics_io.flatten_metrics(r.output.metrics))
    if decisions is not None:
      r.row.update(round_metrics(decisions, [bool(p.is_attacker) for p in r.participants]))
