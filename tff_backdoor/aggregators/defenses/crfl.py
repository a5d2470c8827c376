"""'crfl' (`aggregators.crfl`): FedAvg's mean, then the server clips and perturbs the global
model (a server optimizer around FedAvg's)."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.aggregators.defenses import mean
from tff_backdoor.options import NONNEGATIVE, POSITIVE, option


@dataclasses.dataclass(frozen=True)
class CrflParameters:
  """Defaults: the authors' (the optimizer's docstring)."""
  crfl_sigma: float = option(0.01, 'crfl: noise std on the global model each round.',
                             rule=NONNEGATIVE)
  crfl_clip_base: float = option(4.0, 'crfl: model norm bound min(base + slope*t, max).',
                                 rule=POSITIVE)
  crfl_clip_slope: float = option(0.25, 'crfl: growth of the model norm bound per round.',
                                  rule=NONNEGATIVE)
  crfl_clip_max: float = option(100.0, 'crfl: largest model norm bound.', rule=POSITIVE)


def _server_optimizer(config, optimizer, seed):
  from tff_backdoor.aggregators import crfl
  return crfl.CrflOptimizer(optimizer, config.crfl_sigma, config.crfl_clip_base,
                            config.crfl_clip_slope, config.crfl_clip_max, seed)


CRFL = DefenseSpec('crfl', mean.NONE.build, server_optimizer=_server_optimizer, settings=(
    'crfl_sigma', 'crfl_clip_base', 'crfl_clip_slope', 'crfl_clip_max'))
