"""The federated learning process: FedAvg composed from attacker client work and any aggregator.

`build_attacked_fed_avg` is `tff.learning.algorithms.build_weighted_fed_avg` with its client
work swapped for `attacks.build_attacker_client_work`, assembled with
`tff.learning.templates.compose_learning_process`; everything else is TFF's own
(broadcast distributor, `MeanFactory` default aggregator, SGD apply-optimizer finalizer), but
for what its side channel (`learning.side_channel`) sends besides the model and the delta.
"""
from __future__ import annotations

import collections
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators.deltas_only import deltas_only
from tff_backdoor.attacks.attack_config import AttackConfig
from tff_backdoor.attacks.client_work import build_attacker_client_work
from tff_backdoor.learning import ddifs
from tff_backdoor.learning import distributor as distributor_lib
from tff_backdoor.learning import root_update
from tff_backdoor.learning.side_channel import DDifInputs, SideChannel
from tff_backdoor.learning.update_capture import with_update_capture

ModelFn = Callable[[], tff.learning.models.VariableModel]


def keras_model_fn(keras_builder: Callable[[], tf.keras.Model],
                   input_shape: Sequence[int]) -> ModelFn:
  """Wraps a Keras builder (logits output) as a TFF model_fn with batches of OrderedDict(x, y)."""
  input_spec = collections.OrderedDict(
      x=tf.TensorSpec([None, *input_shape], tf.float32),
      y=tf.TensorSpec([None], tf.int32))

  def model_fn() -> tff.learning.models.VariableModel:
    return tff.learning.models.from_keras_model(
        keras_builder(),
        input_spec=input_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

  return model_fn


def build_attacked_fed_avg(
    model_fn: ModelFn,
    client_optimizer_fn: tff.learning.optimizers.Optimizer,
    server_optimizer_fn: Optional[tff.learning.optimizers.Optimizer] = None,
    *,
    attack: AttackConfig = AttackConfig(boost=1.0),
    batch_size: int = 20,
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = None,
    metrics_aggregator: Optional[Callable] = None,
    client_info: bool = False,
    ddifs: Optional[DDifInputs] = None,
    root: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    root_epochs: int = 1,
    root_seed: int = 0,
    capture_updates: bool = False,
    capture_spool_dir: Optional[str] = None,
) -> tff.learning.templates.LearningProcess:
  """`tff.learning.algorithms.build_weighted_fed_avg` whose clients may attack.

  The same arguments and defaults as TFF's (server SGD at 1.0 when `server_optimizer_fn` is
  None, `MeanFactory`, `sum_then_finalize`); the client work is
  `attacks.build_attacker_client_work`, so the client data is `attacks.client_data_type`
  (benign batches, malicious batches, is_malicious, seed, and with a side-channel uplink the
  client's population index), and `batch_size` is the batch of a data_poison attacker's mixed
  data. With no malicious client it computes what `build_weighted_fed_avg` does.

  The side channel (`learning.side_channel`) is chosen here, explicitly: the last global
  update goes down with the model when `attack.reads_global_update` (Neurotoxin);
  `client_info` sends each update with its ClientInfo (FoolsGold, FLDetector); `ddifs` adds
  to it the update's DDifs on those random inputs (DeepSight, `learning.ddifs`; the server
  sends the global model's outputs on them down, computed once a round); `root` = (x, y)
  makes the server train its update g0 on that root set each round (`root_epochs` seeded
  passes, dropout and order keyed by `root_seed`, `learning.root_update`) and send it down and
  on to the aggregator (FLTrust). A defense's spec says which it needs (`DefenseSpec.reads`).

  With `capture_updates`, the client work is wrapped by `update_capture.with_update_capture`
  (spooling to `capture_spool_dir` if given): `next` also returns every client's update
  (`update_capture.pop_captured_updates`); the state type is the same as without, so one
  state can go through either process, round by round.
  """
  channel = SideChannel(global_update=attack.reads_global_update, root_update=root is not None,
                        client_info=client_info, ddifs=ddifs)
  client_work = build_attacker_client_work(model_fn, client_optimizer_fn, attack, batch_size,
                                           metrics_aggregator, channel=channel)
  root_update_fn = None
  if root is not None:
    root_update_fn = root_update.build_root_update_fn(model_fn, client_optimizer_fn, root,
                                                      batch_size, root_epochs, root_seed)
  return compose_fed_avg(
      model_fn, client_work, server_optimizer_fn,
      distributor=build_distributor(model_fn, channel, root_update_fn),
      model_aggregator=model_aggregator, capture_updates=capture_updates,
      capture_spool_dir=capture_spool_dir)


def model_weights_type(model_fn: ModelFn) -> tff.Type:
  """The `ModelWeights` type of `model_fn`'s model."""
  with tf.Graph().as_default():
    return tff.learning.models.weights_type_from_model(model_fn())


def build_distributor(model_fn: ModelFn, channel: SideChannel,
                      root_update_fn: Optional[tff.Computation] = None
                      ) -> tff.learning.templates.DistributionProcess:
  """The distributor of a process with `channel` (`learning.distributor.build_distributor`);
  with `channel.ddifs` it computes the global model's DDif log-probs from `model_fn`."""
  weights_type = model_weights_type(model_fn)
  ddif_global_fn = None
  if channel.ddifs is not None:
    ddif_global_fn = ddifs.build_global_log_probs_fn(model_fn, channel.ddifs, weights_type)
  return distributor_lib.build_distributor(weights_type, channel, root_update_fn,
                                           ddif_global_fn)


def compose_fed_avg(
    model_fn: ModelFn,
    client_work: tff.learning.templates.ClientWorkProcess,
    server_optimizer_fn: Optional[tff.learning.optimizers.Optimizer] = None,
    *,
    distributor: Optional[tff.learning.templates.DistributionProcess] = None,
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = None,
    capture_updates: bool = False,
    capture_spool_dir: Optional[str] = None,
) -> tff.learning.templates.LearningProcess:
  """FedAvg around a given client work (`build_attacked_fed_avg`'s second half).

  Assembled by TFF's `compose_learning_process`, which checks that the pieces fit: the
  `distributor` (TFF's broadcast if None; `build_distributor` for a side channel) sends what
  the client work takes, and the aggregator, created for the client work's update type (a
  model delta, or `OrderedDict(delta, info)`), returns what the finalizer applies. The
  default aggregator is TFF's `MeanFactory` on the deltas (`aggregators.deltas_only`).

  For callers that keep the client work (e.g. to re-run clients,
  `update_capture.capture_client_updates`): Keras swaps a custom layer's base classes when a
  model is built in graph mode, so building a second client work after an eager model exists
  would break that model.
  """
  if server_optimizer_fn is None:
    server_optimizer_fn = tff.learning.optimizers.build_sgdm(1.0)

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  weights_type = initial_model_weights_fn.type_signature.result
  if distributor is None:
    distributor = tff.learning.templates.build_broadcast_process(weights_type)
  update_type = client_work.next.type_signature.result.result.member.update
  if capture_updates:
    client_work = with_update_capture(client_work, capture_spool_dir)
  factory = model_aggregator if model_aggregator is not None else deltas_only(
      tff.aggregators.MeanFactory())
  if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
    raise TypeError('model_aggregator must be a tff.aggregators.WeightedAggregationFactory '
                    '(wrap unweighted ones with tff.aggregators.as_weighted_aggregator)')
  aggregator = factory.create(update_type, tff.TensorType(np.float32))
  finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
      server_optimizer_fn, weights_type)
  return tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, distributor, client_work, aggregator, finalizer)
