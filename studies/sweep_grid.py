"""A sweep's grid: its syntax, the configurations it expands to, their names.

Grid syntax (`experiments/sweep.py --grid`, one grid per flag occurrence):

  'defense=none,clip;seed=0,1'

is the cartesian product of its axes, `;` between axes and `,` between values: 4
configurations. A value holding `,` or `;` is written in double quotes
(`capture_rounds="0-9,20",all`); `""` is the empty string. Several grids are
swept as their union (duplicates run once), e.g. `--grid='defense=none;seed=0,1'
--grid='defense=clip;clip_norm=1,3;seed=0,1'` runs no useless `clip_norm` variants of
`none`. Values that parse to the same number (`3`, `3.0`) are one value: repeated in an
axis they are refused, across grids the first spelling runs. A grid file holds one axis (or several, `;`-separated) per line, `#` comments and
blank lines are ignored, and a line `---` starts the next grid.
"""
from __future__ import annotations

import hashlib
import itertools
import re
import shlex
from typing import Dict, List, Mapping, Optional, Sequence, Tuple


GRID_SEPARATOR = '---'


Axis = Tuple[str, Tuple[str, ...]]


Grid = List[Axis]


FLAG_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


_SAFE_VALUE = re.compile(r'^[A-Za-z0-9._+-]{1,40}$')


class GridError(ValueError):
  """A malformed grid or base flag (one-line message)."""


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


def same_value_key(value: str) -> object:
  """What a grid value means: numbers by their value ('3', '3.0' and '3e0' are one clip_norm;
  a flag parses them to the same number), anything else by its text."""
  try:
    number = float(value)
  except ValueError:
    return value
  return ('number', number) if number == number else value  # NaN: by its text


def parse_axis(text: str) -> Axis:
  """'defense=none,clip' -> ('defense', ('none', 'clip'))."""
  name, eq, values = text.partition('=')
  name = name.strip().lstrip('-')
  if not eq:
    raise GridError(f"grid axis {text.strip()!r} has no '=': write flag=value1,value2,...")
  if not FLAG_NAME.match(name):
    raise GridError(f'bad flag name {name!r} in grid axis {text.strip()!r}')
  parsed: List[str] = []
  for raw in _split_unquoted(values, ',', f'grid axis {name!r}'):
    if not raw.strip():
      raise GridError(f'grid axis {name!r} has an empty value (write "" for an empty string)')
    value = _unquote(raw, name)
    same = [v for v in parsed if same_value_key(v) == same_value_key(value)]
    if same:
      raise GridError(f'grid axis {name!r} repeats the value {same[0]!r}'
                      + (f' (as {value!r})' if same[0] != value else ''))
    parsed.append(value)
  return name, tuple(parsed)


def check_unique(grid: Grid, where: str = '') -> Grid:
  """`grid`, or GridError (prefixed by `where`) if a flag appears in two of its axes."""
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
  return check_unique(axes)


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
      check_unique(grids[-1])
    except GridError as e:
      raise GridError(f'{source}:{line_num}: {e}') from None
  grids = [g for g in grids if g]
  if not grids:
    raise GridError(f'{source} has no grid axes (one flag=value1,value2 per line)')
  return grids


def read_grid_file(path: str) -> List[Grid]:
  """The grids of --grid_file (`parse_grid_file_text`); GridError if it cannot be read."""
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
      key = frozenset((k, same_value_key(v)) for k, v in config.items())
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
    if not token.startswith('-') or not FLAG_NAME.match(name):
      raise GridError(f'unexpected {token!r} in the base flags: write each flag as --name=value')
  return tokens


def flag_items(args: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
  """['--a=1', '--b'] -> [('a', '1'), ('b', None)]."""
  items = []
  for arg in args:
    name, eq, value = arg.lstrip('-').partition('=')
    items.append((name, value if eq else None))
  return items


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
  """A run's flags without the seed: runs with the same label are averaged together."""
  return ','.join(f'{k}={v}' for k, v in flags.items() if k != seed_flag) or '(all)'
