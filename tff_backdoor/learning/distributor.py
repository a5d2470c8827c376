"""The distributor of a learning process with a side channel: the model and the ServerInfo.

`build_distributor` is TFF's `build_broadcast_process` when the `SideChannel` sends nothing
down; otherwise a `tff.learning.templates.DistributionProcess` whose result at the clients is
`OrderedDict(model=<weights>, server=ServerInfo)` (`side_channel.client_weights_type`):

- `global_update`: the change of the global model since the previous round and whether there
  is one (what a Neurotoxin attacker, Zhang et al. 2022, gets by comparing two downloaded
  models). The state is the model broadcast last round (and whether there was one); being
  part of the learning process's state it survives a checkpoint and --resume;
  `set_model_weights` (a warm start) leaves it alone, and round 0 of any process has none.
  Measurement: `last_update_norm`, its L2 norm (0 in round 0).
- `root_update`: g0, the server's own update this round (FLTrust), `root_update_fn(model)`
  run at the server (`learning.root_update`), broadcast like the model, as FLTrust's paper
  has the server do (its aggregator broadcasts g0 to score each client).
- `ddif_global_log_probs`: the global model's log-softmax on the DDif inputs (DeepSight),
  `ddif_global_fn(model)` run at the server once a round (`learning.ddifs`) rather than by
  every client; float32 [seeds, samples, classes], 2.4 MB a client at the defaults.

Each costs one more broadcast a round (the first two of the trainable weights), so only
processes whose `SideChannel` asks for it send it.
"""
from __future__ import annotations

import collections
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.learning import side_channel
from tff_backdoor.learning.side_channel import SideChannel


def _global_update_computations(trainable_type: tff.Type):
  """(initial state, step): the global-update part of the distributor, in TF."""
  state_type = tff.StructWithPythonType(
      [('previous', trainable_type), ('has_previous', np.bool_)], collections.OrderedDict)

  @tff.tensorflow.computation
  def initial_state():
    zeros = tff.types.structure_from_tensor_type_tree(
        lambda t: tf.zeros(t.shape, t.dtype), trainable_type)
    return collections.OrderedDict(previous=zeros, has_previous=tf.constant(False))

  @tff.tensorflow.computation(state_type, trainable_type)
  def step(state, trainable):
    update = tf.nest.map_structure(tf.subtract, trainable, state['previous'])
    update = tf.nest.map_structure(
        lambda u: tf.where(state['has_previous'], u, tf.zeros_like(u)), update)
    sent = collections.OrderedDict(global_update=update,
                                   has_global_update=state['has_previous'])
    new_state = collections.OrderedDict(previous=trainable, has_previous=tf.constant(True))
    norm = tf.linalg.global_norm(tf.nest.flatten(update))
    return new_state, sent, collections.OrderedDict(last_update_norm=norm)

  return initial_state, step


def build_distributor(weights_type: tff.Type, channel: SideChannel,
                      root_update_fn: Optional[tff.Computation] = None,
                      ddif_global_fn: Optional[tff.Computation] = None
                      ) -> tff.learning.templates.DistributionProcess:
  """The distributor that sends what `channel` asks for (see the module docstring).

  Args:
    weights_type: The model weights' type (`tff.learning.models.ModelWeights`).
    channel: What to send besides the model.
    root_update_fn: (model weights) -> g0 at the server; given iff `channel.root_update`.
    ddif_global_fn: (model weights) -> the global model's log-probs on the DDif inputs at
      the server (`ddifs.build_global_log_probs_fn`); given iff `channel.ddifs`.
  """
  if channel.root_update != (root_update_fn is not None):
    raise ValueError('a root_update side channel needs root_update_fn, and only it takes one')
  if (channel.ddifs is not None) != (ddif_global_fn is not None):
    raise ValueError('a ddifs side channel needs ddif_global_fn, and only it takes one')
  if not channel.downlink:
    return tff.learning.templates.build_broadcast_process(weights_type)
  initial_state, step = _global_update_computations(weights_type.trainable)

  @tff.federated_computation
  def init_fn():
    if channel.global_update:
      return tff.federated_eval(initial_state, tff.SERVER)
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.SERVER))
  def next_fn(state, weights):
    server = collections.OrderedDict()
    new_state, measurements = state, tff.federated_value((), tff.SERVER)
    if channel.global_update:
      new_state, sent, measurements = tff.federated_map(step, (state, weights.trainable))
      server.update(global_update=sent.global_update, has_global_update=sent.has_global_update)
    if channel.ddifs is not None:
      server['ddif_global_log_probs'] = tff.federated_map(ddif_global_fn, weights)
    if channel.root_update:
      server['root_update'] = tff.federated_map(root_update_fn, weights)
    sent = tff.federated_zip(collections.OrderedDict(
        [(side_channel.MODEL, weights), (side_channel.SERVER, tff.federated_zip(server))]))
    return tff.templates.MeasuredProcessOutput(
        new_state, tff.federated_broadcast(sent), measurements)

  return tff.learning.templates.DistributionProcess(init_fn, next_fn)
