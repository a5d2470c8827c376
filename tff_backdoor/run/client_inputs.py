"""Each round's client inputs: shuffled epochs of benign and malicious data, per participant.

The shuffles and the clients' control seeds come from the run's `round_data` stream, so the
same seed gives the same inputs (also after --resume, which restores the stream).
"""
from __future__ import annotations

import collections
from typing import TYPE_CHECKING, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tff_backdoor.attacks.client_work import make_client_data
from tff_backdoor.attacks.attack_config import MIXTURE_MODES
from tff_backdoor.learning import client_datasets
from tff_backdoor.run import setup as setup_lib

if TYPE_CHECKING:
  from tff_backdoor.attacks.schedules import Participant
  from tff_backdoor.run.setup import ExperimentSetup


def epoch_batches(x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
                  rng: np.random.Generator) -> tf.data.Dataset:
  """`epochs` shuffled passes over (x, y), batched; the shuffle comes from `rng`."""
  n = len(y)
  order = (np.concatenate([rng.permutation(n) for _ in range(epochs)])
           if n else np.zeros([0], np.int64))
  return client_datasets.client_dataset(x[order], y[order], max(batch_size, 1))


def round_client_data(setup: 'ExperimentSetup', participants: Sequence[Participant],
                      rng: np.random.Generator
                      ) -> Tuple[List[collections.OrderedDict], List[bool]]:
  """Per-client TFF inputs for one round, plus which participants attack."""
  fed_avg, attack = setup.config.fed_avg, setup.config.attack
  mal_epochs = attack.malicious_epochs or (
      fed_avg.local_epochs if attack.mode in MIXTURE_MODES else 1)
  empty_x = np.zeros([0, *setup.data.input_shape], np.float32)
  empty = (empty_x, np.zeros([0], np.int32))
  inputs, flags = [], []
  index = ({c: i for i, c in enumerate(setup.client_ids)}
           if setup_lib.identifies_clients(setup.config) else {})
  for p in participants:
    x, y = setup.clients[p.client_id]
    if p.is_attacker:
      (bx, by), (mx, my) = setup.task.attacker_data(p.client_id, x, y, p.attacker_index, rng)
    else:
      (bx, by) = setup.task.honest_data(p.client_id, x, y) if setup.task else (x, y)
      mx, my = empty
    mal_batch = attack.malicious_batch_size or max(len(my), 1)
    inputs.append(make_client_data(
        epoch_batches(bx, by, fed_avg.local_epochs, fed_avg.batch_size, rng),
        epoch_batches(mx, my, mal_epochs if len(my) else 0, mal_batch, rng),
        is_malicious=p.is_attacker, seed=int(rng.integers(2**31)),
        client_index=index.get(p.client_id)))
    flags.append(bool(p.is_attacker))
  return inputs, flags
