"""Every client's update of a round, handed to the caller: for the anomaly analysis.

`with_update_capture` wraps a client work so that its round also returns each client's update
(stacked at the server, or spooled to files by the local TFF worker); `pop_captured_updates`
takes them out of the round's metrics in client order. `capture_client_updates` is the
reference path that re-runs the clients instead.
"""
from __future__ import annotations

import collections
import os
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow.core.framework import tensor_pb2

from tff_backdoor.aggregators import _common as aggregators_common
from tff_backdoor.aggregators.robust_rules import federated_stack
from tff_backdoor.learning import side_channel

# Key, in the client work's measurements of a capturing process, of the captured updates.
CAPTURE_KEY = 'captured_updates'
SPOOL_SUFFIX = '.tensor'  # files a spooling capture writes (with_update_capture)


def capture_client_updates(client_work: tff.learning.templates.ClientWorkProcess,
                           state: tff.learning.templates.LearningAlgorithmState,
                           model_weights: tff.learning.models.ModelWeights,
                           client_data: Sequence,
                           distributor: Optional[tff.templates.MeasuredProcess] = None) -> list:
  """Each client's model delta (a list of arrays, in `client_data` order) for this round.

  `distributor` is the process's (`process.build_distributor`) when its side channel sends
  more than the model: it gives the clients what they received this round.

  Runs the process's own client work again on the same inputs, so training is untouched;
  the client computation is deterministic for fixed inputs, hence the captured updates are
  the ones the aggregator received (tests check their weighted mean against the round).
  This pays for every client's training twice: the experiment loop reads the updates off the
  round itself instead (`build_attacked_fed_avg(capture_updates=True)`); this function stays
  as the reference that tests compare that path with.
  """
  if distributor is None:
    results = client_work.next(state.client_work, [model_weights] * len(client_data),
                               client_data).result
  else:
    results = distributed_client_work(distributor, client_work)(
        state.distributor, model_weights, state.client_work, client_data)
  update_type = client_work.next.type_signature.result.result.member.update
  deltas = [result.update for result in results]
  if side_channel.carries_info(update_type):
    deltas = [update[side_channel.DELTA] for update in deltas]
  return [[np.asarray(t) for t in delta] for delta in deltas]


def distributed_client_work(distributor: tff.templates.MeasuredProcess,
                            client_work: tff.learning.templates.ClientWorkProcess
                            ) -> tff.Computation:
  """(distributor state, weights, client work state, client data) -> the clients' results:
  the first half of a round, what the clients send before aggregation."""
  distributor_state, weights_type = distributor.next.type_signature.parameter
  work_state, _, data_type = client_work.next.type_signature.parameter

  @tff.federated_computation(distributor_state, weights_type, work_state, data_type)
  def results(state, weights, client_work_state, client_data):
    sent = distributor.next(state, weights).result
    return client_work.next(client_work_state, sent, client_data).result

  return results


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
  result_update_type = client_work.next.type_signature.result.result.member.update
  update_type = side_channel.delta_type(result_update_type)

  control_seed = tff.tensorflow.computation(_seed_of, control_type)
  if spool_dir is not None:
    spool, spool_record = _spool_computations(spool_dir, update_type, control_type)

  @tff.federated_computation(state_type, weights_type, data_type)
  def next_fn(state, weights, client_data):
    output = client_work.next(state, weights, client_data)
    delta = output.result.update
    if side_channel.carries_info(result_update_type):
      delta = getattr(delta, side_channel.DELTA)
    if spool_dir is None:
      seeds = tff.federated_map(control_seed, client_data.control)
      updates, seeds = federated_stack(tff.federated_zip((delta, seeds)))
      record = tff.federated_zip(collections.OrderedDict(updates=updates, seeds=seeds))
    else:
      written = tff.federated_map(spool, (delta, client_data.control))
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
  to the clients by their control seeds, which the run draws per client. Raises
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
