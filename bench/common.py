"""What the bench programs share: printing a report as JSON and writing it to --output."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Dict, List, Optional


def emit_report(report: Dict[str, Any], output: Optional[str]) -> None:
  """Prints `report` as indented JSON on stdout and, if `output` is set, writes it there too."""
  text = json.dumps(report, indent=2)
  print(text)
  if output:
    with open(output, 'w') as f:
      f.write(text + '\n')


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
