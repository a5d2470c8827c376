"""How an attacked run's backdoor and main accuracy compare with an unattacked run, per round.

  python -m experiments.attack_summary --clean=runs/clean runs/boost runs/norm_bounded

For each run: in how many attack rounds backdoor accuracy exceeded --threshold, the first such
round (0-based), the main-accuracy gap to the clean run in those rounds, and mean test and
backdoor accuracy over the attack rounds. Reads metrics.jsonl; see
`tff_backdoor.analysis.diagnostics.attack_round_summary`. A run whose data set, number of
classes or backdoor task (config.json) differ from the clean run's is refused: its gaps
would mean nothing.
"""
import os

from absl import flags

from tff_backdoor import cli
from tff_backdoor import config as config_lib
from tff_backdoor import metrics_io
from tff_backdoor.analysis import diagnostics
from tff_backdoor.run import rundir

flags.DEFINE_string('clean', None, 'The unattacked run directory (same seed and data).')
flags.DEFINE_float('threshold', 0.9, 'Backdoor accuracy that counts as implanted, in [0, 1].')
flags.mark_flag_as_required('clean')
flags.register_validator('threshold', lambda v: 0 <= v <= 1,
                         message='--threshold must be in [0, 1] (a backdoor accuracy)')
FLAGS = flags.FLAGS
# Classes of the data sets whose count the config fixes (idx: read from the run's final.json).
_CLASSES = {'mnist': 10, 'fashion_mnist': 10}


def _rows(run_dir: str):
  path = os.path.join(run_dir, rundir.METRICS_JSONL)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: is {run_dir} a run directory?')
  return rundir.read_rows(run_dir)


def _identity(run_dir: str) -> dict:
  """What must match between an attacked run and its clean run: data set, classes, task."""
  path = os.path.join(run_dir, rundir.CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: is {run_dir} a run directory?')
  config = config_lib.ExperimentConfig.from_dict(metrics_io.read_json(path))
  data, task = config.data, config.task
  if data.natural:
    classes = 10 if data.only_digits else 62
  else:
    classes = _CLASSES.get(data.dataset) or _final_classes(run_dir)
  backdoor = {'none': 'none',
              'targeted': f'targeted {task.source_class}->{task.target_class}',
              'pixel': f'pixel {task.trigger_pattern} {task.trigger_size}px '
                       f'value {task.trigger_value} ->{task.target_class}'}[task.name]
  return {'data set': data.dataset, 'number of classes': classes, 'task': backdoor}


def _final_classes(run_dir: str):
  """The classes counted in the run's final.json partition report (None if unfinished)."""
  path = os.path.join(run_dir, rundir.FINAL_FILE)
  if not os.path.isfile(path):
    return None
  counts = metrics_io.read_json(path).get('partition', {}).get('global_label_counts')
  return len(counts) if counts else None


def check_comparable(clean_dir: str, run_dir: str) -> None:
  """ValueError (one line) if `run_dir`'s data set, classes or task differ from the clean run's."""
  clean, run = _identity(clean_dir), _identity(run_dir)
  for what in clean:
    if clean[what] != run[what] and None not in (clean[what], run[what]):
      raise ValueError(f'{run_dir}: {what} {run[what]} but the clean run {clean_dir} has '
                       f'{clean[what]}; compare runs of the same data, classes and task')


def _line(run_dir, s) -> str:
  gap = '-' if s['gap_min'] is None else f"{s['gap_min']:.3f}..{s['gap_max']:.3f}"
  first = '-' if s['first_round_above'] is None else s['first_round_above']
  return (f"{run_dir}: backdoor>{FLAGS.threshold:g} in {s['rounds_above']}/{s['attack_rounds']} "
          f"attack rounds, first round {first}; main-acc gap to clean in those rounds {gap}; "
          f"mean over attack rounds: test {s['mean_test']:.4f} (clean "
          f"{s['mean_clean_test']:.4f}), backdoor {s['mean_backdoor']:.2f}")


def main(argv):
  if len(argv) < 2:
    cli.fail('give one or more attacked run directories after --clean=DIR')
  clean = cli.run_or_fail(lambda: _rows(FLAGS.clean))
  for run_dir in argv[1:]:
    cli.run_or_fail(lambda d=run_dir: check_comparable(FLAGS.clean, d))
  for run_dir in argv[1:]:
    summary = cli.run_or_fail(lambda d=run_dir: diagnostics.attack_round_summary(
        clean, _rows(d), FLAGS.threshold))
    print(_line(run_dir, summary), flush=True)


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
