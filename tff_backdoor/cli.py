"""Glue shared by the absl programs: flags -> config, and one-line errors instead of tracebacks."""
from __future__ import annotations

import dataclasses
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, List, NoReturn, Sequence

from absl import flags
from absl import logging

if TYPE_CHECKING:
  from tff_backdoor import simulation  # pylint: disable=g-bad-import-order

# simulation/registry import TensorFlow; they load lazily so that TF-free programs
# (experiments.sweep, experiments.plot) start fast and print clean one-line errors.


def _simulation():
  from tff_backdoor import simulation  # pylint: disable=g-import-not-at-top
  return simulation


def _registry():
  from tff_backdoor.aggregators import registry  # pylint: disable=g-import-not-at-top
  return registry


def fail(message: str, code: int = 2) -> NoReturn:
  """Prints `error: message` on one line to stderr and exits with `code`."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(code)


def exit_on_sigterm() -> None:
  """Turns SIGTERM into a normal exit, so atexit hooks (TFF worker cleanup) still run."""
  def handler(signum, frame):
    del frame
    sys.exit(128 + signum)
  signal.signal(signal.SIGTERM, handler)


def one_line_flags_parser(argv: List[str]) -> List[str]:
  """absl `flags_parser` that reports a bad flag in one line (absl's default prints usage).

  Also lowers absl logging to WARNING (TFF logs INFO lines for every model it wraps);
  `--verbosity=0` brings them back.
  """
  logging.set_verbosity(logging.WARNING)
  exit_on_sigterm()
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def defense_flag_fields() -> List[dataclasses.Field]:
  """DefenseConfig fields exposed as flags (all but `name`, which is --defense)."""
  return [f for f in dataclasses.fields(_registry().DefenseConfig) if f.name != 'name']


def define_defense_flags() -> None:
  """Declares --defense and one flag per DefenseConfig parameter, typed like its default."""
  defaults = _registry().DefenseConfig()
  flags.DEFINE_enum('defense', defaults.name, _registry().DEFENSES,
                    'Defense applied while aggregating client updates.')
  for field in defense_flag_fields():
    default = getattr(defaults, field.name)
    help_text = f'Defense parameter (see tff_backdoor.aggregators.DefenseConfig.{field.name}).'
    if isinstance(default, bool):
      flags.DEFINE_bool(field.name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(field.name, default, help_text)
    else:
      flags.DEFINE_float(field.name, default, help_text)


def config_from_flags(flag_values: flags.FlagValues) -> 'simulation.ExperimentConfig':
  """Builds an ExperimentConfig from parsed flags of the same names."""
  return _config_from_values(flag_values.flag_values_dict())


def _config_from_values(values: dict) -> 'simulation.ExperimentConfig':
  simulation = _simulation()
  defense = _registry().DefenseConfig(
      name=values['defense'],
      **{f.name: values[f.name] for f in defense_flag_fields() if f.name in values})
  kwargs = {f.name: values[f.name] for f in dataclasses.fields(simulation.ExperimentConfig)
            if f.name in values and f.name != 'defense'}
  return simulation.ExperimentConfig(defense=defense, **kwargs)


def define_flain_flags(defaults: Any, modes: Sequence[str],
                       flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The --flain_* option flags (ExperimentConfig's flain_* fields), shared by the programs."""
  flags.DEFINE_integer('flain_aux_per_class', defaults.flain_aux_per_class,
                       'Clean auxiliary images per class, from the server-side held-out split.',
                       flag_values=flag_values)
  flags.DEFINE_string('flain_layer', defaults.flain_layer, "Dense layer to defend ('' = first "
                      "Dense layer, 'all_dense' = every one).", flag_values=flag_values)
  flags.DEFINE_enum('flain_mode', defaults.flain_mode, list(modes),
                    "quantile (scale-free) or absolute (the authors' activation threshold).",
                    flag_values=flag_values)
  flags.DEFINE_float('flain_k0', defaults.flain_k0, 'First threshold (<0: the mode default).',
                     flag_values=flag_values)
  flags.DEFINE_float('flain_step', defaults.flain_step,
                     'Threshold step (<0: the mode default).', flag_values=flag_values)
  flags.DEFINE_float('flain_tolerance', defaults.flain_tolerance,
                     'Auxiliary accuracy drop that stops raising the threshold.',
                     flag_values=flag_values)


def run_or_fail(fn: Callable[[], Any]) -> Any:
  """Runs fn; a ValueError/OSError (bad input, missing files) becomes one line and exit 1."""
  try:
    return fn()
  except (ValueError, OSError) as e:
    fail(str(e), code=1)


def register_config_validator(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers one absl validator that checks the whole config with ExperimentConfig.validate.

  Library users get the same checks from `validate()`; flag users get them at parse time.
  """
  names = [f.name for f in dataclasses.fields(_simulation().ExperimentConfig)
           if f.name in flag_values and f.name != 'defense']
  names += ['defense'] + [f.name for f in defense_flag_fields() if f.name in flag_values]

  def check(values):
    try:
      _config_from_values(values).validate()
    except ValueError as e:
      raise flags.ValidationError(str(e))
    return True

  flags.register_multi_flags_validator(names, check, flag_values=flag_values)
