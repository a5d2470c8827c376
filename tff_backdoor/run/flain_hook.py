"""FLAIN on a run's final global model: after training (`FlainHook`) or again later.

`reapply_flain` rebuilds a finished run's splits from its config.json and applies FLAIN with
other options without retraining (experiments/apply_flain.py).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_backdoor import config as config_lib
from tff_backdoor import flain as flain_lib
from tff_backdoor import metrics_io
from tff_backdoor import models
from tff_backdoor.run import evaluation
from tff_backdoor.run import rundir
from tff_backdoor.run import setup as setup_lib
from tff_backdoor.run.loop import Hook

if TYPE_CHECKING:
  from tff_backdoor.run.setup import ExperimentSetup


def run_flain(setup: 'ExperimentSetup', final_model: tf.keras.Model,
              initial_weights: Sequence[np.ndarray], evaluator: evaluation.Evaluator,
              before: Dict[str, float], progress: Optional[Any] = None) -> Dict[str, Any]:
  """Applies FLAIN to the final model with server-side auxiliary data; saves and reports it."""
  config = setup.config
  aux_x, aux_y = flain_lib.select_auxiliary(
      *setup.data.server, per_class=config.flain.aux_per_class, seed=config.run.seed,
      num_classes=setup.data.num_classes)
  defended, report = flain_lib.apply_flain(final_model, initial_weights, aux_x, aux_y,
                                           config.flain)
  evaluator.model.set_weights(defended.get_weights())
  after = evaluator.evaluate(setup.eval_sets)
  evaluator.model.save(os.path.join(config.run.output_dir, rundir.FLAIN_MODEL))
  result = {'before': before, 'after': after, 'report': report.to_dict()}
  metrics_io.write_json(os.path.join(config.run.output_dir, rundir.FLAIN_FILE), result)
  if config.run.verbose:
    line = [f'FLAIN ({report.threshold_mode} k={report.threshold:.4g}, '
            f'{report.num_flipped} neurons flipped, {report.seconds:.1f}s)']
    for key in ('test_accuracy', 'backdoor_accuracy'):
      if key in after:
        line.append(f'{key} {before.get(key, float("nan")):.4f} -> {after[key]:.4f}')
    (progress.write if progress else print)(' | '.join(line))
  return result


# The flat keys (flags) of FLAIN's options, all but --flain itself.
FLAIN_FIELDS = tuple(key for section, key, field in config_lib.flat_fields()
                     if section == 'flain' and field.name != 'enabled')


def reapply_flain(run_dir: str, output_dir: str, initial_weights: Optional[str] = None,
                  **flain_options: Any) -> Dict[str, Any]:
  """Applies FLAIN with other options to a finished run's final model, without retraining.

  Rebuilds the run's data, task and evaluation sets from its config.json (same seed, so the
  same splits), loads final_model.keras and the round-0 model FLAIN measures updates from
  (`initial_weights`, an .npz; default the run's initial_weights.npz, e.g. a warm start's
  pretraining init instead), and writes flain.json and flain_model.keras to `output_dir`
  (which must differ from `run_dir`, and hold no FLAIN result or run files: nothing finished
  is overwritten). `flain_options` are the flain_* flat keys.
  """
  bad = sorted(set(flain_options) - set(FLAIN_FIELDS))
  if bad:
    raise ValueError(f'not FLAIN options: {", ".join(bad)}')
  if initial_weights is not None and not os.path.isfile(initial_weights):
    raise ValueError(f'--initial_weights={initial_weights}: no such file')
  config = setup_lib.load_run_config(run_dir, rundir.FINAL_MODEL, rundir.INITIAL_WEIGHTS)
  if os.path.abspath(output_dir) == os.path.abspath(run_dir):
    raise ValueError('--output_dir must differ from the run directory (its FLAIN files stay)')
  taken = [name for name in (rundir.FLAIN_FILE, rundir.FINAL_FILE, rundir.METRICS_JSONL)
           if os.path.exists(os.path.join(output_dir, name))]
  if taken:
    raise ValueError(f'{output_dir} already holds {taken[0]}: FLAIN overwrites no finished '
                     'result; give another output directory or remove it')
  config = config.replace(flain=True, output_dir=output_dir, resume=False, capture_rounds='',
                          workers='', **flain_options)
  setup = setup_lib.prepare(config)
  evaluator = evaluation.Evaluator(setup.keras_builder, config.run.eval_batch_size)
  models.load_weights_file(evaluator.model, os.path.join(run_dir, rundir.FINAL_MODEL))
  initial_path = initial_weights or os.path.join(run_dir, rundir.INITIAL_WEIGHTS)
  initial = models.read_weights_npz(initial_path)
  shapes = [tuple(w.shape) for w in evaluator.model.get_weights()]
  if [tuple(w.shape) for w in initial] != shapes:
    raise ValueError(f'{initial_path}: its {len(initial)} arrays do not fit the run\'s model '
                     f'({len(shapes)} weights); give the round-0 weights of this model')
  os.makedirs(output_dir, exist_ok=True)
  metrics_io.write_json(os.path.join(output_dir, rundir.CONFIG_FILE), config.to_dict())
  before = evaluator.evaluate(setup.eval_sets)
  return run_flain(setup, evaluator.model, initial, evaluator, before)


class FlainHook(Hook):
  """Applies FLAIN to the final model once training has ended; adds `final['flain']`."""

  def __init__(self, setup: 'ExperimentSetup', evaluator: evaluation.Evaluator,
               initial_weights: Sequence[np.ndarray], progress: Optional[Any] = None):
    self.setup, self.evaluator = setup, evaluator
    self.initial_weights, self.progress = initial_weights, progress

  def end(self, state: Any, final: Dict[str, Any]) -> None:
    before = {k: final[k] for k in final if k.endswith(('_accuracy', '_loss'))}
    final['flain'] = run_flain(self.setup, self.evaluator.model, self.initial_weights,
                               self.evaluator, before, self.progress)
