"""Runs a grid of configurations of an absl program, each in its own process and directory.

  python -m experiments.sweep --grid='defense=none,clip;seed=0,1' \
      --base_flags='--dataset=fashion_mnist --rounds=30 --task=targeted' \
      --output_dir=runs/sweep1 --parallel=2

Grid: axes `flag=v1,v2` joined by `;` (cartesian product); repeat --grid for a union of grids;
double-quote values holding `,` or `;`. --grid_file holds one axis per line, `---` between
grids. Flags after `--` are added to --base_flags. Each configuration runs as
`python -m PROGRAM BASE_FLAGS GRID_FLAGS --output_dir=OUTPUT_DIR/flag=value,...` with its
stdout and stderr in run.log there. Finished configurations (final.json present, config.json
matching) are skipped, unfinished ones are deleted and run again, so re-running an
interrupted sweep finishes it. --pretrain_flags runs one shared pretraining first and
warm-starts every configuration from it. Writes results.md, results.csv (mean and std over
seeds per configuration group), runs.csv and sweep.json to --output_dir. Every
configuration's flags are checked by the program's own flag check before anything starts.
Exit code: 0 all finished, 1 some configuration failed (listed at the end), 2 bad flags (one
line per configuration on stderr, nothing started), 130 interrupted.
See `studies.sweeps` for the details.
"""
import sys

from absl import flags

from tff_backdoor import cli
from tff_backdoor.execution import parallelism
from tff_backdoor.run import rundir

from studies import run_checks
from studies import sweep_grid
from studies import sweep_plan
from studies import sweeps

flags.DEFINE_multi_string('grid', [], "Grid 'flag=v1,v2;flag2=v3,...' (cartesian product); "
                          'repeat the flag to sweep the union of several grids.')
flags.DEFINE_string('grid_file', None, "File with one 'flag=v1,v2' axis per line ('#' "
                    "comments; a '---' line starts another grid).")
flags.DEFINE_string('base_flags', '', "Flags given to every configuration, split like a shell "
                    "command ('--dataset=fashion_mnist --rounds=30'); flags after '--' too.")
flags.DEFINE_string('pretrain_flags', None, 'Run one shared pretraining first, '
                    'PROGRAM BASE_FLAGS PRETRAIN_FLAGS in OUTPUT_DIR/pretrain (e.g. '
                    "'--task=none --schedule=none --rounds=100'), and warm-start every "
                    'configuration from it (--init_from); unset = no pretraining.')
flags.DEFINE_string('output_dir', None, 'Sweep directory: one subdirectory per configuration '
                    'plus the results tables.')
flags.DEFINE_integer('parallel', 0, 'Configurations run at the same time (0 = one per core, as '
                     'many as the free memory holds at 2 GB a run).', lower_bound=0)
flags.DEFINE_bool('warm_workers', True, 'Run configurations of the experiment program in warm '
                  'worker processes (TensorFlow and a TFF worker started once per worker, up '
                  'to 25 runs each, fewer if it grows past 6 GiB; the same numbers); false: a fresh process per '
                  'configuration. Other programs always get a fresh process.')
flags.DEFINE_string('program', sweep_plan.DEFAULT_PROGRAM,
                    'Module of the absl program to sweep, run as `python -m PROGRAM`.')
flags.DEFINE_string('seed_flag', 'seed', 'Grid flag averaged over in results.csv/md.')
flags.DEFINE_string('output_flag', 'output_dir', "The program's output directory flag.")
flags.DEFINE_string('done_file', rundir.FINAL_FILE, 'File a finished run leaves in its '
                    'directory; its numbers fill the results tables.')
flags.DEFINE_list('metrics', list(sweep_plan.DEFAULT_METRICS), 'Entries of --done_file in the '
                  "tables ('.' for nested keys); those absent from every run are left out.")
flags.DEFINE_bool('dry_run', False, 'List each configuration, its state and command; run '
                  'nothing.')
flags.DEFINE_bool('replace_mismatched', False, 'Re-run finished configurations whose '
                  'config.json differs from the requested flags (default: refuse to start).')
flags.mark_flag_as_required('output_dir')
FLAGS = flags.FLAGS


def _spec(extra_flags):
  grids = [sweep_grid.parse_grid(g) for g in FLAGS.grid]
  if FLAGS.grid_file:
    grids += sweep_grid.read_grid_file(FLAGS.grid_file)
  return sweep_plan.SweepSpec(
      output_dir=FLAGS.output_dir, grids=grids,
      base_flags=sweep_grid.parse_base_flags(FLAGS.base_flags, extra_flags),
      pretrain_flags=(None if FLAGS.pretrain_flags is None else
                      sweep_grid.parse_base_flags(FLAGS.pretrain_flags)),
      program=FLAGS.program, seed_flag=FLAGS.seed_flag, output_flag=FLAGS.output_flag,
      done_file=FLAGS.done_file, metrics=tuple(FLAGS.metrics)).validate()


def _check_flags(spec):
  """Every configuration through the program's flag check: one line each on stderr, exit 2."""
  try:
    sweep_plan.check_flags(spec)
  except run_checks.FlagErrors as e:
    for line in e.lines:
      print(f'error: {line}', file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv):
  try:
    spec = _spec(argv[1:])
  except sweep_grid.GridError as e:  # all _spec raises: a bad --grid, --grid_file, --base_flags
    cli.fail(str(e), code=2)
  _check_flags(spec)
  result = cli.run_or_fail(lambda: sweeps.run_sweep(
      spec, parallel=FLAGS.parallel or parallelism.default_parallel(), dry_run=FLAGS.dry_run,
      replace_mismatched=FLAGS.replace_mismatched, warm=FLAGS.warm_workers))
  sys.exit(result.exit_code)


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
