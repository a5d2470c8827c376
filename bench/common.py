"""What the bench programs share: the Sun run's flags, printing a report as JSON to --output."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

# The shared LEAF FEMNIST folder beside the repository (../shared/data/femnist).
FEMNIST_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..',
                           'shared', 'data', 'femnist')


def sun_run_flags(data_dir: str, rounds: int) -> List[str]:
  """The Sun et al. code-default run, attacked (REPRODUCTION.md section 1's base flags): FEMNIST
  digits by writer, 5 a round, 5 epochs, batch 20, lr 0.1 / 1, a norm-bounded attacker every
  round from round 0, norm clipping, evaluation every round (the default)."""
  return ['--dataset=femnist', f'--data_dir={data_dir}', '--clients_per_round=5',
          f'--rounds={rounds}', '--local_epochs=5', '--batch_size=20', '--client_lr=0.1',
          '--server_lr=1', '--task=targeted', '--task_min_samples=10', '--attack_start=0',
          '--schedule=fixed_frequency', '--attack_every=1', '--attack=norm_bounded',
          '--defense=clip']


def emit_report(report: Dict[str, Any], output: Optional[str]) -> None:
  """Prints `report` as indented JSON on stdout and, if `output` is set, writes it there too."""
  text = json.dumps(report, indent=2)
  print(text)
  if output:
    with open(output, 'w') as f:
      f.write(text + '\n')


def timed(call: Callable[[], Any], calls: int) -> List[float]:
  """The seconds of each of `calls` calls of `call()`, in order (a first includes tracing)."""
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    call()
    seconds.append(time.perf_counter() - start)
  return seconds


def log(line: str) -> None:
  """A progress line on stderr (stdout carries the JSON report)."""
  print(line, file=sys.stderr, flush=True)


def json_main(make_report: Callable[[], Dict[str, Any]]) -> Callable[[List[str]], None]:
  """An absl `main` that runs `make_report` (bad input: one error line, exit 1) and emits it.

  The report goes to stdout and to the program's `--output` flag, if set.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tff_backdoor import cli  # pylint: disable=g-import-not-at-top

  def main(argv: List[str]) -> None:
    del argv
    emit_report(cli.run_or_fail(make_report), flags.FLAGS.output)
  return main
