"""How an attacked run's backdoor and main accuracy compare with an unattacked run, per round.

  python -m experiments.attack_summary --clean=runs/clean runs/boost runs/norm_bounded

For each run: in how many attack rounds backdoor accuracy exceeded --threshold, the first such
round (0-based), the main-accuracy gap to the clean run in those rounds, and mean test and
backdoor accuracy over the attack rounds. Reads metrics.jsonl; see
`tff_backdoor.analysis.diagnostics.attack_round_summary`.
"""
import os

from absl import flags

from tff_backdoor import cli
from tff_backdoor import metrics_io
from tff_backdoor.analysis import diagnostics

flags.DEFINE_string('clean', None, 'The unattacked run directory (same seed and data).')
flags.DEFINE_float('threshold', 0.9, 'Backdoor accuracy that counts as implanted.')
flags.mark_flag_as_required('clean')
FLAGS = flags.FLAGS


def _rows(run_dir: str):
  path = os.path.join(run_dir, metrics_io.METRICS_JSONL)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: is {run_dir} a run directory?')
  return metrics_io.read_rows(run_dir)


def _line(run_dir, s) -> str:
  gap = '-' if s['gap_min'] is None else f"{s['gap_min']:.3f}..{s['gap_max']:.3f}"
  first = '-' if s['first_round_above'] is None else s['first_round_above']
  return (f"{run_dir}: backdoor>{FLAGS.threshold:g} in {s['rounds_above']}/{s['attack_rounds']} "
          f"attack rounds, first round {first}; main-acc gap to clean in those rounds {gap}; "
          f"mean over attack rounds: test {s['mean_test']:.4f} (clean "
          f"{s['mean_clean_test']:.4f}), backdoor {s['mean_backdoor']:.2f}")


def main(argv):
  if len(argv) < 2:
    cli.fail('give one or more attacked run directories after --clean=DIR')
  clean = cli.run_or_fail(lambda: _rows(FLAGS.clean))
  for run_dir in argv[1:]:
    summary = cli.run_or_fail(lambda d=run_dir: diagnostics.attack_round_summary(
        clean, _rows(d), FLAGS.threshold))
    print(_line(run_dir, summary), flush=True)


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
