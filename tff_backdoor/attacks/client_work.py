"""Attacker client work: a `tff.learning.templates.ClientWorkProcess` with malicious clients.

Each client receives `OrderedDict(benign=<batches>, malicious=<batches>, control=<one element
OrderedDict(is_malicious=bool, seed=int64)>)` (a `ClientWorkProcess` only accepts sequences, so
the per-client flag and seed travel as a one-element dataset; see `make_client_data`). Honest
clients (and attackers' benign passes) run exactly the local SGD of
`tff.learning.templates.build_model_delta_client_work`, so with no attacker and a model without
random layers a round equals `tff.learning.algorithms.build_weighted_fed_avg`.

Client randomness is a function of the client's `seed` only (the run draws it per
round and client from the run's seed): the data_poison shuffle, and the masks of
`models.StatelessDropout` layers, whose seed for each batch is `seed` folded with the index of
the training pass and the batch step. (Keras' stateful Dropout, measured in TFF 0.87, gives
every client of every round the same masks, a function of the batch step only, and depends on
the worker starting each call with fresh random-op state.)

Attackers follow Sun et al. 2019 (google-research/federated targeted_attack) in one of three
modes, or one of the attacks after them:

- `data_poison`: train on benign and malicious examples shuffled together; no scaling.
- `boost` (explicit boosting / model replacement): delta_b + boost * delta_m, where delta_b is
  trained on the benign data and delta_m, from the same starting weights, on the malicious data.
- `norm_bounded`: from w0, `projection_rounds` times {a pass over the benign data; a pass over
  the malicious data; project w onto the L2 ball of radius `norm_bound` around w0}; then
  send boost * (w - w0), so its norm is at most boost * norm_bound.
- `neurotoxin` (Zhang et al. 2022): data_poison training whose every gradient (and the final
  update) is zero on the top `mask_fraction` coordinates of the last global update's magnitude
  (`gradient_transforms.bottom_coordinates_mask`), so the backdoor lives where benign clients
  rarely write. The paper's attacker gets that update by comparing two downloaded global
  models; here the distributor (`learning.distributor`) broadcasts it with the weights, so
  this mode's client work is built with `SideChannel(global_update=True)`. With no previous
  round (round 0) nothing is masked. The authors' code, BackFed and FLPoison rank coordinates
  by the attacker's own clean-data gradient instead of the global update; the authors' runs
  use neither scaling nor PGD (`--PGD 0`), and neither does this mode.
- `constrain_scale` (Bagdasaryan et al. 2020): data_poison training on the loss
  alpha * task loss + (1 - alpha) * ||w - w0||_2 (`gradient_transforms.with_distance_term`),
  then send boost * (w0 - w) (their gamma = n / eta: clients per round over the server rate).

- `anticipate` (Wen et al. 2022): from w0, `anticipate_epochs` passes over the shuffled
  mixture; each batch is one client-optimizer step along the gradient of the backdoor loss
  summed over k simulated global models (this round's mean with n - 1 honest clients, then
  k - 1 rounds of honest clients only, honest updates estimated by one SGD step on the
  attacker's first clean batch; `attacks.anticipate`). No scaling. The simulation's example
  passes (Hessian-vector products count twice) are added to the client's `num_examples`
  metric, so `examples_trained` shows what the attacker spends.

- `a3fl` (Zhang et al. 2023): data_poison training; what differs is the trigger on its
  malicious images, which the run optimizes before the round against the global model and an
  adversarially unlearned copy of it (`attacks.a3fl`, `run.adaptive_trigger`).

Updates follow TFF's sign convention (`initial - trained`, applied by the server optimizer as a
gradient). The client weight is the number of benign examples (the authors' choice), or of all
trained examples for `data_poison`. Non-finite updates are zeroed with weight 0, as in TFF.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Optional, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.attacks import anticipate as anticipate_lib
from tff_backdoor.attacks.attack_config import AttackConfig
from tff_backdoor.attacks import gradient_transforms
from tff_backdoor.learning import ddifs as ddifs_lib
from tff_backdoor.learning import local_training
from tff_backdoor.learning import side_channel
from tff_backdoor.learning.side_channel import SideChannel

_POISON_SHUFFLE_BUFFER = 100_000


def client_data_type(element_type: tff.Type,
                     with_client_index: bool = False) -> tff.StructWithPythonType:
  """The per-client TFF type the attacker client work consumes (with `client_index` in the
  control data if `with_client_index`: a client work that sends ClientInfo)."""
  fields = [('is_malicious', np.bool_), ('seed', np.int64)]
  if with_client_index:
    fields.append(('client_index', np.int64))
  return tff.StructWithPythonType(
      [('benign', tff.SequenceType(element_type)),
       ('malicious', tff.SequenceType(element_type)),
       ('control', tff.SequenceType(tff.StructWithPythonType(fields, collections.OrderedDict)))],
      collections.OrderedDict)


def make_client_data(benign: tf.data.Dataset, malicious: tf.data.Dataset,
                     is_malicious: bool, seed: int,
                     client_index: Optional[int] = None) -> collections.OrderedDict:
  """Packs one client's input for the attacker client work (`client_index`: its population
  index, for a client work whose side channel sends ClientInfo)."""
  fields = collections.OrderedDict(
      is_malicious=tf.constant(bool(is_malicious)), seed=tf.constant(int(seed), tf.int64))
  if client_index is not None:
    fields['client_index'] = tf.constant(int(client_index), tf.int64)
  control = tf.data.Dataset.from_tensors(fields)
  return collections.OrderedDict(benign=benign, malicious=malicious, control=control)


def _global_norm(structure) -> tf.Tensor:
  return tf.linalg.global_norm(tf.nest.flatten(structure))


@dataclasses.dataclass
class _ClientPass:
  """What one client's update is computed from (inside the traced `client_update`)."""
  local: local_training.LocalTraining
  initial_weights: object
  benign: tf.data.Dataset
  malicious: tf.data.Dataset
  seed: tf.Tensor
  hparams: object
  client_key: tf.Tensor
  # The last global update and whether there is one (neurotoxin's client work only).
  global_update: object = None
  has_global_update: object = None
  # Anticipate's scratch model (anticipate.Simulator) and the example passes it adds to the
  # client's `num_examples` metric (a variable the client work zeroes per client).
  simulator: object = None
  extra_examples: object = None

  def train(self, data: tf.data.Dataset, index: Union[int, tf.Tensor],
            transform: Optional[Callable] = None) -> tf.Tensor:
    key = local_training.pass_key(self.client_key, index)
    return self.local.train(data, self.hparams, key, transform)

  def restart(self) -> None:
    self.local.reset(self.initial_weights)

  def delta(self) -> Any:
    return self.local.delta(self.initial_weights)


def _honest(c: _ClientPass, attack: AttackConfig, batch_size: int):
  del attack, batch_size
  return c.local.honest_update(c.initial_weights, c.benign, c.hparams, c.client_key)


def _mixture(c: _ClientPass, batch_size: int) -> tf.data.Dataset:
  """The client's benign and malicious examples shuffled together (seeded), batched."""
  mixed = c.benign.unbatch().concatenate(c.malicious.unbatch())
  mixed = mixed.shuffle(_POISON_SHUFFLE_BUFFER, seed=c.seed, reshuffle_each_iteration=False)
  return mixed.batch(batch_size)


def _data_poison(c: _ClientPass, attack: AttackConfig, batch_size: int, transform=None):
  del attack
  c.restart()
  num_examples = c.train(_mixture(c, batch_size), 0, transform)
  return c.delta(), num_examples


def _examples(batch) -> tf.Tensor:
  return tf.shape(batch['y'], out_type=tf.int64)[0]


def _count(data: tf.data.Dataset) -> tf.Tensor:
  return data.reduce(tf.zeros([], tf.int64), lambda n, batch: n + _examples(batch))


def _anticipate(c: _ClientPass, attack: AttackConfig, batch_size: int):
  """`anticipate_epochs` passes over the mixture, each batch one step of the client optimizer
  along the unrolled gradient (`attacks.anticipate`); the first benign batch stands for the
  honest clients. Weight: the mixture's examples, as data_poison; every example pass of the
  simulation goes to `extra_examples` (the honest estimate B(w0) once, then each step's).
  An attacker without benign data has no b0 and sends a zero update."""
  c.restart()
  sim, local, k = c.simulator, c.local, attack.anticipate_rounds
  lr = tf.cast(c.hparams['learning_rate'], tf.float32)
  trainable = tf.nest.flatten(local.weights.trainable)
  clean = c.benign.take(1).repeat()
  honest = clean.take(1).reduce(tuple(tf.identity(w) for w in trainable),
                                lambda w, batch: tuple(sim.benign_step(w, batch, lr)))
  specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)
  opt_state = local.optimizer.set_hparams(local.optimizer.initialize(specs), c.hparams)

  def step(state, batches):
    passes, opt_state = state
    backdoor, clean_batch = batches
    grads = anticipate_lib.anticipated_gradient(
        sim, [tf.identity(v) for v in trainable], honest, clean_batch, backdoor,
        attack.anticipate_clients, k, lr)
    opt_state, updated = local.optimizer.next(opt_state, tuple(trainable), tuple(grads))
    with tf.control_dependencies([v.assign(u) for v, u in zip(trainable, updated)]):
      cost = anticipate_lib.examples_per_step(k, _examples(clean_batch), _examples(backdoor))
      return passes + cost, opt_state

  data = tf.data.Dataset.zip((_mixture(c, batch_size).repeat(attack.anticipate_epochs), clean))
  passes, _ = data.reduce((tf.zeros([], tf.int64), opt_state), step)
  c.extra_examples.assign_add(passes + _count(clean.take(1)))
  return c.delta(), _count(_mixture(c, batch_size))


def _neurotoxin(c: _ClientPass, attack: AttackConfig, batch_size: int):
  keep = gradient_transforms.bottom_coordinates_mask(c.global_update, attack.mask_fraction,
                                                     c.has_global_update)
  update, num_examples = _data_poison(
      c, attack, batch_size, lambda g, _: gradient_transforms.apply_mask(g, keep))
  return gradient_transforms.apply_mask(update, keep), num_examples


def _constrain_scale(c: _ClientPass, attack: AttackConfig, batch_size: int):
  anomaly = lambda g, w: gradient_transforms.with_distance_term(
      g, w, c.initial_weights.trainable, attack.alpha)
  update, num_examples = _data_poison(c, attack, batch_size, anomaly)
  return tf.nest.map_structure(lambda d: attack.boost * d, update), num_examples


def _boost(c: _ClientPass, attack: AttackConfig, batch_size: int):
  delta_b, num_examples = _honest(c, attack, batch_size)
  c.restart()
  c.train(c.malicious, 1)
  delta_m = c.delta()
  update = tf.nest.map_structure(lambda b, m: b + attack.boost * m, delta_b, delta_m)
  return update, num_examples


def _norm_bounded(c: _ClientPass, attack: AttackConfig, batch_size: int):
  del batch_size
  c.restart()
  num_examples = c.train(c.benign, 0)
  c.restart()
  trainable = c.local.weights.trainable

  def projection_round(i):  # traced once (a while loop), not once per round
    c.train(c.benign, 1 + 2 * i)
    c.train(c.malicious, 2 + 2 * i)
    d = c.delta()
    scale = tf.minimum(1.0, tf.math.divide_no_nan(
        tf.constant(attack.norm_bound, tf.float32), _global_norm(d)))
    tf.nest.map_structure(lambda v, w0, dd: v.assign(w0 - scale * dd),
                          trainable, c.initial_weights.trainable, d)
    return i + 1

  # int32, as the Python ints of an unrolled loop fold into the dropout keys: same masks.
  tf.while_loop(lambda i: i < attack.projection_rounds, projection_round,
                [tf.constant(0)])
  update = tf.nest.map_structure(lambda d: attack.boost * d, c.delta())
  return update, num_examples


# Attack mode -> the malicious client's (update, number of examples); attack_config.ATTACK_MODES
# lists the same names without TensorFlow (a test checks).
ATTACKERS = {'data_poison': _data_poison, 'boost': _boost, 'norm_bounded': _norm_bounded,
             'neurotoxin': _neurotoxin, 'constrain_scale': _constrain_scale,
             'anticipate': _anticipate, 'a3fl': _data_poison}


def build_client_update(model_fn: Callable[[], tff.learning.models.VariableModel],
                        optimizer: tff.learning.optimizers.Optimizer,
                        attack: AttackConfig,
                        batch_size: int) -> Callable:
  """Returns a `tf.function` computing one client's update, honest or malicious.

  `batch_size` re-batches the shuffled mixture of benign and malicious examples in
  `data_poison`, `neurotoxin` and `constrain_scale` modes (the others use the client's batches
  as given). For a mode that `reads_global_update`, pass the last global update (trainable
  structure) and whether there is one (bool scalar).
  """
  attack.validate_for_client_work()
  local = local_training.LocalTraining(model_fn, optimizer)
  model = local.model
  simulator = None
  if attack.mode == 'anticipate':
    scratch = local_training.LocalTraining(model_fn, optimizer)
    simulator = anticipate_lib.Simulator(scratch.model, tf.nest.flatten(scratch.weights.trainable))
  # Example passes an attack makes beyond its model's forward passes (reported in num_examples).
  extra_examples = tf.Variable(tf.zeros([], tf.int64), trainable=False, name='extra_examples')

  # No autograph: the control flow below is explicit (tf.cond, dataset reduce), and converting
  # this function and everything it calls was most of a run's tracing time.
  @tf.function(autograph=False)
  def client_update(initial_weights, client_data, optimizer_hparams, global_update=None,
                    has_global_update=None):
    control = client_data['control'].get_single_element()
    client = _ClientPass(local, initial_weights, client_data['benign'], client_data['malicious'],
                         control['seed'], optimizer_hparams,
                         local_training.dropout_key(control['seed']),
                         global_update, has_global_update, simulator, extra_examples)
    extra_examples.assign(tf.zeros([], tf.int64))
    update, num_examples = tf.cond(control['is_malicious'],
                                   lambda: ATTACKERS[attack.mode](client, attack, batch_size),
                                   lambda: _honest(client, attack, batch_size))
    update, has_non_finite = local_training.zero_if_any_non_finite(update)
    weight = tf.cond(has_non_finite > 0, lambda: tf.constant(0.0),
                     lambda: tf.cast(num_examples, tf.float32))
    tf.cond(has_non_finite > 0, _reset_metrics(model), tf.no_op)
    stats = collections.OrderedDict(
        is_malicious=tf.cast(control['is_malicious'], tf.float32),
        update_norm=_global_norm(update),
        nonfinite=tf.cast(has_non_finite > 0, tf.float32))
    metrics = model.report_local_unfinalized_metrics()
    metrics['num_examples'] = [metrics['num_examples'][0] + extra_examples.read_value()]
    return (tff.learning.templates.ClientResult(update=update, update_weight=weight),
            metrics, stats)

  return client_update


def _with_client_info(delta, client_data, server, channel: SideChannel, ddifs=None):
  """OrderedDict(delta, info): the update with the client's ClientInfo (`side_channel`)."""
  control = client_data['control'].get_single_element()
  info = collections.OrderedDict(client=tf.cast(control['client_index'], tf.int32),
                                 is_malicious=control['is_malicious'])
  if channel.ddifs is not None:
    info['ddifs'] = ddifs
  if channel.root_update:
    info['root_update'] = server['root_update']
  return collections.OrderedDict([(side_channel.DELTA, delta), (side_channel.INFO, info)])


def _reset_metrics(model) -> Callable[[], tf.Operation]:
  """A `tf.cond` branch that zeroes the model's metrics (a client whose update is dropped)."""
  def reset():
    model.reset_metrics()
    return tf.no_op()
  return reset


def _hparams_computations(optimizer: tff.learning.optimizers.Optimizer):
  """(init_fn, get_hparams_fn, set_hparams_fn): the state is the client optimizer's hparams."""
  initial_hparams = optimizer.get_hparams(
      optimizer.initialize(tf.TensorSpec(shape=(), dtype=tf.float32)))

  @tff.federated_computation
  def init_fn():
    return tff.federated_value(initial_hparams, tff.SERVER)

  state_type = init_fn.type_signature.result.member

  @tff.tensorflow.computation(state_type)
  def get_hparams_fn(state):
    return state

  @tff.tensorflow.computation(state_type, state_type)
  def set_hparams_fn(state, hparams):
    del state
    return hparams

  return init_fn, get_hparams_fn, set_hparams_fn


def _norm_summary():
  """(per-client stats -> summable parts, summed parts -> the norm measurements) computations."""

  @tff.tensorflow.computation(tff.StructWithPythonType(
      [('is_malicious', np.float32), ('update_norm', np.float32), ('nonfinite', np.float32)],
      collections.OrderedDict))
  def norm_stats(stats):
    malicious = stats['is_malicious']
    return collections.OrderedDict(
        attackers=malicious,
        nonfinite=stats['nonfinite'],
        honest=1.0 - malicious,
        honest_norm=(1.0 - malicious) * stats['update_norm'],
        malicious_norm=malicious * stats['update_norm'])

  @tff.tensorflow.computation(norm_stats.type_signature.result)
  def summarize(sums):
    return collections.OrderedDict(
        num_attackers=tf.cast(tf.round(sums['attackers']), tf.int32),
        nonfinite_count=tf.cast(tf.round(sums['nonfinite']), tf.int32),
        mean_honest_update_norm=tf.math.divide_no_nan(sums['honest_norm'], sums['honest']),
        mean_malicious_update_norm=tf.math.divide_no_nan(sums['malicious_norm'],
                                                         sums['attackers']))

  return norm_stats, summarize


def build_attacker_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    attack: AttackConfig,
    batch_size: int,
    metrics_aggregator: Optional[Callable] = None,
    channel: SideChannel = SideChannel(),
) -> tff.learning.templates.ClientWorkProcess:
  """A `ClientWorkProcess` whose clients may attack (state: the client optimizer hparams).

  `channel` says what travels besides the model and the delta (`learning.side_channel`):
  with a downlink the clients receive `side_channel.client_weights_type` (the distributor
  `learning.distributor.build_distributor(channel=)` sends), and an attack that
  `reads_global_update` (Neurotoxin) needs `channel.global_update`; with an uplink the client
  data carries each client's population index (`make_client_data(client_index=)`) and the
  update is `OrderedDict(delta, info=ClientInfo)`; with `channel.ddifs` the ClientInfo holds
  the DDifs of the update as reported (`learning.ddifs`: of G - delta, after any attacker
  scaling), computed after local training: the client runs its rebuilt model on the DDif
  inputs, and the global model's log-probs on them come down in ServerInfo (the server
  computes them once a round). The weight is the client's examples.

  Measurements: `train` (the model's metrics, as TFF's client work), `num_attackers`,
  `nonfinite_count` (updates with a NaN or Inf, zeroed with weight 0 here, as TFF's own client
  work does, so the aggregator's guard never sees them), `mean_honest_update_norm`,
  `mean_malicious_update_norm`, `max_update_norm`.
  """
  attack.validate_for_client_work()
  if attack.reads_global_update and not channel.global_update:
    raise ValueError(f'--attack={attack.mode} reads the last global update: build the client '
                     'work with channel=SideChannel(global_update=True)')
  if metrics_aggregator is None:
    metrics_aggregator = tff.learning.metrics.sum_then_finalize
  with tf.Graph().as_default():
    model = model_fn()
    metrics_aggregation_fn = metrics_aggregator(model.metric_finalizers())
  element_type = tff.types.tensorflow_to_type(model.input_spec)
  data_type = client_data_type(element_type, channel.uplink)
  weights_type = side_channel.client_weights_type(
      tff.learning.models.weights_type_from_model(model), channel)
  init_fn, get_hparams_fn, set_hparams_fn = _hparams_computations(optimizer)
  state_type = init_fn.type_signature.result.member

  @tff.tensorflow.computation(state_type, weights_type, data_type)
  def client_update_computation(hparams, received, client_data):
    client_update = build_client_update(model_fn, optimizer, attack, batch_size)
    model, server, extra = received, None, ()
    if channel.downlink:
      model, server = received[side_channel.MODEL], received[side_channel.SERVER]
    if attack.reads_global_update:
      extra = (server['global_update'], server['has_global_update'])
    result, metrics, stats = client_update(model, client_data, hparams, *extra)
    ddifs = None
    if channel.ddifs is not None:  # of the update as reported: after scaling and zeroing
      ddifs = ddifs_lib.build_ddif_fn(model_fn, channel.ddifs)(
          model, result.update, server['ddif_global_log_probs'])
    if channel.uplink:
      result = tff.learning.templates.ClientResult(
          update=_with_client_info(result.update, client_data, server, channel, ddifs),
          update_weight=result.update_weight)
    return result, metrics, stats

  norm_stats, summarize = _norm_summary()

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(weights_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, client_data):
    hparams_at_clients = tff.federated_broadcast(state)
    client_result, model_outputs, stats = tff.federated_map(
        client_update_computation, (hparams_at_clients, weights, client_data))
    sums = tff.federated_sum(tff.federated_map(norm_stats, stats))
    summary = tff.federated_map(summarize, sums)
    max_norm = tff.federated_max(stats.update_norm)
    measurements = tff.federated_zip(collections.OrderedDict(
        train=metrics_aggregation_fn(model_outputs),
        num_attackers=summary.num_attackers,
        nonfinite_count=summary.nonfinite_count,
        mean_honest_update_norm=summary.mean_honest_update_norm,
        mean_malicious_update_norm=summary.mean_malicious_update_norm,
        max_update_norm=max_norm))
    return tff.templates.MeasuredProcessOutput(state, client_result, measurements)

  return tff.learning.templates.ClientWorkProcess(
      init_fn, next_fn, get_hparams_fn=get_hparams_fn, set_hparams_fn=set_hparams_fn)
