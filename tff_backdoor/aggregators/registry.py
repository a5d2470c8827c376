"""The defense a `DefenseConfig` names, assembled into one factory (and its server optimizer).

What each defense is and needs is its spec (`aggregators.defenses`); its names and parameters
(`DefenseConfig`, `DEFENSES`, `validate_defense`) are in the TensorFlow-free
`defense_config`, so flags are checked before TensorFlow loads.
"""
from __future__ import annotations

from typing import Optional

import tensorflow_federated as tff

from tff_backdoor.aggregators import defenses
from tff_backdoor.aggregators import nonfinite
from tff_backdoor.aggregators import norm_statistics
from tff_backdoor.aggregators.defense_config import DefenseConfig, validate_defense
from tff_backdoor.aggregators.deltas_only import deltas_only
from tff_backdoor.learning.side_channel import SideChannel


def side_channel_of(config: DefenseConfig, seed: Optional[int] = None) -> SideChannel:
  """What a process must send for the defense `config` names (its spec's `reads`, with the
  settings its `channel` gives from `config` and the run's `seed`; nothing for most)."""
  spec = defenses.spec(config.name)
  settings = spec.channel(config, seed) if spec.channel else {}
  return SideChannel(**{**dict.fromkeys(spec.reads, True), **settings})


def build_server_optimizer(config: DefenseConfig, optimizer: tff.learning.optimizers.Optimizer,
                           seed: Optional[int] = None) -> tff.learning.optimizers.Optimizer:
  """The server optimizer for `config`: `optimizer`, wrapped if the defense acts on the model.

  Pass it as `server_optimizer_fn` next to `build_defense`'s aggregator (CRFL needs both).
  """
  wrap = defenses.spec(config.name).server_optimizer
  return optimizer if wrap is None else wrap(config, optimizer, seed)


def build_defense(config: DefenseConfig, clients_per_round: int,
                  seed: Optional[int] = None) -> tff.aggregators.WeightedAggregationFactory:
  """The model aggregator for `config`, ready for `build_weighted_fed_avg(model_aggregator=)`.

  Composition, outermost first: `NonFiniteGuardFactory` (a NaN/Inf update never reaches the
  model; always present, also for 'none'), `add_client_norm_measurements`, then the defense,
  whose inner aggregation is a weighted mean that returns zeros when every weight is 0. The
  value may be a plain model delta (TFF's `build_weighted_fed_avg`) or an update with side
  information (`learning.side_channel`): a defense whose spec `reads` it refuses a plain
  delta in one line, the others aggregate its delta (`deltas_only`).

  Args:
    config: The defense and its parameters.
    clients_per_round: Clients sampled per round: Krum's n, weak DP's denominator.
    seed: Seed of the weak-DP noise (the experiment's `--seed`); None draws it from the clock.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`.

  Raises:
    ValueError: If `validate_defense` rejects the configuration.
  """
  validate_defense(config, clients_per_round)  # Also rejects an unknown name.
  spec = defenses.spec(config.name)
  defense = spec.build(config, clients_per_round, seed)
  if not spec.reads:
    defense = deltas_only(defense)
  return nonfinite.NonFiniteGuardFactory(norm_statistics.add_client_norm_measurements(defense))
