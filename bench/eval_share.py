"""Share of a round's time spent in main-task evaluation, at the experiment's defaults.

  python -m bench.eval_share [--rounds=8] [--output=FILE.json]

Builds the default experiment (`config.ExperimentConfig()`: Fashion-MNIST, 100 Dirichlet
clients, 10 per round, one local epoch, Sun CNN, 10,000 test images) and runs `--rounds`
training rounds. After each round it evaluates the new global model three ways, in an order
that rotates from round to round (so drift in the machine's speed hits them alike):

- `keras_full`: `model.evaluate` on the whole test set, what every round did before;
- `compiled_full`: `evaluation.Evaluator` on the whole test set (the last round's evaluation);
- `default`: `evaluation.Evaluator` on `between_rounds_eval_sets` (the `--eval_subset`
  images), what the rounds before the last evaluate at the defaults.

The share of a way is eval / (train + eval) with that round's training time (sampling,
client datasets and `process.next`, as in the experiment loop). Reports the median and the
best (least disturbed) round, and checks that the compiled evaluation equals Keras' exactly.
Prints one JSON object.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any, Dict

from absl import app
from absl import flags

import tensorflow as tf

from bench import common
from tff_backdoor import cli
from tff_backdoor import config as config_lib
from tff_backdoor.run import client_inputs
from tff_backdoor.run import evaluation
from tff_backdoor.run import setup as setup_lib

flags.DEFINE_integer('rounds', 8, 'Training rounds (the first is a warm-up, not reported).')
flags.DEFINE_string('data_dir', None, 'Fashion-MNIST idx dir (default: the Debian package).')
flags.DEFINE_string('output', None, 'Also write the JSON here.')
FLAGS = flags.FLAGS

WAYS = ('keras_full', 'compiled_full', 'default')


def run(rounds: int, data_dir: str) -> Dict[str, Any]:
  """Times training and the three evaluations round by round; returns the report."""
  if rounds < 2:
    raise ValueError(f'--rounds must be >= 2 (one warm-up), got {rounds}')
  config = config_lib.ExperimentConfig.from_flat(
      output_dir=tempfile.mkdtemp(prefix='eval_share_'), data_dir=data_dir, verbose=False,
      tensorboard=False)
  setup = setup_lib.prepare(config)
  streams = setup_lib.streams(config.run.seed)  # pylint: disable=protected-access
  evaluator = evaluation.Evaluator(setup.keras_builder, config.run.eval_batch_size)
  keras_model = setup.keras_builder()
  keras_model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
  full, between = setup.eval_sets['test'], evaluation.between_rounds_eval_sets(setup)['test']

  def keras_full():
    loss, acc = keras_model.evaluate(*full, batch_size=config.run.eval_batch_size, verbose=0)
    return {'test_accuracy': float(acc), 'test_loss': float(loss)}

  ways = {'keras_full': keras_full,
          'compiled_full': lambda: evaluator.evaluate({'test': full}),
          'default': lambda: evaluator.evaluate({'test': between})}
  state = setup.process.initialize()
  train_s, eval_s = [], {w: [] for w in WAYS}
  identical = True
  for round_num in range(rounds):
    t0 = time.perf_counter()
    participants = setup.schedule.sample_round(round_num, setup.client_ids,
                                               config.fed_avg.clients_per_round, streams['sampling'])
    client_data, _ = client_inputs.round_client_data(setup, participants, streams['round_data'])
    state = setup.process.next(state, client_data).state
    train = time.perf_counter() - t0
    weights = setup.process.get_model_weights(state)
    evaluator.load(weights)
    weights.assign_weights_to(keras_model)
    results = {}
    order = WAYS[round_num % 3:] + WAYS[:round_num % 3]
    for way in order:
      t0 = time.perf_counter()
      results[way] = ways[way]()
      if round_num:  # round 0 traces and compiles
        eval_s[way].append(time.perf_counter() - t0)
    identical &= results['keras_full'] == results['compiled_full']
    if round_num:
      train_s.append(train)
    common.log(f'round {round_num}: train {train:.2f}s, ' + ', '.join(
        f'{w} {eval_s[w][-1]:.2f}s' for w in WAYS if round_num))
  report: Dict[str, Any] = {
      'setting': {'config': 'config.ExperimentConfig() defaults', 'rounds_timed': rounds - 1,
                  'test_images': int(len(full[1])), 'eval_subset': int(len(between[1])),
                  'eval_batch_size': config.run.eval_batch_size},
      'train_seconds': {'median': round(statistics.median(train_s), 3),
                        'best': round(min(train_s), 3)},
      'compiled_equals_keras': bool(identical), 'ways': {}}
  for way in WAYS:
    shares = [e / (t + e) for t, e in zip(train_s, eval_s[way])]
    report['ways'][way] = {
        'eval_seconds_median': round(statistics.median(eval_s[way]), 3),
        'eval_seconds_best': round(min(eval_s[way]), 3),
        'share_median': round(statistics.median(shares), 3),
        'share_of_best_round': round(min(eval_s[way]) / (min(train_s) + min(eval_s[way])), 3)}
    stats = report['ways'][way]
    common.log(f'{way}: eval {stats["eval_seconds_median"]:.2f}s median, share '
               f'{stats["share_median"]:.1%} median, {stats["share_of_best_round"]:.1%} of the '
               'best round')
  return report


main = common.json_main(lambda: run(FLAGS.rounds, FLAGS.data_dir))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
