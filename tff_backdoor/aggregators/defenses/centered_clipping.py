"""'centered_clip' (`aggregators.centered_clipping`): Karimireddy et al.'s centred clipping."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, POSITIVE, option


@dataclasses.dataclass(frozen=True)
class CenteredClippingParameters:
  """Defaults: the paper's (the factory's docstring)."""
  cc_tau: float = option(100.0, 'centered_clip: clipping radius tau.', rule=POSITIVE)
  cc_iterations: int = option(1, 'centered_clip: clipping iterations L.', rule=AT_LEAST_ONE)


def _centered_clip(config, clients_per_round, seed):
  from tff_backdoor.aggregators import centered_clipping
  return centered_clipping.CenteredClippingFactory(config.cc_tau, config.cc_iterations)


CENTERED_CLIP = DefenseSpec('centered_clip', _centered_clip,
                            settings=('cc_tau', 'cc_iterations'))
