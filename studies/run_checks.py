"""What a sweep checks before it starts anything, and before it counts a run as finished.

- `flag_errors`: every configuration's command line through the program's own flag check
  (`cli.config_flags_error`: absl's parse, then the config's rules), in this process, a few
  milliseconds each, so an unknown grid flag or a bad value stops the sweep before any run.
- `final_problem`: a done file counts only if it parses as a JSON object with the fields its
  program always writes (the experiment program's final.json: `rundir.FINAL_FIELDS`) whose
  `rounds` (if recorded) are its config.json's; otherwise the run is redone, never averaged.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

from tff_backdoor import cli
from tff_backdoor import metrics_io

# Programs whose flags are the ExperimentConfig's (`cli.define_config_flags`).
CONFIG_FLAG_PROGRAMS = ('experiments.emnist_backdoor',)


class FlagErrors(ValueError):
  """Configurations with bad flags; `lines` holds one line per configuration."""

  def __init__(self, lines: Sequence[str]):
    self.lines = list(lines)
    super().__init__(f'{len(self.lines)} configuration(s) have bad flags; the first: '
                     f'{self.lines[0]}')


def flag_errors(program: str, commands: Sequence[Tuple[str, Sequence[str]]]) -> List[str]:
  """'configuration NAME: what is wrong' for each (name, flags) the program would refuse.

  Programs not in CONFIG_FLAG_PROGRAMS are not checked here (they check their own flags).
  """
  if program not in CONFIG_FLAG_PROGRAMS:
    return []
  lines = []
  for name, argv in commands:
    error = cli.config_flags_error(argv)
    if error is not None:
      lines.append(f'configuration {name}: {error}')
  return lines


def final_problem(final_path: str, config: Optional[Mapping[str, Any]],
                  required: Sequence[str] = ()) -> Optional[str]:
  """Why the done file at `final_path` does not mark a finished run (None if it does);
  `required`: the fields its program always writes (`rundir.FINAL_FIELDS` for final.json)."""
  try:
    final = metrics_io.read_json(final_path)
  except (OSError, ValueError) as e:
    return f'unreadable {final_path}: {" ".join(str(e).split())[:200]}'
  if not isinstance(final, dict):
    return f'{final_path} is not a JSON object'
  missing = [k for k in required if k not in final]
  if missing:
    return f'{final_path} lacks {", ".join(missing)}: not written by a finished run'
  if config and 'rounds' in final and 'rounds' in config and final['rounds'] != config['rounds']:
    return (f'{final_path} reports {final["rounds"]} rounds, its config.json '
            f'{config["rounds"]}')
  return None
