"""The experiment loop: data -> backdoor task -> schedule -> TFF process -> rounds -> metrics.

`ExperimentConfig` holds every knob of `experiments/emnist_backdoor.py` (one field per flag);
`run_experiment(config)` is what the script's `main` calls, so tests reach every step.
Every random choice flows from `config.seed` through independent NumPy streams (partition,
backdoor task, schedule, per-round data), the seeded model initializers and the seeded DP noise.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor import anomaly
from tff_backdoor import checkpoint
from tff_backdoor import data as data_lib
from tff_backdoor.data import partition as partition_lib
from tff_backdoor import flain as flain_lib
from tff_backdoor import metrics_io
from tff_backdoor import models
from tff_backdoor import process as process_lib
from tff_backdoor import run_summary
from tff_backdoor import warm_start
from tff_backdoor.aggregators import registry as defense_registry
from tff_backdoor.attacks import schedules as schedules_lib
from tff_backdoor.attacks import tasks as tasks_lib
from tff_backdoor.attacks.client_work import ATTACK_MODES, AttackConfig, make_client_data

TASKS = ('none', 'targeted', 'pixel')
ArrayPair = Tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class ExperimentConfig:
  """Everything one run needs; field names equal the experiment's flag names."""
  # Data.
  dataset: str = 'fashion_mnist'
  data_dir: Optional[str] = None
  cache_dir: Optional[str] = None
  only_digits: bool = True
  partition: str = 'dirichlet'
  num_clients: Optional[int] = None  # None: 100 for centralised data, every writer for
                                     # emnist/femnist (0 = every writer as well)
  alpha: float = 0.5
  shards_per_client: int = 2
  server_holdout: Optional[int] = None  # None: 1000, at most a fifth of a writer test split
  train_fraction: float = 1.0  # seeded, class-stratified share of centralised training data
  # Model and FedAvg.
  model: str = 'sun_cnn'
  rounds: int = 20
  clients_per_round: int = 10
  local_epochs: int = 1
  batch_size: int = 20
  client_lr: float = 0.1
  server_lr: float = 1.0
  # Backdoor task.
  task: str = 'none'
  num_tasks: int = 1
  task_samples_per_client: int = 0  # targeted: cap on relabelled images per target client
  task_min_samples: int = 0  # targeted: target clients hold at least this many source images
  source_class: int = 7
  target_class: int = 1
  keep_honest_copies: bool = True
  poison_fraction: float = 0.5
  trigger_size: int = 5
  trigger_value: float = -1.0  # < 0: opposite of the background (white on MNIST, ink on EMNIST)
  trigger_pattern: str = 'square'
  distributed_parts: int = 1
  # Attacker.
  attack: str = 'boost'
  boost: float = 0.0  # 0 = clients_per_round (model replacement)
  norm_bound: float = 0.33
  projection_rounds: int = 5
  # Sun et al.'s code passes the malicious set as ONE batch, once per pass (one SGD step):
  malicious_epochs: int = 0  # 0 = 1 for boost/norm_bounded, local_epochs for data_poison
  malicious_batch_size: int = 0  # 0 = the whole malicious set as one batch
  schedule: str = 'none'
  attack_every: int = 1
  malicious_fraction: float = 0.1
  attackers_per_round: int = 1
  attack_start: int = 0
  attack_stop: int = 0  # 0 = never stop
  # Defense.
  defense: defense_registry.DefenseConfig = dataclasses.field(
      default_factory=defense_registry.DefenseConfig)
  # Run.
  seed: int = 0
  output_dir: str = '/tmp/tff_backdoor_run'
  eval_every: int = 1
  eval_batch_size: int = 500
  # Main-task test images of the evaluations before the last round (a fixed, seeded,
  # class-stratified subset; the last round and backdoor sets are always whole); 0 = all.
  eval_subset: int = 4000
  workers: str = ''  # 'host:port,...': run TFF on these C++ workers (remote.py); '' = local
  num_subrounds: int = 0  # with workers: shares a round's clients are split into (0: per client)
  checkpoint_every: int = 0  # rounds between checkpoints (0 = none)
  keep_checkpoints: int = checkpoint.DEFAULT_KEEP  # newest intact checkpoints kept (>= 1)
  resume: bool = False  # continue from output_dir's newest checkpoint
  init_from: str = ''  # a run directory: start from its final model (or newest checkpoint's)
  # Not flags: what --init_from loaded, recorded in config.json by run_experiment (warm_start).
  init_from_file: str = ''
  init_from_sha256: str = ''
  init_from_rounds: int = 0
  capture_rounds: str = ''  # e.g. '0-9,20' or 'all': save every client's update (anomaly.py)
  # FLAIN, applied once to the final global model (flain.py).
  flain: bool = False
  flain_aux_per_class: int = 80
  flain_layer: str = ''  # '' = first Dense layer; 'all_dense' = every Dense layer
  flain_mode: str = 'quantile'
  flain_k0: float = -1.0  # < 0: the mode's default
  flain_step: float = -1.0  # < 0: the mode's default
  flain_tolerance: float = 0.01

  def flain_config(self) -> flain_lib.FlainConfig:
    return flain_lib.FlainConfig(
        layer=self.flain_layer or None, threshold_mode=self.flain_mode,
        k0=None if self.flain_k0 < 0 else self.flain_k0,
        step=None if self.flain_step < 0 else self.flain_step,
        tolerance=self.flain_tolerance)
  tensorboard: bool = True
  verbose: bool = True

  def attack_config(self) -> AttackConfig:
    return AttackConfig(mode=self.attack,
                        boost=float(self.boost or self.clients_per_round),
                        norm_bound=self.norm_bound,
                        projection_rounds=self.projection_rounds)

  def validate(self) -> 'ExperimentConfig':
    """Raises ValueError with a one-line message for impossible settings."""
    positive_ints = ('rounds', 'clients_per_round', 'local_epochs', 'batch_size', 'eval_every',
                     'num_clients', 'num_tasks', 'trigger_size', 'distributed_parts',
                     'attack_every', 'projection_rounds', 'eval_batch_size', 'keep_checkpoints')
    natural = self.dataset in data_lib.NATURAL_DATASETS
    for name in positive_ints:
      value = getattr(self, name)
      if name == 'num_clients' and (value is None or (natural and value == 0)):
        continue
      if value < 1:
        raise ValueError(f'--{name} must be >= 1, got {value}')
    for name in ('client_lr', 'server_lr'):
      value = getattr(self, name)
      if not np.isfinite(value) or value <= 0:
        raise ValueError(f'--{name} must be a positive number, got {value}')
    for name in ('task_samples_per_client', 'task_min_samples', 'malicious_epochs',
                 'malicious_batch_size', 'attack_start', 'attack_stop', 'server_holdout', 'seed',
                 'checkpoint_every', 'num_subrounds', 'eval_subset'):
      if getattr(self, name) is not None and getattr(self, name) < 0:
        raise ValueError(f'--{name} must be >= 0, got {getattr(self, name)}')
    if self.dataset not in data_lib.DATASETS:
      raise ValueError(f'unknown --dataset={self.dataset!r}; choose one of '
                       f'{", ".join(data_lib.DATASETS)}')
    if not natural and self.partition not in data_lib.PARTITIONS:
      raise ValueError(f'unknown --partition={self.partition!r}; choose one of '
                       f'{", ".join(data_lib.PARTITIONS)}')
    if self.model not in models.MODEL_BUILDERS:
      raise ValueError(f'unknown --model={self.model!r}; choose one of '
                       f'{", ".join(sorted(models.MODEL_BUILDERS))}')
    if self.task not in TASKS:
      raise ValueError(f'unknown --task={self.task!r}; choose one of {", ".join(TASKS)}')
    if self.attack not in ATTACK_MODES:
      raise ValueError(f'unknown --attack={self.attack!r}; choose one of '
                       f'{", ".join(ATTACK_MODES)}')
    if self.schedule not in schedules_lib.SCHEDULES:
      raise ValueError(f'unknown --schedule={self.schedule!r}; choose one of '
                       f'{", ".join(schedules_lib.SCHEDULES)}')
    if self.dataset == 'femnist' and not self.data_dir:
      raise ValueError('--dataset=femnist needs --data_dir (a LEAF folder with train/ and test/)')
    if (self.num_clients or 0) > 0 and self.clients_per_round > self.num_clients:
      raise ValueError(f'--clients_per_round={self.clients_per_round} is larger than '
                       f'--num_clients={self.num_clients}')
    if self.schedule != 'none' and self.task == 'none':
      raise ValueError(f'--schedule={self.schedule} needs a backdoor --task (targeted or pixel)')
    if self.boost < 0:
      raise ValueError(f'--boost must be >= 0 (0 = clients_per_round), got {self.boost}')
    if not 0 < self.poison_fraction <= 1:
      raise ValueError(f'--poison_fraction must be in (0, 1], got {self.poison_fraction}')
    if self.attack_stop and self.attack_stop <= self.attack_start:
      raise ValueError(f'--attack_stop={self.attack_stop} must be after '
                       f'--attack_start={self.attack_start}')
    self.attack_config().validate()
    parse_rounds(self.capture_rounds, self.rounds)
    if self.init_from:
      warm_start.resolve(self.init_from, self.output_dir)
    if self.workers:
      from tff_backdoor import remote  # pylint: disable=g-import-not-at-top
      remote.parse_workers(self.workers)
    if self.flain:
      self.flain_config()  # raises ValueError on bad FLAIN settings
      if self.flain_aux_per_class < 1:
        raise ValueError(f'--flain_aux_per_class must be >= 1, got {self.flain_aux_per_class}')
      if self.server_holdout is not None and self.server_holdout < 1:
        raise ValueError('--flain needs server-side auxiliary data: set --server_holdout > 0')
    defense_registry.validate_defense(self.defense, self.clients_per_round)
    return self

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> 'ExperimentConfig':
    """The inverse of to_dict (a run's config.json); unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f'unknown config keys: {", ".join(unknown)}')
    values = dict(values)
    if isinstance(values.get('defense'), dict):
      values['defense'] = defense_registry.DefenseConfig(**values['defense'])
    return cls(**values)


@dataclasses.dataclass
class ExperimentSetup:
  """What `prepare` builds before the first round; tests and tools can inspect or reuse it."""
  config: ExperimentConfig
  data: data_lib.FederatedData
  clients: Dict[str, ArrayPair]
  client_ids: List[str]
  task: Optional[tasks_lib.BackdoorTask]
  schedule: Any
  keras_builder: Callable[[], tf.keras.Model]
  process: tff.learning.templates.LearningProcess
  client_work: tff.learning.templates.ClientWorkProcess
  eval_sets: Dict[str, ArrayPair]
  # `process` with `capture_updates=True` (same state type), built when --capture_rounds is set.
  capture_process: Optional[tff.learning.templates.LearningProcess] = None


def parse_rounds(spec: str, total_rounds: int) -> set:
  """'0-4,10' -> {0,1,2,3,4,10}; 'all' -> every round; '' -> none. Rounds are 0-based."""
  spec = (spec or '').strip()
  if not spec:
    return set()
  if spec == 'all':
    return set(range(total_rounds))
  rounds = set()
  for part in spec.split(','):
    try:
      lo, _, hi = part.strip().partition('-')
      lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
      raise ValueError(f"bad round list {spec!r}: use e.g. '0-4,10' or 'all'") from None
    if lo_i < 0 or hi_i < lo_i or hi_i >= total_rounds:
      raise ValueError(f'bad round range {part.strip()!r} for {total_rounds} rounds (0-based)')
    rounds.update(range(lo_i, hi_i + 1))
  return rounds


def _streams(seed: int) -> Dict[str, np.random.Generator]:
  """Independent RNG streams, so adding draws to one never shifts another."""
  names = ('task', 'schedule', 'sampling', 'round_data')
  children = np.random.SeedSequence(seed).spawn(len(names))
  return {n: np.random.default_rng(s) for n, s in zip(names, children)}


def build_task(config: ExperimentConfig, data: data_lib.FederatedData,
               clients: Dict[str, ArrayPair], seed: int) -> Optional[tasks_lib.BackdoorTask]:
  """The backdoor task named by the config (None for --task=none)."""
  if config.task == 'none':
    return None
  if config.task == 'targeted':
    return tasks_lib.TargetedTask.build(
        clients, num_tasks=config.num_tasks, source_class=config.source_class,
        target_class=config.target_class, seed=seed,
        keep_honest_copies=config.keep_honest_copies, num_classes=data.num_classes,
        samples_per_client=config.task_samples_per_client,
        min_samples_per_client=config.task_min_samples,
        heldout_arrays=data.test_by_client,
        collateral_arrays=data.test_by_client or {'': data.test})
  source = None if config.source_class < 0 else config.source_class
  value = config.trigger_value
  if value < 0:  # (F)EMNIST: ink 0 on background 1, where a "white" square would be invisible.
    value = 1.0 - float(data.partition_report.get('background_value', 0.0))
  return tasks_lib.PixelTriggerTask(
      data.test[0], data.test[1], source_class=source, target_class=config.target_class,
      poison_fraction=config.poison_fraction, trigger_size=config.trigger_size,
      trigger_value=value, pattern=config.trigger_pattern,
      distributed_parts=config.distributed_parts, num_classes=data.num_classes)


def build_schedule(config: ExperimentConfig, client_ids: Sequence[str], seed: int):
  """The attacker schedule named by the config."""
  params: Dict[str, Any] = dict(start_round=config.attack_start,
                                stop_round=config.attack_stop or None)
  if config.schedule == 'fixed_frequency':
    params.update(attack_every=config.attack_every)
  elif config.schedule == 'random_fraction':
    params.update(malicious_fraction=config.malicious_fraction, client_ids=client_ids, seed=seed)
  elif config.schedule == 'fixed_per_round':
    params.update(malicious_fraction=config.malicious_fraction, client_ids=client_ids,
                  attackers_per_round=config.attackers_per_round, seed=seed)
  elif config.schedule == 'none':
    params = {}
  return schedules_lib.build_schedule(config.schedule, **params)


def load_data(config: ExperimentConfig) -> data_lib.FederatedData:
  """The run's clients, test and server splits (the same for the same config and seed)."""
  return data_lib.load_federated_data(
      config.dataset, data_dir=config.data_dir, partition=config.partition,
      num_clients=config.num_clients, alpha=config.alpha,
      shards_per_client=config.shards_per_client, server_holdout=config.server_holdout,
      seed=config.seed, only_digits=config.only_digits, cache_dir=config.cache_dir,
      train_fraction=config.train_fraction)


def load_run_config(run_dir: str, *required: str) -> ExperimentConfig:
  """A finished run's ExperimentConfig; also checks that its `required` files exist."""
  for name in ('config.json', *required):
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} not found: is {run_dir} a finished run directory?')
  with open(os.path.join(run_dir, 'config.json')) as f:
    return ExperimentConfig.from_dict(json.load(f))


def prepare(config: ExperimentConfig) -> ExperimentSetup:
  """Loads data, builds the task, the schedule and the TFF learning process."""
  config.validate()
  if config.workers:
    from tff_backdoor import remote  # pylint: disable=g-import-not-at-top
    remote.set_remote_execution_context(remote.parse_workers(config.workers),
                                        num_subrounds=config.num_subrounds or None)
  streams = _streams(config.seed)
  data = load_data(config)
  client_ids = sorted(data.train.client_ids)
  if config.clients_per_round > len(client_ids):
    raise ValueError(f'--clients_per_round={config.clients_per_round} is larger than the '
                     f'{len(client_ids)} clients of {config.dataset}')
  clients = data_lib.client_arrays(data.train, client_ids)
  task = build_task(config, data, clients, seed=int(streams['task'].integers(2**31)))
  schedule = build_schedule(config, client_ids, seed=int(streams['schedule'].integers(2**31)))
  keras_builder = lambda: models.build_model(config.model, data.input_shape, data.num_classes,
                                             seed=config.seed)
  if config.flain:  # fail now, not after training, on a bad --flain_layer or server split
    flain_lib.target_layers(keras_builder(), config.flain_layer or None)
    flain_lib.select_auxiliary(*data.server, per_class=config.flain_aux_per_class,
                               seed=config.seed, num_classes=data.num_classes)
  model_fn = process_lib.keras_model_fn(keras_builder, data.input_shape)
  aggregator = defense_registry.build_defense(config.defense, config.clients_per_round,
                                              seed=config.seed)
  client_work = process_lib.build_client_work(
      model_fn, client_learning_rate=config.client_lr, batch_size=config.batch_size,
      attack=config.attack_config())
  process_args = dict(
      client_learning_rate=config.client_lr, server_learning_rate=config.server_lr,
      batch_size=config.batch_size, attack=config.attack_config(), model_aggregator=aggregator,
      client_work=client_work)
  learning_process = process_lib.build_backdoor_process(model_fn, **process_args)
  capture_process = None
  if config.capture_rounds.strip():  # remote workers cannot write into our output_dir
    capture_process = process_lib.build_backdoor_process(
        model_fn, capture_updates=True, **process_args,
        capture_spool_dir=None if config.workers else capture_spool_dir(config))
  eval_sets = {'test': data.test}
  if task is not None:
    eval_sets.update(task.eval_sets())
  return ExperimentSetup(config, data, clients, client_ids, task, schedule, keras_builder,
                         learning_process, client_work, eval_sets, capture_process)


def _epoch_batches(x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
                   rng: np.random.Generator) -> tf.data.Dataset:
  """`epochs` shuffled passes over (x, y), batched; the shuffle comes from `rng`."""
  n = len(y)
  order = (np.concatenate([rng.permutation(n) for _ in range(epochs)])
           if n else np.zeros([0], np.int64))
  return process_lib.client_dataset(x[order], y[order], max(batch_size, 1))


def round_client_data(setup: ExperimentSetup, participants, rng: np.random.Generator):
  """Per-client TFF inputs for one round, plus which participants attack."""
  config = setup.config
  mal_epochs = config.malicious_epochs or (
      config.local_epochs if config.attack == 'data_poison' else 1)
  empty_x = np.zeros([0, *setup.data.input_shape], np.float32)
  empty = (empty_x, np.zeros([0], np.int32))
  inputs, flags = [], []
  for p in participants:
    x, y = setup.clients[p.client_id]
    if p.is_attacker:
      (bx, by), (mx, my) = setup.task.attacker_data(p.client_id, x, y, p.attacker_index, rng)
    else:
      (bx, by) = setup.task.honest_data(p.client_id, x, y) if setup.task else (x, y)
      mx, my = empty
    mal_batch = config.malicious_batch_size or max(len(my), 1)
    inputs.append(make_client_data(
        _epoch_batches(bx, by, config.local_epochs, config.batch_size, rng),
        _epoch_batches(mx, my, mal_epochs if len(my) else 0, mal_batch, rng),
        is_malicious=p.is_attacker, seed=int(rng.integers(2**31))))
    flags.append(bool(p.is_attacker))
  return inputs, flags


_EVAL_SUBSET_KEY = 0xE7A1  # second word of the eval subset's seed: [seed, _EVAL_SUBSET_KEY]


def between_rounds_eval_sets(setup: ExperimentSetup) -> Dict[str, ArrayPair]:
  """The evaluation sets of the rounds before the last: `test` cut to `--eval_subset` images.

  The subset is class-stratified and drawn once from `--seed` (the same images every round
  and in every run with that seed, so curves and paired comparisons stay smooth); the
  backdoor sets stay whole, and the last round uses `setup.eval_sets` as they are.
  """
  n = setup.config.eval_subset
  x, y = setup.eval_sets['test']
  if not n or n >= len(y):
    return setup.eval_sets
  keep, _ = partition_lib.stratified_holdout(y, n, seed=[setup.config.seed, _EVAL_SUBSET_KEY])
  return {**setup.eval_sets, 'test': (x[keep], y[keep])}


class Evaluator:
  """Evaluation of the global (Keras) model on the named evaluation sets, in the parent process.

  `evaluate` gives exactly what `model.evaluate(x, y, batch_size)` gives (tests compare them
  bit for bit): the same batches in order, each batch's mean loss weighted by its size and
  the correct argmax predictions, summed in float32 in the same order. It runs one compiled
  loop over a whole set instead, without Keras' per-call data adapter, callbacks and
  per-batch Python steps: about 15-20% less time on the Sun CNN (bench/eval_share.py).
  """

  def __init__(self, keras_builder: Callable[[], tf.keras.Model], batch_size: int):
    self.model = keras_builder()
    self._loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    self.model.compile(loss=self._loss, metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
    self.batch_size = batch_size
    self._sums = tf.function(self._set_sums, input_signature=(  # one trace for every set
        tf.TensorSpec([None, *self.model.input_shape[1:]], tf.float32),
        tf.TensorSpec([None], tf.int64)))

  def load(self, weights: tff.learning.models.ModelWeights) -> tf.keras.Model:
    weights.assign_weights_to(self.model)
    return self.model

  def _set_sums(self, x: tf.Tensor, y: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(mean loss, accuracy) over (x, y), batch by batch as Keras' test loop computes them."""
    size = self.batch_size
    num_batches = (tf.shape(y)[0] + size - 1) // size

    def body(i, loss_sum, correct, count):
      xb, yb = x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]
      logits = self.model(xb, training=False)
      n = tf.cast(tf.shape(yb)[0], tf.float32)
      loss = self._loss(yb, logits)
      if self.model.losses:  # regularization, as Keras adds it to the reported loss
        loss += tf.add_n(self.model.losses)
      hits = tf.equal(yb, tf.argmax(logits, axis=-1))
      return (i + 1, loss_sum + loss * n, correct + tf.reduce_sum(tf.cast(hits, tf.float32)),
              count + n)

    zero = tf.constant(0.0)
    _, loss_sum, correct, count = tf.while_loop(
        lambda i, *_: i < num_batches, body, (tf.constant(0), zero, zero, zero))
    return tf.math.divide_no_nan(loss_sum, count), tf.math.divide_no_nan(correct, count)

  def evaluate(self, eval_sets: Dict[str, ArrayPair]) -> Dict[str, float]:
    """`{name}_accuracy` and `{name}_loss` of every non-empty set."""
    out = {}
    for name, (x, y) in eval_sets.items():
      if len(y) == 0:
        continue
      # Keras casts the same way (float inputs to the layers' float32, labels to int64).
      loss, acc = self._sums(tf.cast(x, tf.float32), tf.cast(np.reshape(y, [-1]), tf.int64))
      out[f'{name}_accuracy'] = float(acc)
      out[f'{name}_loss'] = float(loss)
    return out


def capture_spool_dir(config: ExperimentConfig) -> str:
  """Where a local run's capture rounds spool client updates (process.with_update_capture)."""
  return os.path.abspath(os.path.join(config.output_dir, '.capture_spool'))


def save_capture(directory: str, round_num: int, stacked: Sequence[np.ndarray],
                 variable_names: Sequence[str], participants) -> str:
  """Writes one round's per-client updates (row i = participants[i]) for anomaly.py.

  Uncompressed: compressing float updates would cost a capture round more than its training
  for a ~17% smaller file (anomaly.save_round_capture).
  """
  return anomaly.save_round_capture(
      directory, round_num, stacked, list(variable_names), [p.client_id for p in participants],
      np.array([p.is_attacker for p in participants], dtype=bool), compress=False)


def capture_round(setup: ExperimentSetup, state, client_data, participants, round_num: int,
                  directory: str, variable_names: Sequence[str]) -> str:
  """Saves every participant's update of this round by re-running their training.

  The reference path (it pays for the round's client training twice); the experiment loop
  reads the same updates off the round itself (`setup.capture_process`) and tests check
  that both save the same arrays.
  """
  updates = process_lib.capture_client_updates(
      setup.client_work, state, setup.process.get_model_weights(state), client_data)
  stacked = [np.stack([u[v] for u in updates]) for v in range(len(variable_names))]
  return save_capture(directory, round_num, stacked, variable_names, participants)


def run_flain(setup: ExperimentSetup, final_model: tf.keras.Model,
              initial_weights: Sequence[np.ndarray], evaluator: 'Evaluator',
              before: Dict[str, float], progress: Optional['Progress'] = None
              ) -> Dict[str, Any]:
  """Applies FLAIN to the final model with server-side auxiliary data; saves and reports it."""
  config = setup.config
  aux_x, aux_y = flain_lib.select_auxiliary(
      *setup.data.server, per_class=config.flain_aux_per_class, seed=config.seed,
      num_classes=setup.data.num_classes)
  defended, report = flain_lib.apply_flain(final_model, initial_weights, aux_x, aux_y,
                                           config.flain_config())
  evaluator.model.set_weights(defended.get_weights())
  after = evaluator.evaluate(setup.eval_sets)
  evaluator.model.save(os.path.join(config.output_dir, 'flain_model.keras'))
  result = {'before': before, 'after': after, 'report': report.to_dict()}
  metrics_io.write_json(os.path.join(config.output_dir, 'flain.json'), result)
  if config.verbose:
    line = [f'FLAIN ({report.threshold_mode} k={report.threshold:.4g}, '
            f'{report.num_flipped} neurons flipped, {report.seconds:.1f}s)']
    for key in ('test_accuracy', 'backdoor_accuracy'):
      if key in after:
        line.append(f'{key} {before.get(key, float("nan")):.4f} -> {after[key]:.4f}')
    (progress.write if progress else print)(' | '.join(line))
  return result


FLAIN_FIELDS = ('flain_aux_per_class', 'flain_layer', 'flain_mode', 'flain_k0', 'flain_step',
                'flain_tolerance')


def reapply_flain(run_dir: str, output_dir: str, **flain_options: Any) -> Dict[str, Any]:
  """Applies FLAIN with other options to a finished run's final model, without retraining.

  Rebuilds the run's data, task and evaluation sets from its config.json (same seed, so the
  same splits), loads final_model.keras and initial_weights.npz, and writes flain.json and
  flain_model.keras to `output_dir` (which must differ from `run_dir`). `flain_options` are
  ExperimentConfig's flain_* fields.
  """
  bad = sorted(set(flain_options) - set(FLAIN_FIELDS))
  if bad:
    raise ValueError(f'not FLAIN options: {", ".join(bad)}')
  config = load_run_config(run_dir, 'final_model.keras', 'initial_weights.npz')
  if os.path.abspath(output_dir) == os.path.abspath(run_dir):
    raise ValueError('--output_dir must differ from the run directory (its FLAIN files stay)')
  config = dataclasses.replace(config, flain=True, output_dir=output_dir, resume=False,
                               capture_rounds='', workers='', **flain_options)
  setup = prepare(config)
  evaluator = Evaluator(setup.keras_builder, config.eval_batch_size)
  evaluator.model.load_weights(os.path.join(run_dir, 'final_model.keras'))
  with np.load(os.path.join(run_dir, 'initial_weights.npz')) as npz:
    initial = [npz[f'arr_{i}'] for i in range(len(npz.files))]
  os.makedirs(output_dir, exist_ok=True)
  metrics_io.write_json(os.path.join(output_dir, 'config.json'), config.to_dict())
  before = evaluator.evaluate(setup.eval_sets)
  return run_flain(setup, evaluator.model, initial, evaluator, before)


def _round_line(row: Dict[str, Any], rounds: int) -> str:
  parts = [f"round {row['round'] + 1:4d}/{rounds}"]
  for key, label in (('train_accuracy', 'train_acc'), ('test_accuracy', 'test_acc'),
                     ('test_loss', 'test_loss'), ('backdoor_accuracy', 'backdoor_acc'),
                     ('backdoor_heldout_accuracy', 'backdoor_heldout'),
                     ('collateral_accuracy', 'collateral')):
    if row.get(key) is not None:
      parts.append(f'{label} {row[key]:.4f}')
  parts.append(f"attackers {row.get('num_attackers', 0)}")
  parts.append(f"{row['round_seconds']:.1f}s")
  return ' | '.join(parts)


def describe_setup(setup: ExperimentSetup) -> str:
  """One line saying what data, clients, task and defense this run uses."""
  report, config = setup.data.partition_report, setup.config
  sizes = report.get('client_sizes', {})
  parts = [f"{setup.data.name}: {report.get('num_clients', len(setup.client_ids))} clients "
           f"({report.get('partition', 'natural')}), {report.get('num_examples', 0)} images, "
           f"sizes min/median/max "
           f"{sizes.get('min', 0):.0f}/{sizes.get('median', 0):.0f}/{sizes.get('max', 0):.0f}",
           f'test {len(setup.data.test[1])}, server {len(setup.data.server[1])}',
           f'{config.clients_per_round} per round']
  if setup.task is not None:
    sizes = {k: len(v[1]) for k, v in setup.task.eval_sets().items()}
    parts.append(f'task {setup.task.name} ({", ".join(f"{k} {n}" for k, n in sizes.items())})'
                 f', attack {config.attack} via {config.schedule}')
  parts.append(f'defense {config.defense.name}')
  if 'writers_listed' in report:
    parts.insert(1, _writers_line(report))
  return ' | '.join(parts)


def _writers_line(report: Dict[str, Any]) -> str:
  """What a writer-partitioned source used: writers kept and dropped, digits, test writers."""
  dropped = report.get('writers_dropped_no_digits', 0)
  return (f"{report['num_clients']} of {report['writers_listed']} train writers"
          + (f' ({dropped} without digits dropped)' if dropped else '')
          + (f", a seeded subset of {report['num_clients']}"
             if report['params'].get('num_clients') else '')
          + f", {report.get('train_digits', 0)} digits; test {report.get('test_size', 0)} "
          f"images from {report.get('test_writers', 0)} writers")


class Progress:
  """A tqdm bar (round, accuracies, ETA) on a terminal; one plain line per round otherwise."""

  def __init__(self, total: int, done: int, enabled: bool, tty: Optional[bool] = None):
    self.total, self.enabled = total, enabled
    self.tty = sys.stdout.isatty() if tty is None else tty
    self._bar = None
    self._start, self._done0 = time.time(), done
    if enabled and self.tty:
      import tqdm  # pylint: disable=g-import-not-at-top  (a TFF dependency)
      self._bar = tqdm.tqdm(total=total, initial=done, unit='round', dynamic_ncols=True)

  def eta_seconds(self, done: int) -> float:
    rate = (time.time() - self._start) / max(done - self._done0, 1)
    return rate * (self.total - done)

  def update(self, row: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      postfix = {'test_acc': row.get('test_accuracy'), 'backdoor': row.get('backdoor_accuracy')}
      self._bar.set_postfix({k: f'{v:.3f}' for k, v in postfix.items() if v is not None})
      self._bar.update(1)
    else:
      eta = self.eta_seconds(row['round'] + 1)
      print(f'{_round_line(row, self.total)} | eta {int(eta // 60)}m{int(eta % 60):02d}s',
            flush=True)

  def write(self, line: str) -> None:
    if self.enabled:
      (self._bar.write if self._bar is not None else print)(line)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _resume(config: ExperimentConfig, setup: ExperimentSetup, state, streams):
  """Loads the newest intact checkpoint of an interrupted run; returns (state, next round, meta).

  A damaged newer checkpoint is skipped with one line on stderr; none intact: CheckpointError.
  """
  directory = os.path.join(config.output_dir, 'checkpoints')
  if not checkpoint.has_checkpoints(directory):
    return state, 0, {}
  with open(os.path.join(config.output_dir, 'config.json')) as f:
    saved = json.load(f)
  current = json.loads(json.dumps(config.to_dict()))
  ignored = ('resume', 'verbose', 'checkpoint_every', 'keep_checkpoints', 'workers',
             'num_subrounds')
  # Keys newer than the run's config.json count as equal when they keep their default.
  defaults = json.loads(json.dumps(ExperimentConfig().to_dict()))
  diff = sorted(k for k in current if k not in ignored and saved.get(k) != current[k]
                and (k in saved or current[k] != defaults.get(k)))
  if diff:
    raise ValueError(f'cannot --resume: {config.output_dir} was run with different '
                     f'{", ".join(diff)}; use a new --output_dir')
  state, meta, _ = checkpoint.restore_newest(
      directory, state, warn=lambda line: print(line, file=sys.stderr, flush=True))
  for name in ('round_data', 'sampling'):
    streams[name].bit_generator.state = meta['rng'][name]
  return state, int(meta['next_round']), meta


def _round_row(round_num: int, flat: Dict[str, Any], flags: Sequence[bool]) -> Dict[str, Any]:
  row: Dict[str, Any] = {'round': round_num}
  row['train_accuracy'] = flat.get('client_work/train/sparse_categorical_accuracy')
  row['train_loss'] = flat.get('client_work/train/loss')
  row['num_attackers'] = int(sum(flags))
  for key in ('mean_honest_update_norm', 'mean_malicious_update_norm', 'max_update_norm'):
    row[key] = flat.get(f'client_work/{key}')
  row.update({k: v for k, v in flat.items()
              if k.startswith('aggregator/') and not isinstance(v, list)})
  return row


def run_experiment(config: ExperimentConfig,
                   setup: Optional[ExperimentSetup] = None) -> Dict[str, Any]:
  """Runs all rounds, writing metrics/config/final files to config.output_dir; returns final.

  With `checkpoint_every` > 0 the full loop state is saved every that many rounds; with
  `resume`, a run continues from its newest checkpoint and ends with the same numbers as an
  uninterrupted run with the same seed.
  """
  setup = setup or prepare(config)
  config = setup.config
  os.makedirs(config.output_dir, exist_ok=True)
  streams = _streams(config.seed)
  evaluator = Evaluator(setup.keras_builder, config.eval_batch_size)
  state = setup.process.initialize()
  source = None
  if config.init_from:  # the round-0 model is the source's (see warm_start's contract)
    source = warm_start.load(config.init_from, evaluator.model, config.output_dir)
    config = dataclasses.replace(config, init_from_file=source.file,
                                 init_from_sha256=source.sha256,
                                 init_from_rounds=source.rounds)
    state = setup.process.set_model_weights(state, tff.learning.models.ModelWeights(
        trainable=[v.numpy() for v in evaluator.model.trainable_weights],
        non_trainable=[v.numpy() for v in evaluator.model.non_trainable_weights]))
  initial_keras_weights = [np.array(w) for w in evaluator.load(
      setup.process.get_model_weights(state)).get_weights()]
  first_round, meta = 0, {}
  if config.resume:
    state, first_round, meta = _resume(config, setup, state, streams)
  rng, schedule_rng = streams['round_data'], streams['sampling']
  metrics_io.write_json(os.path.join(config.output_dir, 'config.json'), config.to_dict())
  writer = metrics_io.MetricsWriter(config.output_dir, tensorboard=config.tensorboard,
                                    keep_rounds_before=first_round)
  np.savez(os.path.join(config.output_dir, 'initial_weights.npz'), *initial_keras_weights)
  capture = parse_rounds(config.capture_rounds, config.rounds)
  if capture and setup.capture_process is None:
    raise ValueError('--capture_rounds needs setup.capture_process: build the setup with '
                     'prepare(config)')
  captures_dir = os.path.join(config.output_dir, 'captures')
  if capture:  # a clean spool: nothing left from an interrupted run is read as this run's
    shutil.rmtree(capture_spool_dir(config), ignore_errors=True)
    os.makedirs(capture_spool_dir(config))
  variable_names = [w.name.split(':')[0] for w in evaluator.model.trainable_weights]
  between_sets = between_rounds_eval_sets(setup)
  start = time.time() - float(meta.get('seconds', 0.0))
  last_eval: Dict[str, float] = dict(meta.get('last_eval', {}))
  progress = Progress(config.rounds, first_round, enabled=config.verbose)
  progress.write(describe_setup(setup))
  if source is not None:
    progress.write(f'warm start from {source.file} ({source.rounds} rounds of training, '
                   f'weights sha256 {source.sha256[:12]})')
  if first_round:
    progress.write(f'resumed from round {first_round} of {config.rounds}')
  for round_num in range(first_round, config.rounds):
    t0 = time.time()
    participants = setup.schedule.sample_round(round_num, setup.client_ids,
                                               config.clients_per_round, schedule_rng)
    client_data, flags = round_client_data(setup, participants, rng)
    capturing = round_num in capture  # the same round, also returning every client's update
    seeds = process_lib.client_seeds(client_data) if capturing else []
    if len(set(seeds)) < len(seeds):  # 2 clients, 1 seed (~1e-8 a round): re-run them instead
      capture_round(setup, state, client_data, participants, round_num, captures_dir,
                    variable_names)
      capturing = False
    output = (setup.capture_process if capturing else setup.process).next(state, client_data)
    if capturing:
      save_capture(captures_dir, round_num,
                   process_lib.pop_captured_updates(output.metrics, client_data),
                   variable_names, participants)
    state = output.state
    row = _round_row(round_num, metrics_io.flatten_metrics(output.metrics), flags)
    if (round_num + 1) % config.eval_every == 0 or round_num + 1 == config.rounds:
      evaluator.load(setup.process.get_model_weights(state))
      sets = setup.eval_sets if round_num + 1 == config.rounds else between_sets
      last_eval = evaluator.evaluate(sets)
      row.update(last_eval)
      row['test_examples'] = len(sets['test'][1])  # what this row's test_* were measured on
    row['round_seconds'] = time.time() - t0
    writer.write(row)
    progress.update(row)
    if config.checkpoint_every and (round_num + 1) % config.checkpoint_every == 0:
      checkpoint.save_checkpoint(
          os.path.join(config.output_dir, 'checkpoints'), round_num + 1, state,
          {'next_round': round_num + 1, 'last_eval': last_eval,
           'seconds': time.time() - start,
           'rng': {'round_data': rng.bit_generator.state,
                   'sampling': schedule_rng.bit_generator.state}},
          keep=config.keep_checkpoints)
  progress.close()
  writer.close()
  shutil.rmtree(capture_spool_dir(config), ignore_errors=True)
  final_model = evaluator.load(setup.process.get_model_weights(state))
  final_model.save(os.path.join(config.output_dir, 'final_model.keras'))
  final = {'rounds': config.rounds, 'seconds': time.time() - start, **last_eval,
           'partition': setup.data.partition_report,
           'model_sha256': warm_start.weights_sha256(final_model.get_weights())}
  if config.flain:
    final['flain'] = run_flain(setup, final_model, initial_keras_weights, evaluator, last_eval,
                               progress)
  metrics_io.write_json(os.path.join(config.output_dir, 'final.json'), final)
  if config.verbose:
    print('\n'.join(run_summary.describe_run(writer.rows, config.to_dict())), flush=True)
  return final
