"""Server rules over the stacked updates (`aggregators.robust_rules`): 'median',
'trimmed_mean', 'krum' and 'multi_krum'."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import BELOW_HALF, NONNEGATIVE, option


@dataclasses.dataclass(frozen=True)
class RobustRulesParameters:
  """Defaults: trim 10% at each end of a coordinate; Krum tolerates f = 1 (it needs
  clients_per_round > 2f + 2); Multi-Krum averages m = n - f updates when `krum_m` is 0 (every
  client but the f worst-scored, the usual choice); 'krum' always selects 1."""
  trim_fraction: float = option(0.1, 'trimmed_mean: share cut each end.', rule=BELOW_HALF)
  krum_f: int = option(1, 'krum, multi_krum: Byzantine clients tolerated.', rule=NONNEGATIVE)
  krum_m: int = option(0, 'multi_krum: updates averaged (0 = clients_per_round - krum_f).',
                       rule=NONNEGATIVE)

  def krum_selected(self, clients_per_round: int) -> int:
    """m for this config: 1 for 'krum', else `krum_m`, or n - f if `krum_m` is 0."""
    if getattr(self, 'name', None) == 'krum':
      return 1
    return self.krum_m if self.krum_m else clients_per_round - self.krum_f


def _check_krum(config, clients_per_round: int) -> None:
  """Krum's bounds on n, f and m (Blanchard et al.: n > 2f + 2)."""
  n, f = clients_per_round, config.krum_f
  if not n > 2 * f + 2:
    raise ValueError(f'krum_f={f} is too large for clients_per_round={n}: Krum needs '
                     f'clients_per_round > 2*krum_f + 2')
  if config.name == 'krum' and config.krum_m not in (0, 1):
    raise ValueError(f"krum_m={config.krum_m} is for 'multi_krum'; 'krum' selects 1 update")
  m = config.krum_selected(n)
  if not 1 <= m <= n - f:
    raise ValueError(f'krum_m={m} must be in [1, clients_per_round - krum_f] = [1, {n - f}]')


def _median(config, clients_per_round, seed):
  from tff_backdoor.aggregators import robust_rules
  return robust_rules.CoordinateMedianFactory()


def _trimmed_mean(config, clients_per_round, seed):
  from tff_backdoor.aggregators import robust_rules
  return robust_rules.TrimmedMeanFactory(config.trim_fraction)


def _krum(config, clients_per_round, seed):
  from tff_backdoor.aggregators import robust_rules
  return robust_rules.KrumFactory(config.krum_f, config.krum_selected(clients_per_round))


MEDIAN = DefenseSpec('median', _median)
TRIMMED_MEAN = DefenseSpec('trimmed_mean', _trimmed_mean, settings=('trim_fraction',))
KRUM = DefenseSpec('krum', _krum, settings=('krum_f', 'krum_m'), check=_check_krum)
MULTI_KRUM = DefenseSpec('multi_krum', _krum, settings=('krum_f', 'krum_m'), check=_check_krum)
