"""One run's configuration: typed sub-configs whose fields carry their flag, help and rule.

TensorFlow-free, so a program checks its flags before it imports TensorFlow. Each section is
one concern; a reusable piece owns its own section (`aggregators.defense_config.DefenseConfig`,
`attacks.attack_config.AttackConfig`, `flain_config.FlainConfig`)
and this module composes them. `cli` declares one absl flag per field from the metadata
(`tff_backdoor.options`); `ExperimentConfig.to_dict` / `from_flat` keep the flat `config.json`
keys (and their 0 / -1 / '' spellings of "unset") of older runs. Each sub-config names the
module it configures.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from tff_backdoor.aggregators import defenses
from tff_backdoor.aggregators.defense_config import DefenseConfig, validate_defense
from tff_backdoor.attacks.attack_config import TRIGGER_MODES, AttackConfig
from tff_backdoor.data.core import DATASETS, NATURAL_DATASETS, PARTITIONS
from tff_backdoor.execution import workers
from tff_backdoor.flain_config import FlainConfig
from tff_backdoor.options import AT_LEAST_ONE, DIRICHLET_ALPHA, FRACTION, NONNEGATIVE, POSITIVE
from tff_backdoor.options import SEED_RANGE, UNIT_INTERVAL
from tff_backdoor.options import Fields, check_field, check_fields, flag_name, option
from tff_backdoor.options import from_flat_value, to_flat_value

# Names of the registries whose builders import TensorFlow (tests check they agree).
MODELS = ('sun_cnn', 'tiny_cnn')  # models.MODEL_BUILDERS
# Tensors of each model's update (its trainable weights), so --bias_index is checked with the
# flags (and by a sweep's precheck), not when the defense is built.
UPDATE_TENSORS = {'sun_cnn': 8, 'tiny_cnn': 6}
TASKS = ('none', 'targeted', 'pixel')  # run.setup.TASK_BUILDERS
SCHEDULES = ('none', 'fixed_frequency', 'random_fraction', 'fixed_per_round')  # attacks.schedules
PATTERNS = ('square', 'plus')  # attacks.tasks.PATTERNS


@dataclasses.dataclass
class DataConfig(Fields):
  """Where clients, test and server data come from (tff_backdoor.data.load_federated_data)."""
  dataset: str = option('fashion_mnist', 'Training data source.', choices=DATASETS)
  data_dir: Optional[str] = option(
      None, 'femnist: LEAF folder with train/ and test/ (*.json or *.json.gz); mnist, idx: '
      'MNIST-format idx files (fashion_mnist defaults to /usr/share/datasets/fashion-mnist).')
  cache_dir: Optional[str] = option(
      None, "emnist: directory holding TFF's emnist_all.sqlite; femnist: where parsed LEAF "
      'arrays are cached (default ~/.cache/tff_backdoor).')
  only_digits: bool = option(
      True, 'emnist/femnist: digits only (10 classes); --noonly_digits: all 62 classes.')
  partition: str = option('dirichlet', 'How centralised data is split into clients '
                          '(emnist: by writer).', choices=PARTITIONS)
  num_clients: Optional[int] = option(
      None, 'Clients to partition into (default 100); emnist/femnist: a seeded subset of '
      'writers (default and 0: every writer).')
  alpha: float = option(0.5, 'Dirichlet concentration (partition=dirichlet).',
                        rule=DIRICHLET_ALPHA)
  shards_per_client: int = option(2, 'partition=shards.')
  server_holdout: Optional[int] = option(
      None, 'Clean examples kept at the server (FLAIN auxiliary data), disjoint from clients '
      'and test (default 1000; emnist/femnist: at most a fifth of the test split).',
      rule=NONNEGATIVE)
  train_fraction: float = option(
      1.0, 'Centralised data: train on this seeded, class-stratified share of the training '
      'pool (1 = all); a cheaper population of the same shape.', rule=UNIT_INTERVAL)

  @property
  def natural(self) -> bool:
    """Whether the data set comes split by writer (no partitioner; `num_clients` = writers)."""
    return self.dataset in NATURAL_DATASETS


@dataclasses.dataclass
class FedAvgConfig(Fields):
  """The model and FedAvg's optimizers and sampling (models, learning.process)."""
  model: str = option('sun_cnn', 'Keras model.', choices=MODELS)
  rounds: int = option(20, 'Federated rounds.', rule=AT_LEAST_ONE)
  clients_per_round: int = option(10, 'Clients sampled per round.', rule=AT_LEAST_ONE)
  local_epochs: int = option(1, 'Local epochs per client.', rule=AT_LEAST_ONE)
  batch_size: int = option(20, 'Client batch size.', rule=AT_LEAST_ONE)
  client_lr: float = option(0.1, 'Client SGD learning rate.', rule=POSITIVE)
  server_lr: float = option(1.0, 'Server SGD learning rate.', rule=POSITIVE)


@dataclasses.dataclass
class TaskConfig(Fields):
  """What the attackers inject (attacks.tasks: TargetedTask, PixelTriggerTask)."""
  name: str = option('none', 'Backdoor: targeted (Sun et al.) or pixel (BadNets trigger).',
                     choices=TASKS, flag='task')
  num_tasks: int = option(1, 'targeted: number of target clients.', rule=AT_LEAST_ONE)
  samples_per_client: Optional[int] = option(
      None, 'targeted: at most this many relabelled images per target client (0 = all; ~10 '
      'matches an EMNIST writer).', flag='task_samples_per_client', unset=0, rule=NONNEGATIVE)
  min_samples: int = option(
      0, 'targeted: target clients are chosen among those holding at least this many '
      'source-class images (0 = any).', flag='task_min_samples', rule=NONNEGATIVE)
  source_class: Optional[int] = option(
      7, 'Class whose images are backdoored (pixel: -1 = all but target).', unset=-1,
      negative_unset=True)
  target_class: int = option(1, 'Label the attacker wants.')
  keep_honest_copies: bool = option(
      True, 'targeted: target clients keep their images correctly labelled.')
  poison_fraction: float = option(
      0.5, "pixel: fraction of the attacker's source images stamped and relabelled.",
      rule=UNIT_INTERVAL)
  trigger_size: int = option(5, 'pixel: trigger side in pixels.', rule=AT_LEAST_ONE)
  trigger_value: Optional[float] = option(
      None, 'pixel: trigger pixel value (<0: opposite of the background colour).', unset=-1.0,
      negative_unset=True)
  trigger_pattern: str = option('square', 'pixel: shape.', choices=PATTERNS)
  distributed_parts: int = option(1, 'pixel: >1 splits the trigger across attackers (DBA).',
                                  rule=AT_LEAST_ONE)


@dataclasses.dataclass
class ScheduleConfig(Fields):
  """When attackers take part (attacks.schedules)."""
  name: str = option('none', 'When attackers take part.', choices=SCHEDULES, flag='schedule')
  attack_every: int = option(1, 'fixed_frequency: one attacker every k.', rule=AT_LEAST_ONE)
  malicious_fraction: float = option(
      0.1, 'random_fraction / fixed_per_round: malicious share of the population.',
      rule=FRACTION)
  attackers_per_round: int = option(1, 'fixed_per_round.', rule=NONNEGATIVE)
  start: int = option(0, 'First attack round (0-based).', flag='attack_start',
                      rule=NONNEGATIVE)
  stop: Optional[int] = option(None, 'Round attacks stop (0 = never).', flag='attack_stop',
                               unset=0, rule=NONNEGATIVE)
  lifespan_threshold: float = option(
      0.5, 'final.json lifespan_rounds: rounds after the last attack round until backdoor '
      'accuracy stays below this (analysis.lifespan; 0.5 as in Neurotoxin\'s durability '
      "figures: BackFed's code logs the post-attack curve but defines no lifespan).",
      rule=UNIT_INTERVAL)
  with_replacement: bool = option(
      False, "Draw each round's clients uniformly with replacement, as Sun et al.'s code does "
      '(a client can appear twice; the attacker of a fixed_frequency round is the last drawn).',
      flag='sample_with_replacement')


@dataclasses.dataclass
class RunConfig(Fields):
  """Seed, outputs, evaluation, execution and checkpoints of a run (training, evaluation)."""
  seed: int = option(0, 'Seed of every random choice, in [0, 2**32).', rule=SEED_RANGE)
  output_dir: str = option('/tmp/tff_backdoor_run', 'Where metrics and models are written.')
  eval_every: int = option(1, 'Evaluate every k rounds (and the last).', rule=AT_LEAST_ONE)
  eval_batch_size: int = option(500, 'Evaluation batch size.', rule=AT_LEAST_ONE)
  eval_subset: Optional[int] = option(
      2000, 'Main-task test images evaluated before the last round: a fixed, seeded, '
      'class-stratified subset (rows say how many in test_examples); the last round and the '
      'backdoor sets are always whole. 0 = the whole test set.', unset=0, rule=NONNEGATIVE)
  workers: Optional[str] = option(
      None, "Run TFF on these C++ workers, 'host:port,host:port' (start each with `python -m "
      "tff_backdoor.execution.workers serve --port=P`); '' = TFF's local worker.", unset='')
  num_subrounds: Optional[int] = option(
      None, "With --workers: shares each round's clients are split into (0 = one per client: "
      'bit-identical to local execution).', unset=0, rule=NONNEGATIVE)
  checkpoint_every: Optional[int] = option(
      None, 'Save the full loop state every k rounds (0 = never).', unset=0, rule=NONNEGATIVE)
  keep_checkpoints: int = option(2, 'Newest intact checkpoints kept; --resume falls back to '
                                 'an older one if the newest is damaged.', rule=AT_LEAST_ONE)
  resume: bool = option(False, "Continue from output_dir's newest checkpoint (same flags "
                        'required).')
  overwrite: str = option(
      'refuse', "A fresh start (no --resume) in an --output_dir that holds a run's files: "
      "'refuse' (one line, exit 1) or 'move' them to a sibling OUTPUT_DIR.old-N (never "
      'deleted); a run that failed before its first round is always moved.',
      choices=('refuse', 'move'))
  init_from: Optional[str] = option(
      None, "Warm start: a run directory whose final_model.keras (or newest checkpoint) is the "
      "round-0 model; rounds, schedules and seeds are this run's own (see "
      "tff_backdoor/run/warm_start.py); '' = the seeded initial model.", unset='')
  # Not flags: what --init_from loaded, recorded in config.json (warm_start).
  init_from_file: Optional[str] = option(None, '', unset='', is_flag=False)
  init_from_sha256: Optional[str] = option(None, '', unset='', is_flag=False)
  init_from_rounds: int = option(0, '', is_flag=False)
  capture_rounds: Optional[str] = option(
      None, "Rounds whose per-client updates are saved to output_dir/captures (e.g. '0-9,20' "
      "or 'all'; 0-based).", unset='')
  tensorboard: bool = option(True, 'Write TensorBoard summaries.', is_flag=False)
  verbose: bool = option(True, 'Print progress and a summary.', is_flag=False)


EXECUTION_KEY = 'execution'  # config.json's record of the execution settings (not a flag)

SECTIONS = (('data', DataConfig), ('fed_avg', FedAvgConfig), ('task', TaskConfig),
            ('attack', AttackConfig), ('schedule', ScheduleConfig),
            ('defense', DefenseConfig), ('flain', FlainConfig), ('run', RunConfig))


def default_settings() -> Dict[str, Any]:
  """Today's defaults as config.json holds them (JSON values), for `non_default`."""
  return json.loads(json.dumps(ExperimentConfig().to_dict()))


def non_default(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> Dict[str, Any]:
  """The entries of a config.json mapping that differ from `defaults`, nested ones too.

  A key added by a newer version keeps its default in older runs' terms, so dropping the
  default-valued entries makes two configs of the same run compare (and hash) equal across
  versions; a nested dict (`defense`) is pruned key by key for the same reason.
  """
  out: Dict[str, Any] = {}
  for key, value in values.items():
    default = defaults.get(key)
    if isinstance(value, dict) and isinstance(default, dict):
      value = non_default(value, default)
      if value:
        out[key] = value
    elif value != default:
      out[key] = value
  return out


def flat_fields() -> Iterator[Tuple[str, str, dataclasses.Field]]:
  """(section, flat key, field) of every field but the defense's (config.json nests those).

  Only fields declared with `options.option` belong to the run; a section's plain fields
  (e.g. `FlainConfig.k_max`) are library parameters the run leaves at their defaults.
  """
  for section, cls in SECTIONS:
    if section != 'defense':
      for field in dataclasses.fields(cls):
        if 'help' in field.metadata:
          yield section, flag_name(field), field


@dataclasses.dataclass
class ExperimentConfig(Fields):
  """Everything one run needs, as one sub-config per concern (see SECTIONS).

  `from_flat(**kwargs)` takes today's flag names (`rounds=3, task='pixel', boost=0`, ...),
  `to_dict()` gives the flat `config.json` mapping and `from_dict` reads one back, including
  those written by older versions.
  """
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  fed_avg: FedAvgConfig = dataclasses.field(default_factory=FedAvgConfig)
  task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
  attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)
  schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
  defense: DefenseConfig = dataclasses.field(default_factory=DefenseConfig)
  flain: FlainConfig = dataclasses.field(default_factory=FlainConfig)
  run: RunConfig = dataclasses.field(default_factory=RunConfig)

  @classmethod
  def from_flat(cls, **values: Any) -> 'ExperimentConfig':
    """A config from flat keys (flag names); `defense` is a DefenseConfig or its dict."""
    fields = {key: (section, field) for section, key, field in flat_fields()}
    unknown = sorted(set(values) - set(fields) - {'defense'})
    if unknown:
      raise ValueError(f'unknown config keys: {", ".join(unknown)}')
    sections: Dict[str, Dict[str, Any]] = {name: {} for name, _ in SECTIONS}
    for key, value in values.items():
      if key != 'defense':
        section, field = fields[key]
        sections[section][field.name] = from_flat_value(field, value)
    defense = values.get('defense', DefenseConfig())
    if isinstance(defense, dict):
      defense = DefenseConfig(**defense)
    built = {name: kind(**sections[name]) for name, kind in SECTIONS if name != 'defense'}
    return cls(defense=defense, **built)

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> 'ExperimentConfig':
    """The inverse of `to_dict` (a run's config.json); unknown keys are an error.

    `execution` (what ran the run: oneDNN, threads, CPU; `contexts.execution_settings`) is
    a record, not a setting, and is skipped.
    """
    return cls.from_flat(**{k: v for k, v in values.items() if k != EXECUTION_KEY})

  def to_dict(self) -> Dict[str, Any]:
    """The flat config.json mapping: today's keys, None written as each key's unset spelling."""
    out: Dict[str, Any] = {}
    for section, key, field in flat_fields():
      out[key] = to_flat_value(field, getattr(getattr(self, section), field.name))
      if key == 'attack_stop':  # where config.json has always had it
        out['defense'] = dataclasses.asdict(self.defense)
    return out

  def replace(self, **values: Any) -> 'ExperimentConfig':
    """A copy with some flat keys changed (e.g. `replace(output_dir=..., flain=True)`)."""
    return self.from_flat(**{**self.to_dict(), **values})

  def validate(self) -> 'ExperimentConfig':
    """Raises ValueError with a one-line message naming the flag and its rule; returns self."""
    for section, _ in SECTIONS:
      check_fields(getattr(self, section), prefix='--')
    _check_num_clients(self)
    _check_combinations(self)
    validate_defense(self.defense, self.fed_avg.clients_per_round)
    return self


def _check_num_clients(config: ExperimentConfig) -> None:
  n = config.data.num_clients
  if n is None or (config.data.natural and n == 0):
    return
  check_field(next(f for f in dataclasses.fields(DataConfig) if f.name == 'num_clients'), n,
              '--')
  if n < 1:
    raise ValueError(f'--num_clients must be >= 1, got {n}')
  if config.fed_avg.clients_per_round > n:
    raise ValueError(f'--clients_per_round={config.fed_avg.clients_per_round} is larger than '
                     f'--num_clients={n}')


def _check_combinations(config: ExperimentConfig) -> None:
  """The rules that involve more than one field."""
  data, task, schedule, run = config.data, config.task, config.schedule, config.run
  if not (run.output_dir or '').strip():
    raise ValueError('--output_dir is empty: give the folder the run writes to')
  if data.dataset == 'femnist' and not data.data_dir:
    raise ValueError('--dataset=femnist needs --data_dir (a LEAF folder with train/ and test/)')
  if schedule.name != 'none' and task.name == 'none':
    raise ValueError(f'--schedule={schedule.name} needs a backdoor --task (targeted or pixel)')
  if task.name == 'targeted' and task.source_class is None:
    raise ValueError('--task=targeted needs a --source_class >= 0')
  if config.attack.mode in TRIGGER_MODES and (task.name, task.distributed_parts) != ('pixel', 1):
    raise ValueError(f'--attack={config.attack.mode} optimizes a pixel trigger: it needs '
                     '--task=pixel with --distributed_parts=1')
  if schedule.stop is not None and schedule.stop <= schedule.start:
    raise ValueError(f'--attack_stop={schedule.stop} must be after '
                     f'--attack_start={schedule.start}')
  parse_rounds(run.capture_rounds, config.fed_avg.rounds)
  _check_fixed_per_round(config)
  spec = defenses.spec(config.defense.name)
  _check_update_index(config, spec.update_index_field)
  config.flain.validate(prefix='--')
  # A client drawn twice would be two rows of one capture, or to FoolsGold two sybils.
  for needs_distinct, what in ((run.capture_rounds, '--capture_rounds'),
                               (spec.distinct_clients, f'--defense={spec.name}')):
    if schedule.with_replacement and needs_distinct:
      raise ValueError(f'{what} needs distinct clients in a round: drop '
                       '--sample_with_replacement')
  if run.workers:
    workers.parse_workers(run.workers)
  for needs_server, what in ((config.flain.enabled, '--flain'),
                             (spec.root_set_field, f'--defense={spec.name}')):
    if needs_server and data.server_holdout is not None and data.server_holdout < 1:
      raise ValueError(f'{what} needs server-side data: set --server_holdout > 0')


def _check_update_index(config: ExperimentConfig, field: Optional[str]) -> None:
  """A defense parameter that indexes the update's tensors (bias_filter's --bias_index) is in
  range for --model."""
  tensors = UPDATE_TENSORS.get(config.fed_avg.model)
  index = getattr(config.defense, field) if field else None
  if index is not None and tensors and not -tensors <= index < tensors:
    raise ValueError(f'--{field}={index} is out of range: --model={config.fed_avg.model} '
                     f'updates {tensors} tensors (-1: the last, the logits bias)')


def _check_fixed_per_round(config: ExperimentConfig) -> None:
  """--schedule=fixed_per_round's attackers fit a round and, where --num_clients gives the
  population before the data loads, the malicious set (round(fraction x population))."""
  schedule, per_round = config.schedule, config.schedule.attackers_per_round
  if schedule.name != 'fixed_per_round':
    return
  if not 1 <= per_round <= config.fed_avg.clients_per_round:
    raise ValueError(f'--attackers_per_round={per_round} must be in [1, --clients_per_round='
                     f'{config.fed_avg.clients_per_round}]')
  population = config.data.num_clients
  malicious = math.floor(schedule.malicious_fraction * population + 0.5) if population else None
  if malicious is not None and malicious < per_round:
    raise ValueError(f'--attackers_per_round={per_round} exceeds the {malicious} malicious '
                     f'clients of --malicious_fraction={schedule.malicious_fraction} x '
                     f'--num_clients={population}')


def parse_rounds(spec: Optional[str], total_rounds: int) -> set:
  """'0-4,10' -> {0,1,2,3,4,10}; 'all' -> every round; '' or None -> none. Rounds are 0-based.

  An open range 'k-' runs to the last round (it used to mean round k alone).
  """
  spec = (spec or '').strip()
  if not spec:
    return set()
  if spec == 'all':
    return set(range(total_rounds))
  rounds = set()
  for part in spec.split(','):
    try:
      lo, dash, hi = part.strip().partition('-')
      lo_i = int(lo)
      hi_i = int(hi) if hi.strip() else (total_rounds - 1 if dash else lo_i)
    except ValueError:
      raise ValueError(f"bad round list {spec!r}: use e.g. '0-4,10' or 'all'") from None
    if lo_i < 0 or hi_i < lo_i or hi_i >= total_rounds:
      raise ValueError(f'bad round range {part.strip()!r} for {total_rounds} rounds (0-based)')
    rounds.update(range(lo_i, hi_i + 1))
  return rounds
