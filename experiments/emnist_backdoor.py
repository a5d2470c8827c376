"""FedAvg with backdoor attackers and defenses on federated EMNIST or centralised image data.

  python -m experiments.emnist_backdoor --dataset=fashion_mnist --rounds=20 \
      --task=targeted --schedule=fixed_frequency --attack=boost --defense=clip --clip_norm=3

Flags map one-to-one onto `tff_backdoor.simulation.ExperimentConfig`; `main` only wires them.
Outputs in --output_dir: config.json, metrics.jsonl, metrics.csv, tensorboard/, final.json,
initial_weights.npz (round-0 global model: --init_from's model for a warm start),
final_model.keras, captures/ (--capture_rounds),
flain.json and flain_model.keras (--flain).
"""
from absl import app
from absl import flags

from tff_backdoor import cli
from tff_backdoor import data as data_lib
from tff_backdoor import flain as flain_lib
from tff_backdoor import models
from tff_backdoor import runtime
from tff_backdoor import simulation
from tff_backdoor.attacks import schedules as schedules_lib
from tff_backdoor.attacks import tasks as tasks_lib
from tff_backdoor.attacks.client_work import ATTACK_MODES

_D = simulation.ExperimentConfig()

# Data.
flags.DEFINE_enum('dataset', _D.dataset, data_lib.DATASETS, 'Training data source.')
flags.DEFINE_string('data_dir', None, 'femnist: LEAF folder with train/ and test/ '
                    '(*.json or *.json.gz); mnist, idx: MNIST-format idx files '
                    '(fashion_mnist defaults to /usr/share/datasets/fashion-mnist).')
flags.DEFINE_string('cache_dir', None, "emnist: directory holding TFF's emnist_all.sqlite; "
                    'femnist: where parsed LEAF arrays are cached (default ~/.cache/tff_backdoor).')
flags.DEFINE_bool('only_digits', _D.only_digits,
                  'emnist/femnist: digits only (10 classes); --noonly_digits: all 62 classes.')
flags.DEFINE_enum('partition', _D.partition, data_lib.PARTITIONS,
                  'How centralised data is split into clients (emnist: by writer).')
flags.DEFINE_integer('num_clients', _D.num_clients,
                     'Clients to partition into (default 100); emnist/femnist: a seeded '
                     'subset of writers (default and 0: every writer).')
flags.DEFINE_float('alpha', _D.alpha, 'Dirichlet concentration (partition=dirichlet).')
flags.DEFINE_integer('shards_per_client', _D.shards_per_client, 'partition=shards.')
flags.DEFINE_integer('server_holdout', _D.server_holdout,
                     'Clean examples kept at the server (FLAIN auxiliary data), '
                     'disjoint from clients and test (default 1000; emnist/femnist: at most '
                     'a fifth of the test split).')
flags.DEFINE_float('train_fraction', _D.train_fraction,
                   'Centralised data: train on this seeded, class-stratified share of the '
                   'training pool (1 = all); a cheaper population of the same shape.')
# Model and FedAvg.
flags.DEFINE_enum('model', _D.model, sorted(models.MODEL_BUILDERS), 'Keras model.')
flags.DEFINE_integer('rounds', _D.rounds, 'Federated rounds.')
flags.DEFINE_integer('clients_per_round', _D.clients_per_round, 'Clients sampled per round.')
flags.DEFINE_integer('local_epochs', _D.local_epochs, 'Local epochs per client.')
flags.DEFINE_integer('batch_size', _D.batch_size, 'Client batch size.')
flags.DEFINE_float('client_lr', _D.client_lr, 'Client SGD learning rate.')
flags.DEFINE_float('server_lr', _D.server_lr, 'Server SGD learning rate.')
# Backdoor task.
flags.DEFINE_enum('task', _D.task, simulation.TASKS,
                  'Backdoor: targeted (Sun et al.) or pixel (BadNets trigger).')
flags.DEFINE_integer('num_tasks', _D.num_tasks, 'targeted: number of target clients.')
flags.DEFINE_integer('task_samples_per_client', _D.task_samples_per_client,
                     'targeted: at most this many relabelled images per target client '
                     '(0 = all; ~10 matches an EMNIST writer).')
flags.DEFINE_integer('task_min_samples', _D.task_min_samples,
                     'targeted: target clients are chosen among those holding at least this '
                     'many source-class images (0 = any).')
flags.DEFINE_integer('source_class', _D.source_class,
                     'Class whose images are backdoored (pixel: -1 = all but target).')
flags.DEFINE_integer('target_class', _D.target_class, 'Label the attacker wants.')
flags.DEFINE_bool('keep_honest_copies', _D.keep_honest_copies,
                  'targeted: target clients keep their images correctly labelled.')
flags.DEFINE_float('poison_fraction', _D.poison_fraction,
                   "pixel: fraction of the attacker's source images stamped and relabelled.")
flags.DEFINE_integer('trigger_size', _D.trigger_size, 'pixel: trigger side in pixels.')
flags.DEFINE_float('trigger_value', _D.trigger_value,
                   'pixel: trigger pixel value (<0: opposite of the background colour).')
flags.DEFINE_enum('trigger_pattern', _D.trigger_pattern, tasks_lib.PATTERNS, 'pixel: shape.')
flags.DEFINE_integer('distributed_parts', _D.distributed_parts,
                     'pixel: >1 splits the trigger across attackers (DBA).')
# Attacker.
flags.DEFINE_enum('attack', _D.attack, ATTACK_MODES, 'How attackers build their update.')
flags.DEFINE_float('boost', _D.boost, 'Boost factor (0 = clients_per_round).')
flags.DEFINE_float('norm_bound', _D.norm_bound, 'norm_bounded: L2 radius before boosting.')
flags.DEFINE_integer('projection_rounds', _D.projection_rounds, 'norm_bounded: R.')
flags.DEFINE_integer('malicious_epochs', _D.malicious_epochs,
                     'Passes over the malicious data (0 = 1 for boost/norm_bounded as in '
                     'Sun et al.\'s code, local_epochs for data_poison).')
flags.DEFINE_integer('malicious_batch_size', _D.malicious_batch_size,
                     'Malicious batch size (0 = the whole malicious set in one batch, as in '
                     'Sun et al.\'s code).')
flags.DEFINE_enum('schedule', _D.schedule, list(schedules_lib.SCHEDULES),
                  'When attackers take part.')
flags.DEFINE_integer('attack_every', _D.attack_every, 'fixed_frequency: one attacker every k.')
flags.DEFINE_float('malicious_fraction', _D.malicious_fraction,
                   'random_fraction / fixed_per_round: malicious share of the population.')
flags.DEFINE_integer('attackers_per_round', _D.attackers_per_round, 'fixed_per_round.')
flags.DEFINE_integer('attack_start', _D.attack_start, 'First attack round (0-based).')
flags.DEFINE_integer('attack_stop', _D.attack_stop, 'Round attacks stop (0 = never).')
# Defense.
cli.define_defense_flags()
# Run.
flags.DEFINE_integer('seed', _D.seed, 'Seed of every random choice.')
flags.DEFINE_string('output_dir', _D.output_dir, 'Where metrics and models are written.')
flags.DEFINE_integer('eval_every', _D.eval_every, 'Evaluate every k rounds (and the last).')
flags.DEFINE_integer('eval_subset', _D.eval_subset,
                     'Main-task test images evaluated before the last round: a fixed, seeded, '
                     'class-stratified subset (rows say how many in test_examples); the last '
                     'round and the backdoor sets are always whole. 0 = the whole test set.')
flags.DEFINE_integer('eval_batch_size', _D.eval_batch_size, 'Evaluation batch size.')
flags.DEFINE_string('workers', _D.workers,
                    "Run TFF on these C++ workers, 'host:port,host:port' (start each with "
                    "`python -m tff_backdoor.remote serve --port=P`); '' = TFF's local worker.")
flags.DEFINE_integer('num_subrounds', _D.num_subrounds,
                     "With --workers: shares each round's clients are split into "
                     '(0 = one per client: bit-identical to local execution).')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every,
                     'Save the full loop state every k rounds (0 = never).')
flags.DEFINE_integer('keep_checkpoints', _D.keep_checkpoints,
                     'Newest intact checkpoints kept; --resume falls back to an older one if '
                     'the newest is damaged.')
flags.DEFINE_bool('resume', _D.resume,
                  "Continue from output_dir's newest checkpoint (same flags required).")
flags.DEFINE_string('init_from', _D.init_from,
                    'Warm start: a run directory whose final_model.keras (or newest '
                    'checkpoint) is the round-0 model; rounds, schedules and seeds are this '
                    "run's own (see tff_backdoor/warm_start.py); '' = the seeded initial model.")
flags.DEFINE_string('capture_rounds', _D.capture_rounds,
                    "Rounds whose per-client updates are saved to output_dir/captures "
                    "(e.g. '0-9,20' or 'all'; 0-based).")
# FLAIN (post-training).
flags.DEFINE_bool('flain', _D.flain, 'Apply FLAIN to the final global model and report '
                  'main/backdoor accuracy before and after.')
cli.define_flain_flags(_D, flain_lib.THRESHOLD_MODES)

cli.register_config_validator()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.config_from_flags(FLAGS)
  # Local TFF worker that dies with this process, even on SIGKILL (--workers: remote ones).
  with runtime.local_execution(enabled=not config.workers):
    cli.run_or_fail(lambda: simulation.run_experiment(config))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
