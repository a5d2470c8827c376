"""A small generic federated training loop: a process, client inputs per round, and hooks.

What a run does besides `process.next` (capture, evaluation and metrics, checkpoints,
progress, FLAIN) lives in `Hook`s, so the loop has no branches for any of them.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


@dataclasses.dataclass
class Round:
  """One round as the hooks see it; `before_round` may swap `process`, `after_round` reads
  `output` and fills `row` (the round's metrics)."""
  number: int
  participants: Sequence[Any]
  client_data: List[Any]
  process: Any
  state: Any
  started: float
  output: Any = None
  row: Dict[str, Any] = dataclasses.field(default_factory=dict)


class Hook:
  """Called around every round, and once when the loop has finished (all no-ops here)."""

  def before_round(self, r: Round) -> None:
    pass

  def after_round(self, r: Round) -> None:
    pass

  def end(self, state: Any, final: Dict[str, Any]) -> None:
    pass


RoundInputs = Callable[[int], Tuple[Sequence[Any], List[Any]]]


def run_rounds(process: Any, state: Any, rounds: range, round_inputs: RoundInputs,
               hooks: Sequence[Hook] = ()) -> Any:
  """Runs `process.next` for every round number; returns the last state.

  `round_inputs(n)` gives round n's (participants, client data); each hook's
  `before_round` then `after_round` run in the order given.
  """
  for number in rounds:
    started = time.time()
    participants, client_data = round_inputs(number)
    r = Round(number, participants, client_data, process, state, started)
    for hook in hooks:
      hook.before_round(r)
    r.output = r.process.next(state, r.client_data)
    state = r.output.state
    r.state = state
    for hook in hooks:
      hook.after_round(r)
  return state


def finish(hooks: Sequence[Hook], state: Any, final: Optional[Dict[str, Any]] = None
           ) -> Dict[str, Any]:
  """Calls every hook's `end` with the final state and the dict they may add results to."""
  final = {} if final is None else final
  for hook in hooks:
    hook.end(state, final)
  return final
