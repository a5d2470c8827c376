"""'bulyan' (`aggregators.bulyan`): recursive Krum, then a trimmed mean around the median."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import NONNEGATIVE, option


@dataclasses.dataclass(frozen=True)
class BulyanParameters:
  """Default f = 1, the least that Bulyan guards against (it needs n >= 4f + 3)."""
  bulyan_f: int = option(1, 'bulyan: Byzantine clients f (needs clients_per_round >= 4f+3).',
                         rule=NONNEGATIVE)


def _check_bulyan(config, clients_per_round: int) -> None:
  """El Mhamdi et al.'s bound n >= 4f + 3."""
  if not clients_per_round >= 4 * config.bulyan_f + 3:
    raise ValueError(f'bulyan_f={config.bulyan_f} is too large for clients_per_round='
                     f'{clients_per_round}: Bulyan needs clients_per_round >= 4*bulyan_f + 3')


def _bulyan(config, clients_per_round, seed):
  from tff_backdoor.aggregators import bulyan
  return bulyan.BulyanFactory(config.bulyan_f)


BULYAN = DefenseSpec('bulyan', _bulyan, settings=('bulyan_f',), check=_check_bulyan)
