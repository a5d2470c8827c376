"""'deepsight' (`aggregators.deepsight`): Rieger et al.'s NEUPs, threshold exceedings,
clustering and cluster labelling, then clipping."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, OPEN_UNIT, option


@dataclasses.dataclass(frozen=True)
class DeepSightParameters:
  """Defaults: tau = 1/3 and the 0.01 floor of Rieger et al.; HDBSCAN as the peers call it
  (`aggregators.deepsight` docstring)."""
  deepsight_tau: float = option(
      1.0 / 3.0, 'deepsight: accept a cluster with fewer suspicious members than this share '
      '(paper: 1/3).', rule=OPEN_UNIT)
  deepsight_threshold_factor: float = option(
      0.01, 'deepsight: floor of the exceedings threshold / largest NEUP (paper: 0.01).',
      rule=OPEN_UNIT)
  deepsight_min_cluster_size: int = option(
      5, "deepsight: HDBSCAN min_cluster_size (the peers' 5; >= 2).", rule=AT_LEAST_ONE)
  deepsight_min_samples: int = option(
      4, "deepsight: HDBSCAN min_samples, sklearn's convention (FLPoison's 3 + 1).",
      rule=AT_LEAST_ONE)


def _deepsight(config, clients_per_round, seed):
  from tff_backdoor.aggregators import deepsight
  return deepsight.DeepSightFactory(config.deepsight_tau, config.deepsight_threshold_factor,
                                    config.deepsight_min_cluster_size,
                                    config.deepsight_min_samples)


DEEPSIGHT = DefenseSpec('deepsight', _deepsight, settings=(
    'deepsight_tau', 'deepsight_threshold_factor', 'deepsight_min_cluster_size',
    'deepsight_min_samples'))
