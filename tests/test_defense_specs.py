"""One spec per defense (`aggregators.defenses`): what the registry, the run setup and the
flags read, checked for agreement with `DefenseConfig`, `SideChannel` and the config rules."""
import dataclasses
import subprocess
import sys

import pytest

from tff_backdoor import config as config_lib
from tff_backdoor.aggregators import defense_config
from tff_backdoor.aggregators import defenses
from tff_backdoor.aggregators.defense_spec import DefenseSpec

FIELDS = {f.name for f in dataclasses.fields(defense_config.DefenseConfig)} - {'name'}
PARAMETER_CLASSES = [base for base in defense_config.DefenseConfig.__mro__[1:]
                     if dataclasses.is_dataclass(base)
                     and base is not defense_config.DefenseName]


def test_names_are_the_specs_in_order_and_unique():
  assert defense_config.DEFENSES == tuple(spec.name for spec in defenses.SPECS)
  assert len(set(defense_config.DEFENSES)) == len(defenses.SPECS) == 23
  assert all(isinstance(spec, DefenseSpec) for spec in defenses.SPECS)


def test_every_parameter_is_read_by_a_spec_and_every_setting_is_a_parameter():
  read = {name for spec in defenses.SPECS for name in spec.settings}
  assert read == FIELDS, (sorted(read - FIELDS), sorted(FIELDS - read))
  for spec in defenses.SPECS:
    for field in (spec.population_field, spec.root_set_field, spec.update_index_field,
                  spec.client_bound_field):
      assert field is None or field in spec.settings, (spec.name, field)


def test_each_parameter_is_declared_once_in_a_spec_module():
  owners = {}
  for cls in PARAMETER_CLASSES:
    assert cls.__module__.startswith('tff_backdoor.aggregators.defenses.'), cls
    for field in dataclasses.fields(cls):
      if field.name in vars(cls).get('__annotations__', {}):
        assert field.name not in owners, (field.name, owners.get(field.name), cls)
        owners[field.name] = cls
  assert set(owners) == FIELDS


def test_the_field_order_is_config_json_s():
  """config.json's `defense` keys, in the order every committed record has them."""
  assert [f.name for f in dataclasses.fields(defense_config.DefenseConfig)][:7] == [
      'name', 'clip_norm', 'adaptive_quantile', 'adaptive_initial_norm',
      'adaptive_learning_rate', 'zeroing_norm', 'dp_sigma']
  assert [f.name for f in dataclasses.fields(defense_config.DefenseConfig)][-3:] == [
      'deepsight_min_samples', 'deepsight_ddif_samples', 'deepsight_ddif_seeds']


def test_reads_name_side_channel_fields():
  from tff_backdoor.learning.side_channel import SideChannel  # pylint: disable=g-import-not-at-top
  channel_fields = {f.name for f in dataclasses.fields(SideChannel)}
  for spec in defenses.SPECS:
    assert set(spec.reads) <= channel_fields, spec.name
  assert {s.name for s in defenses.SPECS if s.reads} == {'fltrust', 'foolsgold', 'fldetector',
                                                          'deepsight'}


def test_a_spec_channel_fills_only_fields_it_reads():
  for spec in defenses.SPECS:
    if spec.channel is not None:
      config = defense_config.DefenseConfig(name=spec.name)
      assert set(spec.channel(config, 0)) <= set(spec.reads), spec.name


def test_deepsight_reads_ddifs_on_inputs_of_its_parameters_and_the_run_seed():
  """The channel a spec's `channel` fills: DeepSight's DDif inputs, from its two flags
  (the paper's 20,000 samples on 3 seeds by default) and the run's seed."""
  from tff_backdoor.aggregators import registry  # pylint: disable=g-import-not-at-top
  from tff_backdoor.learning.side_channel import DDifInputs  # pylint: disable=g-import-not-at-top
  config = defense_config.DefenseConfig(name='deepsight')
  assert registry.side_channel_of(config, seed=4) == registry.SideChannel(
      ddifs=DDifInputs(samples=20_000, seeds=3, seed=4))
  smaller = dataclasses.replace(config, deepsight_ddif_samples=50, deepsight_ddif_seeds=1)
  assert registry.side_channel_of(smaller, seed=4).ddifs == DDifInputs(50, 1, 4)
  assert registry.side_channel_of(smaller, seed=4).uplink
  assert not registry.side_channel_of(dataclasses.replace(config, name='krum')).uplink


def test_an_unknown_name_is_one_line_listing_the_names():
  with pytest.raises(ValueError) as error:
    defenses.spec('fedavg')
  assert '\n' not in str(error.value)
  assert all(name in str(error.value) for name in defense_config.DEFENSES)


def _run_config(**flat):
  return config_lib.ExperimentConfig.from_flat(output_dir='/tmp/x', **flat)


def _spec_with(name, **fields):
  return dataclasses.replace(defenses.spec(name), **fields)


def test_the_run_config_reads_the_spec_not_the_name(monkeypatch):
  """A spec's `distinct_clients`, `root_set_field` and `update_index_field` drive the run's
  cross-section rules whatever its name: give 'median' each, and the rules follow."""
  monkeypatch.setitem(defenses.BY_NAME, 'median',
                      _spec_with('median', distinct_clients=True))
  with pytest.raises(ValueError, match='--defense=median needs distinct clients'):
    _run_config(defense={'name': 'median'}, sample_with_replacement=True).validate()
  monkeypatch.setitem(defenses.BY_NAME, 'median',
                      _spec_with('median', root_set_field='fltrust_root_per_class',
                                 settings=('fltrust_root_per_class',)))
  with pytest.raises(ValueError, match='--defense=median needs server-side data'):
    _run_config(defense={'name': 'median'}, server_holdout=0).validate()
  monkeypatch.setitem(defenses.BY_NAME, 'median',
                      _spec_with('median', update_index_field='bias_index'))
  with pytest.raises(ValueError, match=r'--bias_index=9 is out of range'):
    _run_config(defense={'name': 'median', 'bias_index': 9}).validate()
  monkeypatch.undo()
  _run_config(defense={'name': 'median', 'bias_index': 9}, server_holdout=0,
              sample_with_replacement=True).validate()  # plain median: none of them applies


def test_a_spec_check_runs_through_validate_defense(monkeypatch):
  calls = []

  def check(config, clients_per_round):
    calls.append((config.name, clients_per_round))
    raise ValueError('median: no')

  monkeypatch.setitem(defenses.BY_NAME, 'median', _spec_with('median', check=check))
  with pytest.raises(ValueError, match='median: no'):
    defense_config.validate_defense(defense_config.DefenseConfig(name='median'), 7)
  assert calls == [('median', 7)]


def test_the_specs_load_no_tensorflow():
  code = ('import sys; import tff_backdoor.aggregators.defenses, tff_backdoor.config; '
          'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == 'False'


def test_a_new_spec_is_built_by_the_registry_with_its_side_channel(monkeypatch):
  """What adding a defense takes at run time: its spec in the registry, nothing else."""
  from tff_backdoor.aggregators import registry  # pylint: disable=g-import-not-at-top
  built = []

  def build(config, clients_per_round, seed):
    built.append((config.trim_fraction, clients_per_round, seed))
    return defenses.spec('trimmed_mean').build(config, clients_per_round, seed)

  monkeypatch.setitem(defenses.BY_NAME, 'my_trim', DefenseSpec(
      'my_trim', build, settings=('trim_fraction',), reads=('client_info',)))
  config = defense_config.DefenseConfig(name='my_trim', trim_fraction=0.2)
  factory = registry.build_defense(config, clients_per_round=5, seed=3)
  assert built == [(0.2, 5, 3)]
  assert registry.side_channel_of(config).client_info
  assert not registry.side_channel_of(config).root_update
  assert factory is not None
  sgd = object()
  assert registry.build_server_optimizer(config, sgd) is sgd
