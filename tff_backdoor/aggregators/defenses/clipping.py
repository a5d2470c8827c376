"""Norm clipping and zeroing (`aggregators.clipping`, TFF's own factories): 'clip',
'adaptive_clip', 'zeroing' and 'clip_mean'."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import OPEN_UNIT, POSITIVE, option


@dataclasses.dataclass(frozen=True)
class ClippingParameters:
  """Defaults: M = 3, the bound with which Sun et al. (2019) mitigate the attacks at almost no
  cost on EMNIST (also weak_dp's and clip_mean's clip); adaptive clipping at TFF's quantile
  0.5 and rate 0.2, starting at 1.0, of the order of M (TFF starts at 0.1 and the bound moves
  by at most exp(0.2) a round); zeroing at M too, so that 'clip' and 'zeroing' compare two
  reactions (shrink vs drop) to one bound."""
  clip_norm: float = option(3.0, 'clip, clip_mean, weak_dp, sun_dp: the L2 bound M.',
                            rule=POSITIVE)
  adaptive_quantile: float = option(0.5, 'adaptive_clip: quantile of norms.', rule=OPEN_UNIT)
  adaptive_initial_norm: float = option(1.0, 'adaptive_clip: first bound.', rule=POSITIVE)
  adaptive_learning_rate: float = option(0.2, 'adaptive_clip: bound step.', rule=POSITIVE)
  zeroing_norm: float = option(3.0, 'zeroing: drop updates above it.', rule=POSITIVE)


def _clip(config, clients_per_round, seed):
  from tff_backdoor.aggregators import clipping
  return clipping.norm_clipping_factory(config.clip_norm)


def _adaptive_clip(config, clients_per_round, seed):
  from tff_backdoor.aggregators import clipping
  return clipping.adaptive_clipping_factory(config.adaptive_quantile,
                                            config.adaptive_initial_norm,
                                            config.adaptive_learning_rate)


def _zeroing(config, clients_per_round, seed):
  from tff_backdoor.aggregators import clipping
  return clipping.norm_zeroing_factory(config.zeroing_norm)


def _clip_mean(config, clients_per_round, seed):
  from tff_backdoor.aggregators import clipping
  return clipping.AggregateClippingFactory(config.clip_norm)


CLIP = DefenseSpec('clip', _clip, settings=('clip_norm',), client_bound_field='clip_norm')
ADAPTIVE_CLIP = DefenseSpec('adaptive_clip', _adaptive_clip, settings=(
    'adaptive_quantile', 'adaptive_initial_norm', 'adaptive_learning_rate'))
ZEROING = DefenseSpec('zeroing', _zeroing, settings=('zeroing_norm',))
CLIP_MEAN = DefenseSpec('clip_mean', _clip_mean, settings=('clip_norm',))
