"""The sweep engine of every study: configurations, one directory each, finished ones skipped.

A program's grid runs one process per configuration (`run_sweep`, below); a study that trains
through the library runs its configurations in this process (`run_in_process`). Both record a
run as a `Run` and report a `SweepResult`.

Grid syntax (`experiments/sweep.py --grid`, one grid per flag occurrence):

  'defense=none,clip;seed=0,1'

is the cartesian product of its axes, `;` between axes and `,` between values: 4
configurations. A value holding `,` or `;` is written in double quotes
(`capture_rounds="0-9,20",all`); `""` is the empty string. Several grids are
swept as their union (duplicates run once), e.g. `--grid='defense=none;seed=0,1'
--grid='defense=clip;clip_norm=1,3;seed=0,1'` runs no useless `clip_norm` variants of
`none`. A grid file holds one axis (or several, `;`-separated) per line, `#` comments and
blank lines are ignored, and a line `---` starts the next grid.

Each configuration runs as `python -m PROGRAM BASE_FLAGS GRID_FLAGS --output_dir=RUN_DIR`
(grid flags come last, so they override a base flag of the same name). RUN_DIR is
`OUTPUT_DIR/<flag>=<value>,<flag>=<value>` in grid order, e.g. `runs/s/defense=clip,seed=1`
(a value with characters other than letters, digits and `._+-` is shortened and gets a hash
suffix). A run is finished when its `final.json` exists; a finished run is skipped when its
`config.json` matches the requested flags, and anything else in RUN_DIR (a crash, an
interrupted run) is deleted and run again from scratch. So an interrupted sweep, re-run with
the same command, only runs what is missing.

A shared pretraining (`--pretrain_flags`, `SweepSpec.pretrain_flags`): the sweep first runs
`python -m PROGRAM BASE_FLAGS PRETRAIN_FLAGS --output_dir=OUTPUT_DIR/pretrain` (pretrain flags
override base flags; grid flags do not apply), once, with the same skip/redo rules, and every
configuration gets `--init_from=OUTPUT_DIR/pretrain` after the base flags: N attack
configurations pay for one clean pretraining instead of N. A finished configuration is only
reused if its config.json's `init_from_sha256` is the pretraining's final `model_sha256`
(otherwise it was built on another pretraining: a mismatch). If the pretraining fails, no
configuration runs and the sweep exits 1.

Outputs in OUTPUT_DIR: `sweep.json` (the plan and each run's status), `runs.csv` (one row per
configuration), `results.csv` and `results.md` (one row per configuration group = the grid
flags except the seed flag, final metrics as mean and sample std over seeds, `n_seeds`).
Each RUN_DIR also gets `run.log` (the program's stdout and stderr) and `sweep_run.json`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from absl import flags as absl_flags
import numpy as np

from tff_backdoor import metrics_io
from tff_backdoor import parallelism

DEFAULT_PROGRAM = 'experiments.emnist_backdoor'
DEFAULT_METRICS = ('test_accuracy', 'backdoor_accuracy', 'flain.after.test_accuracy',
                   'flain.after.backdoor_accuracy')
GRID_SEPARATOR = '---'
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

Axis = Tuple[str, Tuple[str, ...]]
Grid = List[Axis]

_FLAG_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
_SAFE_VALUE = re.compile(r'^[A-Za-z0-9._+-]{1,40}$')


class GridError(ValueError):
  """A malformed grid or base flag (one-line message)."""


# ----------------------------------------------------------------------------- grid syntax


def _split_unquoted(text: str, sep: str, what: str) -> List[str]:
  """Splits `text` at `sep` outside double quotes."""
  parts, buf, quoted = [], [], False
  for ch in text:
    if ch == '"':
      quoted = not quoted
    if ch == sep and not quoted:
      parts.append(''.join(buf))
      buf = []
    else:
      buf.append(ch)
  if quoted:
    raise GridError(f'unbalanced double quote in {what}')
  parts.append(''.join(buf))
  return parts


def _unquote(value: str, axis: str) -> str:
  value = value.strip()
  if len(value) >= 2 and value[0] == value[-1] == '"' and '"' not in value[1:-1]:
    return value[1:-1]
  if '"' in value:
    raise GridError(f'grid axis {axis!r}: misplaced double quote in {value!r}; '
                    'quote the whole value')
  return value


def parse_axis(text: str) -> Axis:
  """'defense=none,clip' -> ('defense', ('none', 'clip'))."""
  name, eq, values = text.partition('=')
  name = name.strip().lstrip('-')
  if not eq:
    raise GridError(f"grid axis {text.strip()!r} has no '=': write flag=value1,value2,...")
  if not _FLAG_NAME.match(name):
    raise GridError(f'bad flag name {name!r} in grid axis {text.strip()!r}')
  parsed: List[str] = []
  for raw in _split_unquoted(values, ',', f'grid axis {name!r}'):
    if not raw.strip():
      raise GridError(f'grid axis {name!r} has an empty value (write "" for an empty string)')
    value = _unquote(raw, name)
    if value in parsed:
      raise GridError(f'grid axis {name!r} repeats the value {value!r}')
    parsed.append(value)
  return name, tuple(parsed)


def _check_unique(grid: Grid, where: str = '') -> Grid:
  seen = set()
  for name, _ in grid:
    if name in seen:
      raise GridError(f'{where}flag {name!r} appears twice in one grid')
    seen.add(name)
  return grid


def parse_grid(spec: str) -> Grid:
  """'defense=none,clip;seed=0,1' -> [('defense', ('none', 'clip')), ('seed', ('0', '1'))]."""
  axes = [parse_axis(part) for part in _split_unquoted(spec, ';', 'the grid') if part.strip()]
  if not axes:
    raise GridError("empty grid: write --grid='flag=value1,value2;flag2=...'")
  return _check_unique(axes)


def parse_grid_file_text(text: str, source: str = 'grid file') -> List[Grid]:
  """Grid file: one axis per line (or `;`-separated axes), `#` comments, `---` between grids."""
  grids: List[Grid] = [[]]
  for line_num, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    if line == GRID_SEPARATOR:
      grids.append([])
      continue
    try:
      grids[-1].extend(parse_grid(line))
      _check_unique(grids[-1])
    except GridError as e:
      raise GridError(f'{source}:{line_num}: {e}') from None
  grids = [g for g in grids if g]
  if not grids:
    raise GridError(f'{source} has no grid axes (one flag=value1,value2 per line)')
  return grids


def read_grid_file(path: str) -> List[Grid]:
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise GridError(f'cannot read --grid_file={path}: {e.strerror or e}') from None
  return parse_grid_file_text(text, source=path)


def expand(grids: Sequence[Grid]) -> List[Dict[str, str]]:
  """The union of the grids' cartesian products, in order, each configuration once."""
  configs: List[Dict[str, str]] = []
  seen = set()
  for grid in grids:
    names = [name for name, _ in grid]
    for values in itertools.product(*[vals for _, vals in grid]):
      config = dict(zip(names, values))
      key = frozenset(config.items())
      if key not in seen:
        seen.add(key)
        configs.append(config)
  return configs


def parse_base_flags(text: str, extra: Sequence[str] = ()) -> List[str]:
  """Splits --base_flags like a shell and checks every token is a `--flag[=value]`."""
  try:
    tokens = shlex.split(text or '')
  except ValueError as e:
    raise GridError(f'cannot split --base_flags: {e}') from None
  tokens += list(extra)
  for token in tokens:
    name = token.lstrip('-').partition('=')[0]
    if not token.startswith('-') or not _FLAG_NAME.match(name):
      raise GridError(f'unexpected {token!r} in the base flags: write each flag as --name=value')
  return tokens


def flag_items(args: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
  """['--a=1', '--b'] -> [('a', '1'), ('b', None)]."""
  items = []
  for arg in args:
    name, eq, value = arg.lstrip('-').partition('=')
    items.append((name, value if eq else None))
  return items


# ----------------------------------------------------------------------------- naming


def _slug_value(value: str) -> str:
  if _SAFE_VALUE.match(value) and value not in ('.', '..'):
    return value
  digest = hashlib.sha1(value.encode()).hexdigest()[:6]
  return re.sub(r'[^A-Za-z0-9._+-]', '_', value)[:24] + '~' + digest


def run_name(flags: Mapping[str, str]) -> str:
  """Deterministic directory name: 'defense=clip,seed=1' (values made filename-safe)."""
  name = ','.join(f'{k}={_slug_value(v)}' for k, v in flags.items()) or 'default'
  if len(name) > 200:
    name = name[:180] + '~' + hashlib.sha1(name.encode()).hexdigest()[:8]
  return name


def group_label(flags: Mapping[str, str], seed_flag: str) -> str:
  return ','.join(f'{k}={v}' for k, v in flags.items() if k != seed_flag) or '(all)'


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass
class SweepSpec:
  """What to sweep; `grids` are unions of cartesian products (see module docstring)."""
  output_dir: str
  grids: List[Grid]
  base_flags: List[str] = dataclasses.field(default_factory=list)
  program: str = DEFAULT_PROGRAM
  seed_flag: str = 'seed'
  output_flag: str = 'output_dir'
  done_file: str = metrics_io.FINAL_FILE
  metrics: Tuple[str, ...] = DEFAULT_METRICS
  python: str = sys.executable
  pretrain_flags: Optional[List[str]] = None  # None: no shared pretraining run.

  def validate(self) -> 'SweepSpec':
    if not self.output_dir:
      raise GridError('--output_dir is required')
    if not self.grids or not any(self.grids):
      raise GridError("empty grid: give --grid='flag=value1,value2;...' or --grid_file")
    for grid in self.grids:
      _check_unique(grid)
      if any(name == self.output_flag for name, _ in grid):
        raise GridError(f'--{self.output_flag} is set by the sweep (one directory per '
                        'configuration); remove it from the grid')
    for name, _ in flag_items(self.base_flags):
      if name == self.output_flag:
        raise GridError(f'--{self.output_flag} is set by the sweep (one directory per '
                        'configuration); remove it from --base_flags')
    for name in (self.seed_flag, self.output_flag):
      if not _FLAG_NAME.match(name):
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
  if not module or not all(_FLAG_NAME.match(p) for p in module.split('.')):
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


# ----------------------------------------------------------------------------- run status


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
  if not os.path.exists(os.path.join(directory, spec.done_file)):
    if not has_record and os.listdir(directory):
      return FOREIGN, f'{directory} was not made by a sweep'
    return PARTIAL, 'unfinished'
  config_path = os.path.join(directory, metrics_io.CONFIG_FILE)
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


# ----------------------------------------------------------------------------- execution


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
    if self.interrupted:
      return 130
    return 1 if self.failed else 0


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt(f'signal {signum}')


class _Signals:
  """Turns SIGTERM into KeyboardInterrupt while a sweep runs (main thread only)."""

  def __enter__(self):
    self._old = None
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, _raise_interrupt)
    return self

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    return False


def _child_preexec() -> Callable[[], None]:
  """The children's preexec_fn: SIGINT stops them cleanly, also when the sweep dies.

  A sweep started in the background of a script inherits SIGINT ignored; the child gets the
  default back so Python turns SIGINT into KeyboardInterrupt (and stops its TFF workers at
  exit). On Linux, PR_SET_PDEATHSIG also sends SIGINT to the child if the sweep is killed.
  """
  prctl = None
  if sys.platform.startswith('linux'):
    try:
      import ctypes  # pylint: disable=g-import-not-at-top
      prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
      prctl = None
  parent = os.getpid()

  def preexec():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if prctl is not None:
      prctl(1, int(signal.SIGINT), 0, 0, 0)  # PR_SET_PDEATHSIG
      if os.getppid() != parent:  # The sweep died before prctl took effect.
        os.kill(os.getpid(), signal.SIGINT)

  return preexec


def _exited(proc: subprocess.Popen) -> bool:
  """True once `proc` exited, without reaping it (its process group id stays ours)."""
  if proc.returncode is not None:
    return True
  try:
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
  except (AttributeError, ChildProcessError):
    return proc.poll() is not None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  """Signals the process group of a child started with start_new_session (not yet reaped)."""
  if proc.returncode is not None:
    return
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError, AttributeError):
    pass


def _reap(proc: subprocess.Popen) -> int:
  """Kills what the exited child left in its process group (TFF workers), then reaps it."""
  _signal_group(proc, signal.SIGKILL)
  return proc.wait()


def _stop_all(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
  for proc in procs:
    _signal_group(proc, signal.SIGINT)
  deadline = time.time() + grace_s
  while time.time() < deadline and not all(_exited(p) for p in procs):
    time.sleep(0.1)
  for proc in procs:
    _reap(proc)


def _last_error(log_path: str) -> str:
  try:
    with open(log_path, errors='replace') as f:
      lines = [l.strip() for l in f.readlines()[-200:] if l.strip()]
  except OSError:
    return ''
  for line in reversed(lines):
    if line.startswith('error:') or 'Error' in line.split(':')[0]:
      return line[:300]
  return lines[-1][:300] if lines else ''


def _get(payload: Any, dotted: str) -> Any:
  for part in dotted.split('.'):
    if not isinstance(payload, Mapping) or part not in payload:
      return None
    payload = payload[part]
  return payload


def read_final(run: Run, spec: SweepSpec) -> Optional[Dict[str, Any]]:
  path = os.path.join(run.directory, spec.done_file)
  try:
    payload = metrics_io.read_json(path)
  except (OSError, ValueError):
    return None
  return payload if isinstance(payload, dict) else {}


def _summary_line(final: Optional[Mapping[str, Any]], metrics: Sequence[str]) -> str:
  parts = []
  for m in metrics:
    value = metrics_io.number(_get(final or {}, m))
    if value is not None:
      parts.append(f'{m}={value:.4f}')
  return ' '.join(parts)


def _start(run: Run, spec: SweepSpec, env: Dict[str, str],
           preexec: Callable[[], None]) -> subprocess.Popen:
  if os.path.isdir(run.directory):
    shutil.rmtree(run.directory)
  os.makedirs(run.directory)
  metrics_io.write_json(os.path.join(run.directory, RUN_RECORD), {
      'name': run.name, 'flags': run.flags, 'program': spec.program, 'args': run.args,
      'command': run.command, 'cwd': os.getcwd(), 'started': time.time()})
  log = open(os.path.join(run.directory, LOG_FILE), 'w')
  try:
    log.write(f'# {shlex.join(run.command)}\n')
    log.flush()
    return subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                            preexec_fn=preexec)
  finally:
    log.close()


def _child_env(root: str, parallel: int = 1) -> Dict[str, str]:
  """The children's environment: the package on the path, and TF threads for `parallel`
  runs sharing the cores (`parallelism.thread_env`; the user's own settings win)."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([root] + [p for p in [env.get('PYTHONPATH')] if p])
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env.update(parallelism.thread_env(parallel))
  return env


def _lock(output_dir: str):
  """Holds an exclusive lock on OUTPUT_DIR/.sweep.lock, or raises if another sweep has it."""
  import fcntl  # pylint: disable=g-import-not-at-top
  handle = open(os.path.join(output_dir, LOCK_FILE), 'w')
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.close()
    raise ValueError(f'another sweep is running in {output_dir}') from None
  return handle


def run_sweep(spec: SweepSpec, parallel: int = 1, dry_run: bool = False,
              replace_mismatched: bool = False, grace_s: float = 20.0,
              out: Callable[[str], None] = lambda s: print(s, flush=True),
              on_finish: Optional[Callable[[Run, str], None]] = None) -> SweepResult:
  """Runs every unfinished configuration, `parallel` at a time, and writes the tables.

  Raises ValueError (before running anything) for a bad spec, an unknown program, or run
  directories holding results of other flags (unless `replace_mismatched`). Ctrl-C/SIGTERM
  stops the running children (their directories are redone next time) and returns a result
  with `interrupted=True`. `on_finish(run, state)` is called after each run (tests use it).
  With a pretraining (`spec.pretrain_flags`), it runs first, alone; if it does not finish,
  no configuration runs.
  """
  if parallel < 1:
    raise ValueError(f'--parallel must be >= 1, got {parallel}')
  runs = plan(spec)
  pretrain = pretrain_run(spec)
  root = resolve_program(spec.program)
  states = {run.name: run_status(run, spec) for run in runs + ([pretrain] if pretrain else [])}
  if not dry_run:
    _check_reusable(spec, [pretrain] if pretrain else [], states, replace_mismatched)
    _check_reusable(spec, runs, states, replace_mismatched)
  skipped = [r.name for r in runs if states[r.name][0] == FINISHED]
  todo = [r for r in runs if states[r.name][0] != FINISHED]
  out(f'sweep {spec.output_dir}: {len(runs)} configurations of {spec.program}, '
      f'{len(skipped)} finished (skipped), {len(todo)} to run'
      + (f', {parallel} at a time' if parallel > 1 and not dry_run else '')
      + (f'; pretraining {PRETRAIN}/ {states[PRETRAIN][0]}' if pretrain else ''))
  if dry_run:
    for run in ([pretrain] if pretrain else []) + runs:
      state, detail = states[run.name]
      label = {FINISHED: 'skip', NEW: 'run', PARTIAL: 'rerun'}.get(state, state)
      out(f'[{label}] {run.name}' + (f' ({detail})' if detail and state != PARTIAL else ''))
      out(f'  {shlex.join(run.command)}')
    return SweepResult(runs, {r.name: states[r.name][0] for r in runs}, skipped, [], {},
                       dry_run=True,
                       pretrain_status=states[PRETRAIN][0] if pretrain else None)

  os.makedirs(spec.output_dir, exist_ok=True)
  lock = _lock(spec.output_dir)
  try:
    status = {r.name: (FINISHED if r.name in skipped else NOT_RUN) for r in runs}
    result = SweepResult(runs, status, skipped, [], {})
    if pretrain is not None:
      result.pretrain_status = FINISHED if states[PRETRAIN][0] == FINISHED else NOT_RUN
    write_outputs(spec, result)
    try:
      if pretrain is not None and result.pretrain_status != FINISHED:
        todo = _run_pretraining(spec, pretrain, runs, result, replace_mismatched,
                                _child_env(root), grace_s, out, on_finish)
      _execute(spec, todo, result, parallel, _child_env(root, parallel), grace_s, out,
               on_finish)
    finally:
      for run in runs:  # A child may finish while the sweep is being interrupted.
        if result.status[run.name] == NOT_RUN and run_status(run, spec)[0] == FINISHED:
          result.status[run.name] = FINISHED
      write_outputs(spec, result)
  finally:
    lock.close()
  _report(spec, result, out)
  return result


def _check_reusable(spec: SweepSpec, runs: Sequence[Run], states: Mapping[str, Tuple[str, str]],
                    replace_mismatched: bool) -> None:
  """Raises ValueError if a run directory holds another program's files or other results."""
  blocked = [(r, states[r.name]) for r in runs if states[r.name][0] == FOREIGN
             or (states[r.name][0] == MISMATCH and not replace_mismatched)]
  if blocked:
    run, (state, detail) = blocked[0]
    hint = ('move it away' if state == FOREIGN else
            'use another --output_dir or pass --replace_mismatched to run it again')
    raise ValueError(f'{len(blocked)} run director{"y" if len(blocked) == 1 else "ies"} in '
                     f'{spec.output_dir} cannot be reused (e.g. {run.name}: {detail}); {hint}')


def _run_pretraining(spec: SweepSpec, pretrain: Run, runs: Sequence[Run], result: SweepResult,
                     replace_mismatched: bool, env: Dict[str, str], grace_s: float,
                     out: Callable[[str], None],
                     on_finish: Optional[Callable[[Run, str], None]]) -> List[Run]:
  """Runs the pretraining; returns the configurations to run after it (none if it failed).

  Configurations that were finished are checked again against the new pretraining's model.
  """
  own = SweepResult([pretrain], {PRETRAIN: NOT_RUN}, [], [], {})
  out(f'[pretraining] start {PRETRAIN}')
  _execute(spec, [pretrain], own, 1, env, grace_s, out, on_finish, write_tables=False)
  result.pretrain_status, result.interrupted = own.status[PRETRAIN], own.interrupted
  result.failed.update(own.failed)
  if result.pretrain_status != FINISHED:
    result.skipped.clear()  # their pretraining is gone: nothing is known to be finished
    for run in runs:
      result.status[run.name] = NOT_RUN
    return []
  states = {run.name: run_status(run, spec) for run in runs}
  _check_reusable(spec, runs, states, replace_mismatched)
  result.skipped[:] = [r.name for r in runs if states[r.name][0] == FINISHED]
  for run in runs:
    result.status[run.name] = FINISHED if run.name in result.skipped else NOT_RUN
  return [r for r in runs if states[r.name][0] != FINISHED]


def _execute(spec: SweepSpec, todo: Sequence[Run], result: SweepResult, parallel: int,
             env: Dict[str, str], grace_s: float, out: Callable[[str], None],
             on_finish: Optional[Callable[[Run, str], None]],
             write_tables: bool = True) -> None:
  pending = list(todo)
  running: Dict[str, Tuple[Run, subprocess.Popen, float]] = {}
  preexec = _child_preexec()
  total, started = len(todo), 0
  with _Signals():
    try:
      while pending or running:
        while pending and len(running) < parallel:
          run = pending.pop(0)
          started += 1
          out(f'[{started}/{total}] start {run.name}')
          result.ran.append(run.name)
          running[run.name] = (run, _start(run, spec, env, preexec), time.time())
        done = [name for name, (_, proc, _) in running.items() if _exited(proc)]
        for name in done:
          run, proc, t0 = running.pop(name)
          code = _reap(proc)
          final = read_final(run, spec)
          seconds = time.time() - t0
          if code == 0 and final is not None:
            result.status[name] = FINISHED
            out(f'finished {name} in {seconds:.0f}s: {_summary_line(final, spec.metrics)}')
          else:
            log = os.path.join(run.directory, LOG_FILE)
            why = (f'exit code {code}' if code != 0 else
                   f'exited 0 without writing {spec.done_file}')
            last = _last_error(log)
            result.status[name] = FAILED
            result.failed[name] = f'{why}' + (f': {last}' if last else '') + f' (log: {log})'
            out(f'FAILED {name} after {seconds:.0f}s: {result.failed[name]}')
          if write_tables:
            write_outputs(spec, result)
          if on_finish is not None:
            on_finish(run, result.status[name])
        if not done:
          time.sleep(0.2)
    except KeyboardInterrupt:
      result.interrupted = True
      out(f'interrupted: stopping {len(running)} running configuration(s)')
    finally:  # Also on other errors: never leave children behind.
      old = None
      if running and threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Let the cleanup finish.
      try:
        _stop_all([proc for _, proc, _ in running.values()], grace_s)
      finally:
        if old is not None:
          signal.signal(signal.SIGINT, old)


def _report(spec: SweepSpec, result: SweepResult, out: Callable[[str], None]) -> None:
  finished = sum(1 for s in result.status.values() if s == FINISHED)
  out(f'{finished}/{len(result.runs)} configurations finished '
      f'({len(result.skipped)} skipped as already finished, {len(result.ran)} started now)'
      + (f'; pretraining {result.pretrain_status}' if result.pretrain_status else ''))
  out('results: ' + ', '.join(os.path.join(spec.output_dir, f)
                              for f in (RESULTS_MD, RESULTS_CSV, RUNS_CSV)))
  if result.interrupted:
    out('interrupted: run the same command again to finish the remaining configurations')
  if result.failed:
    out(f'{len(result.failed)} configuration(s) failed:')
    for name, why in result.failed.items():
      out(f'  {name}: {why}')


def in_process_run(name: str, flags: Mapping[str, Any], directory: str,
                   seed_flag: str = 'seed') -> Run:
  """The record of a configuration run by a study in this process (no command line)."""
  flags = {k: str(v) for k, v in flags.items()}
  return Run(name, flags, group_label(flags, seed_flag), directory, [], [])


def run_in_process(runs: Sequence[Run], execute: Callable[[Run], Any],
                   is_finished: Callable[[Run], bool], run_missing: bool = True,
                   log: Callable[[str], None] = print) -> SweepResult:
  """Runs `execute(run)` in this process for every run that `is_finished` says is not done.

  The in-process counterpart of `run_sweep` for studies that train through the library (one
  TensorFlow import for all runs): the same skip-finished rule and `SweepResult`. With
  run_missing=False nothing runs and the unfinished runs stay NOT_RUN. An error of `execute`
  or `is_finished` (e.g. a finished run made with other settings) propagates.
  """
  result = SweepResult(list(runs), {r.name: NOT_RUN for r in runs}, [], [], {})
  for i, run in enumerate(runs, start=1):
    prefix = f'[{i}/{len(runs)}] {run.name}:'
    if is_finished(run):
      log(f'{prefix} done already, skipped')
      result.skipped.append(run.name)
    elif not run_missing:
      log(f'{prefix} not run, left out of the summary')
      continue
    else:
      log(f'{prefix} running')
      result.ran.append(run.name)
      execute(run)
    result.status[run.name] = FINISHED
  return result


# ----------------------------------------------------------------------------- tables


def _column(metric: str) -> str:
  return metric.replace('.', '_')


def run_records(spec: SweepSpec, result: SweepResult) -> List[Dict[str, Any]]:
  """One dict per configuration: name, grid flags, status, metrics (finished runs only)."""
  records = []
  for run in result.runs:
    record: Dict[str, Any] = {'name': run.name, **run.flags,
                              'status': result.status.get(run.name, NOT_RUN)}
    final = read_final(run, spec) if record['status'] == FINISHED else None
    for metric in spec.metrics:
      record[_column(metric)] = metrics_io.number(_get(final or {}, metric))
    records.append(record)
  return records


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
  """(mean, sample std) of the values; None for what the count does not allow."""
  if not values:
    return None, None
  mean = float(np.mean(values))
  return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def group_rows(spec: SweepSpec, result: SweepResult
               ) -> Tuple[List[str], List[str], List[Dict[str, Any]]]:
  """(flag columns, metrics present, rows): one row per group, mean/std over finished seeds."""
  records = run_records(spec, result)
  flag_columns: List[str] = []
  for run in result.runs:
    flag_columns.extend(k for k in run.flags if k != spec.seed_flag and k not in flag_columns)
  metrics = [m for m in spec.metrics
             if any(r[_column(m)] is not None for r in records)]
  groups: Dict[str, List[Tuple[Run, Dict[str, Any]]]] = {}
  for run, record in zip(result.runs, records):
    groups.setdefault(run.group, []).append((run, record))
  rows = []
  for members in groups.values():
    flags = members[0][0].flags
    row: Dict[str, Any] = {k: flags.get(k, '') for k in flag_columns}
    finished = [rec for _, rec in members if rec['status'] == FINISHED]
    row['n_seeds'] = len(finished)
    for metric in metrics:
      values = [rec[_column(metric)] for rec in finished if rec[_column(metric)] is not None]
      row[f'{_column(metric)}_mean'], row[f'{_column(metric)}_std'] = mean_std(values)
    rows.append(row)
  return flag_columns, metrics, rows


def markdown_table(spec: SweepSpec, flag_columns: Sequence[str], metrics: Sequence[str],
                   rows: Sequence[Mapping[str, Any]], total_runs: int) -> str:
  header = [*flag_columns, 'n_seeds', *metrics]
  lines = [f'# Sweep results: {spec.program}', '',
           f'Mean ± sample standard deviation over seeds (--{spec.seed_flag}) of the final '
           f'metrics in {spec.done_file}; '
           f'{sum(r["n_seeds"] for r in rows)} of {total_runs} runs finished.', '',
           '| ' + ' | '.join(header) + ' |',
           '| ' + ' | '.join(['---'] * len(flag_columns) + ['---:'] * (1 + len(metrics))) + ' |']
  for row in rows:
    cells = [str(row[k]) for k in flag_columns] + [str(row['n_seeds'])]
    for metric in metrics:
      mean, std = row[f'{_column(metric)}_mean'], row[f'{_column(metric)}_std']
      cells.append('' if mean is None else
                   f'{mean:.4f}' + ('' if std is None else f' ± {std:.4f}'))
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_outputs(spec: SweepSpec, result: SweepResult) -> None:
  """Writes sweep.json, runs.csv, results.csv and results.md in the sweep directory."""
  out = spec.output_dir
  plan_record = {
      'program': spec.program, 'base_flags': spec.base_flags, 'seed_flag': spec.seed_flag,
      'output_flag': spec.output_flag, 'done_file': spec.done_file,
      'grids': [[[name, list(values)] for name, values in grid] for grid in spec.grids],
      'runs': [{'name': r.name, 'flags': r.flags, 'group': r.group,
                'status': result.status.get(r.name, NOT_RUN)} for r in result.runs]}
  if spec.pretrain_flags is not None:
    plan_record['pretrain'] = {'name': PRETRAIN, 'flags': spec.pretrain_flags,
                               'status': result.pretrain_status or NOT_RUN}
  metrics_io.write_json(os.path.join(out, SWEEP_FILE), plan_record)
  records = run_records(spec, result)
  flag_names: List[str] = []
  for run in result.runs:
    flag_names.extend(k for k in run.flags if k not in flag_names)
  metrics_io.write_csv(os.path.join(out, RUNS_CSV), records,
                       ['name', *flag_names, 'status', *[_column(m) for m in spec.metrics]])
  flag_columns, metrics, rows = group_rows(spec, result)
  stats = [f'{_column(m)}_{s}' for m in metrics for s in ('mean', 'std')]
  metrics_io.write_csv(os.path.join(out, RESULTS_CSV), rows, [*flag_columns, 'n_seeds', *stats])
  with open(os.path.join(out, RESULTS_MD), 'w') as f:
    f.write(markdown_table(spec, flag_columns, metrics, rows, len(result.runs)))


def load_sweep(directory: str) -> Dict[str, Any]:
  """The sweep.json of a sweep directory (for plots)."""
  return metrics_io.read_json(os.path.join(directory, SWEEP_FILE))


def iter_run_dirs(directory: str) -> Iterator[Tuple[str, str, Dict[str, str]]]:
  """(group label, run directory, flags) of each run listed in a sweep directory."""
  for run in load_sweep(directory)['runs']:
    yield run['group'], os.path.join(directory, run['name']), run['flags']


def finished_run_dirs(directory: str, where: Mapping[str, str]) -> List[str]:
  """The finished runs (final.json written) of a sweep whose grid flags match `where`."""
  return [run_dir for _, run_dir, flags in iter_run_dirs(directory)
          if all(str(flags.get(k)) == str(v) for k, v in where.items())
          and os.path.exists(os.path.join(run_dir, metrics_io.FINAL_FILE))]
