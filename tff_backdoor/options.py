"""Config fields that carry their flag: name, help text, rule, choices and "unset" spelling.

TensorFlow-free. A reusable piece declares its parameters with `option` (e.g.
`aggregators.defense_config.DefenseConfig`), the run config (`tff_backdoor.config`) composes
them, and `tff_backdoor.cli` generates one absl flag per field from this metadata.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Rule:
  """A one-field constraint: `check(value)` is True when the value is allowed."""
  text: str
  check: Callable[[Any], bool]


POSITIVE = Rule('> 0', lambda v: math.isfinite(v) and v > 0)
NONNEGATIVE = Rule('>= 0', lambda v: v >= 0)
FRACTION = Rule('in [0, 1]', lambda v: 0 <= v <= 1)
# numpy's Dirichlet draws take ~1 s each below about 1e-3 and the split redraws up to 1,000
# times (a 2-hour hang at 1e-9); below it every client gets a single class anyway.
DIRICHLET_ALPHA = Rule('in [1e-3, 1e6]', lambda v: 1e-3 <= v <= 1e6)
FINITE_NONNEGATIVE = Rule('finite and >= 0', lambda v: math.isfinite(v) and v >= 0)
AT_LEAST_ONE = Rule('>= 1', lambda v: v >= 1)
UNIT_INTERVAL = Rule('in (0, 1]', lambda v: 0 < v <= 1)
OPEN_UNIT = Rule('in (0, 1)', lambda v: 0 < v < 1)
BELOW_HALF = Rule('in [0, 0.5)', lambda v: 0 <= v < 0.5)
BELOW_ONE = Rule('in [0, 1)', lambda v: 0 <= v < 1)
# Seeds reach the Keras initializers as seed * 1000 + k and TF's stateless RNGs as int64, so
# past about 9.2e15 they overflow (a TensorFlow traceback); 2**32 leaves a wide margin.
SEED_RANGE = Rule('in [0, 2**32)', lambda v: 0 <= v < 2**32)


def option(default: Any, help_text: str, *, rule: Optional[Rule] = None,
           choices: Sequence[str] = (), flag: Optional[str] = None, unset: Any = None,
           negative_unset: bool = False, is_flag: bool = True) -> Any:
  """A dataclass field with its flag's name, help text, rule and choices in its metadata.

  `unset` is the flat spelling (config.json, flags) of None for this field, e.g. 0 for
  "never"; `negative_unset` also reads any negative number as None, as older runs did.
  """
  return dataclasses.field(default=default, metadata=dict(
      help=help_text, rule=rule, choices=tuple(choices), flag=flag, unset=unset,
      negative_unset=negative_unset, is_flag=is_flag))


def flag_name(field: dataclasses.Field) -> str:
  """The field's flag: its metadata's `flag`, else the field's own name."""
  return field.metadata.get('flag') or field.name


def field_type(field: dataclasses.Field) -> type:
  """bool, int, float or str: the flag type of a field (from its annotation)."""
  text = str(field.type)
  for name, kind in (('bool', bool), ('int', int), ('float', float)):
    if text in (name, f'Optional[{name}]'):
      return kind
  return str


def check_field(field: dataclasses.Field, value: Any, prefix: str = '') -> None:
  """Raises ValueError, `{prefix}{flag} must be ..., got v`, if `value` breaks the field's rule."""
  if value is None:
    return
  name, kind = prefix + flag_name(field), field_type(field)
  if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                               or (kind is int and int(value) != value)):
    raise ValueError(f'{name} must be an integer, got {value!r}' if kind is int
                     else f'{name} must be a number, got {value!r}')
  if kind is float and not math.isfinite(value):  # inf as well as nan, whatever the rule
    raise ValueError(f'{name} must be a finite number, got {value}')
  choices, rule = field.metadata.get('choices'), field.metadata.get('rule')
  if choices and value not in choices:
    raise ValueError(f'unknown {name}={value!r}; choose one of {", ".join(choices)}')
  if rule is not None and not rule.check(value):  # NaN fails every rule
    raise ValueError(f'{name} must be {rule.text}, got {value}')


def check_fields(config: Any, prefix: str = '') -> None:
  """`check_field` on every field of a sub-config."""
  for field in dataclasses.fields(config):
    check_field(field, getattr(config, field.name), prefix)


class Fields:
  """Refuses to set an attribute that is not a field (e.g. an old flat name on a section)."""

  def __setattr__(self, name: str, value: Any) -> None:
    if name not in getattr(self, '__dataclass_fields__', {}):
      raise AttributeError(f'{type(self).__name__} has no field {name!r}')
    super().__setattr__(name, value)


def to_flat_value(field: dataclasses.Field, value: Any) -> Any:
  """`value` as flags and config.json spell it: None as the field's `unset` value, if any."""
  return field.metadata['unset'] if value is None and field.metadata['unset'] is not None \
      else value


def from_flat_value(field: dataclasses.Field, value: Any) -> Any:
  """None for a flat "unset" spelling (0, -1, '', or any negative where older runs said so)."""
  unset = field.metadata['unset']
  if unset is None or value is None or isinstance(value, bool):
    return value
  if value == unset or (field.metadata['negative_unset'] and isinstance(value, (int, float))
                        and value < 0):
    return None
  return value
