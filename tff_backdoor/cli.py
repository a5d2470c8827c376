"""Glue shared by the absl programs: flags generated from the config, one-line errors.

TensorFlow-free, so a program checks its flags (and fails in one line, exit 2) before it
imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import sys
import tempfile
from typing import Any, Callable, List, NoReturn, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from tff_backdoor import config as config_lib  # TensorFlow-free
from tff_backdoor import options
from tff_backdoor.aggregators import defenses  # TensorFlow-free


def fail(message: str, code: int = 2) -> NoReturn:
  """Prints `error: message` on one line to stderr and exits with `code`."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(code)


def check_output_file(path: str, flag: str) -> None:
  """Fails (one line, exit 2) unless a file can be written at `path` (`--flag`'s value):
  programs call it before their work, not after. Creates the parent folders, as writing would."""
  if not path.strip():
    fail(f'--{flag} is empty: give the file to write')
  if os.path.isdir(path):
    fail(f'--{flag}={path} is a folder: give the file to write')
  probe = f'{path}.tmp'  # the temporary name metrics_io.write_json uses
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    fail(f'--{flag}={path} cannot be written ({e.strerror or e})')


def check_output_folder(path: str, flag: str) -> None:
  """ValueError (one line naming `--flag`) unless a folder can be written at `path`: it is a
  folder or can be made one. Probes with a temporary folder removed at once, so a flag check
  leaves nothing behind, and a file, a path under a file or /proc fail before TensorFlow loads."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'--{flag}={path} is a file: give a folder')
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f'--{flag}={path} is under {existing}, which is a file')
  try:
    os.rmdir(tempfile.mkdtemp(prefix='.write-probe-', dir=existing))
  except OSError as e:
    raise ValueError(f'--{flag}={path} cannot be written ({e.strerror or e})') from None


def check_writer_data(config: config_lib.ExperimentConfig) -> None:
  """For a LEAF folder (--dataset=femnist), the requests its writers (and, for FLTrust, its
  server split, for a defense with a root set) must serve, checked from its labels before TensorFlow loads
  (`data.writer_counts`; a sweep checks every configuration with it)."""
  data = config.data
  if data.dataset != 'femnist' or not data.data_dir:
    return
  from tff_backdoor.data import writer_counts  # pylint: disable=g-import-not-at-top  (TF-free)
  targeted = config.task.name == 'targeted'
  writer_counts.check_writers(
      writer_counts.writer_counts(data.data_dir, data.only_digits, data.cache_dir),
      clients_per_round=config.fed_avg.clients_per_round, num_clients=data.num_clients,
      num_tasks=config.task.num_tasks if targeted else None,
      source_class=config.task.source_class if targeted else None,
      task_min_samples=config.task.min_samples)
  root_set_field = defenses.spec(config.defense.name).root_set_field
  if root_set_field:
    writer_counts.check_root_set(
        writer_counts.server_class_counts(data.data_dir, data.only_digits, data.cache_dir,
                                          data.server_holdout),
        getattr(config.defense, root_set_field), f'--{root_set_field}')


def check_idx_data(config: config_lib.ExperimentConfig) -> None:
  """For an idx-format --data_dir (mnist, fashion_mnist, idx), that its four files are there,
  before TensorFlow loads (their contents are read, and checked, by the run)."""
  data = config.data
  if data.dataset not in ('mnist', 'fashion_mnist', 'idx') or not data.data_dir:
    return
  from tff_backdoor.data import idx  # pylint: disable=g-import-not-at-top  (TF-free)
  idx.check_idx_dir(data.data_dir)


def exit_on_sigterm() -> None:
  """Turns SIGTERM into a normal exit, so atexit hooks (TFF worker cleanup) still run; a
  handler already installed (`interrupts.exit_on_interrupt`'s) stays."""
  if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
    return

  def handler(signum, frame):
    del frame
    sys.exit(128 + signum)
  signal.signal(signal.SIGTERM, handler)


def run_program(main: Callable[[List[str]], Any],
                flags_parser: Optional[Callable[[List[str]], List[str]]] = None) -> None:
  """absl's `app.run(main, flags_parser)` (default `one_line_flags_parser`) where Ctrl-C ends
  in one line on stderr and exit code 130, not a traceback; the `with` blocks and atexit hooks
  (TFF workers) have run by then."""
  try:
    app.run(main, flags_parser=flags_parser or one_line_flags_parser)
  except KeyboardInterrupt:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # A second Ctrl-C must not break the exit.
    print('interrupted', file=sys.stderr, flush=True)
    sys.exit(130)


def one_line_flags_parser(argv: List[str]) -> List[str]:
  """absl `flags_parser` that reports a bad flag in one line (absl's default prints usage).

  It is also the programs' start: lowers absl logging to WARNING (TFF logs INFO lines for
  every model it wraps; `--verbosity=0` brings them back), quiets TensorFlow's C++ logs,
  turns oneDNN on unless the environment says otherwise (`contexts.fast_path_defaults`), turns
  SIGTERM into an exit and stops this process's TFF workers at exit (`execution.workers`).
  """
  from tff_backdoor.execution import contexts  # pylint: disable=g-import-not-at-top  (TF-free)
  from tff_backdoor.execution import workers  # pylint: disable=g-import-not-at-top  (TF-free)
  logging.set_verbosity(logging.WARNING)
  contexts.quiet_tensorflow_logs()
  contexts.fast_path_defaults()
  workers.stop_workers_at_exit()
  exit_on_sigterm()
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def checked_flags_parser(*heavy_modules: str,
                         check: Callable[[], Any] = lambda: config_from_flags()
                         ) -> Callable[[List[str]], List[str]]:
  """`one_line_flags_parser`, then `check()` (a bad value: one line, exit 2), then imports.

  The programs' way to fail fast: TensorFlow loads only after the flags passed, and still
  while absl parses flags (TensorFlow imported from inside absl's `main` breaks Keras'
  Sequential models in this TF 2.14 / absl stack).
  """
  def parse(argv: List[str]) -> List[str]:
    args = one_line_flags_parser(argv)
    check()
    for name in heavy_modules:
      importlib.import_module(name)
    return args
  return parse


def _define(field: dataclasses.Field, flag_values: flags.FlagValues) -> None:
  """One absl flag for a config field, typed from its annotation, defaulting to its flat value."""
  name, kind = options.flag_name(field), options.field_type(field)
  default = options.to_flat_value(field, field.default)
  help_text = field.metadata['help'] or f'See tff_backdoor.config ({field.name}).'
  if field.metadata['choices']:
    flags.DEFINE_enum(name, default, list(field.metadata['choices']), help_text,
                      flag_values=flag_values)
    return
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
            str: flags.DEFINE_string}[kind]
  define(name, default, help_text, flag_values=flag_values)


def define_config_flags(sections: Sequence[str] = tuple(n for n, _ in config_lib.SECTIONS),
                        flag_values: flags.FlagValues = flags.FLAGS, *,
                        skip: Sequence[str] = ()) -> None:
  """Declares one flag per field of the named ExperimentConfig sections (see config.option)."""
  kinds = dict(config_lib.SECTIONS)
  for section in sections:
    for field in dataclasses.fields(kinds[section]):
      if field.metadata.get('is_flag') and options.flag_name(field) not in skip:
        _define(field, flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS
                      ) -> config_lib.ExperimentConfig:
  """The validated ExperimentConfig of the parsed flags; a bad value exits 2 with one line.

  TensorFlow-free: programs call it before they import the heavy modules.
  """
  try:
    return checked_config(flag_values)
  except ValueError as e:
    fail(str(e))


def checked_config(flag_values: flags.FlagValues) -> config_lib.ExperimentConfig:
  """The validated ExperimentConfig of parsed config flags; ValueError (one line) if bad."""
  values = flag_values.flag_values_dict()
  flat, defense = {}, {}
  for section, cls in config_lib.SECTIONS:
    for field in dataclasses.fields(cls):
      name = options.flag_name(field)
      if name in values and field.metadata.get('is_flag'):
        target = defense if section == 'defense' else flat
        target[field.name if section == 'defense' else name] = values[name]
  config = config_lib.ExperimentConfig.from_flat(
      defense=config_lib.DefenseConfig(**defense), **flat).validate()
  check_output_folder(config.run.output_dir, 'output_dir')
  check_idx_data(config)
  check_writer_data(config)
  if config.run.init_from:  # reads small JSON files, but its module imports TensorFlow
    from tff_backdoor.run import warm_start  # pylint: disable=g-import-not-at-top
    warm_start.check_source(config)
  return config


def config_from_argv(argv: Sequence[str]) -> config_lib.ExperimentConfig:
  """The validated ExperimentConfig of a config program's flags `argv` (no program name),
  parsed on a fresh FlagValues, so one process can read many command lines (sweeps and their
  warm workers do); ValueError in one line if absl or the config's rules refuse them."""
  values = flags.FlagValues()
  define_config_flags(flag_values=values)
  try:
    values(['program', *argv])
    return checked_config(values)
  except (flags.Error, ValueError) as e:
    raise ValueError(' '.join(str(e).split())) from None


def config_flags_error(argv: Sequence[str]) -> Optional[str]:
  """What the experiment program's flag check (config flags, then `checked_config`) says of
  `argv` (flags only), in one line; None if they pass."""
  try:
    config_from_argv(argv)
  except ValueError as e:
    return str(e)
  return None


def run_or_fail(fn: Callable[[], Any]) -> Any:
  """Runs fn; a ValueError/OSError (bad input, missing files) becomes one line and exit 1."""
  try:
    return fn()
  except (ValueError, OSError) as e:
    fail(str(e), code=1)
