"""A sweep's plan: the spec, one `Run` per configuration, and the state of each run directory
(finished and reusable, mismatched, partial, ...) judged from its config.json (`studies.sweeps`
has the rules)."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import flags as absl_flags

from tff_backdoor import metrics_io
from tff_backdoor.run import rundir

from studies import run_checks

from studies.sweep_grid import FLAG_NAME, Grid, GridError, check_unique, expand, flag_items
from studies.sweep_grid import group_label, run_name


DEFAULT_PROGRAM = 'experiments.emnist_backdoor'


DEFAULT_METRICS = ('test_accuracy', 'backdoor_accuracy', 'flain.after.test_accuracy',
                   'flain.after.backdoor_accuracy')


RUN_RECORD = 'sweep_run.json'


LOG_FILE = 'run.log'


SWEEP_FILE = 'sweep.json'


RUNS_CSV = 'runs.csv'


RESULTS_CSV = 'results.csv'


RESULTS_MD = 'results.md'


LOCK_FILE = '.sweep.lock'


PRETRAIN = 'pretrain'  # Name and directory (in OUTPUT_DIR) of the shared pretraining run.


INIT_FLAG = 'init_from'  # The program's warm-start flag, set for each configuration.


# Run states.
NEW = 'new'  # No directory yet.


PARTIAL = 'partial'  # Directory made by a sweep, no done file: deleted and run again.


FINISHED = 'finished'  # Done file and matching config: skipped.


MISMATCH = 'mismatch'  # Done file but made with other flags.


FOREIGN = 'foreign'  # Non-empty directory the sweep did not make.


FAILED = 'failed'


NOT_RUN = 'not_run'


@dataclasses.dataclass
class SweepSpec:
  """What to sweep; `grids` are unions of cartesian products (see module docstring)."""
  output_dir: str
  grids: List[Grid]
  base_flags: List[str] = dataclasses.field(default_factory=list)
  program: str = DEFAULT_PROGRAM
  seed_flag: str = 'seed'
  output_flag: str = 'output_dir'
  done_file: str = rundir.FINAL_FILE
  metrics: Tuple[str, ...] = DEFAULT_METRICS
  python: str = sys.executable
  pretrain_flags: Optional[List[str]] = None  # None: no shared pretraining run.

  def validate(self) -> 'SweepSpec':
    """Raises GridError on a spec the sweep cannot run (no grid, a repeated flag, a flag the
    sweep sets itself); returns self."""
    if not self.output_dir:
      raise GridError('--output_dir is required')
    if not self.grids or not any(self.grids):
      raise GridError("empty grid: give --grid='flag=value1,value2;...' or --grid_file")
    for grid in self.grids:
      check_unique(grid)
      if any(name == self.output_flag for name, _ in grid):
        raise GridError(f'--{self.output_flag} is set by the sweep (one directory per '
                        'configuration); remove it from the grid')
    for name, _ in flag_items(self.base_flags):
      if name == self.output_flag:
        raise GridError(f'--{self.output_flag} is set by the sweep (one directory per '
                        'configuration); remove it from --base_flags')
    for name in (self.seed_flag, self.output_flag):
      if not FLAG_NAME.match(name):
        raise GridError(f'bad flag name {name!r}')
    if self.pretrain_flags is not None:
      if any(name == self.output_flag for name, _ in flag_items(self.pretrain_flags)):
        raise GridError(f'--{self.output_flag} is set by the sweep; remove it from '
                        '--pretrain_flags')
      if any(name == INIT_FLAG for name, _ in flag_items(self.base_flags)) or any(
          name == INIT_FLAG for grid in self.grids for name, _ in grid):
        raise GridError(f'--{INIT_FLAG} is set by the sweep to its pretraining run; remove it '
                        'from --base_flags and the grid (or drop --pretrain_flags)')
    if not self.done_file or os.path.basename(self.done_file) != self.done_file:
      raise GridError(f'--done_file must be a file name, got {self.done_file!r}')
    return self


@dataclasses.dataclass
class Run:
  """One configuration: its grid flags, directory and command."""
  name: str
  flags: Dict[str, str]
  group: str
  directory: str
  args: List[str]  # Base flags then grid flags, without the output flag.
  command: List[str]


def plan(spec: SweepSpec) -> List[Run]:
  """One Run per configuration of the grids, in grid order."""
  spec.validate()
  out = os.path.abspath(spec.output_dir)
  runs = []
  names = set()
  for flags in expand(spec.grids):
    name = run_name(flags)
    if name in names:  # Only possible through the 200-character cut; keep them apart.
      name += '~' + hashlib.sha1(repr(sorted(flags.items())).encode()).hexdigest()[:8]
    names.add(name)
    directory = os.path.join(out, name)
    init = ([] if spec.pretrain_flags is None else
            [f'--{INIT_FLAG}={os.path.join(out, PRETRAIN)}'])
    args = list(spec.base_flags) + init + [f'--{k}={v}' for k, v in flags.items()]
    command = [spec.python, '-m', spec.program, *args, f'--{spec.output_flag}={directory}']
    runs.append(Run(name, flags, group_label(flags, spec.seed_flag), directory, args, command))
  return runs


def pretrain_run(spec: SweepSpec) -> Optional[Run]:
  """The shared pretraining run of `spec` (base flags then pretrain flags), or None."""
  if spec.pretrain_flags is None:
    return None
  directory = os.path.join(os.path.abspath(spec.output_dir), PRETRAIN)
  args = list(spec.base_flags) + list(spec.pretrain_flags)
  command = [spec.python, '-m', spec.program, *args, f'--{spec.output_flag}={directory}']
  return Run(PRETRAIN, {}, f'({PRETRAIN})', directory, args, command)


def resolve_program(module: str) -> str:
  """Checks `python -m module` can run (without importing it); returns its sys.path root."""
  if not module or not all(FLAG_NAME.match(p) for p in module.split('.')):
    raise ValueError(f'bad --program={module!r}: give a module name like {DEFAULT_PROGRAM}')
  parts = module.split('.')
  search_path = None
  root = None
  for i in range(len(parts)):
    name = '.'.join(parts[:i + 1])
    found = importlib.machinery.PathFinder.find_spec(name, search_path)
    if found is None:
      raise ValueError(f'unknown --program={module}: no module named {name!r} (run from the '
                       'repository root or install the package)')
    if i == 0:
      if found.origin and os.path.isfile(found.origin):
        root = os.path.dirname(os.path.abspath(found.origin))
        if found.submodule_search_locations is not None:  # A regular package.
          root = os.path.dirname(root)
      else:  # A namespace package.
        root = os.path.dirname(os.path.abspath(list(found.submodule_search_locations)[0]))
    if i < len(parts) - 1:
      if found.submodule_search_locations is None:
        raise ValueError(f'unknown --program={module}: {name} is not a package')
      search_path = list(found.submodule_search_locations)
  return root


def config_flags(config: Mapping[str, Any]) -> Dict[str, Any]:
  """Flag name -> value of a run's (possibly nested) config.json.

  A nested dict with a 'name' stands for that name (`--defense=clip` for
  `{'defense': {'name': 'clip', ...}}`) and its other keys are flags too; the shallowest key
  wins.
  """
  flat: Dict[str, Any] = {}
  nested = []
  for key, value in config.items():
    if isinstance(value, Mapping):
      if 'name' in value:
        flat[key] = value['name']
      nested.append(value)
    else:
      flat[key] = value
  for value in nested:
    for key, inner in config_flags(value).items():
      flat.setdefault(key, inner)
  return flat


def _flag_values(config: Mapping[str, Any]) -> absl_flags.FlagValues:
  """An absl FlagValues with one flag per config entry, of the entry's type."""
  values = absl_flags.FlagValues()
  for name, value in config.items():
    if isinstance(value, bool):
      absl_flags.DEFINE_bool(name, value, '', flag_values=values)
    elif isinstance(value, (int, float)):
      absl_flags.DEFINE_float(name, value, '', flag_values=values)
    else:
      absl_flags.DEFINE_string(name, None, '', flag_values=values)
  return values


def _requested(config: Mapping[str, Any], args: Sequence[str]) -> Dict[str, Any]:
  """Flag name -> value that `args` ask for, parsed by absl as the program would parse it
  (`--flag`/`--noflag`, last occurrence wins); an unparsable value maps to `_Unparsable`."""
  values = _flag_values(config)
  try:
    values(['sweep', *args], known_only=True)
  except absl_flags.Error:  # One flag at a time, to tell which value is unparsable.
    requested: Dict[str, Any] = {}
    for arg in args:
      requested.update(_requested(config, [arg]) if len(args) > 1 else
                       {arg.lstrip('-').partition('=')[0]: _Unparsable(arg.partition('=')[2])})
    return requested
  return {name: values[name].value for name in config if values[name].present}


@dataclasses.dataclass(frozen=True)
class _Unparsable:
  text: str

  def __repr__(self) -> str:
    return repr(self.text)


def _same(config_value: Any, requested: Any) -> bool:
  if isinstance(requested, _Unparsable):
    return False
  if isinstance(config_value, (int, float)) and not isinstance(config_value, bool):
    return math.isclose(requested, float(config_value), rel_tol=1e-9, abs_tol=0.0)
  if config_value is None:
    return requested in ('', 'None')
  return requested == (config_value if isinstance(config_value, bool) else str(config_value))


def config_mismatches(config: Mapping[str, Any], args: Sequence[str],
                      ignore: Sequence[str] = ()) -> List[str]:
  """Requested flags whose value differs from `config` (flags absent from it are ignored).

  The flags are parsed by absl against flags typed like the config's values, so `--flag`,
  `--noflag`, `--flag=false` and repeated flags mean what they mean to the program.
  """
  current = config_flags(config)
  diffs = []
  for name, value in _requested(current, args).items():
    if name in current and name not in ignore and not _same(current[name], value):
      diffs.append(f'--{name}: {json.dumps(current[name])} in config.json, '
                   f'{_as_given(name, value, args)!r} requested')
  return diffs


def _as_given(name: str, value: Any, args: Sequence[str]) -> str:
  """The text of the last of `args` that set flag `name` (a bare boolean as 'true'/'false')."""
  for arg_name, text in reversed(flag_items(args)):
    if arg_name in (name, f'no{name}'):
      return text if text is not None else ('true' if value is True else 'false')
  return str(value)


def _pretrain_sha(spec: SweepSpec) -> Optional[str]:
  """The `model_sha256` in the finished pretraining's done file (None if there is none)."""
  pretrain = pretrain_run(spec)
  if pretrain is None:
    return None
  final = read_final(pretrain, spec)
  return final.get('model_sha256') if final else None


def _unfinished(directory: str, spec: SweepSpec) -> str:
  """'' if the done file marks a finished run (it parses and fits its config.json), else why
  not ('unfinished', or what is wrong with it: such a run is redone, never counted)."""
  final_path = os.path.join(directory, spec.done_file)
  if not os.path.exists(final_path):
    return 'unfinished'
  config_path = os.path.join(directory, rundir.CONFIG_FILE)
  try:
    config = metrics_io.read_json(config_path) if os.path.exists(config_path) else None
  except ValueError:
    config = None  # reported as a mismatch by run_status
  required = (rundir.FINAL_FIELDS if spec.program in run_checks.CONFIG_FLAG_PROGRAMS
              and spec.done_file == rundir.FINAL_FILE else ())
  return run_checks.final_problem(final_path, config if isinstance(config, dict) else None,
                                  required) or ''


def check_flags(spec: SweepSpec) -> None:
  """Raises run_checks.FlagErrors (one line per configuration) if the program's flag check
  refuses any configuration (the pretraining's included), before anything runs."""
  runs = plan(spec) + [r for r in [pretrain_run(spec)] if r is not None]
  # The sweep's own --init_from names the pretraining, which does not exist yet.
  init = f'--{INIT_FLAG}={os.path.join(os.path.abspath(spec.output_dir), PRETRAIN)}'
  errors = run_checks.flag_errors(spec.program, [
      (run.name, [*(a for a in run.args if a != init), f'--{spec.output_flag}={run.directory}'])
      for run in runs])
  if errors:
    raise run_checks.FlagErrors(errors)


def run_status(run: Run, spec: SweepSpec) -> Tuple[str, str]:
  """(state, detail) of a run directory: NEW, PARTIAL, FINISHED, MISMATCH or FOREIGN.

  With a pretraining, a finished configuration whose config.json records another
  `init_from_sha256` than the finished pretraining's `model_sha256` is a MISMATCH.
  """
  directory = run.directory
  if not os.path.isdir(directory):
    if os.path.exists(directory):
      return FOREIGN, f'{directory} is a file'
    return NEW, ''
  has_record = os.path.exists(os.path.join(directory, RUN_RECORD))
  unfinished = _unfinished(directory, spec)
  if unfinished:
    if not has_record and os.listdir(directory):
      return FOREIGN, f'{directory} was not made by a sweep'
    return PARTIAL, unfinished
  config_path = os.path.join(directory, rundir.CONFIG_FILE)
  try:
    if os.path.exists(config_path):
      config = metrics_io.read_json(config_path)
      diffs = config_mismatches(config, run.args, ignore=(spec.output_flag,))
      pretrained = _pretrain_sha(spec) if run.name != PRETRAIN else None
      if pretrained and config.get('init_from_sha256') != pretrained:
        diffs.append(f'built on another pretraining (init_from_sha256 '
                     f'{str(config.get("init_from_sha256"))[:12]}, the pretraining\'s model '
                     f'{pretrained[:12]})')
    elif has_record:
      recorded = metrics_io.read_json(os.path.join(directory, RUN_RECORD)).get('args')
      diffs = [] if recorded == run.args else [f'recorded flags {recorded} differ']
    else:
      diffs = ['no config.json or sweep_run.json to compare the flags with']
  except (OSError, ValueError, AttributeError) as e:
    diffs = [f'unreadable config: {e}']
  if diffs:
    return MISMATCH, '; '.join(diffs)
  return FINISHED, ''


@dataclasses.dataclass
class SweepResult:
  """What one invocation did; `status` maps run name to FINISHED, FAILED or NOT_RUN."""
  runs: List[Run]
  status: Dict[str, str]
  skipped: List[str]  # Finished before this invocation.
  ran: List[str]  # Started by this invocation.
  failed: Dict[str, str]  # name -> one-line reason.
  interrupted: bool = False
  dry_run: bool = False
  pretrain_status: Optional[str] = None  # FINISHED, FAILED or NOT_RUN with a pretraining.

  @property
  def exit_code(self) -> int:
    """The sweep program's exit code: 130 if interrupted, 1 if a run failed, else 0."""
    if self.interrupted:
      return 130
    return 1 if self.failed else 0


def dotted_get(payload: Any, dotted: str) -> Any:
  """payload['a']['b'] for 'a.b', or None where a key is missing (metrics can be nested)."""
  for part in dotted.split('.'):
    if not isinstance(payload, Mapping) or part not in payload:
      return None
    payload = payload[part]
  return payload


def read_final(run: Run, spec: SweepSpec) -> Optional[Dict[str, Any]]:
  """The run's done file: None if missing or unreadable, {} if it is not a JSON object."""
  path = os.path.join(run.directory, spec.done_file)
  try:
    payload = metrics_io.read_json(path)
  except (OSError, ValueError):
    return None
  return payload if isinstance(payload, dict) else {}
