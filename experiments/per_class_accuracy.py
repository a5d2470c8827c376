"""Per-class test accuracy of finished runs' saved models, and their source -> target rate.

  python -m experiments.per_class_accuracy runs/clean runs/boosted [--model_file=final_model.keras]

Each run's config.json says which data and test split to load (as the run loaded them) and
which source/target classes its backdoor used. Prints one line per run; with --output, also
writes the reports as JSON. See `tff_backdoor.diagnostics`.
"""
import json
import os

from absl import app
from absl import flags

# TensorFlow must be imported before app.run: a Keras Sequential model first built inside
# main after a lazy TF import fails to build in TF 2.14 (models imports it here).
from tff_backdoor import cli
from tff_backdoor import data as data_lib
from tff_backdoor import diagnostics
from tff_backdoor import models

flags.DEFINE_string('model_file', 'final_model.keras',
                    "Model file inside each run directory (e.g. 'flain_model.keras').")
flags.DEFINE_string('output', None, 'Also write the reports here as JSON.')
FLAGS = flags.FLAGS


def run_report(run_dir: str, model_file: str):
  """Loads a run's model and test split; returns its diagnostics.class_report."""
  config_path, model_path = (os.path.join(run_dir, 'config.json'),
                             os.path.join(run_dir, model_file))
  for path in (config_path, model_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} not found: is {run_dir} a finished run directory?')
  with open(config_path) as f:
    config = json.load(f)
  data = data_lib.load_federated_data(
      config['dataset'], data_dir=config.get('data_dir'), partition=config['partition'],
      num_clients=config['num_clients'], alpha=config['alpha'],
      shards_per_client=config['shards_per_client'], server_holdout=config['server_holdout'],
      seed=config['seed'], only_digits=config['only_digits'], cache_dir=config.get('cache_dir'))
  x, y = data.test
  # The run's architecture, then its saved weights.
  model = models.build_model(config['model'], data.input_shape, data.num_classes)
  model.load_weights(model_path)
  predictions = diagnostics.predict_labels(model, x)
  source = config.get('source_class') if config.get('task', 'none') != 'none' else None
  return diagnostics.class_report(y, predictions, data.num_classes, source,
                                  config.get('target_class'))


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
  reports = {}
  for run_dir in argv[1:]:
    reports[run_dir] = cli.run_or_fail(lambda d=run_dir: run_report(d, FLAGS.model_file))
    print(_line(run_dir, reports[run_dir]), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(reports, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
