"""How long the rest of a sweep will take, from the wall clock its finished runs took.

A sweep that spans sessions sets a calendar, and its configurations can differ in cost by 40x
(an A3FL attacker's trigger search, DeepSight's 60,000 inferences per client), so one global
average misleads. An unfinished configuration is estimated at the median `seconds` (the done
file's: the run's own wall clock) of the finished configurations of its group (the same flags
but the seed), else at the median of every finished configuration, which underestimates an
expensive cell whose first seed has not run. The numbers are those of the machine and load
that ran the finished runs, not a promise for another CPU.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Mapping, Optional, Sequence

from tff_backdoor import metrics_io

from studies.sweep_plan import Run

SECONDS_KEY = 'seconds'  # the run's wall clock in its done file (run.summary's final.json)


@dataclasses.dataclass
class Estimate:
  """Expected run time of the unfinished configurations, one at a time."""
  seconds: float  # summed over the configurations that could be estimated
  from_group: int  # estimated from finished seeds of their own group
  from_all: int  # estimated from the median of every finished configuration
  unknown: int  # no finished configuration with a wall clock to go by
  finished: int  # finished configurations that reported their wall clock
  median_all: Optional[float]  # their median seconds


def run_seconds(final: Optional[Mapping[str, Any]]) -> Optional[float]:
  """The wall clock a done file reports, or None if it has none (or a non-number)."""
  value = metrics_io.number((final or {}).get(SECONDS_KEY))
  return None if value is None or value < 0 else value


def estimate(runs: Sequence[Run], finals: Mapping[str, Mapping[str, Any]],
             todo: Sequence[Run]) -> Estimate:
  """The estimate for `todo`, from `finals` (run name -> done file of a finished run)."""
  by_group, every = {}, []
  for run in runs:
    seconds = run_seconds(finals.get(run.name))
    if seconds is not None:
      by_group.setdefault(run.group, []).append(seconds)
      every.append(seconds)
  median_all = statistics.median(every) if every else None
  total, from_group, from_all = 0.0, 0, 0
  for run in todo:
    if run.group in by_group:
      total, from_group = total + statistics.median(by_group[run.group]), from_group + 1
    elif median_all is not None:
      total, from_all = total + median_all, from_all + 1
  unknown = len(todo) - from_group - from_all
  return Estimate(total, from_group, from_all, unknown, len(every), median_all)


def describe(result: Estimate) -> str:
  """One line for the sweep's log: hours left, and what they were estimated from."""
  if result.from_group + result.from_all == 0:
    return ('time left: unknown (no finished configuration reports its wall clock)'
            if result.unknown else 'time left: none')
  parts = []
  if result.from_group:
    parts.append(f'{result.from_group} from finished seeds of their own configuration')
  if result.from_all:
    parts.append(f'{result.from_all} from the median of all {result.finished} finished, '
                 f'{result.median_all:,.0f} s')
  if result.unknown:
    parts.append(f'{result.unknown} not estimated')
  return (f'time left: about {result.seconds / 3600:.1f} h of runs one at a time '
          f'({"; ".join(parts)}; wall clock of the finished runs on their machine)')
