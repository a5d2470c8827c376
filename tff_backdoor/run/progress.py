"""What a run prints while it trains: the setup line, a bar or a line per round, and notes.

`ProgressHook` is the training loop's view of `Progress` (a tqdm bar on a terminal, plain
lines otherwise).
"""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Dict, Optional

from tff_backdoor.run.loop import Hook, Round

if TYPE_CHECKING:
  from tff_backdoor.run.setup import ExperimentSetup


def round_line(row: Dict[str, Any], rounds: int) -> str:
  """One round's plain progress line: the round, its accuracies, attackers and seconds."""
  parts = [f"round {row['round'] + 1:4d}/{rounds}"]
  for key, label in (('train_accuracy', 'train_acc'), ('test_accuracy', 'test_acc'),
                     ('test_loss', 'test_loss'), ('backdoor_accuracy', 'backdoor_acc'),
                     ('backdoor_heldout_accuracy', 'backdoor_heldout'),
                     ('collateral_accuracy', 'collateral')):
    if row.get(key) is not None:
      parts.append(f'{label} {row[key]:.4f}')
  parts.append(f"attackers {row.get('num_attackers', 0)}")
  parts.append(f"{row['round_seconds']:.1f}s")
  return ' | '.join(parts)


def describe_setup(setup: 'ExperimentSetup') -> str:
  """One line saying what data, clients, task and defense this run uses."""
  report, config = setup.data.partition_report, setup.config
  sizes = report.get('client_sizes', {})
  parts = [f"{setup.data.name}: {report.get('num_clients', len(setup.client_ids))} clients "
           f"({report.get('partition', 'natural')}), {report.get('num_examples', 0)} images, "
           f"sizes min/median/max "
           f"{sizes.get('min', 0):.0f}/{sizes.get('median', 0):.0f}/{sizes.get('max', 0):.0f}",
           f'test {len(setup.data.test[1])}, server {len(setup.data.server[1])}',
           f'data ready in {setup.data_seconds:.1f} s',
           f'{config.fed_avg.clients_per_round} per round']
  if setup.task is not None:
    sizes = {k: len(v[1]) for k, v in setup.task.eval_sets().items()}
    parts.append(f'task {setup.task.name} ({", ".join(f"{k} {n}" for k, n in sizes.items())})'
                 f', attack {config.attack.mode} via {config.schedule.name}')
  parts.append(f'defense {config.defense.name}')
  if 'writers_listed' in report:
    parts.insert(1, _writers_line(report))
  return ' | '.join(parts)


def _writers_line(report: Dict[str, Any]) -> str:
  """What a writer-partitioned source used: writers kept and dropped, digits, test writers."""
  dropped = report.get('writers_dropped_no_digits', 0)
  return (f"{report['num_clients']} of {report['writers_listed']} train writers"
          + (f' ({dropped} without digits dropped)' if dropped else '')
          + (f", a seeded subset of {report['num_clients']}"
             if report['params'].get('num_clients') else '')
          + f", {report.get('train_digits', 0)} digits; test {report.get('test_size', 0)} "
          f"images from {report.get('test_writers', 0)} writers")


class Progress:
  """A tqdm bar (round, accuracies, ETA) on a terminal; one plain line per round otherwise."""

  def __init__(self, total: int, done: int, enabled: bool, tty: Optional[bool] = None):
    self.total, self.enabled = total, enabled
    self.tty = sys.stdout.isatty() if tty is None else tty
    self._bar = None
    self._start, self._done0 = time.time(), done
    if enabled and self.tty:
      import tqdm  # pylint: disable=g-import-not-at-top  (a TFF dependency)
      self._bar = tqdm.tqdm(total=total, initial=done, unit='round', dynamic_ncols=True)

  def eta_seconds(self, done: int) -> float:
    """Seconds left for the remaining rounds, at this session's mean time per round."""
    rate = (time.time() - self._start) / max(done - self._done0, 1)
    return rate * (self.total - done)

  def update(self, row: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      postfix = {'test_acc': row.get('test_accuracy'), 'backdoor': row.get('backdoor_accuracy')}
      self._bar.set_postfix({k: f'{v:.3f}' for k, v in postfix.items() if v is not None})
      self._bar.update(1)
    else:
      eta = self.eta_seconds(row['round'] + 1)
      print(f'{round_line(row, self.total)} | eta {int(eta // 60)}m{int(eta % 60):02d}s',
            flush=True)

  def write(self, line: str) -> None:
    if self.enabled:
      (self._bar.write if self._bar is not None else print)(line)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class ProgressHook(Hook):
  """Shows each round's row (filled by the metrics hook before it) on `progress`."""

  def __init__(self, progress: Progress):
    self.progress = progress

  def after_round(self, r: Round) -> None:
    self.progress.update(r.row)

  def end(self, state: Any, final: Dict[str, Any]) -> None:
    self.progress.close()
