"""Does every table of REPRODUCTION.md reprint from the committed records, identically?

  python -m experiments.reprint_check [--report=REPRODUCTION.md]

For each `python -m experiments.reproduction_tables ARGS` command of the report (in a code
block or quoted in a line; continued lines joined; a command given twice is checked where it
stands last, next to what it printed), runs it with its --output_dir replaced by a temporary
folder, then compares: every line it prints (tables, their headings, the plateau and wall-clock
lines; not the paths of the files it wrote) must stand in the report between the command and
the next command or section heading, in the same order; every CSV it writes
must equal, byte for byte, the committed one at the command's own --output_dir. Prints one line per command (IDENTICAL, or
what differs, or that it reads directories that are not in the repository) and exits 1 if any
command does not reprint.
"""
import filecmp
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

from absl import flags

from tff_backdoor import cli

flags.DEFINE_string('report', 'REPRODUCTION.md', 'The report whose tables are checked.')
FLAGS = flags.FLAGS

PROGRAM = 'experiments.reproduction_tables'
_COMMAND = re.compile(r'^`?(?:\S*python\S*) -m ' + re.escape(PROGRAM) + r'(.*?)(`.*)?$')


def _joined(lines: Sequence[str], start: int) -> Tuple[str, int]:
  """The command starting at `start` with its `\\`-continued lines, and the line after it."""
  text, i = lines[start], start
  while text.endswith('\\') and i + 1 < len(lines):
    i += 1
    text = text[:-1] + ' ' + lines[i].strip()
  return text, i + 1


def printed_commands(text: str) -> List[Tuple[List[str], List[str]]]:
  """(the command's arguments, the report's lines up to the next command or heading), the
  last occurrence of each command only."""
  lines = text.splitlines()
  starts = [i for i, line in enumerate(lines) if _COMMAND.match(line.strip())]
  found = {}
  for n, start in enumerate(starts):
    command, after = _joined([l.strip() for l in lines], start)
    end = starts[n + 1] if n + 1 < len(starts) else len(lines)
    heading = next((i for i in range(after, end) if lines[i].startswith('## ')), end)
    args = shlex.split(_COMMAND.match(command).group(1))
    found.pop(tuple(args), None)
    found[tuple(args)] = lines[after:heading]
  return [(list(args), segment) for args, segment in found.items()]


def _output_dir(args: Sequence[str]) -> Optional[str]:
  for arg in args:
    if arg.startswith('--output_dir='):
      return arg.split('=', 1)[1]
  return None


def in_order(needles: Sequence[str], haystack: Sequence[str]) -> Optional[str]:
  """The first needle not found (in order) among the haystack's lines, or None."""
  position = 0
  for needle in needles:
    try:
      position = list(haystack).index(needle, position) + 1
    except ValueError:
      return needle
  return None


def printed_lines(stdout: str, output_dir: str) -> List[str]:
  """What a table command printed that the report must hold: every non-empty line but the
  paths of the files it wrote in `output_dir`."""
  return [l for l in stdout.splitlines() if l.strip() and not l.startswith(output_dir)]


def check(args: List[str], report_lines: Sequence[str]) -> Tuple[bool, str]:
  """(reprints, one line saying so) for one pasted command."""
  inputs = [a for a in args if not a.startswith('--')]
  missing = [d for d in inputs if not os.path.isdir(d)]
  if missing:
    return False, f'reads {", ".join(missing)}: not in the repository'
  committed = _output_dir(args)
  with tempfile.TemporaryDirectory() as tmp:
    argv = [a for a in args if not a.startswith('--output_dir=')] + [f'--output_dir={tmp}']
    result = subprocess.run([sys.executable, '-m', PROGRAM, *argv], capture_output=True,
                            text=True, check=False)
    if result.returncode:
      return False, f'exit {result.returncode}: {result.stderr.strip()[-200:]}'
    printed = printed_lines(result.stdout, tmp)
    table = [l for l in printed if l.startswith('|')]
    absent = in_order(printed, report_lines)
    if absent is not None:
      return False, f'{len(printed)} lines; not in the report: {absent[:120]}'
    csvs = sorted(f for f in os.listdir(tmp) if f.endswith('.csv'))
    differ = [f for f in csvs if not committed or
              not os.path.exists(os.path.join(committed, f)) or
              not filecmp.cmp(os.path.join(tmp, f), os.path.join(committed, f), shallow=False)]
    if differ:
      return False, (f'{len(printed)} lines identical; CSV differs or is not committed: '
                     f'{differ[0]}')
  return True, f'IDENTICAL {len(printed)} lines ({len(table)} table lines), {len(csvs)} CSVs'


def main(argv):
  del argv
  try:
    with open(FLAGS.report) as f:
      commands = printed_commands(f.read())
  except OSError as e:
    cli.fail(f'--report={FLAGS.report}: {e.strerror}')
  failed = 0
  for args, lines in commands:
    ok, what = check(args, lines)
    failed += not ok
    print(f'{"ok  " if ok else "FAIL"} {" ".join(args)}: {what}', flush=True)
  print(f'{len(commands) - failed} of {len(commands)} table commands reprint from committed '
        'records')
  return 1 if failed else 0


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
