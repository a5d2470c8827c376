"""The defenses by name: one `DefenseSpec` each, in `--defense`'s order (TensorFlow-free).

Adding a defense: its factory in its own module of `aggregators`, its spec (and a
`...Parameters` dataclass if it has settings) in a module here, one line in `SPECS`, and its
parameters class among `DefenseConfig`'s bases (`aggregators.defense_config`). The registry
(`aggregators.registry.build_defense`), the run setup and the flags read nothing else.
"""
from __future__ import annotations

from typing import Dict

from tff_backdoor.aggregators.defense_spec import DefenseSpec
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
from tff_backdoor.aggregators.defenses import mean
from tff_backdoor.aggregators.defenses import robust_lr
from tff_backdoor.aggregators.defenses import robust_rules

SPECS = (
    mean.NONE,
    clipping.CLIP,
    clipping.ADAPTIVE_CLIP,
    clipping.ZEROING,
    clipping.CLIP_MEAN,
    dp.WEAK_DP,
    robust_rules.MEDIAN,
    robust_rules.TRIMMED_MEAN,
    robust_rules.KRUM,
    robust_rules.MULTI_KRUM,
    bias_filter.BIAS_FILTER,
    dp.SUN_MEAN,
    dp.SUN_DP,
    geometric_median.GEOMED,
    bulyan.BULYAN,
    centered_clipping.CENTERED_CLIP,
    robust_lr.RLR,
    flame.FLAME,
    crfl.CRFL,
    fltrust.FLTRUST,
    foolsgold.FOOLSGOLD,
    fldetector.FLDETECTOR,
    deepsight.DEEPSIGHT,
)

BY_NAME: Dict[str, DefenseSpec] = {spec.name: spec for spec in SPECS}


def spec(name: str) -> DefenseSpec:
  """The spec of `--defense=name`, or a one-line ValueError that lists the names."""
  if name not in BY_NAME:
    raise ValueError(f'unknown defense {name!r}; choose one of: {", ".join(BY_NAME)}')
  return BY_NAME[name]
