"""The configuration: flat config.json round trips, generated flags, one-line fast errors, and
imports that change no global state."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tff_backdoor import cli
from tff_backdoor import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config.json of a run from before the nested config (every key, today's sentinel spellings).
OLD_CONFIG = {
    'dataset': 'femnist', 'data_dir': '/leaf', 'cache_dir': None, 'only_digits': True,
    'partition': 'dirichlet', 'num_clients': None, 'alpha': 0.5, 'shards_per_client': 2,
    'server_holdout': None, 'train_fraction': 1.0, 'model': 'sun_cnn', 'rounds': 3,
    'clients_per_round': 5, 'local_epochs': 1, 'batch_size': 20, 'client_lr': 0.1,
    'server_lr': 1.0, 'task': 'targeted', 'num_tasks': 1, 'task_samples_per_client': 0,
    'task_min_samples': 10, 'source_class': 7, 'target_class': 1, 'keep_honest_copies': True,
    'poison_fraction': 0.5, 'trigger_size': 5, 'trigger_value': -1.0,
    'trigger_pattern': 'square', 'distributed_parts': 1, 'attack': 'boost', 'boost': 0.0,
    'norm_bound': 0.33, 'projection_rounds': 5, 'neurotoxin_mask_fraction': 0.05,
    'constrain_alpha': 0.5, 'anticipate_rounds': 2, 'anticipate_epochs': 5,
    'anticipate_clients': 0, 'a3fl_trigger_epochs': 200, 'a3fl_trigger_lr': 0.01,
    'a3fl_adv_epochs': 5, 'a3fl_adv_every': 1, 'a3fl_lambda': 0.01, 'malicious_epochs': 0,
    'malicious_batch_size': 0, 'schedule': 'fixed_frequency', 'attack_every': 1,
    'malicious_fraction': 0.1, 'attackers_per_round': 1, 'attack_start': 0, 'attack_stop': 0,
    'lifespan_threshold': 0.5, 'sample_with_replacement': False,
    'defense': dataclasses.asdict(config_lib.DefenseConfig()), 'seed': 0,
    'output_dir': '/tmp/b', 'eval_every': 1, 'eval_batch_size': 500, 'eval_subset': 4000,
    'workers': '', 'num_subrounds': 0, 'checkpoint_every': 0, 'keep_checkpoints': 2,
    'resume': False, 'overwrite': 'refuse', 'init_from': '', 'init_from_file': '',
    'init_from_sha256': '', 'init_from_rounds': 0, 'capture_rounds': '', 'flain': False,
    'flain_aux_per_class': 80, 'flain_layer': '', 'flain_mode': 'quantile', 'flain_k0': -1.0,
    'flain_step': -1.0, 'flain_tolerance': 0.01, 'tensorboard': True, 'verbose': True}


def test_old_config_json_loads_with_none_for_its_sentinels_and_writes_back_the_same():
  config = config_lib.ExperimentConfig.from_dict(OLD_CONFIG)
  assert config.attack.boost is None and config.schedule.stop is None
  assert config.attack.malicious_epochs is None and config.flain.k0 is None
  assert config.run.workers is None and config.task.trigger_value is None
  assert config.task.name == 'targeted' and config.fed_avg.rounds == 3
  assert config.to_dict() == OLD_CONFIG
  assert json.loads(json.dumps(config.to_dict())) == OLD_CONFIG
  assert config_lib.ExperimentConfig.from_flat(flain_k0=-5.0).flain.k0 is None  # any < 0
  assert config_lib.ExperimentConfig().to_dict().keys() == OLD_CONFIG.keys()
  with pytest.raises(ValueError, match='unknown config keys: nope'):
    config_lib.ExperimentConfig.from_dict({**OLD_CONFIG, 'nope': 1})


def test_replace_takes_flat_keys():
  config = config_lib.ExperimentConfig().replace(flain=True, rounds=4, attack_stop=9)
  assert config.flain.enabled and config.fed_avg.rounds == 4 and config.schedule.stop == 9


def test_every_config_field_has_a_flag_and_help(tmp_path):
  from absl import flags
  values = flags.FlagValues()
  cli.define_config_flags(flag_values=values)
  values(['prog', '--clip_norm=2', '--attack_stop=5', '--noonly_digits'])
  flat = {k for k in OLD_CONFIG if k not in ('defense', 'init_from_file', 'init_from_sha256',
                                              'init_from_rounds', 'tensorboard', 'verbose')}
  flat |= {f.name for f in dataclasses.fields(config_lib.DefenseConfig) if f.name != 'name'}
  flat.add('defense')
  assert flat <= set(values)
  assert all(values[name].help for name in flat)
  config = cli.config_from_flags(values)
  assert config.defense.clip_norm == 2.0 and config.schedule.stop == 5
  assert not config.data.only_digits and config.attack.boost is None


def test_registry_names_agree_with_their_builders():
  from tff_backdoor import models
  from tff_backdoor.attacks import schedules, tasks
  assert set(config_lib.MODELS) == set(models.MODEL_BUILDERS)
  assert {name: len(models.build_model(name, (28, 28, 1), 10, seed=0).trainable_weights)
          for name in config_lib.MODELS} == config_lib.UPDATE_TENSORS
  assert set(config_lib.SCHEDULES) == set(schedules.SCHEDULES)
  assert tuple(config_lib.PATTERNS) == tuple(tasks.PATTERNS)


def test_setup_registries_cover_their_choices():
  from tff_backdoor.run import setup as setup_lib
  assert sorted(setup_lib.TASK_BUILDERS) == sorted(config_lib.TASKS)
  assert sorted(setup_lib.SCHEDULE_BUILDERS) == sorted(config_lib.SCHEDULES)


def _python(code):
  env = dict(os.environ)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, env=env, timeout=300)


def test_importing_the_package_changes_no_global_state():
  """os.environ and atexit as TensorFlow and TFF's own imports leave them (they set a few
  variables themselves); then every tff_backdoor module is imported."""
  code = '''
import atexit, importlib, os, pkgutil
import tensorflow, tensorflow_federated
env, hooks = dict(os.environ), atexit._ncallbacks()
import tff_backdoor
for m in pkgutil.walk_packages(tff_backdoor.__path__, 'tff_backdoor.'):
  importlib.import_module(m.name)
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert atexit._ncallbacks() == hooks, 'an import registered an atexit hook'
print('clean')
'''
  result = _python(code)
  assert result.returncode == 0 and 'clean' in result.stdout, result.stderr[-2000:]


def test_the_config_and_flags_load_without_tensorflow():
  result = _python('import sys, tff_backdoor.config, tff_backdoor.cli, experiments.emnist_backdoor'
                   "; assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize('args,flag', [
    (['--clip_norm=-1'], '--clip_norm'),
    (['--rounds=0'], '--rounds'),
    (['--boost=-2'], '--boost'),
    (['--dataset=nope'], '--dataset'),
    (['--poison_fraction=2'], '--poison_fraction'),
    (['--seed=9223372036854775807'], '--seed must be in [0, 2**32)'),
    (['--seed=4294967296'], '--seed must be in [0, 2**32)'),
    (['--seed=-1'], '--seed must be in [0, 2**32)'),
    (['--output_dir='], '--output_dir is empty'),
    (['--defense=foolsgold', '--sample_with_replacement'],
     'error: --defense=foolsgold needs distinct clients in a round: drop '
     '--sample_with_replacement'),
    (['--defense=fldetector', '--sample_with_replacement'],
     'error: --defense=fldetector needs distinct clients in a round: drop '
     '--sample_with_replacement'),
    (['--capture_rounds=0', '--sample_with_replacement'],
     'error: --capture_rounds needs distinct clients in a round: drop '
     '--sample_with_replacement'),
    # Issue 41: inf was accepted where nan was refused; a bad --output_dir was found after
    # TensorFlow loaded (10-14 s, a raw errno, exit 1).
    (['--dp_sigma=inf'], '--dp_sigma must be a finite number, got inf'),
    (['--sum_noise_stddev=inf'], '--sum_noise_stddev must be a finite number'),
    (['--flame_lambda=inf'], '--flame_lambda must be a finite number'),
    (['--crfl_sigma=inf'], '--crfl_sigma must be a finite number'),
    (['--crfl_sigma=nan'], '--crfl_sigma must be a finite number'),
    (['--client_lr=inf'], '--client_lr must be a finite number'),
    (['--alpha=1e-9'], '--alpha must be in [1e-3, 1e6]'),
    (['--malicious_fraction=1.5'], '--malicious_fraction must be in [0, 1]'),
    (['--train_fraction=0'], '--train_fraction must be in (0, 1]'),
    (['--output_dir=/proc/x'], '--output_dir=/proc/x cannot be written'),
    (['--dataset=idx', '--data_dir=/nonexistent_idx'], '/nonexistent_idx does not exist'),
    (['--dataset=idx', '--data_dir=/etc/hostname'], '/etc/hostname is a file, not a folder'),
    (['--dataset=fashion_mnist', '--data_dir=/proc/self/fd'],
     '/proc/self/fd lacks the MNIST-format idx file(s) train-images-idx3-ubyte'),
    (['--output_dir=/etc/hostname'], '--output_dir=/etc/hostname is a file'),
    (['--output_dir=/etc/hostname/run'], 'is under /etc/hostname, which is a file'),
    (['--capture_rounds=-3'], "bad round list '-3'"),
    (['--attack=a3fl', '--task=targeted'], '--attack=a3fl optimizes a pixel trigger: it needs '
     '--task=pixel with --distributed_parts=1'),
    (['--attack=a3fl', '--task=pixel', '--distributed_parts=2'], '--attack=a3fl optimizes'),
    (['--dataset=femnist', '--data_dir=/etc/hostname'],
     '--data_dir /etc/hostname is a file, not a LEAF folder with train/ and test/'),
    (['--defense=bias_filter', '--bias_index=99'], '--bias_index=99 is out of range'),
    (['--task=targeted', '--schedule=fixed_per_round', '--attackers_per_round=3',
      '--num_clients=10', '--malicious_fraction=0.2'],
     '--attackers_per_round=3 exceeds the 2 malicious clients'),
    (['--task=targeted', '--schedule=fixed_per_round', '--attackers_per_round=11'],
     '--attackers_per_round=11 must be in [1, --clients_per_round=10]'),
])
def test_a_bad_flag_is_one_short_line_naming_it_exit_2(args, flag, no_tensorflow):
  """Refused before TensorFlow loads: with a TensorFlow that fails on import on the path, the
  line is still the flag's (how fast that is: bench/cli_battery.py, not a timed test)."""
  result = subprocess.run([sys.executable, '-m', 'experiments.emnist_backdoor', *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=no_tensorflow)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1 and len(lines[0]) < 200, result.stderr
  assert lines[0].startswith('error: ') and flag in lines[0]


@pytest.fixture(scope='module')
def no_tensorflow(tmp_path_factory):
  """An environment whose `import tensorflow` fails loudly (a stand-in package first on the
  path), so a program that loads TensorFlow before its flag check cannot print one line."""
  root = tmp_path_factory.mktemp('no_tf')
  (root / 'tensorflow').mkdir()
  (root / 'tensorflow' / '__init__.py').write_text(
      "raise ImportError('TensorFlow was imported before the flag check')\n")
  return dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), REPO]))


def test_an_output_dir_check_leaves_nothing_behind(tmp_path):
  cli.check_output_folder(str(tmp_path / 'a' / 'b'), 'output_dir')
  assert os.listdir(tmp_path) == []


def test_open_capture_ranges_run_to_the_last_round():
  assert config_lib.parse_rounds('0-', 4) == {0, 1, 2, 3}
  assert config_lib.parse_rounds('2-, 0', 4) == {0, 2, 3}
  with pytest.raises(ValueError, match="bad round range '4-'"):
    config_lib.parse_rounds('4-', 4)


def test_the_largest_seed_the_flag_allows_works_where_the_seed_goes():
  """--seed reaches NumPy's SeedSequence, the Keras initializers (seed * 1000 + k, int64) and
  the DP noise's int64 stateless seed: 2**32 - 1 must pass all of them, 2**32 is refused."""
  from tff_backdoor import models  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from tff_backdoor.aggregators import dp  # pylint: disable=g-import-not-at-top
  from tff_backdoor.run import setup as experiment_setup  # pylint: disable=g-import-not-at-top
  largest = 2**32 - 1
  config_lib.ExperimentConfig.from_flat(seed=largest).validate()
  with pytest.raises(ValueError, match=r'--seed must be in \[0, 2\*\*32\), got 4294967296'):
    config_lib.ExperimentConfig.from_flat(seed=largest + 1).validate()
  assert len(experiment_setup.streams(largest)) > 1
  for name in ('sun_cnn', 'tiny_cnn'):  # the seed reaches the initializers, reproducibly
    weights = [models.build_model(name, (28, 28, 1), 10, seed=s).get_weights()
               for s in (largest, largest, 0)]
    assert [w.shape for w in weights[0]] == [w.shape for w in weights[2]]
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not np.array_equal(weights[0][0], weights[2][0])
  noise_state = dp.SeededGaussianSumQuery(1.0, 1.0, seed=largest).initial_global_state()
  np.testing.assert_array_equal(noise_state.noise_state.seeds, [0, largest])  # int64, intact


def test_an_old_flat_name_cannot_be_set_on_the_nested_config():
  config = config_lib.ExperimentConfig()
  with pytest.raises(AttributeError, match="no field 'rounds'"):
    config.rounds = 1  # pylint: disable=attribute-defined-outside-init
  config.fed_avg.rounds = 1
  assert config.to_dict()['rounds'] == 1
