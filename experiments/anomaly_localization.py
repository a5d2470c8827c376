"""Bilgin's factor sweeps: where backdoor anomalies show in client updates (METHODS.md 3).

  python -m experiments.anomaly_localization --rounds=20 \
      --factors=num_malicious,client_lr,malicious_rate --tasks=targeted,pixel \
      --partitions=iid,dirichlet0.5,dirichlet0.1 --seeds=0

Around Bilgin's baseline (10 clients all in every round, 1 data-poisoning attacker, malicious
data rate 1/10, client lr 0.01, batch 64, 2 local epochs) each factor is varied alone; every
run captures every client update of every round, ranks the variables by ROC-AUC (all, early
and late rounds) and evaluates the final-layer-bias detector. The logic lives in
`studies.localization_study`; this file holds the flags.

Outputs in --output_dir: summary.csv and summary.json (one row per task, partition, factor,
value, seed), plots/<task>_<partition>_<factor>_seed<k>.png, and per run runs/<run>/ with
the experiment's own files plus study_run.json, localization*.csv, detector.json,
summary.json (marks the run done: it is skipped next time) and PNG plots.
"""
from absl import flags

from tff_backdoor import cli
from tff_backdoor import models
from tff_backdoor.analysis import anomaly

from studies import localization_study as study

_D = study.StudySettings()

# What to sweep.
flags.DEFINE_list('factors', list(study.FACTORS),
                  'Factors to sweep, each against the baseline: ' + ', '.join(study.FACTORS))
flags.DEFINE_list('tasks', list(study.STUDY_TASKS), 'Backdoor tasks: targeted, pixel.')
flags.DEFINE_list('partitions', list(study.DEFAULT_PARTITIONS),
                  "Client partitions: 'iid' or 'dirichlet<alpha>' (e.g. dirichlet0.5); "
                  "'writers' for --dataset=femnist/emnist (num_clients seeded writers).")
flags.DEFINE_list('seeds', ['0'], 'Seeds; each is a full repetition of the sweep.')
flags.DEFINE_list('num_malicious_values',
                  [f'{v:g}' for v in study.DEFAULT_VALUES['num_malicious']],
                  'Values of num_malicious (attackers, all attacking in every round).')
flags.DEFINE_list('client_lr_values', [f'{v:g}' for v in study.DEFAULT_VALUES['client_lr']],
                  'Values of the client SGD learning rate.')
flags.DEFINE_list('malicious_rate_values', ['1', '1/3', '1/10', '1/20'],
                  "Values of the malicious data rate (share of the attacker's training "
                  'examples that are malicious); fractions like 1/10 are accepted.')
flags.DEFINE_integer('baseline_num_malicious', int(study.BASELINE['num_malicious']),
                     'Baseline number of malicious clients.')
flags.DEFINE_float('baseline_client_lr', study.BASELINE['client_lr'], 'Baseline client lr.')
flags.DEFINE_string('baseline_malicious_rate', '1/10', 'Baseline malicious data rate.')
# Data and FedAvg.
flags.DEFINE_enum('dataset', _D.dataset, ['fashion_mnist', 'mnist', 'idx', 'femnist'],
                  'Training data: centralised (partitioned over the clients) or femnist '
                  "(LEAF writers, --partitions=writers).")
flags.DEFINE_string('data_dir', None, 'Directory of MNIST-format idx files (fashion_mnist '
                    'defaults to /usr/share/datasets/fashion-mnist) or, for femnist, the LEAF '
                    'folder with train/ and test/.')
flags.DEFINE_enum('model', _D.model, sorted(models.MODEL_BUILDERS), 'Keras model.')
flags.DEFINE_integer('rounds', _D.rounds, 'Federated rounds per run (all captured).')
flags.DEFINE_integer('num_clients', _D.num_clients, 'Clients; all take part in every round.')
flags.DEFINE_integer('local_epochs', _D.local_epochs, 'Local epochs per round.')
flags.DEFINE_integer('batch_size', _D.batch_size, 'Client batch size.')
flags.DEFINE_float('server_lr', _D.server_lr, 'Server SGD learning rate.')
flags.DEFINE_float('client_data_fraction', _D.client_data_fraction,
                   'Share of its examples every client keeps (seeded; < 1 for speed).')
flags.DEFINE_integer('server_holdout', _D.server_holdout,
                     'Training examples held out at the server (not used by the study).')
flags.DEFINE_string('init_from', _D.init_from, 'A finished run directory: every run starts '
                    "from its final model (warm start; '' = from scratch).")
# Backdoor tasks.
flags.DEFINE_integer('num_tasks', _D.num_tasks,
                     'targeted: clients whose source-class images form the malicious set.')
flags.DEFINE_integer('source_class', _D.source_class,
                     'targeted: class relabelled (pixel triggers every non-target class).')
flags.DEFINE_integer('target_class', _D.target_class, 'Label the attacker wants.')
flags.DEFINE_integer('trigger_size', _D.trigger_size, 'pixel: trigger side in pixels.')
# Analysis.
flags.DEFINE_integer('early_rounds', _D.early_rounds,
                     'Rounds in the early (first k) and late (last k) windows.')
flags.DEFINE_enum('score', _D.score, list(anomaly.SCORE_NAMES),
                  'Per-variable score used to rank variables (linf = max robust z).')
flags.DEFINE_float('z_threshold', _D.z_threshold,
                   'Fixed robust-z threshold of the bias detector (bias_filter default).')
# Run.
flags.DEFINE_integer('eval_every', _D.eval_every, 'Evaluate the global model every k rounds.')
flags.DEFINE_string('output_dir', _D.output_dir, 'Where tables, plots and runs are written.')
flags.DEFINE_bool('keep_captures', _D.keep_captures,
                  'Keep the per-round client updates (large) after the analysis.')
flags.DEFINE_bool('dry_run', False, 'Print the sweep and the runs it needs, then exit.')
flags.DEFINE_bool('summarize_only', False,
                  'Train nothing: write summary.csv/json and plots from the finished runs '
                  '(e.g. runs finished by other processes, one per seed).')
flags.DEFINE_bool('verbose', _D.verbose, 'Print one line per training round.')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    settings, points = study.study_from_flag_values(FLAGS.flag_values_dict())
  except ValueError as e:
    cli.fail(str(e))
  if FLAGS.dry_run:
    print(cli.run_or_fail(lambda: study.describe_sweep(settings, points)))
    return
  rows = cli.run_or_fail(lambda: study.run_study(settings, points,
                                                 run_missing=not FLAGS.summarize_only))
  print(study.format_table(rows))


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
