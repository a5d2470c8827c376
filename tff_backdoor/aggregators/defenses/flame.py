"""'flame' (`aggregators.flame`): HDBSCAN on cosine distances, clipping, then noise."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, NONNEGATIVE, option


@dataclasses.dataclass(frozen=True)
class FlameParameters:
  """Defaults: the paper's noise level lambda = 0.001 and HDBSCAN as the authors call it."""
  flame_lambda: float = option(0.001, 'flame: noise std / median update norm.',
                               rule=NONNEGATIVE)
  flame_min_samples: int = option(2, "flame: HDBSCAN min_samples (sklearn's, self counts).",
                                  rule=AT_LEAST_ONE)


def _flame(config, clients_per_round, seed):
  from tff_backdoor.aggregators import flame
  return flame.flame_factory(config.flame_lambda, config.flame_min_samples, seed)


FLAME = DefenseSpec('flame', _flame, settings=('flame_lambda', 'flame_min_samples'))
