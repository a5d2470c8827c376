"""What the package knows of one defense, in one place: `DefenseSpec` (TensorFlow-free).

A defense is its `tff.aggregators` factory (in its own module of `aggregators`) plus a spec in
`aggregators.defenses`: its name, the parameters it reads (declared in a frozen dataclass of
`options.option` fields that `DefenseConfig` inherits: each is a flag and a config.json key),
the checks
that need more than one parameter, the builder, and what the run must give it (side
information, a server optimizer, its population, a root set). The registry
(`aggregators.defenses.SPECS`), the run setup and the flags read the spec; none of them names
a defense.

The builder imports its factory when called, so flags and configs are checked before
TensorFlow loads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

# (config, clients_per_round, seed) -> a tff.aggregators.WeightedAggregationFactory
Builder = Callable[[Any, int, Optional[int]], Any]
# (config, clients_per_round) -> None, or a one-line ValueError
Check = Callable[[Any, int], None]
# (config, server optimizer, seed) -> the tff.learning.optimizers.Optimizer wrapping it
ServerOptimizer = Callable[[Any, Any, Optional[int]], Any]
# (config, seed) -> {SideChannel field: its value} for the `reads` fields that are settings
ChannelSettings = Callable[[Any, Optional[int]], Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class DefenseSpec:
  """One `--defense` value and everything a run needs to build it.

  Attributes:
    name: The `--defense` value.
    build: (config, clients_per_round, seed) -> the factory for
      `build_weighted_fed_avg(model_aggregator=)`; `seed` is the run's `--seed`.
    settings: The `DefenseConfig` fields the builder and checks read. Each is declared once,
      in a `...Parameters` dataclass of its spec module that `DefenseConfig` inherits (so
      `clip_norm`, read by four defenses, is one flag).
    check: Rules beyond each field's own (`options.Rule`), e.g. Krum's n > 2f + 2.
    reads: The `learning.side_channel.SideChannel` fields the defense reads ('client_info',
      'root_update', 'ddifs'); it refuses a plain FedAvg delta. Empty: it aggregates deltas
      alone.
    channel: (config, seed) -> the values of the `reads` fields that are settings rather
      than True (DeepSight's `ddifs`: a `side_channel.DDifInputs` of its parameters and the
      run's `--seed`); it imports what it builds when called, like `build`.
    server_optimizer: Wraps FedAvg's server optimizer when the defense acts on the global
      model after aggregation (CRFL); None keeps it.
    population_field: The parameter holding the population size a defense that tells
      clients apart needs; a run fills it in when it is 0.
    root_set_field: The parameter holding the images a class of a server root set (FLTrust):
      the run carves the set from the server split, which must therefore exist.
    update_index_field: A parameter indexing a tensor of the update (negative from the end);
      the run checks it against its model.
    distinct_clients: Whether a client drawn twice in a round would be misread (FoolsGold
      takes two identical updates for sybils; FLDetector keeps one score slot per client and
      round, so a second copy would halve that client's score): refuses
      `--sample_with_replacement`.
    client_bound_field: The parameter every client update's L2 norm is cut to, if any (the
      run's summary line says so).
  """
  name: str
  build: Builder
  settings: Tuple[str, ...] = ()
  check: Optional[Check] = None
  reads: Tuple[str, ...] = ()
  channel: Optional[ChannelSettings] = None
  server_optimizer: Optional[ServerOptimizer] = None
  population_field: Optional[str] = None
  root_set_field: Optional[str] = None
  update_index_field: Optional[str] = None
  distinct_clients: bool = False
  client_bound_field: Optional[str] = None
