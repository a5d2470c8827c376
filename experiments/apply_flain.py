"""Applies FLAIN, with any options, to a finished run's final model without retraining.

  python -m experiments.apply_flain runs/flain_run --flain_mode=absolute \
      --output_dir=runs/flain_run_absolute
  python -m experiments.apply_flain RUN_DIR... --output_subdir=flain_absolute \
      --initial_weights=PRETRAIN_DIR/initial_weights.npz
  python -m experiments.apply_flain --sweep_dir=SWEEP --where='defense=none;task=pixel' \
      --output_subdir=flain_origin_quantile --initial_weights=SWEEP/pretrain/initial_weights.npz

Rebuilds the run's splits and backdoor evaluation sets from its config.json (same seed), then
writes flain.json and flain_model.keras to --output_dir and prints main and backdoor accuracy
before and after. FLAIN flags mean what they mean in experiments.emnist_backdoor; a FLAIN
option not given on the command line keeps the run's own (its config.json), not the flag's
default. See `tff_backdoor.run.flain_hook.reapply_flain`.
"""
import os

from absl import flags

from tff_backdoor import cli
from tff_backdoor.run import rundir

flags.DEFINE_string('output_dir', None, 'Where flain.json and flain_model.keras are written '
                    '(not the run directory); one run directory only.')
flags.DEFINE_string('output_subdir', None, 'Instead of --output_dir: write into RUN_DIR/NAME '
                    'of every run directory given (one process for many runs).')
flags.DEFINE_string('initial_weights', None, 'The round-0 model FLAIN measures updates from '
                    "(.npz; default each run's initial_weights.npz). For a warm-started run, "
                    "its pretraining's initial_weights.npz makes FLAIN see the whole training.")
flags.DEFINE_string('sweep_dir', None, "With --output_subdir: every finished run of this sweep "
                    "whose grid flags match --where, except those that already have "
                    "RUN_DIR/NAME/flain.json (an interrupted pass resumes).")
flags.DEFINE_string('where', '', "--sweep_dir's selection: 'flag=value;flag=value' (grid flags "
                    "as the sweep gave them).")
cli.define_config_flags(['flain'], skip=['flain'])  # the --flain_* options
FLAGS = flags.FLAGS


def _sweep_runs() -> list:
  """--sweep_dir's finished runs matching --where that lack RUN_DIR/--output_subdir."""
  from studies import sweep_results  # pylint: disable=g-import-not-at-top
  try:
    where = dict(item.split('=', 1) for item in FLAGS.where.split(';') if item.strip())
  except ValueError:
    cli.fail(f"--where={FLAGS.where!r}: use 'flag=value;flag=value'")
  runs = cli.run_or_fail(lambda: sweep_results.finished_run_dirs(FLAGS.sweep_dir, where))
  return [d for d in runs
          if not os.path.exists(os.path.join(d, FLAGS.output_subdir, rundir.FLAIN_FILE))]


def main(argv):
  run_dirs = argv[1:]
  if (FLAGS.output_dir is None) == (FLAGS.output_subdir is None):
    cli.fail('give exactly one of --output_dir and --output_subdir')
  if '' in (FLAGS.output_dir, FLAGS.output_subdir):
    cli.fail(f'--{"output_dir" if FLAGS.output_dir == "" else "output_subdir"} is empty')
  if FLAGS.output_dir is not None:
    try:
      cli.check_output_folder(FLAGS.output_dir, 'output_dir')
    except ValueError as e:
      cli.fail(str(e))
  if FLAGS.sweep_dir is not None:
    if run_dirs or FLAGS.output_subdir is None:
      cli.fail('--sweep_dir takes --output_subdir and no run directories')
    run_dirs = _sweep_runs()
    print(f'{len(run_dirs)} runs of {FLAGS.sweep_dir} to do')
  elif not run_dirs or (FLAGS.output_dir is not None and len(run_dirs) != 1):
    cli.fail('give finished run directories: python -m experiments.apply_flain RUN_DIR '
             '--output_dir=DIR, or RUN_DIR... --output_subdir=NAME, or --sweep_dir')
  # pylint: disable-next=g-import-not-at-top  (loaded by the parser)
  from tff_backdoor.run import flain_hook
  options = {name: FLAGS[name].value for name in flain_hook.FLAIN_FIELDS if FLAGS[name].present}
  for run_dir in run_dirs:
    output = FLAGS.output_dir or os.path.join(run_dir, FLAGS.output_subdir)
    cli.run_or_fail(lambda: flain_hook.reapply_flain(  # pylint: disable=cell-var-from-loop
        run_dir, output, FLAGS.initial_weights, **options))


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.checked_flags_parser('tff_backdoor.run.flain_hook',
                                                              check=lambda: None))
