"""Applies FLAIN, with any options, to a finished run's final model without retraining.

  python -m experiments.apply_flain runs/flain_run --flain_mode=absolute \
      --output_dir=runs/flain_run_absolute

Rebuilds the run's splits and backdoor evaluation sets from its config.json (same seed), then
writes flain.json and flain_model.keras to --output_dir and prints main and backdoor accuracy
before and after. FLAIN flags mean what they mean in experiments.emnist_backdoor. See
`tff_backdoor.simulation.reapply_flain`.
"""
from absl import app
from absl import flags

from tff_backdoor import cli
from tff_backdoor import flain as flain_lib
from tff_backdoor import simulation

_D = simulation.ExperimentConfig()

flags.DEFINE_string('output_dir', None, 'Where flain.json and flain_model.keras are written '
                    '(not the run directory).')
cli.define_flain_flags(_D, flain_lib.THRESHOLD_MODES)
flags.mark_flag_as_required('output_dir')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) != 2:
    cli.fail('give one finished run directory: python -m experiments.apply_flain RUN_DIR '
             '--output_dir=DIR')
  options = {name: FLAGS[name].value for name in simulation.FLAIN_FIELDS}
  cli.run_or_fail(lambda: simulation.reapply_flain(argv[1], FLAGS.output_dir, **options))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
