"""Per-class test accuracy of finished runs' saved models, and their source -> target rate.

  python -m experiments.per_class_accuracy runs/clean runs/boosted [--model_file=final_model.keras]

Each run's config.json says which data and test split to load (as the run loaded them) and
which source/target classes its backdoor used. Prints one line per run; with --output, also
writes the reports as JSON. See `tff_backdoor.analysis.diagnostics`.
"""
import os

from absl import flags

# TensorFlow must be imported before app.run: a Keras Sequential model first built inside
# main after a lazy TF import fails to build in TF 2.14 (models imports it here).
from tff_backdoor import cli
from tff_backdoor import metrics_io
from tff_backdoor import models
from tff_backdoor.analysis import diagnostics
from tff_backdoor.run import rundir
from tff_backdoor.run import setup as setup_lib

flags.DEFINE_string('model_file', rundir.FINAL_MODEL,
                    "Model file inside each run directory (e.g. 'flain_model.keras').")
flags.DEFINE_string('output', None, 'Also write the reports here as JSON.')
FLAGS = flags.FLAGS


def run_report(run_dir: str, model_file: str):
  """Loads a run's model and test split; returns its diagnostics.class_report."""
  config = setup_lib.load_run_config(run_dir, model_file)
  data = setup_lib.load_data(config)
  x, y = data.test
  model = models.build_model(config.fed_avg.model, data.input_shape, data.num_classes)
  models.load_weights_file(model, os.path.join(run_dir, model_file))
  task = config.task
  source = task.source_class if task.name != 'none' else None
  return diagnostics.class_report(y, diagnostics.predict_labels(model, x), data.num_classes,
                                  source, task.target_class)


def _line(run_dir, report) -> str:
  parts = [f"{run_dir}: accuracy {report['accuracy']:.4f}",
           'per class ' + ' '.join(f'{c}:{a:.2f}'
                                   for c, a in enumerate(report['per_class_accuracy']))]
  if 'source_to_target' in report:
    parts.append(f"{report['source_class']}->{report['target_class']} "
                 f"{report['source_to_target']:.3f}")
  return ' | '.join(parts)


def main(argv):
  if len(argv) < 2:
    cli.fail('give one or more run directories: python -m experiments.per_class_accuracy DIR...')
  if FLAGS.output is not None:
    cli.check_output_file(FLAGS.output, 'output')  # before the work, not after it
  reports = {}
  for run_dir in argv[1:]:
    reports[run_dir] = cli.run_or_fail(lambda d=run_dir: run_report(d, FLAGS.model_file))
    print(_line(run_dir, reports[run_dir]), flush=True)
  if FLAGS.output:
    metrics_io.write_json(FLAGS.output, reports)


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
