"""Tiny models and synthetic client data shared by the unit tests (fast on 2 CPU cores)."""
import collections
import os
import subprocess
import sys
from typing import List, Tuple

import numpy as np
import tensorflow as tf

from tff_backdoor import models
from tff_backdoor.learning import process as process_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
NUM_CLASSES = 3


def model_fn(seed: int = 1):
  return process_lib.keras_model_fn(
      lambda: models.tiny_cnn(SHAPE, NUM_CLASSES, seed=seed), SHAPE)


def arrays(n: int, seed: int):
  rng = np.random.default_rng(seed)
  return (rng.random((n, *SHAPE)).astype(np.float32),
          rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def batches(x, y, batch_size: int = 4) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(batch_size)


def dataset(n: int, seed: int, batch_size: int = 4) -> tf.data.Dataset:
  return batches(*arrays(n, seed), batch_size=batch_size)


def write_idx_dataset(directory: str, n_train: int = 600, n_test: int = 200, side: int = 8,
                      num_classes: int = NUM_CLASSES, seed: int = 0) -> str:
  """Writes a tiny learnable MNIST-format dataset (class k = bright block k) as idx files."""
  import os
  from tff_backdoor.data import idx as idx_lib
  rng = np.random.default_rng(seed)

  def make(n):
    y = rng.integers(0, num_classes, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, side, side)).astype(np.uint8)
    for k in range(num_classes):
      x[y == k, k * side // num_classes:(k + 1) * side // num_classes, :side // 2] += 150
    return x, y

  (tx, ty), (vx, vy) = make(n_train), make(n_test)
  os.makedirs(directory, exist_ok=True)
  idx_lib.write_idx(os.path.join(directory, 'train-images-idx3-ubyte.gz'), tx)
  idx_lib.write_idx(os.path.join(directory, 'train-labels-idx1-ubyte.gz'), ty)
  idx_lib.write_idx(os.path.join(directory, 't10k-images-idx3-ubyte.gz'), vx)
  idx_lib.write_idx(os.path.join(directory, 't10k-labels-idx1-ubyte.gz'), vy)
  return directory


def run_config(idx_dir: str, output_dir, **overrides):
  """An ExperimentConfig on `write_idx_dataset` data with the tiny CNN, quiet; `overrides` win."""
  from tff_backdoor import config as config_lib
  base = dict(dataset='idx', data_dir=idx_dir, model='tiny_cnn', partition='iid',
              server_holdout=20, output_dir=str(output_dir), verbose=False, tensorboard=False)
  base.update(overrides)
  return config_lib.ExperimentConfig.from_flat(**base)


def program_stderr(module: str, *args: str) -> Tuple[int, List[str]]:
  """(exit code, non-blank stderr lines) of `python -m module args` run from the repository."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)
  return result.returncode, [l for l in result.stderr.splitlines() if l.strip()]


class StopAfter:
  """A learning process that raises KeyboardInterrupt on the call of `next` after `rounds`."""

  def __init__(self, process, rounds):
    self._process, self._left = process, rounds

  def __getattr__(self, name):
    return getattr(self._process, name)

  def next(self, state, data):
    if self._left == 0:
      raise KeyboardInterrupt
    self._left -= 1
    return self._process.next(state, data)


def client_work(attack, lr: float = 0.1, batch_size: int = 4, **options):
  """The attacker client work on the tiny CNN with client SGD at `lr`."""
  import tensorflow_federated as tff
  from tff_backdoor.attacks import build_attacker_client_work
  return build_attacker_client_work(model_fn(), tff.learning.optimizers.build_sgdm(lr), attack,
                                    batch_size=batch_size, **options)


def initial_weights():
  """The tiny CNN's seeded initial weights, as TFF's FedAvg starts from them."""
  import tensorflow_federated as tff
  p = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn(), tff.learning.optimizers.build_sgdm(0.1))
  return p.get_model_weights(p.initialize())


def info_update_type(value_type, **channel):
  """A client update type with side information (`learning.side_channel`), e.g.
  `info_update_type(VALUE_TYPE, client_info=True)`."""
  from tff_backdoor.learning import side_channel
  return side_channel.client_update_type(value_type, side_channel.SideChannel(**channel))


def with_info(updates, ids, root_update=None, ddifs=None):
  """Client updates as a side channel sends them: each with its ClientInfo (identity `ids[i]`,
  its DDifs `ddifs[i]` if given, and g0 if `root_update` is given)."""
  values = []
  for i, (update, client) in enumerate(zip(updates, ids)):
    info = collections.OrderedDict(client=np.int32(client), is_malicious=False)
    if ddifs is not None:
      info['ddifs'] = np.asarray(ddifs[i], np.float32)
    if root_update is not None:
      info['root_update'] = root_update
    values.append(collections.OrderedDict(delta=update, info=info))
  return values
