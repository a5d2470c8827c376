"""'bias_filter' (`aggregators.bias_filter`): drop updates whose final-layer bias is a robust
z-score outlier (Bilgin's localisation, used as a filter)."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import POSITIVE, option


@dataclasses.dataclass(frozen=True)
class BiasFilterParameters:
  """Defaults: Iglewicz and Hoaglin's outlier cut-off 3.5 for robust z-scores; the last tensor
  of the update, the logits bias of a Keras model."""
  bias_z_threshold: float = option(3.5, 'bias_filter: robust z-score cut-off.', rule=POSITIVE)
  bias_index: int = option(-1, 'bias_filter: index of the bias tensor in the update.')


def _bias_filter(config, clients_per_round, seed):
  from tff_backdoor.aggregators import bias_filter
  return bias_filter.BiasAnomalyFilterFactory(config.bias_z_threshold, config.bias_index)


BIAS_FILTER = DefenseSpec('bias_filter', _bias_filter,
                          settings=('bias_z_threshold', 'bias_index'),
                          update_index_field='bias_index')
