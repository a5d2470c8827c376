"""Prints REPRODUCTION.md's tables for finished sweeps and writes their PNGs and CSVs.

  python -m experiments.reproduction_tables runs/repro/sun --families=sun \
      --output_dir=experiments/results/reproduction/sun

One markdown table per family (`studies.reproduction`): the varied flag, the number of
seeds, mean ± std over seeds of main and backdoor accuracy (over the attack rounds and final)
and seconds per run; FAMILY.png (accuracy vs the varied flag) and FAMILY.csv beside it.
`--families=flain`: FLAIN's cross tables (task, partition, malicious share x defense).
`--families=bilgin` reads experiments.anomaly_localization output directories instead: the
AUC-per-variable table of the baseline runs, one table per factor sweep, and the detector
facts over every run (is the bias first per seed; FPR of the fixed z; TPR at 1% FPR).
"""
from absl import flags

from tff_backdoor import cli

from studies import population
from studies import reproduction
from studies import round_windows

# Every family set a sweep directory can be tabulated with.
FAMILIES = {**reproduction.FAMILIES, 'sun_population': population.SUN_POPULATION,
            'sun_full_300': reproduction.SUN_FULL_300_FAMILIES + round_windows.SUN_FULL_300_WINDOWS}

flags.DEFINE_list('families', ['sun'], f'Family sets: {", ".join(FAMILIES)} (sweep '
                  'directories; sun_population reads the 293- and the 3,580-writer sweeps '
                  'together), or bilgin (experiments.anomaly_localization output directories).')
flags.DEFINE_list('bilgin_factors', ['num_malicious', 'client_lr', 'malicious_rate'],
                  '--families=bilgin: the factor sweeps to tabulate.')
flags.DEFINE_string('output_dir', None, 'Where the PNGs and CSVs go (default: none written).')
FLAGS = flags.FLAGS


def _report(dirs):
  known = [*FAMILIES, 'bilgin']
  unknown = [f for f in FLAGS.families if f not in known]
  if unknown:
    raise ValueError(f'unknown --families {", ".join(unknown)}; choose from {", ".join(known)}')
  if 'bilgin' in FLAGS.families:
    if len(FLAGS.families) > 1:
      raise ValueError('--families=bilgin reads study directories: ask for it on its own')
    return reproduction.render_bilgin(dirs, FLAGS.bilgin_factors, FLAGS.output_dir)
  runs = reproduction.load_runs(dirs)
  cost = reproduction.wall_clock_markdown('wall clock', reproduction.run_seconds(runs))
  return [cost] + [text for name in FLAGS.families for spec in FAMILIES[name]
                   for text in reproduction.render(runs, spec, FLAGS.output_dir)]


def main(argv):
  if len(argv) < 2:
    cli.fail('give one or more sweep (or study) directories: '
             'python -m experiments.reproduction_tables DIR')
  for text in cli.run_or_fail(lambda: _report(argv[1:])):
    print(text + '\n')


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
