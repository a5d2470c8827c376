"""'fldetector' (`aggregators.fldetector`): Zhang et al.'s L-BFGS consistency scores, gap
statistic and k-means over a window of rounds."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, NONNEGATIVE, option


@dataclasses.dataclass(frozen=True)
class FLDetectorParameters:
  """Defaults: window N = 10 (Zhang et al.), gap statistic with B = 20 reference sets and
  k <= 10 (the authors' code); a population of 0 is the run's, as FoolsGold's."""
  fldetector_clients: int = option(
      0, "fldetector: population size, identities 0..n-1 (0 = the run's clients).",
      rule=NONNEGATIVE)
  fldetector_window: int = option(
      10, 'fldetector: window N of L-BFGS pairs and of scores (paper: 10).', rule=AT_LEAST_ONE)
  fldetector_gap_samples: int = option(
      20, "fldetector: gap statistic's uniform reference sets B (authors' code: 20).",
      rule=AT_LEAST_ONE)
  fldetector_max_clusters: int = option(
      10, "fldetector: gap statistic's largest k (authors' code: 10).", rule=AT_LEAST_ONE)


def _check_gap_samples(config, clients_per_round: int) -> None:
  if config.fldetector_gap_samples < 2:
    raise ValueError('fldetector_gap_samples must be at least 2 (a spread of reference sets)')


def _fldetector(config, clients_per_round, seed):
  from tff_backdoor.aggregators import fldetector
  return fldetector.FLDetectorFactory(
      config.fldetector_clients, clients_per_round, config.fldetector_window,
      config.fldetector_gap_samples, config.fldetector_max_clusters, seed or 0)


FLDETECTOR = DefenseSpec(
    'fldetector', _fldetector, check=_check_gap_samples, reads=('client_info',),
    population_field='fldetector_clients', distinct_clients=True,
    settings=('fldetector_clients', 'fldetector_window', 'fldetector_gap_samples',
              'fldetector_max_clusters'))
