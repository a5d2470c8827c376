"""The LEAF FEMNIST source: tiny LEAF JSON files written here, plus the shared folder's counts."""
import gzip
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tff_backdoor import config as config_lib
from tff_backdoor import data as data_lib
from tff_backdoor.data import leaf
from tff_backdoor.run import setup as setup_lib

# The shared LEAF folder: $TFF_BACKDOOR_FEMNIST_DIR, else ../shared beside the checkout, else
# the development machine's /work/shared (a clone made elsewhere, e.g. by CI in a temp dir).
_CANDIDATES = [os.environ.get('TFF_BACKDOOR_FEMNIST_DIR', ''),
               os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'femnist'),
               '/work/shared/data/femnist']
SHARED = next((d for d in _CANDIDATES if d and os.path.isdir(d)), _CANDIDATES[1])


def _image(value: int) -> list:
  """784 pixels of k/255: background 1.0 with `value` as the first pixel."""
  return [value / 255.0] + [1.0] * 783


def _user(labels):
  return {'x': [_image(7 * i + lab) for i, lab in enumerate(labels)], 'y': list(labels)}


def _write(path, users, gz=False, raw=None):
  payload = raw if raw is not None else json.dumps({
      'users': list(users), 'num_samples': [len(u['y']) for u in users.values()],
      'user_data': users})
  opener = gzip.open if gz else open
  with opener(path, 'wt') as f:
    f.write(payload)


def _leaf_dir(root, train_files=None, test_files=None):
  """train: w1 (digits+letter, plain), w2 (digits, gzipped), w3 (letters only); test: 3 writers."""
  for split in ('train', 'test'):
    os.makedirs(os.path.join(root, split), exist_ok=True)
  train_files = train_files or {
      'a.json': ({'w1': _user([7, 7, 1, 12]), 'w3': _user([20, 40])}, False),
      'b.json.gz': ({'w2': _user([7, 3, 3])}, True)}
  test_files = test_files or {'t.json.gz': (
      {'w1': _user([7, 1, 0, 2, 3]), 'w2': _user([7, 7, 4, 5, 6]), 'w9': _user([7, 8, 9, 15])},
      True)}
  for split, files in (('train', train_files), ('test', test_files)):
    for name, (users, gz) in files.items():
      _write(os.path.join(root, split, name), users, gz)
  return str(root)


def _load(root, **kwargs):
  kwargs.setdefault('cache_dir', os.path.join(str(root), 'cache'))
  return data_lib.load_federated_data('femnist', data_dir=str(root), **kwargs)


def test_writers_counts_pixels_and_labels(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  data = _load(root, only_digits=True, server_holdout=0)
  assert sorted(data.train.client_ids) == ['w1', 'w2']  # w3 holds letters only
  arrays = data_lib.client_arrays(data.train)
  assert arrays['w1'][1].tolist() == [7, 7, 1]
  assert arrays['w2'][1].tolist() == [7, 3, 3]
  assert arrays['w1'][0].shape == (3, 28, 28, 1)
  np.testing.assert_array_equal(arrays['w1'][0][:, 0, 0, 0],
                                (np.float64([7, 14, 15]) / 255).astype(np.float32))
  assert np.all(arrays['w2'][0][:, 1:, :, :] == 1.0)  # background is 1.0 (LEAF / TFF EMNIST)
  assert data.num_classes == 10 and data.input_shape == (28, 28, 1)
  assert sorted(data.test[1].tolist()) == sorted([7, 1, 0, 2, 3, 7, 7, 4, 5, 6, 7, 8, 9])
  report = data.partition_report
  assert report['writers_listed'] == 3 and report['writers_dropped_no_digits'] == 1
  assert report['num_clients'] == 2 and report['num_examples'] == 6
  assert report['test_writers'] == 3 and report['background_value'] == 1.0
  assert sorted(data.test_by_client) == ['w1', 'w2', 'w9']


def test_all_62_classes_and_the_cnn_head(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  data = _load(root, only_digits=False, server_holdout=0)
  assert data.num_classes == 62 and sorted(data.train.client_ids) == ['w1', 'w2', 'w3']
  assert data_lib.client_arrays(data.train)['w3'][1].tolist() == [20, 40]
  config = config_lib.ExperimentConfig.from_flat(
      dataset='femnist', data_dir=root, only_digits=False, server_holdout=0,
      clients_per_round=2, rounds=1, cache_dir=os.path.join(root, 'cache'))
  model = setup_lib.prepare(config).keras_builder()
  assert model.output_shape == (None, 62)


def test_default_server_holdout_fits_a_small_test_split(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  data = _load(root, only_digits=True)  # 13 test digits: the default holds out 13 // 5
  assert len(data.server[1]) == 2 and len(data.test[1]) == 11
  assert data.partition_report['server_size'] == 2


def test_cache_gives_the_same_arrays_and_follows_file_changes(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  cache = str(tmp_path / 'cache')
  first = leaf.read_leaf_dir(root, cache_dir=cache)
  assert len(os.listdir(cache)) == 2
  second = leaf.read_leaf_dir(root, cache_dir=cache)
  for a, b in zip(first, second):
    assert sorted(a) == sorted(b)
    for w in a:
      np.testing.assert_array_equal(a[w][0], b[w][0])
      np.testing.assert_array_equal(a[w][1], b[w][1])
  _write(os.path.join(root, 'train', 'a.json'), {'w1': _user([5])})
  os.utime(os.path.join(root, 'train', 'a.json'), ns=(1, 1))
  changed, _ = leaf.read_leaf_dir(root, cache_dir=cache)
  assert changed['w1'][1].tolist() == [5] and 'w3' not in changed


def test_num_clients_keeps_a_seeded_subset(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  data = _load(root, only_digits=False, num_clients=2, server_holdout=0, seed=3)
  again = _load(root, only_digits=False, num_clients=2, server_holdout=0, seed=3)
  assert len(data.train.client_ids) == 2
  assert data.train.client_ids == again.train.client_ids
  with pytest.raises(data_lib.DataError, match='num_clients=9'):
    _load(root, only_digits=False, num_clients=9)


def _truncate(path):
  with open(path, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(content[:len(content) // 2])


def _bad_cases():
  good = _user([7, 1])
  return {
      'truncated gzip': ('b.json.gz', None, lambda p: _truncate(p),
                         r'b\.json\.gz.*not valid LEAF JSON'),
      'invalid json': ('a.json', '{"users": [', None, r'a\.json.*not valid LEAF JSON'),
      'schema': ('a.json', json.dumps({'users': []}), None, r'a\.json.*needs the keys'),
      'num_samples': ('a.json', json.dumps({'users': ['w1'], 'num_samples': [3],
                                            'user_data': {'w1': good}}), None,
                      r'a\.json: writer w1: num_samples says 3 but y has 2'),
      'image size': ('a.json', json.dumps({'users': ['w1'], 'num_samples': [1],
                                           'user_data': {'w1': {'x': [[1.0] * 783], 'y': [1]}}}),
                     None, r'a\.json: writer w1: image 0 has 783 values, not 784'),
      'label range': ('a.json', json.dumps({'users': ['w1'], 'num_samples': [1],
                                            'user_data': {'w1': {'x': [_image(0)], 'y': [62]}}}),
                      None, r'a\.json: writer w1: label 62 outside \[0, 62\)'),
      'negative label': ('a.json', json.dumps({'users': ['w1'], 'num_samples': [1],
                                               'user_data': {'w1': {'x': [_image(0)], 'y': [-1]}}}),
                         None, r'writer w1: label -1 outside'),
      'empty writer': ('a.json', json.dumps({'users': ['w1'], 'num_samples': [0],
                                             'user_data': {'w1': {'x': [], 'y': []}}}), None,
                       r'a\.json: writer w1 has no images'),
      'numeric string pixel': ('a.json', _one_writer(_pixel('0.5')), None,
                               r"a\.json: writer w1: image 1 has the pixel '0\.5' \(str\)"),
      'boolean pixel': ('a.json', _one_writer(_pixel(True)), None,
                        r'a\.json: writer w1: image 1 has the pixel True \(bool\)'),
      'word pixel': ('a.json', _one_writer(_pixel('abc')), None,
                     r"a\.json: writer w1: image 1 has the pixel 'abc' \(str\)"),
      'nested pixel': ('a.json', _one_writer(_pixel([0.5, 0.5])), None,
                       r'a\.json: writer w1: image 1 has the pixel \[0\.5, 0\.5\] \(list\)'),
      'nested labels': ('a.json', _one_writer({'x': good['x'], 'y': [[7], [1, 2]]}), None,
                        r'a\.json: writer w1: labels must be a list of integers'),
      'boolean labels': ('a.json', _one_writer({'x': good['x'], 'y': [True, False]}), None,
                         r'a\.json: writer w1: labels must be a list of integers'),
      'x not a list': ('a.json', _one_writer({'x': 5, 'y': [7, 1]}), None,
                       r'a\.json: writer w1: x must be a list of images, not int'),
      'num_samples string': ('a.json', json.dumps({'users': ['w1'], 'num_samples': ['2'],
                                                   'user_data': {'w1': good}}), None,
                             r"a\.json: writer w1: num_samples must be an integer, got '2' "
                             r'\(str\)'),
      'integer writer id': ('a.json', json.dumps({'users': [5], 'num_samples': [2],
                                                  'user_data': {'5': good}}), None,
                            r'a\.json: writer 5: writer ids must be strings, not int'),
      'writer twice': ('a.json', json.dumps({'users': ['w1', 'w1'], 'num_samples': [2, 2],
                                             'user_data': {'w1': good}}), None,
                       r'a\.json: writer w1 is listed twice in users'),
  }


def _pixel(value):
  """A two-image writer whose second image has `value` as its first pixel."""
  user = _user([7, 1])
  user['x'][1][0] = value
  return user


def _one_writer(user) -> str:
  return json.dumps({'users': ['w1'], 'num_samples': [2], 'user_data': {'w1': user}})


@pytest.mark.parametrize('case', sorted(_bad_cases()))
def test_bad_leaf_files_fail_in_one_line_naming_file_and_writer(tmp_path, case):
  name, raw, write, pattern = _bad_cases()[case]
  root = _leaf_dir(tmp_path / 'leaf')
  path = os.path.join(root, 'train', name)
  if write is not None:
    write(path)
  else:
    _write(path, None, gz=name.endswith('.gz'), raw=raw)
  with pytest.raises(data_lib.DataError, match=pattern) as err:
    _load(root)
  assert '\n' not in str(err.value)


def test_a_named_pipe_is_refused_without_opening_it(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  os.mkfifo(os.path.join(root, 'train', 'p.json'))  # opening it would block until a writer
  signal.signal(signal.SIGALRM, _hung)
  signal.alarm(20)
  try:
    with pytest.raises(data_lib.DataError, match=r'train/p\.json: not a regular file') as err:
      _load(root)
  finally:
    signal.alarm(0)
  assert '\n' not in str(err.value)


def _hung(*_):
  raise TimeoutError('the loader blocked on a named pipe')


def test_an_edit_that_keeps_size_and_mtime_is_not_served_from_the_cache(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  path = os.path.join(root, 'train', 'a.json')
  before = os.stat(path)
  _load(root)  # fills the cache
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:  # the same bytes but one pixel 1.0 -> 7.0: invalid
    f.write(text.replace('1.0', '7.0', 1))
  os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
  assert os.stat(path).st_size == before.st_size
  with pytest.raises(data_lib.DataError, match=r'a\.json: writer w1: pixel values must be in'):
    _load(root)


def test_missing_folders_and_files(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  os.rename(os.path.join(root, 'test'), os.path.join(root, 'gone'))
  with pytest.raises(data_lib.DataError, match=r'leaf/test not found'):
    _load(root)
  os.makedirs(os.path.join(root, 'test'))
  with pytest.raises(data_lib.DataError, match=r'leaf/test holds no LEAF'):
    _load(root)
  with pytest.raises(data_lib.DataError, match=r'nowhere not found'):
    _load(str(tmp_path / 'nowhere'))


def test_no_writer_with_digits_is_an_error(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf', train_files={'a.json': ({'w3': _user([20, 40])}, False)})
  with pytest.raises(data_lib.DataError, match=r'train has no writer with a digit image'):
    _load(root, only_digits=True)


def test_background_aware_trigger_and_writer_targeted_task(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  base = dict(dataset='femnist', data_dir=root, server_holdout=0, clients_per_round=2,
              rounds=1, cache_dir=os.path.join(root, 'cache'))
  pixel = setup_lib.prepare(config_lib.ExperimentConfig.from_flat(task='pixel', **base)).task
  assert pixel.trigger_value == 0.0  # ink on the 1.0 background
  setup = setup_lib.prepare(config_lib.ExperimentConfig.from_flat(
      task='targeted', num_tasks=1, task_min_samples=2, **base))
  assert setup.task.target_clients == ('w1',)  # the only writer with two 7s
  sets = setup.eval_sets
  assert len(sets['backdoor'][1]) == 2 and np.all(sets['backdoor'][1] == 1)
  assert len(sets['backdoor_heldout'][1]) == 1  # w1's test 7
  assert len(sets['collateral'][1]) == 3 and np.all(sets['collateral'][1] == 1)  # w2, w9
  # The target writer stays honest with its true labels.
  x, y = setup.clients['w1']
  assert setup.task.honest_data('w1', x, y)[1].tolist() == [7, 7, 1]


def test_program_reports_a_bad_file_in_one_line(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  _write(os.path.join(root, 'train', 'a.json'), None, raw='{"users": [')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.emnist_backdoor', '--dataset=femnist',
       f'--data_dir={root}', '--clients_per_round=1', '--rounds=1',
       f'--output_dir={tmp_path / "out"}', f'--cache_dir={tmp_path / "cache"}'],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.join(os.path.dirname(__file__), '..'))
  assert result.returncode != 0
  lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'a.json' in lines[0] and 'not valid LEAF JSON' in lines[0]


def test_shared_folder_matches_its_readme(tmp_path):
  assert os.path.isdir(SHARED), (f'the shared FEMNIST folder is not at {SHARED}: set '
                                 'TFF_BACKDOOR_FEMNIST_DIR')
  train, test = leaf.read_leaf_dir(SHARED, cache_dir=str(tmp_path / 'cache'))
  assert len(train) == 300 and sum(len(y) for _, y in train.values()) == 43616
  assert len(test) == 537 and sum(len(y) for _, y in test.values()) == 12334
  assert sum(int(np.sum(y < 10)) for _, y in train.values()) == 30871


def test_training_images_stay_uint8_and_batches_are_the_exact_floats(tmp_path):
  from tff_backdoor.learning import client_datasets
  data = _load(_leaf_dir(tmp_path / 'leaf'), only_digits=False)
  compact = data_lib.client_arrays(data.train, compact=True)
  floats = data_lib.client_arrays(data.train)
  assert compact['w1'][0].dtype == np.uint8 and floats['w1'][0].dtype == np.float32
  assert compact['w1'][0][:, 0, 0, 0].tolist() == [7, 14, 15, 33]  # k of pixel 0: 7 i + label
  np.testing.assert_array_equal(floats['w1'][0], np.float32(compact['w1'][0]) / np.float32(255))
  element = next(iter(data.train.create_tf_dataset_for_client('w1')))
  assert element['x'].dtype.name == 'float32' and element['y'].numpy() == 7
  assert element['x'].numpy()[0, 0, 0] == np.float32(7 / 255)
  from_codes = client_datasets.client_dataset(*compact['w1'], batch_size=3)
  from_floats = client_datasets.client_dataset(*floats['w1'], batch_size=3)
  for a, b in zip(from_codes, from_floats):  # bit for bit: the same training either way
    np.testing.assert_array_equal(a['x'].numpy(), b['x'].numpy())
    np.testing.assert_array_equal(a['y'].numpy(), b['y'].numpy())


def test_the_cache_is_a_memory_mapped_uint8_folder_shared_by_loads(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  cache = str(tmp_path / 'cache')
  parsed = leaf.read_split_packed(os.path.join(root, 'train'), cache_dir=cache)
  cached = leaf.read_split_packed(os.path.join(root, 'train'), cache_dir=cache)
  assert parsed.writers == cached.writers == ['w1', 'w2', 'w3']  # sorted across files
  assert isinstance(cached.pixels, np.memmap) and cached.pixels.dtype == np.uint8
  assert cached.sizes.tolist() == [4, 3, 2] and cached.labels.tolist() == [7, 7, 1, 12, 7, 3, 3,
                                                                            20, 40]
  np.testing.assert_array_equal(parsed.pixels, cached.pixels)
  digits = cached.select(cached.labels < 10)
  assert digits.writers == ['w1', 'w2'] and digits.sizes.tolist() == [3, 3]
  folder = os.path.join(cache, os.listdir(cache)[0])
  with open(os.path.join(folder, 'labels.npy'), 'r+b') as f:  # damaged: rebuilt, not served
    f.truncate(10)
  again = leaf.read_split_packed(os.path.join(root, 'train'), cache_dir=cache)
  assert again.labels.tolist() == cached.labels.tolist()


def test_pixels_that_are_not_k_over_255_stay_float_and_are_not_cached(tmp_path):
  users = {'w1': {'x': [[0.5] * 784, [1.0] * 784], 'y': [1, 2]}}
  root = _leaf_dir(tmp_path / 'leaf', train_files={'a.json': (users, False)})
  cache = str(tmp_path / 'cache')
  split = leaf.read_split_packed(os.path.join(root, 'train'), cache_dir=cache)
  assert split.pixels.dtype == np.float32 and split.pixels[0, 0, 0, 0] == np.float32(0.5)
  assert not os.path.exists(cache) or not os.listdir(cache)
  data = _load(root, only_digits=True)
  x, _ = data_lib.client_arrays(data.train, compact=True)['w1']
  assert x.dtype == np.float32 and x[0, 0, 0, 0] == np.float32(0.5)


def test_a_cache_folder_that_cannot_be_written_costs_a_parse_not_the_run(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  blocker = tmp_path / 'cache'
  blocker.write_text('a file where the cache folder should be')
  split = leaf.read_split_packed(os.path.join(root, 'train'), cache_dir=str(blocker))
  assert split.writers == ['w1', 'w2', 'w3'] and split.pixels.dtype == np.uint8


@pytest.mark.parametrize('args, message', [
    (['--clients_per_round=3'], r'--clients_per_round=3 is larger than the 2 writers of .*/train'),
    (['--num_clients=5', '--clients_per_round=2'], r'--num_clients=5 but .*/train has 2 writers'),
    (['--task=targeted', '--num_tasks=2', '--task_min_samples=2', '--clients_per_round=1'],
     r'--num_tasks=2 but only 1 writers of .*/train hold at least 2 images of class 7'),
    (['--defense=fltrust', '--fltrust_root_per_class=1', '--server_holdout=10',
      '--clients_per_round=1'],
     r'--fltrust_root_per_class=1 but the server split of 10 images \(--server_holdout\) '
     r'holds fewer of class: count \{\d: 0, \d: 0\}'),
])
def test_what_the_writers_cannot_serve_is_refused_before_tensorflow(tmp_path, args, message):
  root = _leaf_dir(tmp_path / 'leaf')  # digit writers: w1 (7, 7, 1), w2 (7, 3, 3)
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.emnist_backdoor', '--dataset=femnist',
       f'--data_dir={root}', f'--cache_dir={tmp_path / "cache"}', '--rounds=1',
       f'--output_dir={tmp_path / "out"}', *args],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
      text=True, timeout=120)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert re.search(message, lines[0]), lines[0]
  assert 'tensorflow' not in result.stderr.lower() and not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('holdout', [None, 10, 12])
def test_the_server_split_counts_from_labels_are_those_the_load_carves(tmp_path, holdout):
  from tff_backdoor.data import writer_counts  # pylint: disable=g-import-not-at-top
  root = _leaf_dir(tmp_path / 'leaf')
  data = _load(root, server_holdout=holdout)
  counts = writer_counts.server_class_counts(root, cache_dir=os.path.join(root, 'cache'),
                                             server_holdout=holdout)
  np.testing.assert_array_equal(counts, np.bincount(data.server[1], minlength=10))
  assert counts.sum() == (2 if holdout is None else holdout)


def test_a_sweeps_precheck_refuses_a_configuration_the_writers_cannot_serve(tmp_path):
  root = _leaf_dir(tmp_path / 'leaf')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', '--grid=clients_per_round=1,3',
       f'--base_flags=--dataset=femnist --data_dir={root} --cache_dir={tmp_path / "cache"} '
       '--rounds=1', f'--output_dir={tmp_path / "sweep"}'],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
      text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if 'clients_per_round=3' in l]
  assert len(errors) == 1 and 'larger than the 2 writers' in errors[0]
  assert not os.path.exists(tmp_path / 'sweep' / 'clients_per_round=1')  # nothing ran
