"""Bilgin's factor sweeps: where backdoor anomalies show in client updates, and how well the
final-layer-bias detector finds them (METHODS.md section 3).

The study varies one factor at a time around Bilgin's baseline (10 clients, all of them in
every round, 1 malicious client, malicious data rate 1/10, client SGD lr 0.01, batch 64,
2 local epochs, data poisoning), for the targeted-task and the pixel-trigger backdoor and for
IID and Dirichlet label-skewed partitions:

- `num_malicious`: malicious clients, all of them attacking in every round (1..5 of 10);
- `client_lr`: the client SGD learning rate;
- `malicious_rate`: the fraction of the attacker's local training examples that are malicious.

Each run is `driver.run_experiment` with every round captured, run through the sweep engine
(`sweeps.run_in_process`, which skips the runs whose summary.json exists); `analyze_run` scores
every variable of every client update (`anomaly.variable_scores`), ranks the variables by
ROC-AUC (all rounds, the first `early_rounds` and the last `early_rounds`), runs the
final-layer-bias detector (`anomaly.detector_report`) with the in-sample 1%-FPR threshold and
with the fixed robust-z threshold of the `bias_filter` defense (3.5, not tuned on the run, so
its FPR is the honest one), and writes CSV/JSON tables and PNG plots. `summarize` gathers one
row per (task, partition, factor, value, seed).

The malicious data rate factor wraps the run's task in `attacks.malicious_rate.MaliciousRateTask`
(attackers train at a fixed share of malicious examples; see there).
The achieved counts of every attacker in every round are recorded in `study_run.json`.
"""
from __future__ import annotations

import dataclasses
import fractions
import itertools
import math
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tff_backdoor import config as config_lib
from tff_backdoor import data as data_lib
from tff_backdoor import metrics_io
from tff_backdoor.analysis import anomaly
from tff_backdoor.analysis import captures as captures_lib
from tff_backdoor.attacks import malicious_rate
from tff_backdoor.run import driver
from tff_backdoor.run import rundir
from tff_backdoor.run import setup as setup_lib
from tff_backdoor.run import warm_start

from studies import anomaly_plots
from studies import sweep_plan
from studies import sweeps

FACTORS = ('num_malicious', 'client_lr', 'malicious_rate')
DEFAULT_VALUES: Dict[str, Tuple[float, ...]] = {
    'num_malicious': (1, 2, 3, 4, 5),
    'client_lr': (0.01, 0.03, 0.1),
    'malicious_rate': (1.0, 1 / 3, 1 / 10, 1 / 20),
}
BASELINE: Dict[str, float] = {'num_malicious': 1, 'client_lr': 0.01, 'malicious_rate': 0.1}
STUDY_TASKS = ('targeted', 'pixel')
DEFAULT_PARTITIONS = ('iid', 'dirichlet0.5', 'dirichlet0.1')
WRITERS = 'writers'  # The natural partition of femnist/emnist: one client per writer.
# The bias_filter defense's default cut-off (Iglewicz and Hoaglin's modified z-score 3.5).
DEFAULT_Z_THRESHOLD = 3.5
SUMMARY_FILE = rundir.SUMMARY_JSON
STUDY_RUN_FILE = 'study_run.json'

# Columns of the printed summary table: (key, header, format).
PRINT_COLUMNS = (
    ('task', 'task', '{}'), ('partition', 'partition', '{}'), ('factor', 'factor', '{}'),
    ('value', 'value', '{:.4g}'), ('seed', 'seed', '{}'),
    ('achieved_rate', 'rate', '{:.3f}'), ('test_accuracy', 'test_acc', '{:.3f}'),
    ('backdoor_accuracy', 'bd_acc', '{:.3f}'),
    ('bias_auc', 'bias_auc', '{:.3f}'), ('bias_rank', 'rank', '{}'),
    ('top_variable', 'top_variable', '{}'),
    ('bias_auc_early', 'auc_early', '{:.3f}'), ('bias_rank_early', 'rank_early', '{}'),
    ('top_variable_early', 'top_early', '{}'), ('bias_auc_late', 'auc_late', '{:.3f}'),
    ('tpr_at_fpr_1pct', 'tpr@1%', '{:.2f}'), ('tpr_at_fpr_5pct', 'tpr@5%', '{:.2f}'),
    ('fpr_at_fpr_1pct', 'fpr@1%', '{:.3f}'), ('rounds_to_detection', 'rtd@1%', '{}'),
    ('tpr_at_z', 'tpr@z', '{:.2f}'), ('fpr_at_z', 'fpr@z', '{:.3f}'),
    ('rounds_to_detection_z', 'rtd@z', '{}'),
)


# ----------------------------------------------------------------------------- parsing


def parse_partition(name: str) -> Tuple[str, Optional[float]]:
  """'iid' -> ('iid', None); 'dirichlet0.5' -> ('dirichlet', 0.5); 'writers' -> ('writers',
  None), the natural split of a writer data set (femnist, emnist)."""
  name = name.strip()
  if name in ('iid', WRITERS):
    return name, None
  if name.startswith('dirichlet'):
    try:
      alpha = float(name[len('dirichlet'):])
    except ValueError:
      alpha = float('nan')
    if math.isfinite(alpha) and alpha > 0:
      return 'dirichlet', alpha
  raise ValueError(f"bad partition {name!r}: use 'iid', 'dirichlet<alpha>' (e.g. dirichlet0.5) "
                   f"or '{WRITERS}'")


def parse_number(text: str) -> float:
  """'0.1', '1/10' or '1e-2' -> float."""
  try:
    return float(fractions.Fraction(text.strip()))
  except (ValueError, ZeroDivisionError):
    raise ValueError(f'bad number {text!r}: use e.g. 0.1 or 1/10') from None


def check_value(factor: str, value: float, num_clients: int = 10) -> float:
  """Raises ValueError if `value` is impossible for `factor`; returns it (ints for counts)."""
  if factor not in FACTORS:
    raise ValueError(f'unknown factor {factor!r}; choose from {", ".join(FACTORS)}')
  if factor == 'num_malicious':
    if value != int(value) or not 1 <= value < num_clients:
      raise ValueError(f'num_malicious must be an integer in [1, {num_clients - 1}] with '
                       f'{num_clients} clients, got {value:g}')
    return int(value)
  if factor == 'client_lr' and not (math.isfinite(value) and value > 0):
    raise ValueError(f'client_lr must be positive, got {value:g}')
  if factor == 'malicious_rate' and not 0 < value <= 1:
    raise ValueError(f'malicious_rate must be in (0, 1], got {value:g}')
  return float(value)


# ----------------------------------------------------------------------------- sweep expansion


@dataclasses.dataclass(frozen=True)
class Setting:
  """One configuration of the study: a task, a partition, a seed and the three factor values
  (the sweep engine's record of its run is a `sweep_plan.Run`)."""
  task: str
  partition: str
  seed: int
  num_malicious: int
  client_lr: float
  malicious_rate: float

  @property
  def name(self) -> str:
    """Directory name, unique per setting."""
    return (f'{self.task}_{self.partition}_m{self.num_malicious}_lr{self.client_lr:g}'
            f'_rate{self.malicious_rate:.4g}_seed{self.seed}')


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One row of the study: a factor at a value, the others at the baseline."""
  task: str
  partition: str
  factor: str
  value: float
  seed: int
  run: Setting
  is_baseline: bool  # value is the factor's baseline value


def expand_sweep(factors: Sequence[str] = FACTORS, tasks: Sequence[str] = STUDY_TASKS,
                 partitions: Sequence[str] = DEFAULT_PARTITIONS, seeds: Sequence[int] = (0,),
                 values: Optional[Mapping[str, Sequence[float]]] = None,
                 baseline: Optional[Mapping[str, float]] = None,
                 num_clients: int = 10) -> List[SweepPoint]:
  """Every (task, partition, seed, factor, value) with the other factors at the baseline.

  Order: task, partition, seed, factor, value (as given). A setting shared by several points
  (the baseline appears in every factor's sweep) is one `Setting`; see `unique_runs`.
  """
  values = dict(DEFAULT_VALUES, **(values or {}))
  baseline = dict(BASELINE, **(baseline or {}))
  for name, items in (('factor', factors), ('task', tasks), ('partition', partitions),
                      ('seed', seeds)):
    if not items:
      raise ValueError(f'no {name} given')
    if len(set(items)) != len(items):
      raise ValueError(f'repeated {name} in {list(items)}')
  for task in tasks:
    if task not in STUDY_TASKS:
      raise ValueError(f'unknown task {task!r}; choose from {", ".join(STUDY_TASKS)}')
  for partition in partitions:
    parse_partition(partition)
  for factor in FACTORS:
    check_value(factor, baseline[factor], num_clients)
  points = []
  for task, partition, seed, factor in itertools.product(tasks, partitions, seeds, factors):
    if factor not in FACTORS:
      raise ValueError(f'unknown factor {factor!r}; choose from {", ".join(FACTORS)}')
    if not values[factor]:
      raise ValueError(f'no values for factor {factor}')
    for value in values[factor]:
      value = check_value(factor, value, num_clients)
      setting = dict(baseline, **{factor: value})
      run = Setting(task=task, partition=partition, seed=int(seed),
                num_malicious=int(setting['num_malicious']),
                client_lr=float(setting['client_lr']),
                malicious_rate=float(setting['malicious_rate']))
      points.append(SweepPoint(task, partition, factor, value, int(seed), run,
                               math.isclose(value, baseline[factor], rel_tol=1e-9)))
  return points


def unique_runs(points: Iterable[SweepPoint]) -> List[Setting]:
  """The distinct runs of `points`, in first-seen order."""
  return list(dict.fromkeys(p.run for p in points))


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass
class StudySettings:
  """Everything shared by the runs of a study (the program's flags)."""
  dataset: str = 'fashion_mnist'
  data_dir: Optional[str] = None
  model: str = 'sun_cnn'
  rounds: int = 20
  num_clients: int = 10
  local_epochs: int = 2
  batch_size: int = 64
  server_lr: float = 1.0
  num_tasks: int = 1
  source_class: int = 7  # targeted; pixel always uses -1 (every class but the target)
  target_class: int = 1
  trigger_size: int = 5
  server_holdout: int = 1000
  client_data_fraction: float = 1.0  # < 1: every client keeps this share of its examples
  init_from: str = ''  # a run directory: every run starts from its final model (warm start)
  early_rounds: int = 5
  score: str = 'linf'
  z_threshold: float = DEFAULT_Z_THRESHOLD
  eval_every: int = 1
  output_dir: str = 'experiments/results/anomaly'
  keep_captures: bool = False
  verbose: bool = True

  def validate(self) -> 'StudySettings':
    """Raises ValueError naming the flag that is out of range; returns self (checked before
    any run starts, so a bad flag fails at once)."""
    for name in ('rounds', 'num_clients', 'local_epochs', 'batch_size', 'num_tasks',
                 'early_rounds', 'eval_every', 'trigger_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'--{name} must be >= 1, got {getattr(self, name)}')
    if not 0 < self.client_data_fraction <= 1:
      raise ValueError(f'--client_data_fraction must be in (0, 1], got '
                       f'{self.client_data_fraction}')
    if self.score not in anomaly.SCORE_NAMES:
      raise ValueError(f'unknown --score={self.score!r}; choose one of '
                       f'{", ".join(anomaly.SCORE_NAMES)}')
    if not self.z_threshold > 0:
      raise ValueError(f'--z_threshold must be positive, got {self.z_threshold}')
    return self

  def run_dir(self, run: Setting) -> str:
    """Where `run` writes its outputs: OUTPUT_DIR/runs/<run name>."""
    return os.path.join(self.output_dir, 'runs', run.name)


def experiment_config(settings: StudySettings, run: Setting) -> config_lib.ExperimentConfig:
  """The `ExperimentConfig` of one run (the malicious rate is applied in
  `prepare_run`, on top of this config)."""
  partition, alpha = parse_partition(run.partition)
  natural = settings.dataset in data_lib.NATURAL_DATASETS
  if natural != (partition == WRITERS):
    raise ValueError(f"partition {run.partition!r} with --dataset={settings.dataset}: writer "
                     f"data sets ({', '.join(data_lib.NATURAL_DATASETS)}) take exactly the "
                     f"'{WRITERS}' partition")
  if natural:  # The loader keeps a seeded subset of num_clients writers; no partitioning.
    partition = config_lib.ExperimentConfig().data.partition
  n = settings.num_clients
  task_fields = (dict(source_class=settings.source_class, num_tasks=settings.num_tasks)
                 if run.task == 'targeted' else
                 # poison_fraction is replaced by MaliciousRateTask; this value gives about the
                 # same rate when the config is run on its own (non-target share ~ 0.9).
                 dict(source_class=-1, poison_fraction=min(1.0, run.malicious_rate / 0.9)))
  config = config_lib.ExperimentConfig.from_flat(
      dataset=settings.dataset, data_dir=settings.data_dir, partition=partition,
      alpha=alpha if alpha is not None else 0.5, num_clients=n, clients_per_round=n,
      server_holdout=settings.server_holdout, model=settings.model, rounds=settings.rounds,
      local_epochs=settings.local_epochs, batch_size=settings.batch_size,
      client_lr=run.client_lr, server_lr=settings.server_lr, task=run.task,
      target_class=settings.target_class, trigger_size=settings.trigger_size,
      attack='data_poison', schedule='fixed_per_round',
      malicious_fraction=run.num_malicious / n, attackers_per_round=run.num_malicious,
      seed=run.seed, output_dir=settings.run_dir(run), eval_every=settings.eval_every,
      capture_rounds='all', tensorboard=False, verbose=settings.verbose,
      init_from=settings.init_from,
      **task_fields).validate()
  warm_start.check_source(config)
  return config


def subsample_clients(clients: Mapping[str, Tuple[np.ndarray, np.ndarray]], fraction: float,
                      seed: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Each client keeps a seeded random round(fraction * n) of its examples (at least 1).

  Keeps the relative client sizes and, in expectation, each client's label mix.
  """
  if fraction >= 1:
    return dict(clients)
  rng = np.random.default_rng([seed, 7])
  out = {}
  for cid in sorted(clients):
    x, y = clients[cid]
    k = max(1, int(math.floor(fraction * len(y) + 0.5)))
    keep = np.sort(rng.choice(len(y), size=min(k, len(y)), replace=False))
    out[cid] = (np.asarray(x)[keep], np.asarray(y)[keep])
  return out


def prepare_run(settings: StudySettings, run: Setting) -> setup_lib.ExperimentSetup:
  """`setup_lib.prepare` of the run's config, then the data fraction and the rate wrapper."""
  config = experiment_config(settings, run)
  setup = setup_lib.prepare(config)
  clients, task = setup.clients, setup.task
  if settings.client_data_fraction < 1:
    clients = subsample_clients(clients, settings.client_data_fraction, run.seed)
    task = setup_lib.build_task(config, setup.data, clients, seed=run.seed)
  task = malicious_rate.MaliciousRateTask(task, run.malicious_rate)
  eval_sets = {'test': setup.data.test, **task.eval_sets()}
  return dataclasses.replace(setup, clients=clients, task=task, eval_sets=eval_sets)


# ----------------------------------------------------------------------------- analysis


@dataclasses.dataclass
class RoundScores:
  """Every variable's scores of one captured round (small: clients x variables x 3)."""
  round_num: int
  client_ids: List[str]
  malicious: np.ndarray
  scores: Dict[str, Dict[str, np.ndarray]]  # variable -> score name -> [clients]


def score_captures(directory: str, bias_variable: Optional[str] = None
                   ) -> Tuple[List[RoundScores], List[captures_lib.RoundCapture]]:
  """One pass over the capture files: every variable's scores, and the bias-only captures.

  Only one round's full update is in memory at a time.
  """
  scores, bias_captures = [], []
  for capture in captures_lib.iter_captures(directory):
    name = bias_variable or anomaly.default_bias_variable(capture.variable_names)
    scores.append(RoundScores(capture.round_num, list(capture.client_ids),
                              np.asarray(capture.malicious), anomaly.variable_scores(capture)))
    bias_captures.append(captures_lib.RoundCapture(
        capture.round_num, [np.array(capture.variable(name))], [name],
        list(capture.client_ids), np.asarray(capture.malicious)))
  if not scores:
    raise ValueError(f'no captures in {directory}')
  return scores, bias_captures


def localization_rows(round_scores: Sequence[RoundScores], score: str = 'linf',
                      rounds: Optional[Iterable[int]] = None) -> List[anomaly.LocalizationRow]:
  """`anomaly.localization_table` computed from precomputed scores (same rows, same order)."""
  if score not in anomaly.SCORE_NAMES:
    raise ValueError(f'unknown score {score!r}; choose one of {anomaly.SCORE_NAMES}')
  wanted = None if rounds is None else {int(r) for r in rounds}
  chosen = [r for r in round_scores if wanted is None or r.round_num in wanted]
  if not chosen:
    return []
  names = list(chosen[0].scores)
  y = np.concatenate([r.malicious for r in chosen])
  rows = []
  for name in names:
    s = np.concatenate([r.scores[name][score] for r in chosen])
    mean_mal = float(np.mean(s[y])) if y.any() else float('nan')
    mean_hon = float(np.mean(s[~y])) if (~y).any() else float('nan')
    rows.append(anomaly.LocalizationRow(
        variable=name, auc=anomaly.roc_auc(s, y), mean_malicious=mean_mal,
        mean_honest=mean_hon, ratio=anomaly.ratio(mean_mal, mean_hon), n_malicious=int(y.sum()),
        n_honest=int((~y).sum()),
        round_auc={r.round_num: anomaly.roc_auc(r.scores[name][score], r.malicious)
                   for r in chosen}))
  return sorted(rows, key=lambda r: -r.auc if not math.isnan(r.auc) else float('inf'))


def early_late_rounds(rounds: Sequence[int], early: int) -> Tuple[List[int], List[int]]:
  """First `early` captured rounds, and the last `early` ones that are not early."""
  rounds = sorted(rounds)
  first = rounds[:early]
  last = [r for r in rounds[-early:] if r not in first]
  return first, last


def _rank_of(rows: Sequence[anomaly.LocalizationRow], variable: str) -> Optional[int]:
  """Competition rank of `variable` by AUC: 1 + the number of variables with a larger AUC
  (ties share a rank); None if absent or its AUC is NaN."""
  mine = [r.auc for r in rows if r.variable == variable]
  if not mine or math.isnan(mine[0]):
    return None
  return 1 + sum(1 for r in rows if not math.isnan(r.auc) and r.auc > mine[0])


def _top_variables(rows: Sequence[anomaly.LocalizationRow]) -> Optional[str]:
  """The variable(s) with the largest AUC, '|'-joined when tied."""
  if not rows or math.isnan(rows[0].auc):
    return None
  return '|'.join(r.variable for r in rows if r.auc == rows[0].auc)


def _detections(report: Mapping[str, Any]) -> Tuple[Optional[int], float]:
  """(max over attackers of rounds from first attack to first detection, share detected)."""
  first = report.get('first_detection') or {}
  if not first:
    return None, float('nan')
  waits = []
  for d in first.values():
    if d['first_detection_round'] is not None:
      waits.append(d['first_detection_round'] - d['first_malicious_round'] + 1)
  detected = len(waits) / len(first)
  return (max(waits) if len(waits) == len(first) else None), detected


def _plot_run(run_dir: str, rows: Sequence[Any], bias_captures: Sequence[Any], bias: str,
              score: str, z_threshold: float, title: str) -> None:
  """analyze_run's three figures: AUC per variable, per-round AUC, the bias scores."""
  prefix = f'{title}: ' if title else ''
  anomaly_plots.plot_localization_auc(
      rows, os.path.join(run_dir, 'localization_auc.png'),
      title=f'{prefix}AUC per variable ({score}, all rounds)')
  bias_row = [r for r in rows if r.variable == bias]
  others = [r for r in rows if r.variable != bias]
  anomaly_plots.plot_round_auc(bias_row + others, os.path.join(run_dir, 'round_auc.png'),
                               top=4, title=f'{prefix}per-round AUC')
  anomaly_plots.plot_bias_scores(bias_captures, os.path.join(run_dir, 'bias_scores.png'),
                                 threshold=z_threshold,
                                 title=f'{prefix}final-layer bias score')


def _localization_summary(tables: Mapping[str, Sequence[Any]], bias: str) -> Dict[str, Any]:
  """The bias variable's AUC and rank, and the top variable, in all/early/late rounds."""
  summary: Dict[str, Any] = {}
  for key, suffix in (('all', ''), ('early', '_early'), ('late', '_late')):
    rows = tables[key]
    bias_rows = [r for r in rows if r.variable == bias]
    summary[f'bias_auc{suffix}'] = bias_rows[0].auc if bias_rows else float('nan')
    summary[f'bias_rank{suffix}'] = _rank_of(rows, bias)
    summary[f'top_variable{suffix}'] = _top_variables(rows)
    summary[f'top_auc{suffix}'] = rows[0].auc if rows else float('nan')
  summary['bias_score_ratio'] = next((r.ratio for r in tables['all'] if r.variable == bias),
                                     float('nan'))
  return summary


def _detector_summary(in_sample: Mapping[str, Any], at_z: Mapping[str, Any],
                      accumulated: Mapping[str, Any], z_threshold: float) -> Dict[str, Any]:
  """The bias detector's AUC, TPR/FPR and rounds to detection at 1% FPR and at the z cut."""
  metrics = in_sample['metrics']
  rtd, detected = _detections(in_sample)
  rtd_z, detected_z = _detections(at_z)
  return {
      'detector_auc': metrics['auc'],
      'tpr_at_fpr_1pct': metrics['tpr_at_fpr_1pct'],
      'tpr_at_fpr_5pct': metrics['tpr_at_fpr_5pct'],
      'fpr_at_fpr_1pct': in_sample['fpr_at_threshold'],
      'threshold_1pct': in_sample['threshold'],
      'rounds_to_detection': rtd, 'attackers_detected': detected,
      'z_threshold': z_threshold,
      'tpr_at_z': at_z['tpr_at_threshold'], 'fpr_at_z': at_z['fpr_at_threshold'],
      'honest_clients_flagged_at_z': at_z['honest_clients_flagged_fraction'],
      'rounds_to_detection_z': rtd_z, 'attackers_detected_z': detected_z,
      'bilgin_auc': in_sample['bilgin_metrics']['auc'],
      'accumulated_auc': accumulated['metrics']['auc'],
      'accumulated_tpr_at_fpr_1pct': accumulated['metrics']['tpr_at_fpr_1pct'],
  }


def analyze_run(run_dir: str, early_rounds: int = 5, score: str = 'linf',
                z_threshold: float = DEFAULT_Z_THRESHOLD, plots: bool = True,
                title: str = '') -> Dict[str, Any]:
  """Localization tables, detector reports and plots of one run's captures; returns a summary.

  Writes to run_dir: localization.csv (all rounds), localization_early.csv,
  localization_late.csv, detector.json, and with `plots` localization_auc.png,
  round_auc.png, bias_scores.png.
  """
  round_scores, bias_captures = score_captures(os.path.join(run_dir, rundir.CAPTURES_DIR))
  bias = bias_captures[0].variable_names[0]
  rounds = [r.round_num for r in round_scores]
  early, late = early_late_rounds(rounds, early_rounds)
  tables = {'all': localization_rows(round_scores, score),
            'early': localization_rows(round_scores, score, early),
            'late': localization_rows(round_scores, score, late)}
  files = {'all': 'localization.csv', 'early': 'localization_early.csv',
           'late': 'localization_late.csv'}
  for key, rows in tables.items():
    metrics_io.write_csv(os.path.join(run_dir, files[key]), anomaly.table_to_records(rows))
  in_sample = anomaly.detector_report(bias_captures)
  at_z = anomaly.detector_report(bias_captures, threshold=z_threshold)
  accumulated = anomaly.detector_report(bias_captures, accumulate='mean')
  metrics_io.write_json(os.path.join(run_dir, 'detector.json'), {
      'score': score, 'early_rounds': early, 'late_rounds': late,
      'in_sample_1pct': in_sample, 'z_threshold': at_z, 'accumulated_mean': accumulated})
  if plots:
    _plot_run(run_dir, tables['all'], bias_captures, bias, score, z_threshold, title)
  summary: Dict[str, Any] = {'bias_variable': bias, 'score': score,
                             'captured_rounds': len(rounds),
                             'num_variables': len(tables['all']),
                             'variables': list(round_scores[0].scores)}
  summary.update(_localization_summary(tables, bias))
  summary.update(_detector_summary(in_sample, at_z, accumulated, z_threshold))
  return metrics_io.to_jsonable(summary)


def rate_report(log: Sequence[Mapping[str, Any]], intended: float) -> Dict[str, Any]:
  """Achieved malicious data rate over every attacker call of a run."""
  rates = np.array([r['rate'] for r in log], dtype=np.float64)
  if rates.size == 0:
    return {'intended_rate': intended, 'achieved_rate': None, 'calls': 0}
  return metrics_io.to_jsonable({
      'intended_rate': intended, 'achieved_rate': float(rates.mean()),
      'achieved_rate_min': float(rates.min()), 'achieved_rate_max': float(rates.max()),
      'calls': int(rates.size),
      'mean_malicious': float(np.mean([r['n_malicious'] for r in log])),
      'mean_benign': float(np.mean([r['n_benign'] for r in log])),
      'mean_local': float(np.mean([r['n_local'] for r in log])),
      'min_malicious_distinct': int(min(r['n_malicious_distinct'] for r in log)),
  })


# ----------------------------------------------------------------------------- flags


def study_from_flag_values(values: Mapping[str, Any]
                           ) -> Tuple[StudySettings, List[SweepPoint]]:
  """Settings and sweep points from the program's flag values; ValueError on bad values.

  Every run's `ExperimentConfig` is validated here, before any training.
  """
  fields = {f.name for f in dataclasses.fields(StudySettings)}
  settings = StudySettings(**{k: v for k, v in values.items() if k in fields}).validate()
  sweep_values = {f: [parse_number(v) for v in values[f'{f}_values']] for f in FACTORS}
  baseline = {'num_malicious': float(values['baseline_num_malicious']),
              'client_lr': float(values['baseline_client_lr']),
              'malicious_rate': parse_number(values['baseline_malicious_rate'])}
  try:
    seeds = [int(s) for s in values['seeds']]
  except ValueError:
    raise ValueError(f'--seeds must be integers, got {values["seeds"]}') from None
  if any(s < 0 for s in seeds):
    raise ValueError(f'--seeds must be >= 0, got {seeds}')
  points = expand_sweep(values['factors'], values['tasks'], values['partitions'], seeds,
                        sweep_values, baseline, settings.num_clients)
  for run in unique_runs(points):
    experiment_config(settings, run)
  return settings, points


def describe_sweep(settings: StudySettings, points: Sequence[SweepPoint]) -> str:
  """Human-readable list of the sweep points and the runs they need (for --dry_run)."""
  runs = unique_runs(points)
  done = sum(is_done(settings, r) for r in runs)
  lines = [f'{len(points)} sweep points, {len(runs)} distinct runs ({done} done, '
           f'{len(runs) - done} to run), {settings.rounds} rounds each, output '
           f'{settings.output_dir}']
  for p in points:
    state = 'done' if is_done(settings, p.run) else 'todo'
    mark = ' (baseline)' if p.is_baseline else ''
    lines.append(f'  {p.task:8s} {p.partition:13s} seed {p.seed}  {p.factor}={p.value:.4g}'
                 f'{mark} -> {p.run.name} [{state}]')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- running


def summary_path(settings: StudySettings, run: Setting) -> str:
  """The run's summary.json: written last, so its presence marks the run done."""
  return os.path.join(settings.run_dir(run), SUMMARY_FILE)


# Settings that do not change a run's results.
_NOT_IN_FINGERPRINT = ('output_dir', 'keep_captures', 'verbose')


def settings_fingerprint(settings: StudySettings) -> Dict[str, Any]:
  """The settings a run's results depend on (to tell a finished run from a stale one)."""
  return metrics_io.to_jsonable({k: v for k, v in dataclasses.asdict(settings).items()
                                 if k not in _NOT_IN_FINGERPRINT})


def _check_same_settings(settings: StudySettings, run: Setting, saved: Mapping[str, Any]) -> None:
  """Raises ValueError if the run was made with other settings. A setting newer than the run
  (absent from `saved`) counts as the same while it keeps its default."""
  current = settings_fingerprint(settings)
  defaults = settings_fingerprint(StudySettings())
  diff = sorted(k for k in current
                if saved.get(k, defaults[k]) != current[k])
  if diff:
    raise ValueError(f'{settings.run_dir(run)} was made with different {", ".join(diff)}; '
                     'use a new --output_dir')


def is_done(settings: StudySettings, run: Setting) -> bool:
  """Whether the run's summary exists; ValueError if it was made with other settings."""
  path = summary_path(settings, run)
  if not os.path.exists(path):
    return False
  _check_same_settings(settings, run, metrics_io.read_json(path).get('settings', {}))
  return True


def _trained_info(settings: StudySettings, run: Setting) -> Optional[Dict[str, Any]]:
  """study_run.json of a run whose training finished with every round captured, else None."""
  run_dir = settings.run_dir(run)
  path = os.path.join(run_dir, STUDY_RUN_FILE)
  captures = captures_lib.capture_files(os.path.join(run_dir, rundir.CAPTURES_DIR))
  if not (os.path.exists(path) and os.path.exists(os.path.join(run_dir, rundir.FINAL_FILE))
          and len(captures) == settings.rounds):
    return None
  info = metrics_io.read_json(path)
  _check_same_settings(settings, run, info.get('settings', {}))
  return info


def execute_run(settings: StudySettings, run: Setting) -> Dict[str, Any]:
  """Trains (unless final.json and every capture already exist), analyzes and summarizes.

  Writes study_run.json (the run's setting and achieved rate) and summary.json (written last:
  its presence marks the run done). Deletes the captures unless settings.keep_captures.
  """
  run_dir = settings.run_dir(run)
  os.makedirs(run_dir, exist_ok=True)
  start = time.time()
  info = _trained_info(settings, run)
  if info is None:
    # An interrupted run's files (a fresh start refuses to write over them): start over.
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    setup = prepare_run(settings, run)
    final = driver.run_prepared(setup)
    info = {'run': dataclasses.asdict(run), 'settings': settings_fingerprint(settings),
            'rate': rate_report(setup.task.log, run.malicious_rate),
            'malicious_clients': list(setup.schedule.malicious_clients),
            'client_sizes': {c: int(len(v[1])) for c, v in setup.clients.items()},
            'targeted_pool': (int(setup.task.base.num_malicious) if run.task == 'targeted'
                              else None),
            'final': {k: v for k, v in final.items() if k != 'partition'},
            'partition': final.get('partition'),
            'train_seconds': time.time() - start,
            'attacker_calls': setup.task.log}
    metrics_io.write_json(os.path.join(run_dir, STUDY_RUN_FILE), info)
  start = time.time()
  summary = analyze_run(run_dir, settings.early_rounds, settings.score, settings.z_threshold,
                        title=run.name)
  final = info['final']
  summary.update({
      'run': run.name, **dataclasses.asdict(run), 'rounds': settings.rounds,
      'achieved_rate': info['rate'].get('achieved_rate'),
      'targeted_pool': info.get('targeted_pool'),
      'test_accuracy': final.get('test_accuracy'),
      'backdoor_accuracy': final.get('backdoor_accuracy'),
      'train_seconds': info.get('train_seconds'),
      'analysis_seconds': time.time() - start,
      'settings': settings_fingerprint(settings)})
  if not settings.keep_captures:
    shutil.rmtree(os.path.join(run_dir, rundir.CAPTURES_DIR), ignore_errors=True)
  metrics_io.write_json(summary_path(settings, run), summary)
  return summary


def load_summary(settings: StudySettings, run: Setting) -> Dict[str, Any]:
  """A finished run's summary (what `execute_run` wrote), for the study's tables."""
  return metrics_io.read_json(summary_path(settings, run))


def summary_rows(points: Sequence[SweepPoint],
                 summaries: Mapping[Setting, Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """One record per sweep point (task, partition, factor, value, seed), runs shared."""
  rows = []
  for p in points:
    s = summaries.get(p.run)
    if s is None:
      continue
    row = {'task': p.task, 'partition': p.partition, 'factor': p.factor, 'value': p.value,
           'seed': p.seed, 'is_baseline': p.is_baseline}
    row.update({k: v for k, v in s.items() if k not in row and k not in ('variables',
                                                                          'settings')})
    rows.append(row)
  return rows


def format_table(rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[Tuple[str, str, str]] = PRINT_COLUMNS) -> str:
  """A plain-text table of `rows` (None/NaN shown as '-')."""
  def cell(row, key, fmt):
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return '-'
    return fmt.format(v)
  body = [[h for _, h, _ in columns]] + [[cell(r, k, f) for k, _, f in columns] for r in rows]
  widths = [max(len(line[i]) for line in body) for i in range(len(columns))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                   for line in body)


def _variable_aucs(run_dir: str) -> Dict[str, float]:
  return {r['variable']: float(r['auc']) if r['auc'] else float('nan')
          for r in metrics_io.read_csv(os.path.join(run_dir, 'localization.csv'))}


def plot_factor_sweeps(settings: StudySettings, points: Sequence[SweepPoint],
                       summaries: Mapping[Setting, Mapping[str, Any]]) -> List[str]:
  """Per (task, partition, factor): AUC per variable (bars per value) and the bias AUC
  (all, early, late rounds) against the value. Returns the files written."""
  groups: Dict[Tuple[str, str, str, int], List[SweepPoint]] = {}
  for p in points:
    if p.run in summaries:
      groups.setdefault((p.task, p.partition, p.factor, p.seed), []).append(p)
  written = []
  plot_dir = os.path.join(settings.output_dir, 'plots')
  os.makedirs(plot_dir, exist_ok=True)
  for (task, partition, factor, seed), group in groups.items():
    aucs = [_variable_aucs(settings.run_dir(p.run)) for p in group]
    variables = summaries[group[0].run].get('variables') or list(aucs[0])
    fig = Figure(figsize=(max(6.0, 0.9 * len(variables) + 2.0), 5.5))
    ax = fig.add_subplot(2, 1, 1)
    width = 0.8 / len(group)
    x = np.arange(len(variables))
    for i, (p, a) in enumerate(zip(group, aucs)):
      ax.bar(x + (i - (len(group) - 1) / 2) * width,
             [np.nan_to_num(a.get(v, np.nan)) for v in variables], width,
             label=f'{factor}={p.value:.4g}')
    ax.axhline(0.5, color='k', linestyle='--', linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(variables, rotation=30, ha='right', fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel('ROC-AUC')
    ax.set_title(f'{task}, {partition}, seed {seed}: AUC per variable by {factor}')
    ax.legend(fontsize=7, ncol=min(len(group), 5), loc='lower right')
    ax2 = fig.add_subplot(2, 1, 2)
    vals = [p.value for p in group]
    for key, label in (('bias_auc', 'bias, all rounds'), ('bias_auc_early', 'bias, early'),
                       ('bias_auc_late', 'bias, late'), ('tpr_at_z', 'TPR at z'),
                       ('fpr_at_z', 'FPR at z')):
      ys = [summaries[p.run].get(key) for p in group]
      ax2.plot(vals, [np.nan if y is None else y for y in ys], marker='o', label=label)
    ax2.set_xscale('log' if factor != 'num_malicious' else 'linear')
    ax2.set_xlabel(factor)
    ax2.set_ylim(-0.02, 1.05)
    ax2.legend(fontsize=7, ncol=5, loc='lower left')
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path = os.path.join(plot_dir, f'{task}_{partition}_{factor}_seed{seed}.png')
    fig.savefig(path, dpi=110)
    written.append(path)
  return written


def run_study(settings: StudySettings, points: Sequence[SweepPoint],
              log: Callable[[str], None] = print,
              run_missing: bool = True) -> List[Dict[str, Any]]:
  """Runs every not-yet-done run of `points` through the sweep engine (in this process), then
  writes summary.csv/json and the plots.

  With run_missing=False nothing is trained: the summary covers the finished runs only (to
  tabulate a sweep that is still running, or runs that other processes finished).
  """
  settings.validate()
  runs = {run.name: run for run in unique_runs(points)}
  records = [sweeps.in_process_run(name, dataclasses.asdict(run), settings.run_dir(run))
             for name, run in runs.items()]
  result = sweeps.run_in_process(
      records, execute=lambda record: execute_run(settings, runs[record.name]),
      is_finished=lambda record: is_done(settings, runs[record.name]),
      run_missing=run_missing, log=log)
  summaries = {runs[name]: load_summary(settings, runs[name])
               for name, state in result.status.items() if state == sweep_plan.FINISHED}
  rows = summary_rows(points, summaries)
  metrics_io.write_csv(os.path.join(settings.output_dir, rundir.SUMMARY_CSV), rows)
  metrics_io.write_json(os.path.join(settings.output_dir, rundir.SUMMARY_JSON), rows)
  plot_factor_sweeps(settings, points, summaries)
  return rows
