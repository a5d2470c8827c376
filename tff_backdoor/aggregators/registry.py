"""The defenses by name, their configuration, validation, and assembly into one factory."""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import bias_filter
from tff_backdoor.aggregators import clipping
from tff_backdoor.aggregators import dp
from tff_backdoor.aggregators import nonfinite
from tff_backdoor.aggregators import norm_statistics
from tff_backdoor.aggregators import robust_rules

DEFENSES = ('none', 'clip', 'adaptive_clip', 'zeroing', 'clip_mean', 'weak_dp', 'median',
            'trimmed_mean', 'krum', 'multi_krum', 'bias_filter')


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
  """Which defense to run during training, and its parameters.

  Only the fields of the chosen defense are used. Every default has a concrete type (no
  None), so that command-line flags can be typed from them. Defaults:
  * `clip_norm` = 3.0: the bound M with which Sun et al. (2019) mitigate the attacks at almost
    no cost on EMNIST; also the clip of 'weak_dp' and 'clip_mean'.
  * `adaptive_quantile` = 0.5, `adaptive_learning_rate` = 0.2: TFF's defaults for adaptive
    clipping (the median of client norms); `adaptive_initial_norm` = 1.0, the first round's
    bound, of the order of M = 3 (TFF starts at 0.1; the bound moves by at most a factor
    exp(0.2) a round, so a far-off start costs many rounds).
  * `zeroing_norm` = 3.0: the same bound as the default `clip_norm`, so that 'clip' and
    'zeroing' compare two reactions (shrink vs drop) to the same bound.
  * `dp_sigma` = 0.025: std of the Gaussian noise added to each coordinate of the averaged
    update; a small ("weak DP") level, to be swept in experiments.
  * `trim_fraction` = 0.1: drop the 10% largest and 10% smallest values of each coordinate.
  * `krum_f` = 1: Byzantine clients Krum tolerates (needs clients_per_round > 2 f + 2).
  * `krum_m` = 0: number of updates Multi-Krum averages; 0 means n - f (every client but the
    f worst-scored), the usual choice; 'krum' always uses 1.
  * `bias_z_threshold` = 3.5: Iglewicz and Hoaglin's outlier cut-off for robust z-scores
    (see `BiasAnomalyFilterFactory`); `bias_index` = -1: the last tensor of the update, the
    logits bias of a Keras model.
  """
  name: str = 'none'
  clip_norm: float = 3.0
  adaptive_quantile: float = 0.5
  adaptive_initial_norm: float = 1.0
  adaptive_learning_rate: float = 0.2
  zeroing_norm: float = 3.0
  dp_sigma: float = 0.025
  trim_fraction: float = 0.1
  krum_f: int = 1
  krum_m: int = 0
  bias_z_threshold: float = 3.5
  bias_index: int = -1

  def krum_selected(self, clients_per_round: int) -> int:
    """m for this config: 1 for 'krum', else `krum_m`, or n - f if `krum_m` is 0."""
    if self.name == 'krum':
      return 1
    return self.krum_m if self.krum_m else clients_per_round - self.krum_f


def validate_defense(config: DefenseConfig, clients_per_round: int) -> None:
  """Raises ValueError, with a one-line message, if `config` cannot run with this many clients.

  Every numeric field is checked against its domain whatever the defense (a bad value is a
  mistake even if unused); Krum's constraints on the number of clients only for Krum.
  """
  if config.name not in DEFENSES:
    raise ValueError(f'unknown defense {config.name!r}; choose one of: {", ".join(DEFENSES)}')
  if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int) or (
      clients_per_round < 1):
    raise ValueError(f'clients_per_round must be a positive integer, found {clients_per_round!r}')
  positive = {'clip_norm': config.clip_norm,
              'adaptive_initial_norm': config.adaptive_initial_norm,
              'adaptive_learning_rate': config.adaptive_learning_rate,
              'zeroing_norm': config.zeroing_norm,
              'bias_z_threshold': config.bias_z_threshold}
  for field, value in positive.items():
    if not value > 0:  # Also catches NaN.
      raise ValueError(f'{field} must be positive, found {value}')
  if not config.dp_sigma >= 0:
    raise ValueError(f'dp_sigma must be nonnegative, found {config.dp_sigma}')
  if not 0 < config.adaptive_quantile < 1:
    raise ValueError(f'adaptive_quantile must be in (0, 1), found {config.adaptive_quantile}')
  if not 0 <= config.trim_fraction < 0.5:
    raise ValueError(f'trim_fraction must be in [0, 0.5), found {config.trim_fraction}')
  for field in ('krum_f', 'krum_m', 'bias_index'):
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f'{field} must be an integer, found {value!r}')
  if config.krum_f < 0:
    raise ValueError(f'krum_f must be nonnegative, found {config.krum_f}')
  if config.krum_m < 0:
    raise ValueError(f'krum_m must be nonnegative (0 means clients_per_round - krum_f), '
                     f'found {config.krum_m}')
  if config.name in ('krum', 'multi_krum'):
    n, f = clients_per_round, config.krum_f
    if not n > 2 * f + 2:
      raise ValueError(f'krum_f={f} is too large for clients_per_round={n}: Krum needs '
                       f'clients_per_round > 2*krum_f + 2')
    if config.name == 'krum' and config.krum_m not in (0, 1):
      raise ValueError(f"krum_m={config.krum_m} is for 'multi_krum'; 'krum' selects 1 update")
    m = config.krum_selected(n)
    if not 1 <= m <= n - f:
      raise ValueError(f'krum_m={m} must be in [1, clients_per_round - krum_f] = [1, {n - f}]')


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
