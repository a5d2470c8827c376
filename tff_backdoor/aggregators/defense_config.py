"""The defenses' names and parameters, TensorFlow-free (flags are checked before TF loads).

Each defense's parameters are declared once, in its spec module (`aggregators.defenses`);
`DefenseConfig` inherits them all, so every parameter is a visible field, a flag and a key of
config.json's `defense`. `registry.build_defense` builds the factory a `DefenseConfig` names;
the run config (`tff_backdoor.config`) composes `DefenseConfig` as its `defense` section.
"""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators import defenses
from tff_backdoor.aggregators.defenses import bias_filter
from tff_backdoor.aggregators.defenses import bulyan
from tff_backdoor.aggregators.defenses import centered_clipping
from tff_backdoor.aggregators.defenses import clipping
from tff_backdoor.aggregators.defenses import crfl
from tff_backdoor.aggregators.defenses import deepsight
from tff_backdoor.aggregators.defenses import dp
from tff_backdoor.aggregators.defenses import fldetector
from tff_backdoor.aggregators.defenses import flame
from tff_backdoor.aggregators.defenses import fltrust
from tff_backdoor.aggregators.defenses import foolsgold
from tff_backdoor.aggregators.defenses import geometric_median
from tff_backdoor.aggregators.defenses import robust_lr
from tff_backdoor.aggregators.defenses import robust_rules
from tff_backdoor.options import check_field, option

DEFENSES = tuple(defenses.BY_NAME)  # `--defense`'s choices, in `defenses.SPECS` order


@dataclasses.dataclass(frozen=True)
class DefenseName:
  """The `--defense` field, first in config.json's `defense`."""
  name: str = option('none', 'Defense applied while aggregating client updates.',
                     choices=DEFENSES, flag='defense')


# dataclasses collect the fields of the bases from the last to the first: `name`, then
# clip_norm ... zeroing_norm (clipping), dp, ..., deepsight, the order of flags and config.json.
@dataclasses.dataclass(frozen=True)
class DefenseConfig(deepsight.DeepSightParameters, fldetector.FLDetectorParameters,
                    foolsgold.FoolsGoldParameters, fltrust.FLTrustParameters,
                    crfl.CrflParameters, flame.FlameParameters, robust_lr.RobustLrParameters,
                    centered_clipping.CenteredClippingParameters, bulyan.BulyanParameters,
                    geometric_median.GeometricMedianParameters,
                    bias_filter.BiasFilterParameters, robust_rules.RobustRulesParameters,
                    dp.DpParameters, clipping.ClippingParameters, DefenseName):
  """Which defense aggregates the updates (`name`), and every defense's parameters.

  Only the fields the chosen defense's spec reads (`DefenseSpec.settings`) are used. Every
  default has a concrete type (no None), so that flags are typed from them; each parameters
  class's docstring says why its defaults.
  """


def validate_defense(config: DefenseConfig, clients_per_round: int) -> None:
  """Raises ValueError, with a one-line message, if `config` cannot run with this many clients.

  Every numeric field is checked against its rule whatever the defense (a bad value is a
  mistake even if unused); the chosen defense's spec checks the rest (Krum's n > 2f + 2).
  """
  spec = defenses.spec(config.name)
  if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int) or (
      clients_per_round < 1):
    raise ValueError(f'clients_per_round must be a positive integer, got {clients_per_round!r}')
  for field in dataclasses.fields(config):
    if field.name != 'name':
      check_field(field, getattr(config, field.name))
  if spec.check is not None:
    spec.check(config, clients_per_round)
