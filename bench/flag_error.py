"""How fast, and in how many characters, a bad flag of the experiment program fails.

  python -m bench.flag_error [--repeats=5] [--args='--clip_norm=-1']

Runs `python -m experiments.emnist_backdoor ARGS` `--repeats` times (a new interpreter each
time, as a user would) and prints the median and worst wall seconds, the exit code and the
error line with its length. The flags are checked before TensorFlow is imported (issue 19:
one line under 200 characters, exit 2, under 2 s).
"""
import shlex
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from tff_backdoor import cli

flags.DEFINE_integer('repeats', 5, 'Runs timed.', lower_bound=1)
flags.DEFINE_string('args', '--clip_norm=-1', 'The bad flags given to the program.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  command = [sys.executable, '-m', 'experiments.emnist_backdoor', *shlex.split(FLAGS.args)]
  seconds, result = [], None
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds.append(time.perf_counter() - start)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  print(f'python -m experiments.emnist_backdoor {FLAGS.args}: median '
        f'{statistics.median(seconds):.2f}s, max {max(seconds):.2f}s over {FLAGS.repeats} '
        f'runs; exit {result.returncode}; {len(lines)} line(s) on stderr')
  for line in lines:
    print(f'  {line}  ({len(line)} chars)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
