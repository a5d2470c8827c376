"""A run's story in a few plain lines: main accuracy, the backdoor over the attack rounds,
the collateral rate and what the defense did; printed at the end of a run (and by `make demo`).

One final round says little about a boosted backdoor, which comes and goes from round to round,
so the backdoor is summarised over every round that had an attacker.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from tff_backdoor.aggregators import defenses
from tff_backdoor.run import health


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
  out = [r.get(key) for r in rows]
  return np.asarray([v for v in out if isinstance(v, (int, float)) and np.isfinite(v)], float)


def _attack_rounds(rows: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
  return [r for r in rows if (r.get('num_attackers') or 0) > 0]


def _defense_line(rows: Sequence[Mapping[str, Any]], defense: Mapping[str, Any]) -> str:
  """What the defense did to attacker and honest update norms (norms as clients sent them)."""
  name = defense.get('name', 'none')
  attacked = _attack_rounds(rows)
  honest = _values(rows, 'mean_honest_update_norm')
  malicious = _values(attacked, 'mean_malicious_update_norm')
  norms = (f'attacker update norm {malicious.mean():.2f} on average against '
           f'{honest.mean():.2f} for honest clients' if malicious.size and honest.size else '')
  if name == 'none':
    return f'defense: none{"; " + norms if norms else ""}'
  field = defenses.BY_NAME[name].client_bound_field if name in defenses.BY_NAME else None
  bound = defense.get(field) if field else None
  clipped = _values(rows, 'aggregator/clipped_count')
  parts = [f'defense: {name}']
  if bound is not None:
    parts.append(f'every update cut to norm <= {bound:g}')
  if clipped.size:
    parts.append(f'{clipped.sum():.0f} updates clipped over {len(rows)} rounds')
  caught = [sum(r.get(f'detection_{k}') or 0 for r in rows) for k in ('tp', 'fn', 'fp', 'tn')]
  if any(caught):
    parts.append(f'flagged {caught[0]} of {caught[0] + caught[1]} attacker updates and '
                 f'{caught[2]} of {caught[2] + caught[3]} honest ones')
  if norms:
    parts.append(norms)
  return '; '.join(parts)


def _nonfinite_line(rows: Sequence[Mapping[str, Any]]) -> str:
  """The client updates left out for NaN/Inf (`nonfinite_count`) and the rounds whose
  aggregate TFF's finalizer refused to apply (`update_non_finite`); '' if none."""
  parts = []
  zeroed = _values(rows, 'nonfinite_count').sum()
  if zeroed:
    parts.append(f'{zeroed:.0f} non-finite client updates left out')
  refused = _values(rows, 'update_non_finite').sum()
  if refused:
    parts.append(f'{refused:.0f} non-finite aggregates not applied')
  if not parts:
    return ''
  return f'{" and ".join(parts)} over {len(rows)} rounds: the model did not learn from them'


def summary_lines(rows: Sequence[Mapping[str, Any]], defense: Mapping[str, Any],
                  dataset: str = '', source_class: Optional[int] = None,
                  target_class: Optional[int] = None) -> List[str]:
  """Plain-language lines for a run's per-round rows (as in metrics.jsonl)."""
  if not rows:
    return []
  main = _values(rows, 'test_accuracy')
  lines = [f'main accuracy: {main[-1]:.3f} after {len(rows)} rounds' if main.size else
           'main accuracy: not evaluated']
  attacked = _attack_rounds(rows)
  what = (f' (the attacker\'s {source_class}s labelled {target_class})'
          if source_class is not None and target_class is not None else '')
  if attacked:
    backdoor = _values(attacked, 'backdoor_accuracy')
    if backdoor.size:
      lines.append(f'backdoor accuracy over the {len(attacked)} rounds with an attacker'
                   f'{what}: mean {backdoor.mean():.3f}, max {backdoor.max():.3f}, '
                   f'{np.mean(backdoor > 0.9):.0%} of them above 0.9; after the last round '
                   f'{_values(rows[-1:], "backdoor_accuracy")[-1]:.3f}')
    collateral = _values(attacked, 'collateral_accuracy')
    if collateral.size:
      whose = 'other writers\'' if dataset.startswith(('femnist', 'emnist')) else 'all'
      lines.append(f'collateral rate: {collateral.mean():.3f} of {whose} test '
                   f'{source_class}s predicted {target_class} on average over those rounds '
                   f'(the backdoor leaking beyond its targets)')
  elif 'backdoor_accuracy' in rows[-1]:
    lines.append('no round had an attacker')
  lines.append(_defense_line(rows, defense))
  warnings = (_nonfinite_line(rows), health.divergence_line(rows))
  return lines + [line for line in warnings if line]


def describe_run(rows: Sequence[Mapping[str, Any]], config: Dict[str, Any]) -> List[str]:
  """`summary_lines` for a run's config.json dict (targeted task: source and target class)."""
  targeted = config.get('task') == 'targeted'
  return summary_lines(rows, config.get('defense') or {}, config.get('dataset', ''),
                       config.get('source_class') if targeted else None,
                       config.get('target_class') if targeted else None)
