"""Plots a run, a sweep (experiments.sweep) or a directory of runs as PNG files.

  python -m experiments.plot runs/sweep1            # -> runs/sweep1/plots/*.png
  python -m experiments.plot runs/clip --output_dir=/tmp/plots

Writes curves.png (main and backdoor accuracy per round; for a sweep one line per
configuration group, mean over seeds with a min-max band), flain.png (accuracy before/after
FLAIN, with --flain runs) and anomaly_auc*.png / bias_scores*.png (runs with
--capture_rounds), and prints the files written. See `studies.plots`.
"""
from absl import flags

from tff_backdoor import cli

from studies import plots

flags.DEFINE_string('output_dir', None, 'Where the PNGs go (default RUN_OR_SWEEP_DIR/plots).')
flags.DEFINE_enum('band', 'minmax', plots.BANDS,
                  'Band around the mean over seeds: min-max, ±1 sample std, or none.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) != 2:
    cli.fail('give one run or sweep directory: python -m experiments.plot DIR')
  files = cli.run_or_fail(lambda: plots.plot_all(argv[1], FLAGS.output_dir, band=FLAGS.band))
  for path in files:
    print(path)


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
