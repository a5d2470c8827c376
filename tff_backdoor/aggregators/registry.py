"""The defenses by name, assembled into one factory; their configuration is in `config`.

`DefenseConfig`, `DEFENSES` and `validate_defense` live in the TensorFlow-free
`tff_backdoor.config` (flags are checked before TensorFlow loads) and are re-exported here.
"""
from __future__ import annotations

from typing import Optional

import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import bias_filter
from tff_backdoor.aggregators import clipping
from tff_backdoor.aggregators import dp
from tff_backdoor.aggregators import nonfinite
from tff_backdoor.aggregators import norm_statistics
from tff_backdoor.aggregators import robust_rules
from tff_backdoor.config import DEFENSES, DefenseConfig, validate_defense  # noqa: F401

def build_defense(config: DefenseConfig, clients_per_round: int,
                  seed: Optional[int] = None) -> tff.aggregators.WeightedAggregationFactory:
  """The model aggregator for `config`, ready for `build_weighted_fed_avg(model_aggregator=)`.

  Composition, outermost first: `NonFiniteGuardFactory` (a NaN/Inf update never reaches the
  model; always present, also for 'none'), `add_client_norm_measurements`, then the defense,
  whose inner aggregation is a weighted mean that returns zeros when every weight is 0.

  Args:
    config: The defense and its parameters.
    clients_per_round: Clients sampled per round: Krum's n, weak DP's denominator.
    seed: Seed of the weak-DP noise (the experiment's `--seed`); None draws it from the clock.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.

  Raises:
    ValueError: If `validate_defense` rejects the configuration.
  """
  validate_defense(config, clients_per_round)
  name = config.name
  if name == 'none':
    defense = _common.default_mean_factory()
  elif name == 'clip':
    defense = clipping.norm_clipping_factory(config.clip_norm)
  elif name == 'adaptive_clip':
    defense = clipping.adaptive_clipping_factory(config.adaptive_quantile,
                                                 config.adaptive_initial_norm,
                                                 config.adaptive_learning_rate)
  elif name == 'zeroing':
    defense = clipping.norm_zeroing_factory(config.zeroing_norm)
  elif name == 'clip_mean':
    defense = clipping.AggregateClippingFactory(config.clip_norm)
  elif name == 'weak_dp':
    defense = dp.weak_dp_factory(config.dp_sigma, config.clip_norm, clients_per_round, seed)
  elif name == 'median':
    defense = robust_rules.CoordinateMedianFactory()
  elif name == 'trimmed_mean':
    defense = robust_rules.TrimmedMeanFactory(config.trim_fraction)
  elif name in ('krum', 'multi_krum'):
    defense = robust_rules.KrumFactory(config.krum_f, config.krum_selected(clients_per_round))
  elif name == 'bias_filter':
    defense = bias_filter.BiasAnomalyFilterFactory(config.bias_z_threshold, config.bias_index)
  else:  # Unreachable: validate_defense checked the name.
    raise ValueError(f'unknown defense {name!r}')
  return nonfinite.NonFiniteGuardFactory(norm_statistics.add_client_norm_measurements(defense))
