"""Noise on the aggregate (`aggregators.dp`): weak DP, and Sun et al.'s script's aggregation
('sun_mean' without a bound, 'sun_dp' with `clip_norm` and noise on the sum)."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import NONNEGATIVE, option


@dataclasses.dataclass(frozen=True)
class DpParameters:
  """Defaults: weak DP's std 0.025 of the averaged update's noise, a small level to sweep;
  'sun_dp' is the aggregation of Sun et al.'s script (unweighted mean of updates clipped to
  `clip_norm`, noise on the sum), whose `mul_factor` defaults to 0 (clipping only), as
  `sum_noise_stddev` does. 'sun_mean' is the same without a bound: their runs "without
  defense"."""
  dp_sigma: float = option(0.025, 'weak_dp: noise std of the mean.', rule=NONNEGATIVE)
  sum_noise_stddev: float = option(
      0.0, "sun_dp: noise std of the SUM (Sun et al.'s mul_factor).", rule=NONNEGATIVE)


def _weak_dp(config, clients_per_round, seed):
  from tff_backdoor.aggregators import dp
  return dp.weak_dp_factory(config.dp_sigma, config.clip_norm, clients_per_round, seed)


def _sun_mean(config, clients_per_round, seed):
  from tff_backdoor.aggregators import dp
  return dp.sun_aggregation_factory(None, 0.0, clients_per_round, seed)


def _sun_dp(config, clients_per_round, seed):
  from tff_backdoor.aggregators import dp
  return dp.sun_aggregation_factory(config.clip_norm, config.sum_noise_stddev,
                                    clients_per_round, seed)


WEAK_DP = DefenseSpec('weak_dp', _weak_dp, settings=('dp_sigma', 'clip_norm'),
                      client_bound_field='clip_norm')
SUN_MEAN = DefenseSpec('sun_mean', _sun_mean)
SUN_DP = DefenseSpec('sun_dp', _sun_dp, settings=('clip_norm', 'sum_noise_stddev'),
                     client_bound_field='clip_norm')
