"""The last global update, sent to the clients with the model (what Neurotoxin's attacker reads).

A Neurotoxin attacker (Zhang et al. 2022) compares the global model it downloads with the one
of the previous round. In TFF the server has both: `build_global_update_distributor` is a
`tff.learning.templates.DistributionProcess` whose state is the model it broadcast last round
(and whether there was one), and whose result at the clients is
`OrderedDict(model=<weights>, last_update=<this model's trainable - last round's>,
has_last_update=<bool>)`. Being part of the learning process's state, the update survives a
checkpoint and --resume; `set_model_weights` (a warm start) leaves it alone, and round 0 of any
process has none. It costs a second broadcast of the trainable weights each round, so only
processes whose client work asks for it (`expects_global_update`) get it.
"""
from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


def client_weights_type(weights_type: tff.Type) -> tff.StructWithPythonType:
  """What such a client work receives: the model weights, the last update, whether it exists."""
  return tff.StructWithPythonType(
      [('model', weights_type), ('last_update', weights_type.trainable),
       ('has_last_update', np.bool_)], collections.OrderedDict)


def build_global_update_distributor(
    weights_type: tff.Type) -> tff.learning.templates.DistributionProcess:
  """Broadcasts the model with its change since the previous round (see the module docstring).

  Measurements: `last_update_norm`, the L2 norm of the broadcast update (0 in round 0).
  """
  trainable_type = weights_type.trainable
  state_type = tff.StructWithPythonType(
      [('previous', trainable_type), ('has_previous', np.bool_)], collections.OrderedDict)

  @tff.tensorflow.computation
  def initial_state():
    zeros = tff.types.structure_from_tensor_type_tree(
        lambda t: tf.zeros(t.shape, t.dtype), trainable_type)
    return collections.OrderedDict(previous=zeros, has_previous=tf.constant(False))

  @tff.tensorflow.computation(state_type, weights_type)
  def step(state, weights):
    update = tf.nest.map_structure(tf.subtract, weights.trainable, state['previous'])
    update = tf.nest.map_structure(
        lambda u: tf.where(state['has_previous'], u, tf.zeros_like(u)), update)
    sent = collections.OrderedDict(model=weights, last_update=update,
                                   has_last_update=state['has_previous'])
    new_state = collections.OrderedDict(previous=weights.trainable,
                                        has_previous=tf.constant(True))
    norm = tf.linalg.global_norm(tf.nest.flatten(update))
    return new_state, sent, collections.OrderedDict(last_update_norm=norm)

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_state, tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.SERVER))
  def next_fn(state, weights):
    new_state, sent, measurements = tff.federated_map(step, (state, weights))
    return tff.templates.MeasuredProcessOutput(
        new_state, tff.federated_broadcast(sent), measurements)

  return tff.learning.templates.DistributionProcess(init_fn, next_fn)


def expects_global_update(client_work: tff.learning.templates.ClientWorkProcess) -> bool:
  """True if the client work's weights are `client_weights_type` (e.g. Neurotoxin's)."""
  member = client_work.next.type_signature.parameter[1].member
  return isinstance(member, tff.StructType) and 'last_update' in tff.structure.name_list(member)


def build_distributor(client_work: tff.learning.templates.ClientWorkProcess,
                      weights_type: tff.Type) -> tff.learning.templates.DistributionProcess:
  """The distributor `client_work` needs: TFF's broadcast, or the global-update one."""
  if expects_global_update(client_work):
    return build_global_update_distributor(weights_type)
  return tff.learning.templates.build_broadcast_process(weights_type)


def client_weights(client_work: tff.learning.templates.ClientWorkProcess,
                   state: tff.learning.templates.LearningAlgorithmState,
                   model_weights: tff.learning.models.ModelWeights):
  """What `client_work` receives in the round that starts from `state` (in Python)."""
  if not expects_global_update(client_work):
    return model_weights
  previous, has_previous = state.distributor['previous'], bool(state.distributor['has_previous'])
  update = [np.asarray(w) - np.asarray(p) if has_previous else np.zeros_like(np.asarray(w))
            for w, p in zip(model_weights.trainable, previous)]
  return collections.OrderedDict(model=model_weights, last_update=update,
                                 has_last_update=has_previous)
