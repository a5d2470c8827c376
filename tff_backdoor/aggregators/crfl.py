"""CRFL's training phase (Xie, Chen, Chen, Li 2021): clip the global model's norm, add noise.

"CRFL: Certifiably Robust Federated Learning against Backdoor Attacks" (ICML 2021). After
each round's aggregation the server clips the global model's parameters to L2 norm rho_t and
perturbs them with N(0, sigma^2 I); clients train from the perturbed model. The smoothing
this gives is what CRFL's certificate (parameter smoothing at test time, not implemented
here) builds on; in training it bounds how far any round, poisoned or not, can move the model.

An aggregator only sees updates, never the model, so this is a server optimizer instead: a
`tff.learning.optimizers.Optimizer` that applies an inner optimizer (FedAvg's server SGD),
then clips and noises the new trainable weights. It drops into
`tff.learning.algorithms.build_weighted_fed_avg(server_optimizer_fn=...)` and into TFF's
`build_apply_optimizer_finalizer` (which `process.compose_fed_avg` uses) unchanged; the
noise seed and the round counter live in the optimizer state.

Defaults are the authors' EMNIST configuration (AI-secure/CRFL: `configs/emnist_params.yaml`
and the dynamic bound in `main.py`): rho_t = min(0.25 t + 4, 100) in round t = 1, 2, ...,
sigma = 0.01. Their models differ from ours, so rho_t may need rescaling (`--crfl_clip_*`).

Departures: FLPoison's CRFL clips and noises the *aggregated update* (norm 3, std 0.001), not
the model; the authors (and BackFed, through its weak-DP server) clip the model. The authors
noise every entry of the state dict (buffers included); an optimizer sees only trainable
weights, which is everything for this package's models (no batch norm). The model a run
evaluates after a round (`run.driver`, the process state's weights) already carries that
round's noise; the authors evaluate before the noise (docs/DEFENSES.md).
"""
from __future__ import annotations

import collections
from typing import Any, Optional, Tuple

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import seeded_noise


class CrflOptimizer(tff.learning.optimizers.Optimizer):
  """`inner`'s step, then the weights clipped to norm rho_t and noised with N(0, sigma^2)."""

  def __init__(self, inner: tff.learning.optimizers.Optimizer, sigma: float = 0.01,
               clip_base: float = 4.0, clip_slope: float = 0.25, clip_max: float = 100.0,
               seed: Optional[int] = None):
    """Initializes the optimizer.

    Args:
      inner: The server optimizer to apply first (e.g. `build_sgdm(1.0)`).
      sigma: Std >= 0 of the noise added to every weight.
      clip_base, clip_slope, clip_max: rho_t = min(clip_base + clip_slope * t, clip_max), with
        t the 1-based round; clip_base > 0, clip_slope >= 0, clip_max > 0.
      seed: Seed of the noise; None draws it from the clock.
    """
    if not sigma >= 0:
      raise ValueError(f'sigma must be nonnegative, found {sigma}')
    if not (clip_base > 0 and clip_slope >= 0 and clip_max > 0):
      raise ValueError(f'need clip_base > 0, clip_slope >= 0, clip_max > 0, found '
                       f'{clip_base}, {clip_slope}, {clip_max}')
    self._inner = inner
    self._sigma = float(sigma)
    self._clip = (float(clip_base), float(clip_slope), float(clip_max))
    self._seed = seed

  def clip_norm(self, round_number: tf.Tensor) -> tf.Tensor:
    """rho_t for the 1-based round t."""
    base, slope, maximum = self._clip
    return tf.minimum(base + slope * tf.cast(round_number, tf.float32), maximum)

  def initialize(self, specs: Any) -> collections.OrderedDict:
    return collections.OrderedDict(inner=self._inner.initialize(specs),
                                   round=tf.constant(0, tf.int32),
                                   noise=seeded_noise.initial_state(self._seed))

  def next(self, state: collections.OrderedDict, weights: Any,
           gradients: Any) -> Tuple[collections.OrderedDict, Any]:
    inner_state, weights = self._inner.next(state['inner'], weights, gradients)
    round_number = state['round'] + 1
    flat = tf.nest.flatten(weights)
    clipped, _ = tf.clip_by_global_norm([tf.cast(w, tf.float32) for w in flat],
                                        self.clip_norm(round_number))
    noised, noise_state = seeded_noise.add_scaled_noise(clipped, self._sigma, state['noise'])
    weights = tf.nest.pack_sequence_as(
        weights, [tf.cast(n, w.dtype) for n, w in zip(noised, flat)])
    return collections.OrderedDict(inner=inner_state, round=round_number,
                                   noise=noise_state), weights

  def get_hparams(self, state: collections.OrderedDict) -> collections.OrderedDict:
    return self._inner.get_hparams(state['inner'])

  def set_hparams(self, state: collections.OrderedDict,
                  hparams: collections.OrderedDict) -> collections.OrderedDict:
    return collections.OrderedDict(state, inner=self._inner.set_hparams(state['inner'],
                                                                        hparams))
