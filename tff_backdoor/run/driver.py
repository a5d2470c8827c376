"""One run end to end: setup, warm start or resume, the rounds with their hooks, final files.

`run_experiment(config)` is what experiments/emnist_backdoor.py's `main` calls;
`run_prepared(setup)` runs a setup built (and possibly changed) beforehand. The rounds are
`loop.run_rounds` with hooks for capture, detection (whom the defense caught), evaluation and
metrics, progress and checkpoints; FLAIN is a hook of the end of the run.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow_federated as tff

from tff_backdoor import metrics_io
from tff_backdoor.config import EXECUTION_KEY, ExperimentConfig, default_settings, non_default
from tff_backdoor.analysis import lifespan
from tff_backdoor.execution import contexts
from tff_backdoor.run import adaptive_trigger
from tff_backdoor.run import capture as capture_lib
from tff_backdoor.run import checkpoint
from tff_backdoor.run import client_inputs
from tff_backdoor.run import detection
from tff_backdoor.run import evaluation
from tff_backdoor.run import flain_hook
from tff_backdoor.run import health as health_lib
from tff_backdoor.run import loop
from tff_backdoor.run import ownership
from tff_backdoor.run import progress as progress_lib
from tff_backdoor.run import rundir
from tff_backdoor.run import setup as setup_lib
from tff_backdoor.run import summary
from tff_backdoor.run import warm_start
from tff_backdoor.run.setup import ExperimentSetup

# Keys of config.json that may differ when a run is resumed.
RESUME_IGNORED = ('resume', 'verbose', 'checkpoint_every', 'keep_checkpoints', 'workers',
                  'num_subrounds', 'overwrite')


_IDENTITY_IGNORED = RESUME_IGNORED + ('output_dir', 'tensorboard')


def run_identity(config: ExperimentConfig) -> str:
  """The identity every checkpoint of this run carries (`ownership.identity`)."""
  return ownership.identity(config.to_dict(), _IDENTITY_IGNORED)


def resume_state(config: ExperimentConfig, state: Any, streams: Dict[str, np.random.Generator]
                 ) -> Tuple[Any, int, Dict[str, Any]]:
  """Loads the newest intact checkpoint of this run; returns (state, next round, meta).

  A run directory with other settings is refused (checkpoints or not); a checkpoint of
  another run identity too; a damaged newer checkpoint, or one whose metrics rows are gone, is
  skipped with one line on stderr; none usable: CheckpointError.
  """
  directory = os.path.join(config.run.output_dir, rundir.CHECKPOINTS_DIR)
  saved = _saved_config(config)
  _check_same_config(config, saved)
  if not checkpoint.has_checkpoints(directory):
    return state, 0, {}
  older = () if saved is None else (ownership.legacy_identity(saved, _IDENTITY_IGNORED),)
  unusable = ownership.resume_filter(run_identity(config), config.run.output_dir,
                                     checkpoint.checkpoint_owner, also=older)
  restored = checkpoint.restore_newest(
      directory, state, warn=lambda line: print(line, file=sys.stderr, flush=True),
      unusable=unusable)
  if restored is None:  # emptied since `has_checkpoints` (a deletion racing us): start afresh
    return state, 0, {}
  state, meta, path = restored
  ownership.restore_metrics(config.run.output_dir, checkpoint.checkpoint_owner(path))
  for name in ('round_data', 'sampling'):
    streams[name].bit_generator.state = meta['rng'][name]
  return state, int(meta['next_round']), meta


def _saved_config(config: ExperimentConfig) -> Optional[Dict[str, Any]]:
  """The run directory's config.json as written (before this run rewrites it), or None."""
  path = os.path.join(config.run.output_dir, rundir.CONFIG_FILE)
  return metrics_io.read_json(path) if os.path.exists(path) else None


def _check_same_config(config: ExperimentConfig, saved: Optional[Dict[str, Any]]) -> None:
  """ValueError if the run directory's config.json has other settings than `config`.

  Its `output_dir` may differ: a run is its settings, not its path, so a run directory moved
  or copied elsewhere (e.g. to DIR.old-1 by `--overwrite=move`) resumes where it now is. Keys
  newer than the run's config.json (nested `defense` ones too) count as equal at their default.
  """
  if saved is None:
    return
  ignored, defaults = RESUME_IGNORED + ('output_dir',), default_settings()
  theirs, ours = (non_default(ownership.settings(values, ignored), defaults)
                  for values in (saved, config.to_dict()))
  diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
  if diff:
    raise ValueError(f'cannot --resume: {config.run.output_dir} was run with different '
                     f'{", ".join(diff)}; use a new --output_dir')


def round_row(round_num: int, flat: Dict[str, Any], flags: Sequence[bool]) -> Dict[str, Any]:
  """A metrics row's training part: client metrics, attackers and the aggregator's reports."""
  row: Dict[str, Any] = {'round': round_num}
  row['train_accuracy'] = flat.get('client_work/train/sparse_categorical_accuracy')
  row['train_loss'] = flat.get('client_work/train/loss')
  # Every example the clients trained on, the attackers' extra passes too (the client
  # model's own counter: each forward pass of local training adds its batch).
  row['examples_trained'] = flat.get('client_work/train/num_examples')
  row['num_attackers'] = int(sum(flags))
  for key in ('mean_honest_update_norm', 'mean_malicious_update_norm', 'max_update_norm'):
    row[key] = flat.get(f'client_work/{key}')
  row.update({k: v for k, v in flat.items()
              if k.startswith('aggregator/') and not isinstance(v, list)})
  # README's `nonfinite_count`: every NaN/Inf client update zeroed, by the client work (which
  # sees them first) or by the aggregator's guard; TFF's finalizer counts an aggregate it
  # refused to apply for the same reason.
  row['nonfinite_count'] = int((flat.get('client_work/nonfinite_count') or 0)
                               + (flat.get('aggregator/nonfinite_count') or 0))
  row['update_non_finite'] = flat.get('finalizer/update_non_finite')
  return row


class MetricsHook(loop.Hook):
  """Builds each round's row, evaluates when due, and writes metrics.jsonl/csv/TensorBoard."""

  def __init__(self, setup: ExperimentSetup, evaluator: evaluation.Evaluator,
               writer: rundir.MetricsWriter, last_eval: Dict[str, float]):
    self.setup, self.evaluator, self.writer = setup, evaluator, writer
    self.last_eval = last_eval
    self.between_sets = evaluation.between_rounds_eval_sets(setup)
    self.eval_seconds = 0.0  # evaluating, over this process's rounds (in their round_seconds)

  def after_round(self, r: loop.Round) -> None:
    rounds, every = self.setup.config.fed_avg.rounds, self.setup.config.run.eval_every
    attackers = [bool(p.is_attacker) for p in r.participants]
    r.row.update(round_row(r.number, metrics_io.flatten_metrics(r.output.metrics), attackers))
    # An attack's work outside the clients (A3FL's trigger search) counts as trained examples.
    extra = r.row.get(adaptive_trigger.EXTRA_KEY)
    if extra:
      r.row['examples_trained'] = (r.row['examples_trained'] or 0) + extra
    if (r.number + 1) % every == 0 or r.number + 1 == rounds:
      started = time.time()
      self.evaluator.load(self.setup.process.get_model_weights(r.state))
      sets = self.setup.eval_sets if r.number + 1 == rounds else self.between_sets
      self.last_eval = self.evaluator.evaluate(sets)
      r.row.update(self.last_eval)
      r.row['test_examples'] = len(sets['test'][1])  # what this row's test_* were measured on
      self.eval_seconds += time.time() - started  # final.json: the evaluation's share
    r.row['round_seconds'] = time.time() - r.started
    self.writer.write(r.row)

  def end(self, state: Any, final: Dict[str, Any]) -> None:
    self.writer.close()


class CheckpointHook(loop.Hook):
  """Saves the loop state (process state, RNG streams, last evaluation, an adaptive attack's
  trigger) every k rounds."""

  def __init__(self, config: ExperimentConfig, streams, metrics: MetricsHook, start: float,
               trigger: Optional[adaptive_trigger.AdaptiveTrigger] = None):
    self.config, self.streams, self.metrics, self.start = config, streams, metrics, start
    self.identity, self.trigger = run_identity(config), trigger

  def after_round(self, r: loop.Round) -> None:
    run = self.config.run
    if not run.checkpoint_every or (r.number + 1) % run.checkpoint_every:
      return
    checkpoint.save_checkpoint(
        os.path.join(run.output_dir, rundir.CHECKPOINTS_DIR), r.number + 1, r.state,
        {'next_round': r.number + 1, 'last_eval': self.metrics.last_eval,
         'seconds': time.time() - self.start,
         'rng': {name: self.streams[name].bit_generator.state
                 for name in ('round_data', 'sampling')},
         **(self.trigger.checkpoint_meta() if self.trigger is not None else {})},
        keep=run.keep_checkpoints,
        owner=ownership.checkpoint_owner(self.identity, run.output_dir))


def _initial_state(setup: ExperimentSetup, evaluator: evaluation.Evaluator):
  """(round-0 state, the setup whose config records what --init_from loaded, its source).

  The run's one config from here on: every hook reads `setup.config` of the setup returned.
  """
  config, state = setup.config, setup.process.initialize()
  if not config.run.init_from:
    return state, setup, None
  source = warm_start.load(config.run.init_from, evaluator.model, config.run.output_dir)
  config = config.replace(init_from_file=source.file, init_from_sha256=source.sha256,
                          init_from_rounds=source.rounds)
  state = setup.process.set_model_weights(state, tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in evaluator.model.trainable_weights],
      non_trainable=[v.numpy() for v in evaluator.model.non_trainable_weights]))
  return state, dataclasses.replace(setup, config=config), source


def _announce(progress: progress_lib.Progress, setup: ExperimentSetup, source,
              first_round: int) -> None:
  progress.write(progress_lib.describe_setup(setup))
  if source is not None:
    progress.write(f'warm start from {source.file} ({source.rounds} rounds of training, '
                   f'weights sha256 {source.sha256[:12]})')
  if first_round:
    progress.write(f'resumed from round {first_round} of {setup.config.fed_avg.rounds}')


def _round_inputs(setup: ExperimentSetup, streams,
                  trigger: Optional[adaptive_trigger.AdaptiveTrigger] = None) -> loop.RoundInputs:
  """round n -> (participants, client data), drawing from the sampling and round_data streams
  (after `trigger`'s search, for an attack that adapts its trigger)."""
  def inputs(round_num: int):
    participants = setup.schedule.sample_round(round_num, setup.client_ids,
                                               setup.config.fed_avg.clients_per_round,
                                               streams['sampling'])
    if trigger is not None:
      trigger.before_inputs(participants)
    client_data, _ = client_inputs.round_client_data(setup, participants,
                                                     streams['round_data'])
    return participants, client_data
  return inputs


def _final(setup: ExperimentSetup, evaluator: evaluation.Evaluator, state, start: float,
           last_eval: Dict[str, float]) -> Dict[str, Any]:
  """Saves final_model.keras; returns final.json's contents (before FLAIN)."""
  config = setup.config
  final_model = evaluator.load(setup.process.get_model_weights(state))
  final_model.save(os.path.join(config.run.output_dir, rundir.FINAL_MODEL))
  return {'rounds': config.fed_avg.rounds, 'seconds': time.time() - start, **last_eval,
          'partition': setup.data.partition_report,
          'model_sha256': warm_start.weights_sha256(final_model.get_weights())}


def run_experiment(config: ExperimentConfig) -> Dict[str, Any]:
  """Runs all rounds, writing metrics/config/final files to config's output_dir; returns final.

  With `checkpoint_every` the full loop state is saved every that many rounds; with `resume`,
  a run continues from its newest checkpoint and ends with the same numbers as an
  uninterrupted run with the same seed. With `workers`, TFF runs on them for this call only.
  """
  run = config.run
  with ownership.claim(run.output_dir, run.resume, run.overwrite):  # the lock, no overwrite
    return _run_claimed(setup_lib.prepare(config))


def run_prepared(setup: ExperimentSetup) -> Dict[str, Any]:
  """`run_experiment` of a setup from `setup.prepare` (its config is `setup.config`).

  The run draws from `setup.streams`, so a setup runs once.
  """
  run = setup.config.run
  with ownership.claim(run.output_dir, run.resume, run.overwrite):
    return _run_claimed(setup)


def _run_claimed(setup: ExperimentSetup) -> Dict[str, Any]:
  with contexts.remote_execution(setup.config.run.workers, setup.config.run.num_subrounds):
    return _run(setup)


def _run(setup: ExperimentSetup) -> Dict[str, Any]:
  run = setup.config.run
  os.makedirs(run.output_dir, exist_ok=True)
  streams = setup.streams
  evaluator = evaluation.Evaluator(setup.keras_builder, run.eval_batch_size)
  state, setup, source = _initial_state(setup, evaluator)  # config: + what init_from loaded
  config = setup.config
  initial_weights = [np.array(w) for w in evaluator.load(
      setup.process.get_model_weights(state)).get_weights()]
  first_round, meta = 0, {}
  if run.resume:
    state, first_round, meta = resume_state(config, state, streams)
  metrics_io.write_json(os.path.join(run.output_dir, rundir.CONFIG_FILE),
                        {**config.to_dict(), EXECUTION_KEY: contexts.execution_settings()})
  writer = rundir.MetricsWriter(run.output_dir, tensorboard=run.tensorboard,
                               keep_rounds_before=first_round)
  np.savez(os.path.join(run.output_dir, rundir.INITIAL_WEIGHTS), *initial_weights)
  variable_names = [w.name.split(':')[0] for w in evaluator.model.trainable_weights]
  start = time.time() - float(meta.get('seconds', 0.0))
  metrics = MetricsHook(setup, evaluator, writer, dict(meta.get('last_eval', {})))
  progress = progress_lib.Progress(config.fed_avg.rounds, first_round, enabled=run.verbose)
  capture = capture_lib.CaptureHook(setup, variable_names)
  shown = progress_lib.ProgressHook(progress)
  health = health_lib.HealthHook(setup.process, state, writer.rows)
  _announce(progress, setup, source, first_round)
  # The row is measured (health) before it is written (metrics); a non-finite model stops
  # the run after its row is written and before a checkpoint of it is saved.
  trigger = adaptive_trigger.build(setup, state, meta)  # A3FL; after_round before metrics'
  state = loop.run_rounds(setup.process, state, range(first_round, config.fed_avg.rounds),
                          _round_inputs(setup, streams, trigger),
                          [trigger] * (trigger is not None) + [
                              capture, detection.DetectionHook(), health, metrics, shown,
                              health_lib.NonFiniteStop(run.output_dir),
                              CheckpointHook(config, streams, metrics, start, trigger)])
  loop.finish([shown, metrics, capture], state)  # the bar, the metric files, the spool
  final = loop.finish([health], state, _final(setup, evaluator, state, start,
                                              metrics.last_eval))
  final['examples_trained'] = int(sum(r.get('examples_trained') or 0 for r in writer.rows))
  final['eval_seconds'] = metrics.eval_seconds
  final.update(detection.totals(writer.rows))  # from the rows: also over resumed rounds
  final.update(lifespan.from_rows(writer.rows, config.schedule.lifespan_threshold))
  if config.flain.enabled:
    loop.finish([flain_hook.FlainHook(setup, evaluator, initial_weights, progress)], state, final)
  metrics_io.write_json(os.path.join(run.output_dir, rundir.FINAL_FILE), final)
  if run.verbose:
    print('\n'.join(summary.describe_run(writer.rows, config.to_dict())), flush=True)
  return final
