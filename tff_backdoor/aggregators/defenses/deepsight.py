"""'deepsight' (`aggregators.deepsight`): Rieger et al.'s NEUPs, threshold exceedings,
DDifs (computed by the client work, `learning.ddifs`), clustering and cluster labelling,
then clipping."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, OPEN_UNIT, option


@dataclasses.dataclass(frozen=True)
class DeepSightParameters:
  """Defaults: tau = 1/3, the 0.01 floor, 20,000 DDif samples on 3 seeds of Rieger et al.;
  HDBSCAN as the peers call it (`aggregators.deepsight` docstring)."""
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
  deepsight_ddif_samples: int = option(
      20_000, 'deepsight: random inputs per DDif seed (paper: 20,000).', rule=AT_LEAST_ONE)
  deepsight_ddif_seeds: int = option(
      3, 'deepsight: sets of random inputs, one DDif clustering each (paper: 3).',
      rule=AT_LEAST_ONE)


def _deepsight(config, clients_per_round, seed):
  from tff_backdoor.aggregators import deepsight
  return deepsight.DeepSightFactory(config.deepsight_tau, config.deepsight_threshold_factor,
                                    config.deepsight_min_cluster_size,
                                    config.deepsight_min_samples)


def _ddif_inputs(config, seed):
  """The clients' DDifs go up the side channel, on inputs keyed by the run's seed."""
  from tff_backdoor.learning import side_channel
  return {'ddifs': side_channel.DDifInputs(config.deepsight_ddif_samples,
                                           config.deepsight_ddif_seeds, seed or 0)}


DEEPSIGHT = DefenseSpec('deepsight', _deepsight, settings=(
    'deepsight_tau', 'deepsight_threshold_factor', 'deepsight_min_cluster_size',
    'deepsight_min_samples', 'deepsight_ddif_samples', 'deepsight_ddif_seeds'),
                        reads=('ddifs',), channel=_ddif_inputs)
