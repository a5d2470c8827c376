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
  models; here the distributor of `attacks.global_update` broadcasts it with the weights, so
  this mode's client work takes `global_update.client_weights_type` weights. With no previous
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
import functools
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor import models as models_lib
from tff_backdoor.attacks import anticipate as anticipate_lib
from tff_backdoor.attacks import global_update as global_update_lib
from tff_backdoor.attacks.attack_config import AttackConfig
from tff_backdoor.attacks import gradient_transforms

_POISON_SHUFFLE_BUFFER = 100_000
_DROPOUT_KEY = 0x0D0F  # Second word of a client's dropout key: [seed, _DROPOUT_KEY].


def client_data_type(element_type: tff.Type,
                     identify_clients: bool = False) -> tff.StructWithPythonType:
  """The per-client TFF type the attacker client work consumes (with `client_index` in the
  control data if `identify_clients`)."""
  fields = [('is_malicious', np.bool_), ('seed', np.int64)]
  if identify_clients:
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
  index, for a client work built with `identify_clients`)."""
  fields = collections.OrderedDict(
      is_malicious=tf.constant(bool(is_malicious)), seed=tf.constant(int(seed), tf.int64))
  if client_index is not None:
    fields['client_index'] = tf.constant(int(client_index), tf.int64)
  control = tf.data.Dataset.from_tensors(fields)
  return collections.OrderedDict(benign=benign, malicious=malicious, control=control)


def zero_if_any_non_finite(structure):
  """(structure, 0), or (zeros like it, 1) if any value is NaN or Inf.

  What TFF's client work does to an update before it leaves the client (its own
  `tensor_utils.zero_all_if_any_non_finite`, which TFF does not export), in public TF.
  """
  flat = tf.nest.flatten(structure)
  if not flat:
    return structure, tf.constant(0)
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in flat])
  return tf.cond(finite, lambda: (structure, tf.constant(0)),
                 lambda: (tf.nest.map_structure(tf.zeros_like, structure), tf.constant(1)))


def _global_norm(structure) -> tf.Tensor:
  return tf.linalg.global_norm(tf.nest.flatten(structure))


class _LocalTraining:
  """A client's model with local SGD, reset and delta: the steps every mode is made of."""

  def __init__(self, model_fn: Callable[[], tff.learning.models.VariableModel],
               optimizer: tff.learning.optimizers.Optimizer):
    self.model = model_fn()
    self.weights = tff.learning.models.ModelWeights.from_model(self.model)
    self.optimizer = optimizer
    dropout_layers = models_lib.stateless_dropout_layers(self.model)
    # Set before every forward pass; not a model weight (see models.StatelessDropout).
    self.mask_seed = (tf.Variable(tf.zeros([2], tf.int64), trainable=False,
                                  name='dropout_mask_seed') if dropout_layers else None)
    for layer in dropout_layers:
      layer.bind_seed(self.mask_seed)

  def _step(self, pass_key, transform, state, batch):
    """One SGD step (TFF's reduce loop body); batch `step` masks with fold_in(pass_key, step).

    `transform(gradients, trainable)`, if given, changes the gradients before the step.
    """
    num_examples, optimizer_state, step = state
    trainable = self.weights.trainable
    set_seed = [] if self.mask_seed is None else [self.mask_seed.assign(
        tf.random.experimental.stateless_fold_in(pass_key, step))]
    with tf.control_dependencies(set_seed), tf.GradientTape() as tape:
      output = self.model.forward_pass(batch, training=True)
    gradients = tape.gradient(output.loss, trainable)
    if transform is not None:
      gradients = transform(gradients, trainable)
    optimizer_state, updated = self.optimizer.next(
        optimizer_state, tuple(tf.nest.flatten(trainable)), tuple(tf.nest.flatten(gradients)))
    updated = tf.nest.pack_sequence_as(trainable, updated)
    tf.nest.map_structure(lambda v, t: v.assign(t), trainable, updated)
    if output.num_examples is None:
      num_examples += tf.shape(output.predictions, out_type=tf.int64)[0]
    else:
      num_examples += tf.cast(output.num_examples, tf.int64)
    return num_examples, optimizer_state, step + 1

  def train(self, data, optimizer_hparams, pass_key, transform=None):
    """Local SGD over `data` from the current weights; returns the number of examples.

    `pass_key` ([2] int64) keys this pass's dropout masks; `transform` see `_step`.
    """
    specs = tuple(tf.TensorSpec(v.shape, v.dtype)
                  for v in tf.nest.flatten(self.weights.trainable))
    optimizer_state = self.optimizer.set_hparams(self.optimizer.initialize(specs),
                                                 optimizer_hparams)
    num_examples, _, _ = data.reduce(
        (tf.zeros([], tf.int64), optimizer_state, tf.zeros([], tf.int64)),
        functools.partial(self._step, pass_key, transform))
    return num_examples

  def reset(self, initial_weights) -> None:
    tf.nest.map_structure(lambda v, t: v.assign(t), self.weights, initial_weights)

  def delta(self, initial_weights):
    return tf.nest.map_structure(tf.subtract, initial_weights.trainable, self.weights.trainable)


@dataclasses.dataclass
class _ClientPass:
  """What one client's update is computed from (inside the traced `client_update`)."""
  local: _LocalTraining
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

  def pass_key(self, index) -> tf.Tensor:
    """Key of the client's `index`-th training pass (distinct per pass of one client)."""
    return tf.random.experimental.stateless_fold_in(self.client_key, index)

  def train(self, data, index, transform=None):
    return self.local.train(data, self.hparams, self.pass_key(index), transform)

  def restart(self) -> None:
    self.local.reset(self.initial_weights)

  def delta(self):
    return self.local.delta(self.initial_weights)


def _honest(c: _ClientPass, attack: AttackConfig, batch_size: int):
  del attack, batch_size
  c.restart()
  num_examples = c.train(c.benign, 0)
  return c.delta(), num_examples


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
# Modes whose client work receives the last global update with the weights (global_update).
GLOBAL_UPDATE_MODES = ('neurotoxin',)


def build_client_update(model_fn: Callable[[], tff.learning.models.VariableModel],
                        optimizer: tff.learning.optimizers.Optimizer,
                        attack: AttackConfig,
                        batch_size: int,
                        identify_clients: bool = False) -> Callable:
  """Returns a `tf.function` computing one client's update, honest or malicious.

  `batch_size` re-batches the shuffled mixture of benign and malicious examples in
  `data_poison`, `neurotoxin` and `constrain_scale` modes (the others use the client's batches
  as given). For `GLOBAL_UPDATE_MODES`, pass the last global update (trainable structure) and
  whether there is one (bool scalar). With `identify_clients`, the update's weight is the
  control's `client_index` + 1 (what `aggregators.foolsgold` reads), not its examples.
  """
  attack.validate_for_client_work()
  local = _LocalTraining(model_fn, optimizer)
  model = local.model
  simulator = None
  if attack.mode == 'anticipate':
    scratch = _LocalTraining(model_fn, optimizer)
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
                         tf.stack([control['seed'], tf.constant(_DROPOUT_KEY, tf.int64)]),
                         global_update, has_global_update, simulator, extra_examples)
    extra_examples.assign(tf.zeros([], tf.int64))
    update, num_examples = tf.cond(control['is_malicious'],
                                   lambda: ATTACKERS[attack.mode](client, attack, batch_size),
                                   lambda: _honest(client, attack, batch_size))
    update, has_non_finite = zero_if_any_non_finite(update)
    if identify_clients:
      num_examples = control['client_index'] + 1
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
    metrics_aggregator=None,
    identify_clients: bool = False,
) -> tff.learning.templates.ClientWorkProcess:
  """A `ClientWorkProcess` whose clients may attack (state: the client optimizer hparams).

  For `GLOBAL_UPDATE_MODES` the weights the clients receive are
  `attacks.global_update.client_weights_type` (the model, the last global update, whether
  there is one); `process.compose_fed_avg` gives such a client work the distributor that
  sends them. With `identify_clients` the client data carries each client's population index
  (`make_client_data(client_index=)`) and the weight is that index + 1, for FoolsGold.

  Measurements: `train` (the model's metrics, as TFF's client work), `num_attackers`,
  `nonfinite_count` (updates with a NaN or Inf, zeroed with weight 0 here, as TFF's own client
  work does, so the aggregator's guard never sees them), `mean_honest_update_norm`,
  `mean_malicious_update_norm`, `max_update_norm`.
  """
  attack.validate_for_client_work()
  if metrics_aggregator is None:
    metrics_aggregator = tff.learning.metrics.sum_then_finalize
  with tf.Graph().as_default():
    model = model_fn()
    metrics_aggregation_fn = metrics_aggregator(model.metric_finalizers())
  element_type = tff.types.tensorflow_to_type(model.input_spec)
  data_type = client_data_type(element_type, identify_clients)
  weights_type = tff.learning.models.weights_type_from_model(model)
  with_update = attack.mode in GLOBAL_UPDATE_MODES
  if with_update:
    weights_type = global_update_lib.client_weights_type(weights_type)
  init_fn, get_hparams_fn, set_hparams_fn = _hparams_computations(optimizer)
  state_type = init_fn.type_signature.result.member

  @tff.tensorflow.computation(state_type, weights_type, data_type)
  def client_update_computation(hparams, initial_weights, client_data):
    client_update = build_client_update(model_fn, optimizer, attack, batch_size,
                                        identify_clients)
    if with_update:
      return client_update(initial_weights['model'], client_data, hparams,
                           initial_weights['last_update'], initial_weights['has_last_update'])
    return client_update(initial_weights, client_data, hparams)

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
