"""The side channel: what the server sends with the model, and what a client sends with its update.

Some attacks and defenses need more than TFF's FedAvg passes around (the model down, a model
delta and its weight up). Everything extra travels in the two values TFF's own
`tff.learning.templates.compose_learning_process` type-checks, nowhere else:

- down (distributor result -> client work weights), `client_weights_type`:
  `OrderedDict(model=<ModelWeights>, server=ServerInfo)` with ServerInfo's fields
  `global_update` / `has_global_update` (the last round's change of the global model, for
  Neurotoxin's attacker), `ddif_global_log_probs` (float32 [seeds, samples, classes]: the
  log-softmax of the global model's logits on each set of DDif inputs, computed once a round
  by the server for every client's DDifs, `learning.ddifs`) and `root_update` (g0, the
  server's own update on its root set this round, for FLTrust), each only if the
  `SideChannel` asks for it;
- up (client work `ClientResult.update` -> aggregator value), `client_update_type`:
  `OrderedDict(delta=<trainable>, info=ClientInfo)`, ClientInfo being `client` (int32, the
  client's index in the population: FoolsGold's and FLDetector's identities), `is_malicious`
  (bool, what the simulation knows; no defense reads it), with `root_update` the g0 the
  client received, handed on to the aggregator (FLTrust's `root_update`), and with `ddifs`
  the update's division differences (float32 [seeds, classes], DeepSight's DDifs: the
  outputs on seeded random inputs of the model the server rebuilds from the update, divided
  by the global model's, which came down in ServerInfo; `learning.ddifs`). A server that has
  the global model computes them itself; the simulation computes them in the client work,
  from the same reported update, which gives the same numbers.

An aggregator takes that struct and returns the plain trainable update (TFF allows an
`AggregationProcess` from V to V'), so the finalizer is TFF's. Defenses that need no side
information are wrapped in `aggregators.deltas_only`, which aggregates `delta` alone; the
weight keeps TFF's meaning (the client's example count). With every field off the types are
those of TFF's `build_weighted_fed_avg`, so a plain process runs the same defenses, and those
that need the channel refuse to build there (`require`) with one line saying how to get it.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

from typing import Optional

import numpy as np
import tensorflow_federated as tff

DELTA, INFO = 'delta', 'info'  # the fields of a client update with side information
MODEL, SERVER = 'model', 'server'  # the fields of what the clients receive with side information
HOW_TO_ENABLE = ('build the process with tff_backdoor.learning.process.build_attacked_fed_avg'
                 '(..., {argument}) (a plain build_weighted_fed_avg sends only the model delta)')


@dataclasses.dataclass(frozen=True)
class DDifInputs:
  """The random inputs DDifs are measured on (`learning.ddifs`): the same for every client.

  Attributes:
    samples: Random input samples per seed (Rieger et al.: N = 20,000).
    seeds: Sets of samples, each giving one DDif vector per client (Rieger et al.: 3).
    seed: The run's seed; set s of samples is keyed by (seed, s), every round the same.
  """
  samples: int = 20_000
  seeds: int = 3
  seed: int = 0

  def __post_init__(self):
    if self.samples < 1 or self.seeds < 1:
      raise ValueError(f'DDifInputs needs samples >= 1 and seeds >= 1, got {self}')


@dataclasses.dataclass(frozen=True)
class SideChannel:
  """Which side information a learning process carries (all off: TFF's FedAvg types).

  Attributes:
    global_update: Down: the last round's global update and whether there is one (round 0
      has none). Neurotoxin's client work needs it.
    root_update: Down and up: the server's own update on its root set this round (g0),
      trained by the distributor at the server and handed on by every client to the
      aggregator. FLTrust needs it.
    client_info: Up: each update's `ClientInfo` (population index, attacker flag).
      FoolsGold and FLDetector need it.
    ddifs: Down and up: the global model's log-probs on these random inputs (None: none),
      computed once a round at the server, and each update's DDifs on them, computed by the
      client work after local training (`learning.ddifs`). DeepSight needs them.
  """
  global_update: bool = False
  root_update: bool = False
  client_info: bool = False
  ddifs: Optional[DDifInputs] = None

  def __post_init__(self):
    if self.ddifs is not None and not isinstance(self.ddifs, DDifInputs):
      raise TypeError(f'SideChannel.ddifs must be a DDifInputs or None, got {self.ddifs!r}')

  @property
  def downlink(self) -> bool:
    """Whether the clients receive `OrderedDict(model, server)` rather than the weights."""
    return self.global_update or self.root_update or self.ddifs is not None

  @property
  def uplink(self) -> bool:
    """Whether a client's update is `OrderedDict(delta, info)` rather than the delta."""
    return self.client_info or self.root_update or self.ddifs is not None


def _struct(fields) -> tff.StructWithPythonType:
  return tff.StructWithPythonType(list(fields), collections.OrderedDict)


def _with_root_update(fields: list, trainable_type: tff.Type,
                      channel: SideChannel) -> tff.StructWithPythonType:
  """`fields`, and g0 (`root_update`) if the channel carries it, as a struct."""
  if channel.root_update:
    fields = fields + [('root_update', trainable_type)]
  return _struct(fields)


def classes_of(trainable_type: tff.Type) -> int:
  """The model's classes: the last trainable tensor's (the output bias, as Keras orders)."""
  return tff.structure.flatten(trainable_type)[-1].shape[-1]


def server_info_type(trainable_type: tff.Type, channel: SideChannel) -> tff.StructWithPythonType:
  """ServerInfo: what the server sends the clients besides the model (the module docstring)."""
  fields = []
  if channel.global_update:
    fields = [('global_update', trainable_type), ('has_global_update', np.bool_)]
  if channel.ddifs is not None:
    inputs = channel.ddifs
    fields.append(('ddif_global_log_probs', tff.TensorType(
        np.float32, [inputs.seeds, inputs.samples, classes_of(trainable_type)])))
  return _with_root_update(fields, trainable_type, channel)


def client_weights_type(weights_type: tff.Type, channel: SideChannel) -> tff.Type:
  """What a client work of `channel` receives: the weights, or OrderedDict(model, server)."""
  if not channel.downlink:
    return weights_type
  return _struct([(MODEL, weights_type),
                  (SERVER, server_info_type(weights_type.trainable, channel))])


def ddifs_type(classes: int, inputs: DDifInputs) -> tff.TensorType:
  """The type of one update's DDifs: float32 [seeds, classes]."""
  return tff.TensorType(np.float32, [inputs.seeds, classes])


def client_info_type(trainable_type: tff.Type, channel: SideChannel) -> tff.StructWithPythonType:
  """ClientInfo: what a client sends with its update (see the module docstring). With DDifs,
  the classes are `classes_of` the trainable weights."""
  fields = [('client', np.int32), ('is_malicious', np.bool_)]
  if channel.ddifs is not None:
    fields.append(('ddifs', ddifs_type(classes_of(trainable_type), channel.ddifs)))
  return _with_root_update(fields, trainable_type, channel)


def client_update_type(trainable_type: tff.Type, channel: SideChannel) -> tff.Type:
  """A client update of `channel`: the delta, or OrderedDict(delta, info)."""
  if not channel.uplink:
    return trainable_type
  return _struct([(DELTA, trainable_type), (INFO, client_info_type(trainable_type, channel))])


def carries_info(value_type: tff.Type) -> bool:
  """Whether an aggregator's value type is a client update with side information."""
  return (isinstance(value_type, tff.StructType) and
          tff.structure.name_list(value_type) == [DELTA, INFO])


def delta_type(value_type: tff.Type) -> tff.Type:
  """The model delta's type within an aggregator's value type (with or without info)."""
  return value_type[DELTA] if carries_info(value_type) else value_type


def delta_of(value: Any, value_type: tff.Type) -> Any:
  """The model delta within one client's `value` (in TF) of `value_type`."""
  return value[DELTA] if carries_info(value_type) else value


def with_delta(value: Any, delta: Any, value_type: tff.Type) -> Any:
  """`value` (in TF) of `value_type` with its model delta replaced by `delta`."""
  if not carries_info(value_type):
    return delta
  return collections.OrderedDict([(DELTA, delta), (INFO, value[INFO])])


def require(value_type: tff.Type, field: str, needs: str, argument: str) -> None:
  """Raises a one-line ValueError unless `value_type`'s ClientInfo has `field`.

  Args:
    value_type: The value type an aggregation factory's `create` received.
    field: The ClientInfo field the factory reads.
    needs: What the defense needs, as '<Defense> needs <what>'.
    argument: The `build_attacked_fed_avg` argument that supplies it.
  """
  if carries_info(value_type) and field in tff.structure.name_list(value_type[INFO]):
    return
  raise ValueError(f'{needs}: {HOW_TO_ENABLE.format(argument=argument)}')
