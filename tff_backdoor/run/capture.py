"""Saving every client's update of chosen rounds (--capture_rounds) for the anomaly scores.

`CaptureHook` runs those rounds on the setup's capturing process and saves the updates it
returns; `capture_round` is the reference path that re-runs the clients instead.
"""
from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np


from tff_backdoor.analysis import captures as captures_lib
from tff_backdoor.config import parse_rounds
from tff_backdoor.learning import update_capture
from tff_backdoor.run import rundir
from tff_backdoor.run.loop import Hook, Round

if TYPE_CHECKING:
  from tff_backdoor.attacks.schedules import Participant
  from tff_backdoor.run.setup import ExperimentSetup


def save_capture(directory: str, round_num: int, stacked: Sequence[np.ndarray],
                 variable_names: Sequence[str], participants: Sequence[Participant]) -> str:
  """Writes one round's per-client updates (row i = participants[i]) for anomaly.py.

  Uncompressed: compressing float updates would cost a capture round more than its training
  for a ~17% smaller file (captures_lib.save_round_capture).
  """
  return captures_lib.save_round_capture(
      directory, round_num, stacked, list(variable_names), [p.client_id for p in participants],
      np.array([p.is_attacker for p in participants], dtype=bool), compress=False)


def capture_round(setup: 'ExperimentSetup', state: Any, client_data: Sequence[Any],
                  participants: Sequence[Participant], round_num: int,
                  directory: str, variable_names: Sequence[str]) -> str:
  """Saves every participant's update of this round by re-running their training.

  The reference path (it pays for the round's client training twice); the experiment loop
  reads the same updates off the round itself (`setup.capture_process`) and tests check
  that both save the same arrays.
  """
  updates = update_capture.capture_client_updates(
      setup.client_work, state, setup.process.get_model_weights(state), client_data,
      setup.distributor)
  stacked = [np.stack([u[v] for u in updates]) for v in range(len(variable_names))]
  return save_capture(directory, round_num, stacked, variable_names, participants)


class CaptureHook(Hook):
  """Runs the --capture_rounds on the capturing process and saves their updates in captures/."""

  def __init__(self, setup: 'ExperimentSetup', variable_names: Sequence[str]):
    config = setup.config
    self.setup, self.variable_names = setup, list(variable_names)
    self.rounds = parse_rounds(config.run.capture_rounds, config.fed_avg.rounds)
    if self.rounds and setup.capture_process is None:
      raise ValueError('--capture_rounds needs setup.capture_process: build the setup with '
                       'prepare(config)')
    self.directory = os.path.join(config.run.output_dir, rundir.CAPTURES_DIR)
    self.spool = rundir.spool_dir(config.run.output_dir)
    if self.rounds:  # a clean spool: nothing left from an interrupted run is read as this run's
      shutil.rmtree(self.spool, ignore_errors=True)
      os.makedirs(self.spool)

  def before_round(self, r: Round) -> None:
    if r.number not in self.rounds:
      return
    seeds = update_capture.client_seeds(r.client_data)
    if len(set(seeds)) < len(seeds):  # 2 clients, 1 seed (~1e-8 a round): re-run them instead
      capture_round(self.setup, r.state, r.client_data, r.participants, r.number,
                    self.directory, self.variable_names)
      return
    r.process = self.setup.capture_process  # the same round, also returning every update

  def after_round(self, r: Round) -> None:
    if r.process is self.setup.capture_process:
      save_capture(self.directory, r.number,
                   update_capture.pop_captured_updates(r.output.metrics, r.client_data),
                   self.variable_names, r.participants)

  def end(self, state: Any, final: dict) -> None:
    shutil.rmtree(self.spool, ignore_errors=True)
