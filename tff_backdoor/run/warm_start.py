"""Warm starts: begin a run from the global model another run left (`--init_from=RUN_DIR`).

The model is RUN_DIR's `final_model.keras` if the run finished, else the model of its newest
checkpoint (`checkpoints/LATEST`, an interrupted or still running run). Only the model weights
carry over; the contract of a warm-started run (tested in tests/test_warm_start.py):

- It is the run from scratch with the same flags in every respect but its round-0 model:
  the same partition, task, schedule, participants and per-round data, all drawn from its
  own `--seed`; server, client and aggregator states (e.g. adaptive clipping's bound) start
  fresh as in any run.
- Its rounds are its own, counted from 0: `--rounds` is the number of rounds to run, and
  `--attack_start`/`--attack_stop`/`--attack_every`, `--capture_rounds`, `--eval_every` and
  `--checkpoint_every` count these rounds. config.json records `init_from_rounds`, the rounds
  of training behind the loaded model (its run's rounds plus that run's own warm start), so
  the absolute round of row r is `init_from_rounds + r`. `initial_weights.npz` holds the
  loaded model (the run's round-0 model, what FLAIN measures updates from).
- config.json records `init_from` (as given), `init_from_file` (the file read) and
  `init_from_sha256` (`weights_sha256` of the loaded weights); final.json has the
  `model_sha256` of every run's final model, so a warm start can be traced to its source.
- `--resume` continues from the run's own newest checkpoint (which already descends from
  the warm start) and refuses if the source's model changed since the run began.
- Continuing: with full participation and one full batch per client (so that no random
  draw changes what is computed), a run warm-started from a finished R-round run and run for
  K rounds ends with the model the R+K-round run ends with (to float rounding); with
  sampling or shuffling the two differ only in their random draws.

The source must have the same architecture (`--model`, input shape, classes) and finite
weights; a mismatch or a NaN/Inf weight is a one-line ValueError.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import TYPE_CHECKING, List, Sequence, Tuple

import numpy as np

from tff_backdoor import metrics_io
from tff_backdoor.run import checkpoint
from tff_backdoor.run import rundir

if TYPE_CHECKING:
  import tensorflow as tf

  from tff_backdoor.config import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class InitSource:
  """The model a warm start loads: the file, the rounds behind it, its weights and hash."""
  file: str
  rounds: int
  weights: List[np.ndarray]  # Keras `model.get_weights()` order
  sha256: str


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
  """Hex SHA-256 of a model's weights in Keras `get_weights()` order (dtype, shape, bytes).

  Stable across save/load (unlike the bytes of a .keras file, which hold a save date).
  """
  digest = hashlib.sha256()
  for w in weights:
    w = np.ascontiguousarray(w)
    digest.update(f'{w.dtype.str}{tuple(w.shape)};'.encode())
    digest.update(w.tobytes())
  return digest.hexdigest()


def _read_json(path: str) -> dict:
  """The JSON object in `path`, or {} if it is missing or unreadable."""
  try:
    return metrics_io.read_json(path)
  except (OSError, ValueError):
    return {}


def resolve(run_dir: str, output_dir: str = '') -> Tuple[str, int]:
  """(file, rounds of training behind it) of the model `run_dir` offers; ValueError if none.

  Reads only small JSON files: `check_source` calls it so that a bad --init_from fails at
  once. `output_dir` is the run being started, which must be another directory.
  """
  if not run_dir or not os.path.isdir(run_dir):
    raise ValueError(f'--init_from={run_dir}: no such run directory')
  if output_dir and os.path.abspath(run_dir) == os.path.abspath(output_dir):
    raise ValueError(f'--init_from={run_dir} is the --output_dir of this run: warm-start from '
                     'another run (use --resume to continue this one)')
  config = _read_json(os.path.join(run_dir, rundir.CONFIG_FILE))
  earlier = int(config.get('init_from_rounds', 0))
  final = os.path.join(run_dir, rundir.FINAL_MODEL)
  if os.path.isfile(final):
    damaged = metrics_io.archive_problem(final, '.keras')  # truncated, a flipped byte
    if damaged:
      raise ValueError(f'--init_from={run_dir}: {damaged}')
    rounds = _read_json(os.path.join(run_dir, rundir.FINAL_FILE)).get(
        'rounds', config.get('rounds'))
    if rounds is None:
      raise ValueError(f'--init_from={run_dir}: no config.json or final.json says how many '
                       'rounds trained its final model')
    return final, earlier + int(rounds)
  ckpt = checkpoint.latest_checkpoint(os.path.join(run_dir, rundir.CHECKPOINTS_DIR))
  if ckpt is None:
    raise ValueError(f'--init_from={run_dir} has neither {rundir.FINAL_MODEL} nor a checkpoint '
                     f'({rundir.CHECKPOINTS_DIR}/LATEST): is it a run directory?')
  damaged = metrics_io.archive_problem(os.path.join(ckpt, checkpoint.STATE), '.npz')
  if damaged:
    raise ValueError(f'--init_from={run_dir}: {damaged}')
  return ckpt, earlier + int(_read_json(os.path.join(ckpt, checkpoint.META))['next_round'])


def check_source(config: ExperimentConfig) -> None:
  """Raises a one-line ValueError now if the config's --init_from cannot be warm-started from."""
  if config.run.init_from:
    resolve(config.run.init_from, config.run.output_dir)


def load(run_dir: str, keras_model: tf.keras.Model, output_dir: str = '') -> InitSource:
  """Loads `run_dir`'s model (see `resolve`) into `keras_model`; returns what was loaded.

  From a checkpoint, the model is the first leaves of the saved learning state: TFF's
  `LearningAlgorithmState` starts with `global_model_weights`, a `ModelWeights` of the
  trainable then the non-trainable variables, in `keras_model`'s order.
  """
  path, rounds = resolve(run_dir, output_dir)
  mismatch = (f'--init_from={run_dir}: the model in {path} does not fit this run\'s model; '
              'use the --model and --dataset it was trained with')
  if path.endswith(rundir.FINAL_MODEL):
    from tff_backdoor import models  # pylint: disable=g-import-not-at-top  (imports TF)
    try:
      models.load_weights_file(keras_model, path)
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'{mismatch} ({type(e).__name__})') from None
  else:
    variables = list(keras_model.trainable_weights) + list(keras_model.non_trainable_weights)
    with np.load(os.path.join(path, checkpoint.STATE)) as state:
      if len(state.files) < len(variables):
        raise ValueError(mismatch)
      leaves = [state[f'arr_{i}'] for i in range(len(variables))]
    if any(tuple(leaf.shape) != tuple(v.shape) for leaf, v in zip(leaves, variables)):
      raise ValueError(mismatch)
    for variable, leaf in zip(variables, leaves):
      variable.assign(leaf.astype(variable.dtype.as_numpy_dtype))
  weights = [np.array(w) for w in keras_model.get_weights()]
  bad = sum(int(np.size(w) - np.count_nonzero(np.isfinite(w))) for w in weights)
  if bad:  # it would train on nothing (every update non-finite, zeroed) and exit 0
    raise ValueError(f'--init_from={run_dir}: the model in {path} is not finite ({bad} of '
                     f'{sum(np.size(w) for w in weights)} weights NaN or Inf); warm-start from '
                     'a finite model')
  return InitSource(os.path.abspath(path), rounds, weights, weights_sha256(weights))
