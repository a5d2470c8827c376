"""'rlr' (`aggregators.robust_lr`): Ozdayi et al.'s robust learning rate (sign agreement)."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, option


@dataclasses.dataclass(frozen=True)
class RobustLrParameters:
  """Default theta = 4 (the factory's docstring says where it comes from)."""
  rlr_threshold: int = option(4, 'rlr: sign agreement theta (<= clients_per_round).',
                              rule=AT_LEAST_ONE)


def _check_rlr(config, clients_per_round: int) -> None:
  """A theta above n flips every coordinate."""
  if config.rlr_threshold > clients_per_round:
    raise ValueError(f'rlr_threshold={config.rlr_threshold} exceeds clients_per_round='
                     f'{clients_per_round}: every coordinate would be flipped')


def _rlr(config, clients_per_round, seed):
  from tff_backdoor.aggregators import robust_lr
  return robust_lr.RobustLearningRateFactory(config.rlr_threshold)


RLR = DefenseSpec('rlr', _rlr, settings=('rlr_threshold',), check=_check_rlr)
