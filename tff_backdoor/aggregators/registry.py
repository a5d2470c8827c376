"""The defenses by name, assembled into one factory.

Their names and parameters (`DefenseConfig`, `DEFENSES`, `validate_defense`) are in the
TensorFlow-free `defense_config`, so flags are checked before TensorFlow loads.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import bias_filter
from tff_backdoor.aggregators import bulyan
from tff_backdoor.aggregators import centered_clipping
from tff_backdoor.aggregators import clipping
from tff_backdoor.aggregators import crfl
from tff_backdoor.aggregators import deepsight
from tff_backdoor.aggregators.deltas_only import deltas_only
from tff_backdoor.aggregators import dp
from tff_backdoor.aggregators import flame
from tff_backdoor.aggregators import fldetector
from tff_backdoor.aggregators import fltrust
from tff_backdoor.aggregators import foolsgold
from tff_backdoor.aggregators import geometric_median
from tff_backdoor.aggregators import nonfinite
from tff_backdoor.aggregators import norm_statistics
from tff_backdoor.aggregators import robust_lr
from tff_backdoor.aggregators import robust_rules
from tff_backdoor.aggregators.defense_config import DefenseConfig, validate_defense
from tff_backdoor.learning.side_channel import SideChannel

DefenseBuilder = Callable[[DefenseConfig, int, Optional[int]],
                          tff.aggregators.WeightedAggregationFactory]

# Defense name -> its factory from (config, clients_per_round, seed); one entry per DEFENSES.
DEFENSE_BUILDERS: Dict[str, DefenseBuilder] = {
    'none': lambda c, n, seed: _common.default_mean_factory(),
    'clip': lambda c, n, seed: clipping.norm_clipping_factory(c.clip_norm),
    'adaptive_clip': lambda c, n, seed: clipping.adaptive_clipping_factory(
        c.adaptive_quantile, c.adaptive_initial_norm, c.adaptive_learning_rate),
    'zeroing': lambda c, n, seed: clipping.norm_zeroing_factory(c.zeroing_norm),
    'clip_mean': lambda c, n, seed: clipping.AggregateClippingFactory(c.clip_norm),
    'weak_dp': lambda c, n, seed: dp.weak_dp_factory(c.dp_sigma, c.clip_norm, n, seed),
    'median': lambda c, n, seed: robust_rules.CoordinateMedianFactory(),
    'trimmed_mean': lambda c, n, seed: robust_rules.TrimmedMeanFactory(c.trim_fraction),
    'krum': lambda c, n, seed: robust_rules.KrumFactory(c.krum_f, c.krum_selected(n)),
    'multi_krum': lambda c, n, seed: robust_rules.KrumFactory(c.krum_f, c.krum_selected(n)),
    'bias_filter': lambda c, n, seed: bias_filter.BiasAnomalyFilterFactory(
        c.bias_z_threshold, c.bias_index),
    'sun_mean': lambda c, n, seed: dp.sun_aggregation_factory(None, 0.0, n, seed),
    'sun_dp': lambda c, n, seed: dp.sun_aggregation_factory(c.clip_norm, c.sum_noise_stddev, n,
                                                            seed),
    'geomed': lambda c, n, seed: geometric_median.GeometricMedianFactory(c.geomed_passes,
                                                                         c.geomed_nu),
    'bulyan': lambda c, n, seed: bulyan.BulyanFactory(c.bulyan_f),
    'centered_clip': lambda c, n, seed: centered_clipping.CenteredClippingFactory(
        c.cc_tau, c.cc_iterations),
    'rlr': lambda c, n, seed: robust_lr.RobustLearningRateFactory(c.rlr_threshold),
    'flame': lambda c, n, seed: flame.flame_factory(c.flame_lambda, c.flame_min_samples, seed),
    'crfl': lambda c, n, seed: _common.default_mean_factory(),  # its step: server_optimizer
    'fltrust': lambda c, n, seed: fltrust.FLTrustFactory(),
    'foolsgold': lambda c, n, seed: foolsgold.FoolsGoldFactory(
        c.foolsgold_clients, c.foolsgold_tensors, c.foolsgold_confidence),
    'fldetector': lambda c, n, seed: fldetector.FLDetectorFactory(
        c.fldetector_clients, n, c.fldetector_window, c.fldetector_gap_samples,
        c.fldetector_max_clusters, seed or 0),
    'deepsight': lambda c, n, seed: deepsight.DeepSightFactory(
        c.deepsight_tau, c.deepsight_threshold_factor, c.deepsight_min_cluster_size,
        c.deepsight_min_samples),
}

# Defenses that read side information with each update (learning.side_channel) -> what the
# process must send; the others aggregate the deltas alone (aggregators.deltas_only).
SIDE_CHANNELS: Dict[str, SideChannel] = {
    'fltrust': SideChannel(root_update=True),  # the server's update g0 each round
    'foolsgold': SideChannel(client_info=True),  # each client's identity
    'fldetector': SideChannel(client_info=True),  # each client's identity
}


def side_channel_of(name: str) -> SideChannel:
  """What a process must send for the defense `name` (nothing for most)."""
  return SIDE_CHANNELS.get(name, SideChannel())


# Defenses acting on the global model after aggregation: name -> the server optimizer wrapping
# FedAvg's, from (config, server optimizer, seed). Others keep the server optimizer as it is.
SERVER_OPTIMIZER_BUILDERS: Dict[str, Callable[..., tff.learning.optimizers.Optimizer]] = {
    'crfl': lambda c, optimizer, seed: crfl.CrflOptimizer(
        optimizer, c.crfl_sigma, c.crfl_clip_base, c.crfl_clip_slope, c.crfl_clip_max, seed),
}


def build_server_optimizer(config: DefenseConfig, optimizer: tff.learning.optimizers.Optimizer,
                           seed: Optional[int] = None) -> tff.learning.optimizers.Optimizer:
  """The server optimizer for `config`: `optimizer`, wrapped if the defense acts on the model.

  Pass it as `server_optimizer_fn` next to `build_defense`'s aggregator (CRFL needs both).
  """
  builder = SERVER_OPTIMIZER_BUILDERS.get(config.name)
  return optimizer if builder is None else builder(config, optimizer, seed)


def build_defense(config: DefenseConfig, clients_per_round: int,
                  seed: Optional[int] = None) -> tff.aggregators.WeightedAggregationFactory:
  """The model aggregator for `config`, ready for `build_weighted_fed_avg(model_aggregator=)`.

  Composition, outermost first: `NonFiniteGuardFactory` (a NaN/Inf update never reaches the
  model; always present, also for 'none'), `add_client_norm_measurements`, then the defense,
  whose inner aggregation is a weighted mean that returns zeros when every weight is 0. The
  value may be a plain model delta (TFF's `build_weighted_fed_avg`) or an update with side
  information (`learning.side_channel`): a defense in `SIDE_CHANNELS` reads it (and refuses
  a plain delta in one line), the others aggregate its delta (`deltas_only`).

  Args:
    config: The defense and its parameters.
    clients_per_round: Clients sampled per round: Krum's n, weak DP's denominator.
    seed: Seed of the weak-DP noise (the experiment's `--seed`); None draws it from the clock.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.

  Raises:
    ValueError: If `validate_defense` rejects the configuration.
  """
  validate_defense(config, clients_per_round)  # Also rejects a name not in DEFENSE_BUILDERS.
  defense = DEFENSE_BUILDERS[config.name](config, clients_per_round, seed)
  if config.name not in SIDE_CHANNELS:
    defense = deltas_only(defense)
  return nonfinite.NonFiniteGuardFactory(norm_statistics.add_client_norm_measurements(defense))
