"""FedAvg with backdoor attackers and defenses on federated EMNIST or centralised image data.

  python -m experiments.emnist_backdoor --dataset=fashion_mnist --rounds=20 \
      --task=targeted --schedule=fixed_frequency --attack=boost --defense=clip --clip_norm=3

One flag per field of `tff_backdoor.config.ExperimentConfig` (generated from it); the flags
are checked before TensorFlow is imported, so a bad value fails in one line at once.
Outputs in --output_dir: config.json, metrics.jsonl, metrics.csv, tensorboard/, final.json,
initial_weights.npz (round-0 global model: --init_from's model for a warm start),
final_model.keras, captures/ (--capture_rounds),
flain.json and flain_model.keras (--flain).
"""
if __name__ == '__main__':  # first: Ctrl-C during the imports below ends in one line too
  from tff_backdoor import interrupts
  interrupts.exit_on_interrupt()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from tff_backdoor import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

cli.define_config_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  run_config(cli.config_from_flags(FLAGS))


def run_config(config) -> None:
  """Runs one checked configuration; a sweep's warm worker calls it for each of its runs."""
  from tff_backdoor.run import driver  # pylint: disable=g-import-not-at-top  (loaded by the parser)
  from tff_backdoor.execution import contexts  # pylint: disable=g-import-not-at-top
  # Local TFF worker that dies with this process, even on SIGKILL (--workers: remote ones);
  # inside a warm worker's own local execution, that one is shared.
  with contexts.local_execution(enabled=not config.run.workers):
    cli.run_or_fail(lambda: driver.run_experiment(config))


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.checked_flags_parser('tff_backdoor.run.driver'))
