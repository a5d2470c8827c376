"""What a run builds before its first round: data, backdoor task, schedule, TFF processes.

`prepare(config)` is the one entry point; tests and tools inspect its `ExperimentSetup`, and
`driver.run_prepared` runs it. Every random choice flows from `config.run.seed` through
independent NumPy streams (`streams`, created once here and carried on the setup), the seeded
model initializers and the seeded DP noise.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor import data as data_lib
from tff_backdoor import flain as flain_lib
from tff_backdoor import metrics_io
from tff_backdoor import models
from tff_backdoor.aggregators import defenses
from tff_backdoor.aggregators import registry as defense_registry
from tff_backdoor.attacks import schedules as schedules_lib
from tff_backdoor.attacks import tasks as tasks_lib
from tff_backdoor.attacks.attack_config import AttackConfig
from tff_backdoor.attacks.client_work import build_attacker_client_work
from tff_backdoor.config import ExperimentConfig, ScheduleConfig, TaskConfig
from tff_backdoor.data import ArrayPair
from tff_backdoor.learning import process as process_lib
from tff_backdoor.learning import root_update
from tff_backdoor.learning.side_channel import SideChannel
from tff_backdoor.run import rundir
from tff_backdoor.run import warm_start


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
  client_work: tff.learning.templates.ClientWorkProcess  # the process's (capture_round)
  eval_sets: Dict[str, ArrayPair]
  # `process` with `capture_updates=True` (same state type), built when --capture_rounds is set.
  capture_process: Optional[tff.learning.templates.LearningProcess] = None
  # The process's distributor: what the clients receive (capture_round re-runs them with it).
  distributor: Optional[tff.learning.templates.DistributionProcess] = None
  # The run's random streams (`streams(config.run.seed)`): `task` and `schedule` are drawn by
  # `prepare`, `sampling` and `round_data` by the rounds (and restored by --resume).
  streams: Dict[str, np.random.Generator] = dataclasses.field(default_factory=dict)
  data_seconds: float = 0.0  # how long `load_data` took (the parse, or the cache read)


def streams(seed: int) -> Dict[str, np.random.Generator]:
  """Independent RNG streams, so adding draws to one never shifts another."""
  names = ('task', 'schedule', 'sampling', 'round_data')
  children = np.random.SeedSequence(seed).spawn(len(names))
  return {n: np.random.default_rng(s) for n, s in zip(names, children)}


def attack_config(config: ExperimentConfig) -> AttackConfig:
  """The run's `attack` section with an unset boost resolved to clients_per_round."""
  return config.attack.with_clients_per_round(config.fed_avg.clients_per_round)


def _targeted_task(task: TaskConfig, data: data_lib.FederatedData,
                   clients: Dict[str, ArrayPair], seed: int) -> tasks_lib.TargetedTask:
  """--task=targeted: Sun et al.'s target clients, chosen (seeded) among `clients`."""
  return tasks_lib.TargetedTask.build(
      clients, num_tasks=task.num_tasks, source_class=task.source_class,
      target_class=task.target_class, seed=seed,
      keep_honest_copies=task.keep_honest_copies, num_classes=data.num_classes,
      samples_per_client=task.samples_per_client or 0,
      min_samples_per_client=task.min_samples,
      heldout_arrays=data.test_by_client,
      collateral_arrays=data.test_by_client or {'': data.test})


def _pixel_task(task: TaskConfig, data: data_lib.FederatedData,
                clients: Dict[str, ArrayPair], seed: int) -> tasks_lib.PixelTriggerTask:
  """--task=pixel: a BadNets trigger, evaluated on the stamped test images."""
  del clients, seed  # the trigger is fixed; attackers poison their own data
  value = task.trigger_value
  if value is None:  # (F)EMNIST: ink 0 on background 1, where a "white" square would be invisible.
    value = 1.0 - float(data.partition_report.get('background_value', 0.0))
  return tasks_lib.PixelTriggerTask(
      data.test[0], data.test[1], source_class=task.source_class,
      target_class=task.target_class, poison_fraction=task.poison_fraction,
      trigger_size=task.trigger_size, trigger_value=value, pattern=task.trigger_pattern,
      distributed_parts=task.distributed_parts, num_classes=data.num_classes)


TaskBuilder = Callable[[TaskConfig, data_lib.FederatedData, Dict[str, ArrayPair], int],
                       Optional[tasks_lib.BackdoorTask]]

# Task name -> the backdoor task from (task config, data, client arrays, seed); one entry per
# config.TASKS (a test checks).
TASK_BUILDERS: Dict[str, TaskBuilder] = {
    'none': lambda task, data, clients, seed: None,
    'targeted': _targeted_task,
    'pixel': _pixel_task,
}


def _rounds(schedule: ScheduleConfig) -> Dict[str, Any]:
  """The attack window and the sampling every schedule but 'none' takes."""
  return dict(start_round=schedule.start, stop_round=schedule.stop,
              with_replacement=schedule.with_replacement)


ScheduleBuilder = Callable[[ScheduleConfig, Sequence[str], int], schedules_lib.Schedule]

# Schedule name -> the schedule from (schedule config, client ids, seed); one entry per
# config.SCHEDULES (a test checks).
SCHEDULE_BUILDERS: Dict[str, ScheduleBuilder] = {
    'none': lambda s, ids, seed: schedules_lib.build_schedule(
        'none', with_replacement=s.with_replacement),
    'fixed_frequency': lambda s, ids, seed: schedules_lib.build_schedule(
        'fixed_frequency', attack_every=s.attack_every, **_rounds(s)),
    'random_fraction': lambda s, ids, seed: schedules_lib.build_schedule(
        'random_fraction', malicious_fraction=s.malicious_fraction, client_ids=ids, seed=seed,
        **_rounds(s)),
    'fixed_per_round': lambda s, ids, seed: schedules_lib.build_schedule(
        'fixed_per_round', malicious_fraction=s.malicious_fraction, client_ids=ids,
        attackers_per_round=s.attackers_per_round, seed=seed, **_rounds(s)),
}


def _builder(registry: Dict[str, Any], kind: str, name: str) -> Any:
  """`registry[name]`, or a one-line ValueError that lists the names."""
  if name not in registry:
    raise ValueError(f'unknown {kind} {name!r}; choose one of {", ".join(registry)}')
  return registry[name]


def build_task(config: ExperimentConfig, data: data_lib.FederatedData,
               clients: Dict[str, ArrayPair], seed: int) -> Optional[tasks_lib.BackdoorTask]:
  """The backdoor task named by the config (None for --task=none)."""
  return _builder(TASK_BUILDERS, 'task', config.task.name)(config.task, data, clients, seed)


def build_schedule(config: ExperimentConfig, client_ids: Sequence[str],
                   seed: int) -> schedules_lib.Schedule:
  """The attacker schedule named by the config."""
  return _builder(SCHEDULE_BUILDERS, 'schedule', config.schedule.name)(
      config.schedule, client_ids, seed)


def load_data(config: ExperimentConfig) -> data_lib.FederatedData:
  """The run's clients, test and server splits (the same for the same config and seed)."""
  data = config.data
  return data_lib.load_federated_data(
      data.dataset, data_dir=data.data_dir, partition=data.partition,
      num_clients=data.num_clients, alpha=data.alpha,
      shards_per_client=data.shards_per_client, server_holdout=data.server_holdout,
      seed=config.run.seed, only_digits=data.only_digits, cache_dir=data.cache_dir,
      train_fraction=data.train_fraction)


def load_run_config(run_dir: str, *required: str) -> ExperimentConfig:
  """A finished run's ExperimentConfig; also checks that its `required` files exist."""
  for name in (rundir.CONFIG_FILE, *required):
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} not found: is {run_dir} a finished run directory?')
  return ExperimentConfig.from_dict(
      metrics_io.read_json(os.path.join(run_dir, rundir.CONFIG_FILE)))


def root_set(config: ExperimentConfig, data: data_lib.FederatedData) -> ArrayPair:
  """The defense's server root set (FLTrust's): its spec's `root_set_field` images a class
  from the server split (the one FLAIN's auxiliary set comes from), seeded by --seed; a
  one-line ValueError naming the two flags that size it if the split cannot give it."""
  field = defenses.spec(config.defense.name).root_set_field
  per_class = getattr(config.defense, field)
  try:
    return flain_lib.select_auxiliary(*data.server, per_class=per_class, seed=config.run.seed,
                                      num_classes=data.num_classes)
  except ValueError as e:
    raise ValueError(f'--defense={config.defense.name}: no root set of --{field}={per_class} '
                     f'images a class in the server split of {len(data.server[1])} images '
                     f'(--server_holdout): {e}') from None


def side_channel(config: ExperimentConfig) -> SideChannel:
  """What the run's process sends besides the model and the deltas (`learning.side_channel`):
  what its defense reads (its spec's `reads`) and the last global update if its
  attack reads it."""
  return dataclasses.replace(defense_registry.side_channel_of(config.defense, config.run.seed),
                             global_update=config.attack.reads_global_update)


def identifies_clients(config: ExperimentConfig) -> bool:
  """Whether the run's client data carries population indices (for a ClientInfo uplink)."""
  return side_channel(config).uplink


def build_processes(config: ExperimentConfig, model_fn: process_lib.ModelFn,
                    data: Optional[data_lib.FederatedData] = None
                    ) -> Tuple[tff.learning.templates.LearningProcess,
                               tff.learning.templates.ClientWorkProcess,
                               Optional[tff.learning.templates.LearningProcess],
                               tff.learning.templates.DistributionProcess]:
  """(process, its client work, capturing process or None, distributor) for the config.

  Both processes share one client work and distributor, built here with the rest (before any
  eager model). `data` gives a defense its root set (FLTrust) or its population (FoolsGold,
  FLDetector), as its spec asks.
  """
  fed_avg, defense = config.fed_avg, config.defense
  field = defenses.spec(defense.name).population_field
  if field and not getattr(defense, field):  # the run's population
    defense = dataclasses.replace(defense, **{field: len(data.train.client_ids)})
  aggregator = defense_registry.build_defense(defense, fed_avg.clients_per_round,
                                              seed=config.run.seed)
  client_optimizer = tff.learning.optimizers.build_sgdm(fed_avg.client_lr)
  channel = side_channel(config)
  client_work = build_attacker_client_work(model_fn, client_optimizer, attack_config(config),
                                           fed_avg.batch_size, channel=channel)
  root_update_fn = None
  if channel.root_update:
    root_update_fn = root_update.build_root_update_fn(
        model_fn, client_optimizer, root_set(config, data), fed_avg.batch_size,
        fed_avg.local_epochs, config.run.seed)
  distributor = process_lib.build_distributor(model_fn, channel, root_update_fn)
  server = lambda: defense_registry.build_server_optimizer(  # CRFL acts on the model
      config.defense, tff.learning.optimizers.build_sgdm(fed_avg.server_lr), config.run.seed)
  learning_process = process_lib.compose_fed_avg(model_fn, client_work, server(),
                                                 distributor=distributor,
                                                 model_aggregator=aggregator)
  capture_process = None
  if config.run.capture_rounds:  # remote workers cannot write into our output_dir
    capture_process = process_lib.compose_fed_avg(
        model_fn, client_work, server(), model_aggregator=aggregator, capture_updates=True,
        capture_spool_dir=None if config.run.workers else rundir.spool_dir(config.run.output_dir),
        distributor=distributor)
  return learning_process, client_work, capture_process, distributor


def prepare(config: ExperimentConfig) -> ExperimentSetup:
  """Loads data, builds the task, the schedule and the TFF learning process."""
  config.validate()
  warm_start.check_source(config)
  rngs = streams(config.run.seed)
  start = time.perf_counter()
  data = load_data(config)
  data_seconds = time.perf_counter() - start
  client_ids = sorted(data.train.client_ids)
  if config.fed_avg.clients_per_round > len(client_ids):
    raise ValueError(f'--clients_per_round={config.fed_avg.clients_per_round} is larger than '
                     f'the {len(client_ids)} clients of {config.data.dataset}')
  clients = data_lib.client_arrays(data.train, client_ids, compact=True)
  task = build_task(config, data, clients, seed=int(rngs['task'].integers(2**31)))
  schedule = build_schedule(config, client_ids, seed=int(rngs['schedule'].integers(2**31)))
  keras_builder = lambda: models.build_model(config.fed_avg.model, data.input_shape,
                                             data.num_classes, seed=config.run.seed)
  if config.flain.enabled:  # fail now, not after training, on bad FLAIN settings
    flain_lib.target_layers(keras_builder(), config.flain.layer)
    flain_lib.select_auxiliary(*data.server, per_class=config.flain.aux_per_class,
                               seed=config.run.seed, num_classes=data.num_classes)
  model_fn = process_lib.keras_model_fn(keras_builder, data.input_shape)
  learning_process, client_work, capture_process, distributor = build_processes(
      config, model_fn, data)
  eval_sets = {'test': data.test}
  if task is not None:
    eval_sets.update(task.eval_sets())
  return ExperimentSetup(config, data, clients, client_ids, task, schedule, keras_builder,
                         learning_process, client_work, eval_sets, capture_process, distributor,
                         rngs, data_seconds)
