"""Copies a sweep's finished run records (no models) into a directory that is committed.

  python -m experiments.collect_records runs/sun_full experiments/results/sun_full

REPRODUCTION.md's tables are reprinted from committed records: for every run of the sweep
whose final.json marks it finished (`run_checks.final_problem`), its `config.json`,
`final.json` and `metrics.jsonl` are copied to DEST/<run name>/ (with the FLAIN results
`experiments.apply_flain --output_subdir=SUB` left in SUB/flain.json), and the sweep's `sweep.json`
to DEST/, so `experiments.reproduction_tables DEST` reads them like the sweep. Models,
checkpoints, logs and TensorBoard files stay behind. A record already in DEST with other bytes
is refused (a finished run is never overwritten silently) unless --replace.

--where selects runs by their grid flags, in grid syntax ('attack=a3fl,anticipate;task=pixel':
every axis must hold); repeated, a run matching any of them is copied. So one sweep's runs can
go to two committed directories (e.g. the matrix's new cells and its detection reruns, which
repeat cells committed elsewhere and must not be read twice by the same table).
"""
import filecmp
import os
import shutil
from typing import List, Optional, Sequence

from absl import flags

from tff_backdoor import cli
from tff_backdoor import metrics_io
from tff_backdoor.run import rundir

from studies import run_checks
from studies import sweep_grid
from studies import sweep_plan
from studies import sweep_results

RECORD_FILES = (rundir.CONFIG_FILE, rundir.FINAL_FILE, rundir.METRICS_JSONL)
flags.DEFINE_bool('replace', False, 'Overwrite committed records whose bytes differ.')
flags.DEFINE_multi_string('where', [], "Copy only runs whose grid flags match "
                          "'flag=v1,v2;flag2=v3' (repeat: any of them); default every run.")
FLAGS = flags.FLAGS


def _selected(flags_of_run, where: Sequence[sweep_grid.Grid]) -> bool:
  return not where or any(all(str(flags_of_run.get(name)) in values for name, values in grid)
                          for grid in where)


def finished_runs(sweep_dir: str, where: Sequence[sweep_grid.Grid] = ()) -> List[str]:
  """The sweep's run directories whose final.json marks a finished run and whose grid flags
  match one of `where` (parsed grids; none: every run), in sweep order."""
  out = []
  for _, directory, run_flags in sweep_results.iter_run_dirs(sweep_dir):
    if not _selected(run_flags, where):
      continue
    config_path = os.path.join(directory, rundir.CONFIG_FILE)
    final_path = os.path.join(directory, rundir.FINAL_FILE)
    if not os.path.exists(final_path) or not os.path.exists(config_path):
      continue
    if run_checks.final_problem(final_path, metrics_io.read_json(config_path)) is None:
      out.append(directory)
  return out


def record_files(directory: str) -> List[str]:
  """A run's record files: RECORD_FILES and any SUB/flain.json of FLAIN applied afterwards."""
  posthoc = sorted(os.path.join(sub, rundir.FLAIN_FILE) for sub in os.listdir(directory)
                   if os.path.isfile(os.path.join(directory, sub, rundir.FLAIN_FILE)))
  return [*RECORD_FILES, *posthoc]


def collect(sweep_dir: str, dest: str, replace: bool = False,
            where: Optional[Sequence[sweep_grid.Grid]] = None) -> List[str]:
  """Copies the finished runs' records; returns the names of the runs copied or updated.
  With no finished run to copy (none yet, or none `where` selects), `dest` is left alone."""
  runs = finished_runs(sweep_dir, where or ())
  if not runs:
    return []
  clashes = [os.path.join(dest, os.path.basename(d), name) for d in runs
             for name in record_files(d)
             if os.path.exists(os.path.join(dest, os.path.basename(d), name)) and
             not filecmp.cmp(os.path.join(d, name), os.path.join(dest, os.path.basename(d),
                                                                  name), shallow=False)]
  if clashes and not replace:
    raise ValueError(f'{clashes[0]} differs from the sweep\'s record ({len(clashes)} file(s)); '
                     'a committed record is not overwritten: check it, or pass --replace')
  copied = []
  for directory in runs:
    target = os.path.join(dest, os.path.basename(directory))
    os.makedirs(target, exist_ok=True)
    fresh = [n for n in record_files(directory) if not os.path.exists(os.path.join(target, n))
             or not filecmp.cmp(os.path.join(directory, n), os.path.join(target, n),
                                shallow=False)]
    for name in fresh:
      os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
      shutil.copyfile(os.path.join(directory, name), os.path.join(target, name))
    if fresh:
      copied.append(os.path.basename(directory))
  shutil.copyfile(os.path.join(sweep_dir, sweep_plan.SWEEP_FILE),
                  os.path.join(dest, sweep_plan.SWEEP_FILE))
  return copied


def main(argv):
  if len(argv) != 3:
    cli.fail('give a sweep directory and the destination: '
             'python -m experiments.collect_records SWEEP_DIR DEST')
  sweep_dir, dest = argv[1:]
  if not os.path.exists(os.path.join(sweep_dir, sweep_plan.SWEEP_FILE)):
    cli.fail(f'{sweep_dir} is not a sweep directory (no {sweep_plan.SWEEP_FILE})')
  source, target = os.path.realpath(sweep_dir), os.path.realpath(dest)
  if os.path.commonpath([source, target]) == source:
    cli.fail(f'{dest} is inside the sweep directory {sweep_dir}: records go elsewhere '
             '(e.g. experiments/results/NAME)')
  where = cli.run_or_fail(lambda: [sweep_grid.parse_grid(w) for w in FLAGS.where])
  copied = cli.run_or_fail(lambda: collect(sweep_dir, dest, FLAGS.replace, where))
  total = len(finished_runs(sweep_dir))
  print(f'{dest}: {len(copied)} run record(s) copied or updated, {total} finished in '
        f'{sweep_dir}')


if __name__ == '__main__':
  cli.run_program(main, flags_parser=cli.one_line_flags_parser)
