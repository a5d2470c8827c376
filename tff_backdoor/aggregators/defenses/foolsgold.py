"""'foolsgold' (`aggregators.foolsgold`): down-weight clients whose update histories are alike."""
from __future__ import annotations

import dataclasses

from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.options import NONNEGATIVE, POSITIVE, option


@dataclasses.dataclass(frozen=True)
class FoolsGoldParameters:
  """Defaults: the history keeps the output layer (kernel and bias), as FLPoison's indicative
  features do; kappa = 1 as in Fung et al.; a population of 0 is the run's (`run.setup`)."""
  foolsgold_clients: int = option(
      0, "foolsgold: population size, identities 0..n-1 (0 = the run's clients).",
      rule=NONNEGATIVE)
  foolsgold_tensors: int = option(
      2, 'foolsgold: trailing update tensors kept in the history (2: output layer; 0: all).',
      rule=NONNEGATIVE)
  foolsgold_confidence: float = option(1.0, "foolsgold: kappa of the logit (paper: 1).",
                                       rule=POSITIVE)


def _foolsgold(config, clients_per_round, seed):
  from tff_backdoor.aggregators import foolsgold
  return foolsgold.FoolsGoldFactory(config.foolsgold_clients, config.foolsgold_tensors,
                                    config.foolsgold_confidence)


FOOLSGOLD = DefenseSpec(
    'foolsgold', _foolsgold, reads=('client_info',), population_field='foolsgold_clients',
    distinct_clients=True,
    settings=('foolsgold_clients', 'foolsgold_tensors', 'foolsgold_confidence'))
