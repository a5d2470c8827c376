"""FLAIN's settings, TensorFlow-free: one type for `flain.apply_flain` and for the run.

The run config (`tff_backdoor.config`) composes `FlainConfig` as its `flain` section: the
fields declared with `option` are its flags and config.json keys (`--flain`, `--flain_mode`,
...); the plain fields (`k_max`, `rescale`, `batch_size`) are library parameters the run
leaves at their defaults.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from tff_backdoor.options import AT_LEAST_ONE, FINITE_NONNEGATIVE, POSITIVE
from tff_backdoor.options import check_fields, option

ALL_DENSE = 'all_dense'
# Per mode (k0, step) used when FlainConfig leaves them None. 'absolute' = authors' FMNIST values.
MODE_DEFAULTS = {'quantile': (0.0, 0.005), 'absolute': (0.0005, 0.0001)}
THRESHOLD_MODES = tuple(MODE_DEFAULTS)


@dataclasses.dataclass(frozen=True)
class FlainConfig:
  """FLAIN settings; k0/step None means MODE_DEFAULTS[threshold_mode].

  Attributes:
    enabled, aux_per_class: the run's: apply FLAIN to the final model, with this many clean
      server images per class (`apply_flain` takes the images themselves).
    layer: Dense layer name; None = the first Dense layer (first fully connected layer after the
      convolutions); 'all_dense' = every Dense layer, flipped together at the same k.
    threshold_mode: 'quantile' (k is a quantile level of the layer's a_j; default, scale-free) or
      'absolute' (k is compared with a_j directly, as in the authors' code).
    k0: first threshold.
    step: threshold increment.
    tolerance: auxiliary accuracy drop (fraction) that stops the search; the authors use 0-0.024
      and 0.01 as their function default.
    k_max: last threshold (the authors' cap is 1; in 'quantile' mode 1 flips every neuron).
    rescale: rescale each changed kernel to its pre-defense Frobenius norm.
    batch_size: batch size for the forward passes on the auxiliary set.
  """
  enabled: bool = option(False, 'Apply FLAIN to the final global model and report '
                         'main/backdoor accuracy before and after.', flag='flain')
  aux_per_class: int = option(
      80, 'Clean auxiliary images per class, from the server-side held-out split.',
      flag='flain_aux_per_class', rule=AT_LEAST_ONE)
  layer: Optional[str] = option(
      None, "Dense layer to defend ('' = first Dense layer, 'all_dense' = every one).",
      flag='flain_layer', unset='')
  threshold_mode: str = option(
      'quantile', "quantile (scale-free) or absolute (the authors' activation threshold).",
      choices=THRESHOLD_MODES, flag='flain_mode')
  k0: Optional[float] = option(None, 'First threshold (<0: the mode default).',
                               flag='flain_k0', unset=-1.0, negative_unset=True)
  step: Optional[float] = option(None, 'Threshold step (<0: the mode default).',
                                 flag='flain_step', unset=-1.0, negative_unset=True,
                                 rule=POSITIVE)
  tolerance: float = option(0.01, 'Auxiliary accuracy drop that stops raising the threshold.',
                            flag='flain_tolerance', rule=FINITE_NONNEGATIVE)
  k_max: float = 1.0
  rescale: bool = True
  batch_size: int = 256

  def validate(self, prefix: str = '') -> 'FlainConfig':
    """Raises ValueError naming the field (`prefix` + its flag) and what is wrong; returns self."""
    check_fields(self, prefix)
    k0, k_max = self.effective_k0, self.k_max
    if not (math.isfinite(k0) and math.isfinite(k_max) and k0 <= k_max):
      raise ValueError(f'{prefix}flain_k0 must be finite and <= k_max, got k0={k0!r}, '
                       f'k_max={k_max!r}')
    if self.threshold_mode == 'quantile' and not 0.0 <= k0 <= k_max <= 1.0:
      raise ValueError(f'{prefix}flain_mode=quantile needs 0 <= k0 <= k_max <= 1, got '
                       f'k0={k0!r}, k_max={k_max!r}')
    if int(self.batch_size) != self.batch_size or self.batch_size < 1:
      raise ValueError(f'FLAIN batch_size must be a positive integer, got {self.batch_size!r}')
    return self

  @property
  def effective_k0(self) -> float:
    return float(MODE_DEFAULTS[self.threshold_mode][0] if self.k0 is None else self.k0)

  @property
  def effective_step(self) -> float:
    return float(MODE_DEFAULTS[self.threshold_mode][1] if self.step is None else self.step)

  @property
  def num_k_steps(self) -> int:
    """Number of thresholds k0, k0 + step, ... <= k_max (robust to float rounding)."""
    return int(math.floor((self.k_max - self.effective_k0) / self.effective_step + 1e-9)) + 1
