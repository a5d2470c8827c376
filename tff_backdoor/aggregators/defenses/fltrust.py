"""'fltrust' (`aggregators.fltrust`): trust scores against the server's own update g0 on a
root set carved from the server split."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import AT_LEAST_ONE, option


@dataclasses.dataclass(frozen=True)
class FLTrustParameters:
  """Default 10 a class: Cao et al.'s root set has 100 examples, here drawn class-balanced
  from the server split for 10 classes (theirs is uniform)."""
  fltrust_root_per_class: int = option(
      10, "fltrust: server root-set images per class, from the server split (paper: 100 in "
      "all).", rule=AT_LEAST_ONE)


def _fltrust(config, clients_per_round, seed):
  from tff_backdoor.aggregators import fltrust
  return fltrust.FLTrustFactory()


FLTRUST = DefenseSpec('fltrust', _fltrust, settings=('fltrust_root_per_class',),
                      reads=('root_update',), root_set_field='fltrust_root_per_class')
