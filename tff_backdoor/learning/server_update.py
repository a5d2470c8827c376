"""A learning process whose server trains its own update each round (FLTrust's root update).

`compose_with_server_update` is `tff.learning.templates.compose_learning_process` with one step
more: before aggregating, the server runs `server_update_fn(global weights, client hparams)`
at `SERVER` and writes the result into the aggregator's state (`fltrust.with_reference`), where
`aggregators.fltrust.FLTrustFactory` reads it. State, metrics, `get_model_weights` and the
hparams are those of the TFF composition, so checkpoints and warm starts work unchanged.

`build_server_update_fn` makes that step the clients' own local training
(`attacks.build_client_update`, honest path) on a root set held as constants of the
computation, with the clients' learning rate (the client work's hparams).
"""
from __future__ import annotations

import collections
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import fltrust
from tff_backdoor.attacks.attack_config import AttackConfig
from tff_backdoor.attacks.client_work import build_client_update


def build_server_update_fn(model_fn: Callable[[], tff.learning.models.VariableModel],
                           optimizer: tff.learning.optimizers.Optimizer,
                           root: tuple, batch_size: int, epochs: int, seed: int,
                           hparams_type: tff.Type) -> tff.Computation:
  """(model weights, client hparams) -> the server's update on `root` = (x, y).

  `epochs` passes over the root set in a seeded order, drawn once (every round trains on the
  same batches), batches of `batch_size`; the update is `initial - trained`, as the clients'.
  FLTrust's paper samples the root batches anew each round; a fixed order keeps the
  computation free of state.
  """
  x, y = np.asarray(root[0], np.float32), np.asarray(root[1], np.int32)
  if len(y) == 0:
    raise ValueError('FLTrust needs a non-empty root set (the server split is empty)')
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(y)) for _ in range(epochs)])
  with tf.Graph().as_default():
    weights_type = tff.learning.models.weights_type_from_model(model_fn())

  @tff.tensorflow.computation(weights_type, hparams_type)
  def server_update(weights, hparams):
    client_update = build_client_update(model_fn, optimizer, AttackConfig(boost=1.0), batch_size)
    benign = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=tf.constant(x[order]), y=tf.constant(y[order]))).batch(batch_size)
    control = tf.data.Dataset.from_tensors(collections.OrderedDict(
        is_malicious=tf.constant(False), seed=tf.constant(seed, tf.int64)))
    data = collections.OrderedDict(benign=benign, malicious=benign.take(0), control=control)
    result, _, _ = client_update(weights, data, hparams)
    return result.update

  return server_update


def compose_with_server_update(initial_model_weights_fn: tff.Computation,
                               distributor: tff.templates.MeasuredProcess,
                               client_work: tff.learning.templates.ClientWorkProcess,
                               aggregator: tff.templates.AggregationProcess,
                               finalizer: tff.learning.templates.FinalizerProcess,
                               server_update_fn: tff.Computation
                               ) -> tff.learning.templates.LearningProcess:
  """TFF's composition, with the server's update written into the aggregator state each round.

  The aggregator's state must have FLTrust's `reference` field (wrappers that keep their inner
  state, as `NonFiniteGuardFactory` and `tff.aggregators.add_measurements` do, are fine).
  """
  base = tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, distributor, client_work, aggregator, finalizer)
  state_type = base.next.type_signature.parameter[0]
  aggregator_state = state_type.member.aggregator
  if fltrust.REFERENCE_KEY not in tff.structure.name_list(aggregator_state):
    raise TypeError(f'the aggregator state {aggregator_state} has no '
                    f'{fltrust.REFERENCE_KEY!r} field for the server update (use FLTrust)')
  set_reference = tff.tensorflow.computation(
      fltrust.with_reference, aggregator_state,
      server_update_fn.type_signature.result)

  @tff.federated_computation(state_type, base.next.type_signature.parameter[1])
  def next_fn(state, client_data):
    sent = distributor.next(state.distributor, state.global_model_weights)
    work = client_work.next(state.client_work, sent.result, client_data)
    hparams = tff.federated_map(client_work.get_hparams, state.client_work)
    reference = tff.federated_map(server_update_fn, (state.global_model_weights, hparams))
    aggregated = aggregator.next(
        tff.federated_map(set_reference, (state.aggregator, reference)),
        work.result.update, work.result.update_weight)
    final = finalizer.next(state.finalizer, state.global_model_weights, aggregated.result)
    new_state = tff.federated_zip(tff.learning.templates.LearningAlgorithmState(
        final.result, sent.state, work.state, aggregated.state, final.state))
    metrics = tff.federated_zip(collections.OrderedDict(
        distributor=sent.measurements, client_work=work.measurements,
        aggregator=aggregated.measurements, finalizer=final.measurements))
    return tff.learning.templates.LearningProcessOutput(new_state, metrics)

  return tff.learning.templates.LearningProcess(
      base.initialize, next_fn, base.get_model_weights, base.set_model_weights,
      get_hparams_fn=base.get_hparams, set_hparams_fn=base.set_hparams)
