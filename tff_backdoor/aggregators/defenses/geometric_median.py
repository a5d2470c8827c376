"""'geomed' (`aggregators.geometric_median`): RFA's smoothed Weiszfeld geometric median."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, POSITIVE, option


@dataclasses.dataclass(frozen=True)
class GeometricMedianParameters:
  """Defaults: the RFA authors' (the factory's docstring)."""
  geomed_passes: int = option(5, 'geomed: weighted means R (the first + R-1 Weiszfeld).',
                              rule=AT_LEAST_ONE)
  geomed_nu: float = option(1e-6, 'geomed: Weiszfeld smoothing nu.', rule=POSITIVE)


def _geomed(config, clients_per_round, seed):
  from tff_backdoor.aggregators import geometric_median
  return geometric_median.GeometricMedianFactory(config.geomed_passes, config.geomed_nu)


GEOMED = DefenseSpec('geomed', _geomed, settings=('geomed_passes', 'geomed_nu'))
