"""The run's side of A3FL: before an attack round, the attackers' trigger is optimized against
the global model they download (`attacks.a3fl.TriggerSearch`), then their data is built with it.

Why here and not in the client work: the trigger must also be what backdoor accuracy is
measured with, and it carries over from one attack round to the next (the authors' attacker
keeps `self.trigger`). Searched in the TFF client it would have to travel back through the
process's measurements and forward again through its state. In the run it is plain NumPy:
`before_inputs` runs the search on the weights of the state the round starts from (exactly what
the attackers receive) and an attacker's own images, sets it on the task (attackers stamp it
in `round_client_data`) and restamps the 'backdoor' evaluation set in place. The attackers of a
round share one trigger, searched on the images of the round's first attacker, as the authors'
`FLer.train_once` does (`search_trigger(..., train_data[first_adversary])`, one search a round;
here the first that holds images of the task's source class). Its cost, in example passes, is
added to the round's `examples_trained` (`trigger_search_examples`).

Checkpointed: the trigger is the search's only state carried between rounds (the models are
reset from the global weights at every search), so each checkpoint's meta.json holds it
(`META_KEY`, covered by the checkpoint's manifest) and --resume puts it back on the task and the
'backdoor' set before the first resumed round: a killed and resumed A3FL run writes the rows of
an uninterrupted one. A checkpoint written before the trigger was saved has none: the search
then restarts from the grey trigger, said in one line on stderr.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tff_backdoor.attacks import a3fl
from tff_backdoor.attacks import tasks as tasks_lib
from tff_backdoor.attacks.attack_config import TRIGGER_MODES
from tff_backdoor.data.core import float_images
from tff_backdoor.run import loop

EXTRA_KEY = 'trigger_search_examples'
TRIGGER_FILE = 'a3fl_trigger.npy'  # the newest trigger, in the run directory
META_KEY = 'a3fl_trigger'  # the trigger in a checkpoint's meta.json ([H, W, C] nested lists)


def searched_images(participants: Sequence[Any], clients: Mapping[Any, Any], task: Any
                    ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(source images, all images, labels) of the round's first attacker holding images of the
  task's source class, in the round's order; None if no attacker does."""
  for p in participants:
    if not p.is_attacker:
      continue
    y = np.asarray(clients[p.client_id][1], np.int32).reshape(-1)
    is_source = task.is_source(y)
    if np.any(is_source):
      x = float_images(clients[p.client_id][0])
      return x[is_source], x, y
  return None


class AdaptiveTrigger(loop.Hook):
  """Keeps the state a round starts from and searches the trigger before its inputs."""

  def __init__(self, setup: Any, state: Any):
    task, attack = setup.task, setup.config.attack  # a pixel task, one part (config.validate)
    self.setup, self.state, self.extra = setup, state, 0
    self.search = a3fl.TriggerSearch(
        setup.keras_builder, task.mask, setup.data.input_shape[-1], task.target_class,
        setup.config.fed_avg.batch_size, epochs=attack.a3fl_trigger_epochs,
        lr=attack.a3fl_trigger_lr, adv_epochs=attack.a3fl_adv_epochs,
        adv_every=attack.a3fl_adv_every, noise_lambda=attack.a3fl_lambda)
    self._apply()

  def _apply(self) -> None:
    """The search's trigger on the task and, in place, on the 'backdoor' evaluation images;
    saved as TRIGGER_FILE ([H, W, C] in [0, 1]; its values count only on the task's mask)."""
    task, trigger = self.setup.task, self.search.trigger
    task.set_trigger(trigger)
    images = self.setup.eval_sets['backdoor'][0]
    images[...] = tasks_lib.stamp(images, task.mask, trigger)
    os.makedirs(self.setup.config.run.output_dir, exist_ok=True)
    np.save(os.path.join(self.setup.config.run.output_dir, TRIGGER_FILE), trigger)

  def checkpoint_meta(self) -> Dict[str, Any]:
    """What a checkpoint keeps of the search: the trigger (float32 values are exact in JSON)."""
    return {META_KEY: self.search.trigger.tolist()}

  def restore(self, meta: Mapping[str, Any]) -> None:
    """Puts back the trigger of a checkpoint's `meta` (see the module docstring)."""
    if META_KEY not in meta:
      print(f'the checkpoint resumed from holds no A3FL trigger ({META_KEY}; written before it '
            'was saved): the search restarts from the grey trigger', file=sys.stderr, flush=True)
      return
    trigger = np.asarray(meta[META_KEY], np.float32)
    if trigger.shape != self.search.trigger.shape:
      raise ValueError(f'the checkpoint\'s A3FL trigger has shape {trigger.shape}, the task\'s '
                       f'{self.search.trigger.shape}: it was written by another configuration')
    self.search.trigger = trigger
    self._apply()

  def before_inputs(self, participants: Sequence[Any]) -> None:
    """Searches the trigger when the round has an attacker with source images (this state's
    model, that attacker's images: `searched_images`)."""
    self.extra = 0
    images = searched_images(participants, self.setup.clients, self.setup.task)
    if images is None:
      return
    self.setup.process.get_model_weights(self.state).assign_weights_to(self.search.model)
    self.extra = self.search.search(self.search.model.get_weights(), *images)
    self._apply()

  def after_round(self, r: loop.Round) -> None:
    self.state = r.state
    r.row[EXTRA_KEY] = self.extra


def build(setup: Any, state: Any, resumed_meta: Optional[Mapping[str, Any]] = None
          ) -> Optional[AdaptiveTrigger]:
  """The hook for a run whose attack optimizes its trigger (TRIGGER_MODES), else None;
  `resumed_meta`: the meta of the checkpoint a resumed run starts from (its trigger restored)."""
  if setup.config.attack.mode not in TRIGGER_MODES:
    return None
  hook = AdaptiveTrigger(setup, state)
  if resumed_meta:
    hook.restore(resumed_meta)
  return hook
