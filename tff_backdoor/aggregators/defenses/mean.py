"""'none': FedAvg's example-weighted mean, behind the package's guard and norm statistics."""
from __future__ import annotations

from tff_backdoor.aggregators.defense_spec import DefenseSpec


def _mean(config, clients_per_round, seed):
  del config, clients_per_round, seed
  from tff_backdoor.aggregators import _common
  return _common.default_mean_factory()


NONE = DefenseSpec('none', _mean)
