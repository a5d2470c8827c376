"""The federated learning process: FedAvg composed from attacker client work and any aggregator.

`build_attacked_fed_avg` is `tff.learning.algorithms.build_weighted_fed_avg` with its client
work swapped for `attacks.build_attacker_client_work`, assembled with
`tff.learning.templates.compose_learning_process`; everything else is TFF's own
(broadcast distributor, `MeanFactory` default aggregator, SGD apply-optimizer finalizer).
"""
from __future__ import annotations

import collections
import os
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow.core.framework import tensor_pb2

from tff_backdoor.aggregators import _common as aggregators_common
from tff_backdoor.aggregators.robust_rules import federated_stack
from tff_backdoor.attacks import global_update
from tff_backdoor.attacks.client_work import AttackConfig, build_attacker_client_work
from tff_backdoor.learning import server_update

ModelFn = Callable[[], tff.learning.models.VariableModel]
# Key, in the client work's measurements of a capturing process, of the captured updates.
CAPTURE_KEY = 'captured_updates'
SPOOL_SUFFIX = '.tensor'  # files a spooling capture writes (with_update_capture)


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
    attack: AttackConfig = AttackConfig(),
    batch_size: int = 20,
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = None,
    metrics_aggregator: Optional[Callable] = None,
    capture_updates: bool = False,
    capture_spool_dir: Optional[str] = None,
) -> tff.learning.templates.LearningProcess:
  """`tff.learning.algorithms.build_weighted_fed_avg` whose clients may attack.

  The same arguments and defaults as TFF's (server SGD at 1.0 when `server_optimizer_fn` is
  None, `MeanFactory`, `sum_then_finalize`); the client work is
  `attacks.build_attacker_client_work`, so the client data is `attacks.client_data_type`
  (benign batches, malicious batches, is_malicious, seed), and `batch_size` is the batch of a
  data_poison attacker's mixed data. With no malicious client it computes what
  `build_weighted_fed_avg` does. With `capture_updates`, the client work is wrapped by
  `with_update_capture` (spooling to `capture_spool_dir` if given): `next` also returns every
  client's update (see `pop_captured_updates`); the state type is the same as without, so one
  state can go through either process, round by round.
  """
  client_work = build_attacker_client_work(model_fn, client_optimizer_fn, attack, batch_size,
                                           metrics_aggregator)
  return compose_fed_avg(model_fn, client_work, server_optimizer_fn,
                         model_aggregator=model_aggregator, capture_updates=capture_updates,
                         capture_spool_dir=capture_spool_dir)


def compose_fed_avg(
    model_fn: ModelFn,
    client_work: tff.learning.templates.ClientWorkProcess,
    server_optimizer_fn: Optional[tff.learning.optimizers.Optimizer] = None,
    *,
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = None,
    capture_updates: bool = False,
    capture_spool_dir: Optional[str] = None,
    server_update_fn: Optional[tff.Computation] = None,
) -> tff.learning.templates.LearningProcess:
  """FedAvg around a given client work (`build_attacked_fed_avg`'s second half).

  With `server_update_fn` (FLTrust: `server_update.build_server_update_fn`), the server trains
  its own update each round and hands it to the aggregator
  (`server_update.compose_with_server_update`); without, TFF's `compose_learning_process`.

  The distributor is TFF's broadcast, or for a client work that reads the last global update
  (Neurotoxin's) `attacks.global_update`'s. For callers that keep the client work (e.g. to
  re-run clients, `capture_client_updates`):
  Keras swaps a custom layer's base classes when a model is built in graph mode, so building
  a second client work after an eager model exists would break that model.
  """
  if server_optimizer_fn is None:
    server_optimizer_fn = tff.learning.optimizers.build_sgdm(1.0)

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  weights_type = initial_model_weights_fn.type_signature.result
  distributor = global_update.build_distributor(client_work, weights_type)
  if capture_updates:
    client_work = with_update_capture(client_work, capture_spool_dir)
  factory = model_aggregator if model_aggregator is not None else tff.aggregators.MeanFactory()
  if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
    raise TypeError('model_aggregator must be a tff.aggregators.WeightedAggregationFactory '
                    '(wrap unweighted ones with tff.aggregators.as_weighted_aggregator)')
  aggregator = factory.create(weights_type.trainable, tff.TensorType(np.float32))
  finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
      server_optimizer_fn, weights_type)
  if server_update_fn is not None:
    return server_update.compose_with_server_update(
        initial_model_weights_fn, distributor, client_work, aggregator, finalizer,
        server_update_fn)
  return tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, distributor, client_work, aggregator, finalizer)


def capture_client_updates(client_work: tff.learning.templates.ClientWorkProcess,
                           state: tff.learning.templates.LearningAlgorithmState,
                           model_weights: tff.learning.models.ModelWeights,
                           client_data: Sequence) -> list:
  """Each client's update (a list of arrays, in `client_data` order) for this round's inputs.

  Runs the process's own client work again on the same inputs, so training is untouched;
  the client computation is deterministic for fixed inputs, hence the captured updates are
  the ones the aggregator received (tests check their weighted mean against the round).
  This pays for every client's training twice: the experiment loop reads the updates off the
  round itself instead (`build_attacked_fed_avg(capture_updates=True)`); this function stays
  as the reference that tests compare that path with.
  """
  weights = global_update.client_weights(client_work, state, model_weights)
  output = client_work.next(state.client_work, [weights] * len(client_data), client_data)
  return [[np.asarray(t) for t in result.update] for result in output.result]


def with_update_capture(client_work: tff.learning.templates.ClientWorkProcess,
                        spool_dir: Optional[str] = None
                        ) -> tff.learning.templates.ClientWorkProcess:
  """`client_work` whose `next` also hands every client's update to the caller.

  The clients run `client_work` unchanged and their results go on to the aggregator as
  before; state, hparams and results are `client_work`'s, so a state moves freely between a
  process built with this and one built without. `pop_captured_updates` takes the updates out
  of the round's metrics. Two ways, the same arrays:

  - `spool_dir=None`: the updates and each client's control seed (to put the rows back in
    client order) are collected at the server with `aggregators.federated_stack`, one
    mergeable `federated_aggregate`, and returned in `measurements[CAPTURE_KEY]`. Works with
    any TFF execution (also remote workers), but every update travels to Python through the
    executor (gRPC here) and the stack grows by concatenation, quadratic in the clients.
  - `spool_dir`: each client writes its update, as `tf.io.serialize_tensor` files
    `<seed>_<v>.tensor` (one per variable), into `spool_dir` where it runs; the measurement
    only says where and how many. Nothing large leaves the worker through TFF, so it costs
    about a file write; the directory must be on the machine of the TFF worker (a local
    run), and two clients of a round must not share a control seed.

  Expects the client data of `attacks.client_data_type` (it reads `control.seed`).
  """
  state_type, weights_type, data_type = client_work.next.type_signature.parameter
  control_type = data_type.member['control']
  update_type = client_work.next.type_signature.result.result.member.update

  control_seed = tff.tensorflow.computation(_seed_of, control_type)
  if spool_dir is not None:
    spool, spool_record = _spool_computations(spool_dir, update_type, control_type)

  @tff.federated_computation(state_type, weights_type, data_type)
  def next_fn(state, weights, client_data):
    output = client_work.next(state, weights, client_data)
    if spool_dir is None:
      seeds = tff.federated_map(control_seed, client_data.control)
      updates, seeds = federated_stack(tff.federated_zip((output.result.update, seeds)))
      record = tff.federated_zip(collections.OrderedDict(updates=updates, seeds=seeds))
    else:
      written = tff.federated_map(spool, (output.result.update, client_data.control))
      record = tff.federated_map(spool_record, tff.federated_sum(written))
    captured = tff.federated_zip(collections.OrderedDict([(CAPTURE_KEY, record)]))
    measurements = tff.federated_map(aggregators_common.merge_measurements,
                                     (output.measurements, captured))
    return tff.templates.MeasuredProcessOutput(output.state, output.result, measurements)

  return tff.learning.templates.ClientWorkProcess(
      client_work.initialize, next_fn, get_hparams_fn=client_work.get_hparams,
      set_hparams_fn=client_work.set_hparams)


def _seed_of(control):
  """A client's control seed (its control dataset holds one element)."""
  return control.reduce(tf.zeros([], tf.int64), lambda _, c: c['seed'])


def _spool_computations(spool_dir: str, update_type, control_type):
  """(spool, spool_record): a client writes its update's tensors as `<seed>_<v>.tensor` files
  into `spool_dir`; the server's record says where, how many clients and variables."""
  num_variables = []

  @tff.tensorflow.computation(update_type, control_type)
  def spool(update, control):
    prefix = tf.strings.join([spool_dir, '/', tf.strings.as_string(_seed_of(control))])
    tensors = tf.nest.flatten(update)
    num_variables[:] = [len(tensors)]
    writes = [tf.io.write_file(tf.strings.join([prefix, f'_{v}{SPOOL_SUFFIX}']),
                               tf.io.serialize_tensor(t)) for v, t in enumerate(tensors)]
    with tf.control_dependencies(writes):
      return tf.constant(1, tf.int32)

  @tff.tensorflow.computation(np.int32)
  def spool_record(written):
    return collections.OrderedDict(spool_dir=tf.constant(spool_dir), written=written,
                                   num_variables=tf.constant(num_variables[0]))

  return spool, spool_record


def client_seeds(client_data: Sequence[Mapping[str, Any]]) -> List[int]:
  """The control seed of each client input (`attacks.make_client_data`), in order."""
  return [int(next(iter(d['control']))['seed']) for d in client_data]


def _read_spool(record: Mapping[str, Any], seeds: Sequence[int]) -> List[np.ndarray]:
  """The spooled updates of the clients with these seeds, stacked per variable; deletes them."""
  directory = record['spool_dir']
  directory = directory.decode() if isinstance(directory, bytes) else str(directory)
  if int(record['written']) != len(seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f'cannot match the spooled updates to the clients: {int(record["written"])}'
                     f' written for {len(seeds)} clients with seeds {list(seeds)}')
  stacks = []
  for v in range(int(record['num_variables'])):
    rows = []
    for seed in seeds:
      path = os.path.join(directory, f'{seed}_{v}{SPOOL_SUFFIX}')
      with open(path, 'rb') as f:
        rows.append(tf.make_ndarray(tensor_pb2.TensorProto.FromString(f.read())))
      os.remove(path)
    stacks.append(np.stack(rows))
  return stacks


def pop_captured_updates(metrics: Mapping[str, Any],
                         client_data: Sequence[Mapping[str, Any]]) -> List[np.ndarray]:
  """Takes the updates out of a capturing round's metrics; one [n, ...] array per variable.

  Removes `metrics['client_work'][CAPTURE_KEY]` (so the rest flattens into metric rows as in
  a round without capture) and returns the stacks with row i = `client_data[i]`'s update
  (reading and deleting the spool files, for a spooling process). Stacked rows reach the
  server in the order the executor aggregated the clients (with TFF's mergeable execution
  over several workers, possibly the order in which the shares finished); they are matched
  to the clients by their control seeds, which the simulation draws per client. Raises
  ValueError if the seeds cannot tell the rows apart (equal seeds, out of order).
  """
  captured = metrics['client_work'].pop(CAPTURE_KEY)
  expected = client_seeds(client_data)
  if 'spool_dir' in captured:
    return _read_spool(captured, expected)
  stacks = [np.asarray(u) for u in tf.nest.flatten(captured['updates'])]
  got = [int(s) for s in np.asarray(captured['seeds']).reshape(-1)]
  if got == expected:
    return stacks
  if len(set(expected)) != len(expected) or sorted(got) != sorted(expected):
    raise ValueError('cannot match the captured updates to the clients: their control seeds '
                     f'{got} are not a distinct reordering of {expected}')
  row = {seed: i for i, seed in enumerate(got)}
  order = [row[seed] for seed in expected]
  return [s[order] for s in stacks]


def client_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
  """A client's batched OrderedDict(x, y) dataset, cheap to send to TFF's worker.

  TFF serializes a client dataset with its tensors as constants. Images that are exactly
  k/255 in float32 (all idx/MNIST-style data, and triggers of value 0 or 1) travel as uint8
  and are cast back in the pipeline, bit-identical and 4x smaller; anything else goes as is.
  """
  x = np.asarray(x, np.float32)
  quantized = np.rint(x * 255.0)
  exact = (quantized.size > 0 and quantized.min() >= 0 and quantized.max() <= 255 and
           np.array_equal(quantized.astype(np.uint8).astype(np.float32) / np.float32(255), x))
  if not exact:
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(x=x, y=y)).batch(batch_size)
  dataset = tf.data.Dataset.from_tensor_slices((quantized.astype(np.uint8), y)).batch(batch_size)
  return dataset.map(lambda u, labels: collections.OrderedDict(
      x=tf.cast(u, tf.float32) / 255.0, y=labels))
