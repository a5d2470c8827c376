"""Tests of tff_backdoor.data on tiny data written by the tests (nothing is downloaded)."""
import collections
import gzip
import os
import sqlite3
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_federated.python.simulation.datasets import download as tff_download

from tff_backdoor import data
from tff_backdoor.data import fetch
from tff_backdoor.data import idx as idx_lib
from tff_backdoor.data import partition as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- helpers
def _images_with_ids(ids, shape=(6, 5)):
  """uint8 images whose first two pixels encode the example id (so splits can be traced)."""
  ids = np.asarray(ids)
  img = np.full((ids.size,) + shape, 128, np.uint8)
  img[:, 0, 0] = ids % 256
  img[:, 0, 1] = ids // 256
  return img


def _ids_of(x):
  px = np.rint(np.asarray(x)[:, 0, :2, 0] * 255).astype(np.int64)
  return px[:, 0] + 256 * px[:, 1]


def _write_idx_dir(d, n_train_per_class=30, n_test=50, gz_train=True, gz_test=False):
  os.makedirs(d, exist_ok=True)
  train_y = np.repeat(np.arange(10), n_train_per_class).astype(np.uint8)
  test_y = (np.arange(n_test) % 10).astype(np.uint8)
  train_x = _images_with_ids(np.arange(train_y.size))
  test_x = _images_with_ids(1000 + np.arange(n_test))
  tr = '.gz' if gz_train else ''
  te = '.gz' if gz_test else ''
  idx_lib.write_idx(os.path.join(d, 'train-images-idx3-ubyte' + tr), train_x)
  idx_lib.write_idx(os.path.join(d, 'train-labels-idx1-ubyte' + tr), train_y)
  idx_lib.write_idx(os.path.join(d, 't10k-images-idx3-ubyte' + te), test_x)
  idx_lib.write_idx(os.path.join(d, 't10k-labels-idx1-ubyte' + te), test_y)
  return d


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return _write_idx_dir(str(tmp_path_factory.mktemp('idx')))


def _example(pixels, label):
  return tf.train.Example(features=tf.train.Features(feature={
      'pixels': tf.train.Feature(float_list=tf.train.FloatList(value=pixels.ravel())),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
  })).SerializeToString()


def _write_emnist_sqlite(path, writers=('f0000_00', 'f0001_11', 'f0002_22', 'f0003_33'),
                         n_train=5, n_test=3):
  """A tiny emnist_all.sqlite in TFF's schema; pixel [0,0] encodes a global example id."""
  con = sqlite3.connect(path)
  con.execute('CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, '
              'serialized_example_proto BLOB NOT NULL);')
  con.execute('CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT '
              'NULL, num_examples INTEGER NOT NULL);')
  truth = collections.defaultdict(dict)
  uid = 0
  for prefix in ('digits_only', 'all'):
    for split, count in (('train', n_train), ('test', n_test)):
      name = f'{prefix}_{split}'
      for w, writer in enumerate(writers):
        xs, ys = [], []
        for i in range(count):
          pixels = np.ones((28, 28), np.float32)
          pixels[0, 0] = uid / 1000.0
          label = (w + i) % 10 if prefix == 'digits_only' else (w * 7 + i) % 62
          con.execute('INSERT INTO examples VALUES (?, ?, ?)',
                      (name, writer, _example(pixels, label)))
          xs.append(pixels)
          ys.append(label)
          uid += 1
        con.execute('INSERT INTO client_metadata VALUES (?, ?, ?)', (writer, name, count))
        truth[name][writer] = (np.stack(xs)[..., None], np.asarray(ys, np.int32))
  con.commit()
  con.close()
  return truth


@pytest.fixture(scope='module')
def emnist_cache(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tffcache'))
  truth = _write_emnist_sqlite(os.path.join(d, 'emnist_all.sqlite'))
  return d, truth


@pytest.fixture
def no_network(monkeypatch):
  """Makes any download attempt fail at once; returns the list of attempted URLs."""
  attempts = []

  def refuse(origin, filename):
    attempts.append(origin)
    raise urllib.error.URLError('network disabled in tests')

  monkeypatch.setattr(tff_download, '_fetch_lzma_file', refuse)
  monkeypatch.setattr(urllib.request, 'urlopen',
                      lambda *a, **k: (_ for _ in ()).throw(OSError('no network in tests')))
  return attempts


# ---------------------------------------------------------------- idx
@pytest.mark.parametrize('suffix', ['', '.gz'])
def test_idx_round_trip(tmp_path, suffix):
  arr = np.random.default_rng(0).integers(0, 256, size=(7, 4, 3), dtype=np.uint8)
  path = str(tmp_path / f'a-images-idx3-ubyte{suffix}')
  idx_lib.write_idx(path, arr)
  if suffix:
    with gzip.open(path, 'rb') as f:
      assert f.read(4) == b'\x00\x00\x08\x03'
  out = idx_lib.read_idx(path)
  assert out.dtype == np.uint8 and out.shape == (7, 4, 3)
  np.testing.assert_array_equal(out, arr)


def test_load_idx_dir_mixed_gz_and_plain(idx_dir):
  (x, y), (tx, ty) = idx_lib.load_idx_dir(idx_dir)
  assert x.shape == (300, 6, 5, 1) and tx.shape == (50, 6, 5, 1)
  assert x.dtype == np.float32 and y.dtype == np.int32 and ty.dtype == np.int32
  assert 0.0 <= x.min() and x.max() <= 1.0
  np.testing.assert_allclose(x[0, 1, 1, 0], 128 / 255, rtol=1e-6)
  np.testing.assert_array_equal(_ids_of(x), np.arange(300))
  np.testing.assert_array_equal(y, np.repeat(np.arange(10), 30))


def test_idx_bad_magic_and_size(tmp_path):
  bad = tmp_path / 'bad-images-idx3-ubyte'
  bad.write_bytes(b'\x01\x02\x08\x03' + bytes(20))
  with pytest.raises(data.DataError, match='bad magic'):
    idx_lib.read_idx(str(bad))
  short = tmp_path / 'short-images-idx3-ubyte'
  short.write_bytes(bytes([0, 0, 8, 1]) + np.asarray([10], '>u4').tobytes() + bytes(9))
  with pytest.raises(data.DataError, match='needs 10'):
    idx_lib.read_idx(str(short))


def test_idx_missing_dir_and_files(tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(data.DataError, match='nowhere.*--data_dir'):
    idx_lib.load_idx_dir(missing)
  (tmp_path / 'train-images-idx3-ubyte').write_bytes(b'')
  with pytest.raises(data.DataError, match='t10k-images') as e:
    idx_lib.load_idx_dir(str(tmp_path))
  assert '\n' not in str(e.value)
  with pytest.raises(data.DataError, match='needs --data_dir'):
    data.load_federated_data('idx')


def test_fashion_mnist_default_dir_missing(tmp_path, monkeypatch):
  monkeypatch.setattr(idx_lib, 'FASHION_MNIST_DIR', str(tmp_path / 'fm'))
  monkeypatch.setattr(idx_lib, 'KERAS_DATASETS_DIR', str(tmp_path / 'keras'))
  with pytest.raises(data.DataError, match='apt-get install -y dataset-fashion-mnist'):
    data.load_federated_data('fashion_mnist')
  _write_idx_dir(str(tmp_path / 'keras' / 'fashion-mnist'))  # Keras' cache is a fallback.
  (x, _), _ = idx_lib.load_centralised('fashion_mnist')
  assert x.shape == (300, 6, 5, 1)


def test_mnist_from_keras_npz(tmp_path, monkeypatch):
  monkeypatch.setattr(idx_lib, 'KERAS_DATASETS_DIR', str(tmp_path))
  with pytest.raises(data.DataError, match='MNIST not found.*--data_dir'):
    data.load_federated_data('mnist')
  y = np.arange(40) % 10
  np.savez(tmp_path / 'mnist.npz', x_train=_images_with_ids(np.arange(40)), y_train=y,
           x_test=_images_with_ids(100 + np.arange(10)), y_test=y[:10])
  fd = data.load_federated_data('mnist', partition='iid', num_clients=3, server_holdout=10)
  assert fd.test[0].shape == (10, 6, 5, 1) and fd.partition_report['num_examples'] == 30
  np.testing.assert_array_equal(np.bincount(fd.server[1]), np.ones(10))


# ---------------------------------------------------------------- partitions
LABELS = np.random.default_rng(42).integers(0, 10, size=2000)


def _check_partition(parts, n):
  allidx = np.concatenate(parts)
  assert allidx.size == n and np.array_equal(np.sort(allidx), np.arange(n))
  assert all(p.size > 0 for p in parts)


@pytest.mark.parametrize('fn', [
    lambda s: P.iid_partition(LABELS, 20, s),
    lambda s: P.dirichlet_partition(LABELS, 20, 0.5, s),
    lambda s: P.shard_partition(LABELS, 20, 2, s),
], ids=['iid', 'dirichlet', 'shards'])
def test_partitions_cover_disjoint_and_seeded(fn):
  a, b, c = fn(0), fn(0), fn(1)
  _check_partition(a, LABELS.size)
  assert len(a) == 20
  assert all(np.array_equal(p, q) for p, q in zip(a, b))
  assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_dirichlet_alpha_controls_skew():
  skew = {a: P.partition_report(P.dirichlet_partition(LABELS, 20, a, 3), LABELS)
          ['label_tv_distance']['mean'] for a in (0.1, 100.0)}
  assert skew[0.1] > 0.5 > 0.15 > skew[100.0]
  parts = P.dirichlet_partition(LABELS, 20, 0.1, 3, min_size=30)
  assert min(p.size for p in parts) >= 30


def test_shards_limit_labels_per_client():
  uneven = np.concatenate([np.zeros(700), np.ones(200), np.full(100, 2),
                           np.arange(1000) % 7 + 3]).astype(np.int64)
  for labels, spc in ((LABELS, 2), (uneven, 2), (uneven, 3)):
    parts = P.shard_partition(labels, 25, spc, 5)
    _check_partition(parts, labels.size)
    assert max(np.unique(labels[p]).size for p in parts) <= spc
  assert P.partition_report(P.shard_partition(LABELS, 25, 1, 0), LABELS)[
      'labels_per_client']['max'] == 1


def test_partition_validation():
  with pytest.raises(data.DataError, match='num_clients'):
    P.iid_partition(LABELS, 0, 0)
  with pytest.raises(data.DataError, match='num_clients'):
    P.dirichlet_partition(LABELS, LABELS.size + 1, 0.5, 0)
  with pytest.raises(data.DataError, match='alpha'):
    P.dirichlet_partition(LABELS, 5, 0.0, 0)
  with pytest.raises(data.DataError, match='shards_per_client'):
    P.shard_partition(LABELS, 5, 0, 0)
  with pytest.raises(data.DataError, match='draws'):
    P.dirichlet_partition(LABELS[:100], 100, 0.01, 0, max_tries=3)


def test_stratified_holdout():
  held, rest = P.stratified_holdout(np.repeat(np.arange(4), 25), 20, 0)
  assert held.size == 20 and rest.size == 80 and np.intersect1d(held, rest).size == 0
  np.testing.assert_array_equal(np.bincount(held // 25), [5, 5, 5, 5])
  with pytest.raises(data.DataError, match='server_holdout'):
    P.stratified_holdout(np.arange(10), 10, 0)


# ---------------------------------------------------------------- load_federated_data
@pytest.mark.parametrize('partition', ['iid', 'dirichlet', 'shards'])
def test_load_federated_idx(idx_dir, partition):
  fd = data.load_federated_data('idx', data_dir=idx_dir, partition=partition, num_clients=7,
                                server_holdout=40, seed=3)
  assert fd.name == 'idx' and fd.num_classes == 10 and fd.input_shape == (6, 5, 1)
  ids = fd.train.client_ids
  assert ids == [f'client_{i:03d}' for i in range(7)]
  arrays = data.client_arrays(fd.train)
  client_ex = np.concatenate([_ids_of(x) for x, _ in arrays.values()])
  server_ex, test_ex = _ids_of(fd.server[0]), _ids_of(fd.test[0])
  # Clients + server are exactly the train set, pairwise disjoint; test is the t10k file.
  assert np.array_equal(np.sort(np.concatenate([client_ex, server_ex])), np.arange(300))
  np.testing.assert_array_equal(np.sort(test_ex), 1000 + np.arange(50))
  assert fd.server[0].shape == (40, 6, 5, 1) and fd.test[0].shape == (50, 6, 5, 1)
  np.testing.assert_array_equal(np.bincount(fd.server[1]), np.full(10, 4))  # stratified
  for x, y in list(arrays.values()) + [fd.server, fd.test]:
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(y, _ids_of(x) // 30 if x is not fd.test[0]
                                  else (_ids_of(x) - 1000) % 10)  # labels follow the images
  sizes = [y.size for _, y in arrays.values()]
  rep = fd.partition_report
  assert rep['partition'] == partition and rep['num_clients'] == 7
  assert rep['num_examples'] == 260 and rep['server_size'] == 40 and rep['test_size'] == 50
  assert rep['client_sizes']['min'] == min(sizes) and rep['client_sizes']['max'] == max(sizes)
  assert rep['client_sizes']['median'] == float(np.median(sizes))
  assert rep['labels_per_client']['max'] == max(np.unique(y).size for _, y in arrays.values())
  # The tf.data view TFF trains on holds the same examples as the numpy view.
  spec = fd.train.element_type_structure
  assert spec['x'].shape == (6, 5, 1) and spec['x'].dtype == tf.float32
  assert spec['y'].shape == () and spec['y'].dtype == tf.int32
  batch = next(iter(fd.train.create_tf_dataset_for_client(ids[1]).batch(1000)))
  np.testing.assert_array_equal(batch['x'].numpy(), arrays[ids[1]][0])
  np.testing.assert_array_equal(batch['y'].numpy(), arrays[ids[1]][1])


def test_load_federated_seeded(idx_dir):
  kw = dict(data_dir=idx_dir, partition='dirichlet', num_clients=5, server_holdout=20)
  a, b, c = (data.load_federated_data('idx', seed=s, **kw) for s in (1, 1, 2))
  ya, yb, yc = (np.concatenate([y for _, y in data.client_arrays(f.train).values()])
                for f in (a, b, c))
  np.testing.assert_array_equal(ya, yb)
  np.testing.assert_array_equal(a.server[0], b.server[0])
  assert not np.array_equal(_ids_of(a.server[0]), _ids_of(c.server[0]))


def test_train_fraction_keeps_a_seeded_stratified_share(idx_dir):
  kw = dict(data_dir=idx_dir, partition='iid', num_clients=4, server_holdout=40)
  full = data.load_federated_data('idx', seed=1, **kw)
  half, again = (data.load_federated_data('idx', seed=1, train_fraction=0.5, **kw)
                 for _ in range(2))
  ids = lambda fd: np.sort(np.concatenate(  # pylint: disable=g-long-lambda
      [_ids_of(x) for x, _ in data.client_arrays(fd.train).values()]))
  full_ids, half_ids = ids(full), ids(half)
  assert half_ids.size == 130 and set(half_ids) <= set(full_ids)  # 260 -> 130, no new examples
  np.testing.assert_array_equal(half_ids, ids(again))
  np.testing.assert_array_equal(np.bincount(half_ids // 30, minlength=10), np.full(10, 13))
  np.testing.assert_array_equal(half.server[0], full.server[0])  # server and test untouched
  np.testing.assert_array_equal(half.test[0], full.test[0])
  assert half.partition_report['params']['train_fraction'] == 0.5
  assert half.partition_report['num_examples'] == 130
  with pytest.raises(data.DataError, match=r'train_fraction must be in \(0, 1\]'):
    data.load_federated_data('idx', train_fraction=0.0, **kw)
  with pytest.raises(data.DataError, match='fewer than num_clients=4'):
    data.load_federated_data('idx', train_fraction=0.01, **kw)
  with pytest.raises(data.DataError, match='for emnist take fewer writers'):
    data.load_federated_data('emnist', train_fraction=0.5)


def test_unknown_names_and_bad_args(idx_dir):
  with pytest.raises(data.DataError, match='emnist, mnist, fashion_mnist, idx'):
    data.load_federated_data('cifar10')
  with pytest.raises(data.DataError, match='iid, dirichlet, shards'):
    data.load_federated_data('idx', data_dir=idx_dir, partition='pathological')
  with pytest.raises(data.DataError, match='server_holdout'):
    data.load_federated_data('idx', data_dir=idx_dir, server_holdout=300)
  with pytest.raises(data.DataError, match='num_clients'):
    data.load_federated_data('idx', data_dir=idx_dir, num_clients=0)


def test_client_arrays_paths(idx_dir):
  fd = data.load_federated_data('idx', data_dir=idx_dir, partition='iid', num_clients=3,
                                server_holdout=0)
  assert fd.server[0].shape == (0, 6, 5, 1) and fd.server[1].dtype == np.int32
  fast = data.client_arrays(fd.train, ['client_002'])
  assert list(fast) == ['client_002'] and not fast['client_002'][0].flags.writeable
  slow = data.client_arrays(fd.train.preprocess(lambda ds: ds.map(lambda e: e)), ['client_002'])
  np.testing.assert_array_equal(fast['client_002'][0], slow['client_002'][0])
  np.testing.assert_array_equal(fast['client_002'][1], slow['client_002'][1])
  with pytest.raises(data.DataError, match='unknown client'):
    data.client_arrays(fd.train, ['client_999'])


# ---------------------------------------------------------------- EMNIST
def test_emnist_from_tiny_sqlite(emnist_cache, no_network):
  cache, truth = emnist_cache
  fd = data.load_federated_data('emnist', cache_dir=cache, num_clients=0, server_holdout=4,
                                seed=0)
  assert no_network == []  # The file was there: TFF must not try the download.
  train_truth = truth['digits_only_train']
  assert sorted(fd.train.client_ids) == sorted(train_truth)
  assert fd.num_classes == 10 and fd.input_shape == (28, 28, 1) and fd.name == 'emnist'
  spec = fd.train.element_type_structure
  assert spec['x'].shape == (28, 28, 1) and spec['y'].dtype == tf.int32 and spec['y'].shape == ()
  cid = 'f0001_11'
  batch = next(iter(fd.train.create_tf_dataset_for_client(cid).batch(100)))
  np.testing.assert_allclose(batch['x'].numpy(), train_truth[cid][0])
  np.testing.assert_array_equal(batch['y'].numpy(), train_truth[cid][1])
  arrays = data.client_arrays(fd.train)  # one-scan SQL path
  for w, (x, y) in train_truth.items():
    np.testing.assert_allclose(arrays[w][0], x)
    np.testing.assert_array_equal(arrays[w][1], y)
  # Server + test = every writer's test data, disjoint, server of the requested size.
  test_ids = np.concatenate([np.rint(x[:, 0, 0, 0] * 1000) for x, _ in
                             truth['digits_only_test'].values()])
  got_test, got_server = (np.rint(a[0][:, 0, 0, 0] * 1000) for a in (fd.test, fd.server))
  assert got_server.size == 4 and got_test.size == test_ids.size - 4
  assert np.array_equal(np.sort(np.concatenate([got_test, got_server])), np.sort(test_ids))
  rep = fd.partition_report
  assert rep['partition'] == 'natural' and rep['num_clients'] == 4
  assert rep['num_examples'] == 20 and rep['client_sizes']['max'] == 5
  assert rep['test_size'] == got_test.size and rep['background_value'] == 1.0


def test_emnist_writer_subset_and_all_classes(emnist_cache, no_network):
  cache, truth = emnist_cache
  a, b = (data.load_federated_data('emnist', cache_dir=cache, num_clients=2, server_holdout=0,
                                   seed=5) for _ in range(2))
  assert len(a.train.client_ids) == 2 and a.train.client_ids == b.train.client_ids
  assert set(a.train.client_ids) <= set(truth['digits_only_train'])
  assert sorted(data.client_arrays(a.train)) == sorted(a.train.client_ids)
  cid = a.train.client_ids[1]
  batch = next(iter(a.train.create_tf_dataset_for_client(cid).batch(100)))
  np.testing.assert_array_equal(batch['y'].numpy(), truth['digits_only_train'][cid][1])
  assert a.test[0].shape[0] == 12 and a.server[0].shape == (0, 28, 28, 1)
  full = data.load_federated_data('emnist', cache_dir=cache, only_digits=False,
                                  server_holdout=1)
  assert full.num_classes == 62 and full.name == 'emnist62'
  y = data.client_arrays(full.train)['f0003_33'][1]
  np.testing.assert_array_equal(y, truth['all_train']['f0003_33'][1])
  assert y.max() >= 10  # letters come from the all_* split


def test_emnist_absent_file_one_clear_error(tmp_path, no_network):
  cache = str(tmp_path / 'empty_cache')
  with pytest.raises(data.DataError) as e:
    data.load_federated_data('emnist', cache_dir=cache)
  msg = str(e.value)
  assert msg.startswith('federated EMNIST not found: expected ')
  assert os.path.join(cache, 'emnist_all.sqlite') in msg and 'network disabled' in msg
  assert '\n' not in msg and no_network and no_network[0].endswith('emnist_all.sqlite.lzma')


def test_emnist_partial_download_is_removed(tmp_path, monkeypatch):
  def partial(origin, filename):
    with open(filename, 'wb') as f:
      f.write(b'half a file')
    raise ConnectionResetError('connection dropped\nsecond line')

  monkeypatch.setattr(tff_download, '_fetch_lzma_file', partial)
  with pytest.raises(data.DataError, match='ConnectionResetError: connection dropped') as e:
    data.load_federated_data('emnist', cache_dir=str(tmp_path))
  assert '\n' not in str(e.value) and not (tmp_path / 'emnist_all.sqlite').exists()


def test_emnist_corrupt_file(tmp_path, no_network):
  (tmp_path / 'emnist_all.sqlite').write_bytes(b'not a database' * 100)
  with pytest.raises(data.DataError, match='delete it'):
    data.load_federated_data('emnist', cache_dir=str(tmp_path))
  assert no_network == []


# ---------------------------------------------------------------- fetch
@pytest.fixture
def fetch_env(tmp_path, monkeypatch):
  """Empty default and Keras dirs, no real apt-get or download; records calls."""
  calls = []
  monkeypatch.setattr(idx_lib, 'FASHION_MNIST_DIR', str(tmp_path / 'apt'))
  monkeypatch.setattr(idx_lib, 'KERAS_DATASETS_DIR', str(tmp_path / 'keras'))
  monkeypatch.setattr(fetch, '_run', lambda cmd: calls.append(cmd) or
                      subprocess.CompletedProcess(cmd, 100, '', 'E: Unable to locate package'))
  monkeypatch.setattr(fetch, '_keras_download', lambda: calls.append('keras') or
                      'URLError: no network')
  return tmp_path, calls


def test_fetch_found_on_disk(fetch_env):
  tmp, calls = fetch_env
  target = _write_idx_dir(str(tmp / 'mine'))
  assert fetch.ensure_fashion_mnist(target) == target and calls == []


def test_fetch_apt_retries_after_update(fetch_env, monkeypatch):
  tmp, calls = fetch_env
  monkeypatch.setattr(fetch, '_apt_usable', lambda: True)

  def fake_run(cmd):
    calls.append(cmd)
    ok = cmd[:2] == ['apt-get', 'install'] and ['apt-get', 'update'] in calls
    if ok:
      _write_idx_dir(str(tmp / 'apt'))
    return subprocess.CompletedProcess(cmd, 0 if ok or cmd[1] == 'update' else 100, '', 'E')

  monkeypatch.setattr(fetch, '_run', fake_run)
  assert fetch.ensure_fashion_mnist(str(tmp / 'target')) == str(tmp / 'apt')
  install = ['apt-get', 'install', '-y', 'dataset-fashion-mnist']
  assert calls == [install, ['apt-get', 'update'], install]


def test_fetch_keras_fallback(fetch_env, monkeypatch):
  tmp, calls = fetch_env
  monkeypatch.setattr(fetch, '_apt_usable', lambda: False)
  monkeypatch.setattr(fetch, '_keras_download',
                      lambda: _write_idx_dir(str(tmp / 'keras' / 'fashion-mnist')) and None)
  assert fetch.ensure_fashion_mnist(str(tmp / 'target')) == str(tmp / 'keras' / 'fashion-mnist')
  assert calls == []


def test_fetch_cli_failure_and_success(fetch_env, monkeypatch, capsys):
  tmp, calls = fetch_env
  monkeypatch.setattr(fetch, '_apt_usable', lambda: True)
  assert fetch.main(['fashion_mnist']) == 1
  out, err = capsys.readouterr()
  assert out == '' and err.count('\n') == 1 and 'Traceback' not in err
  assert 'apt-get install -y dataset-fashion-mnist' in err and 'no network' in err
  assert calls[-1] == 'keras'
  _write_idx_dir(str(tmp / 'apt'))
  assert fetch.main(['fashion_mnist']) == 0
  assert capsys.readouterr().out == str(tmp / 'apt') + '\n'


def test_fetch_cli_subprocess_usage_error():
  proc = subprocess.run([sys.executable, '-m', 'tff_backdoor.data.fetch', 'imagenet'],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1 and proc.stdout == ''
  assert proc.stderr.count('\n') == 1 and 'fashion_mnist' in proc.stderr
  light = subprocess.run([sys.executable, '-c', 'import sys, tff_backdoor.data.fetch; '
                          'print(sorted(m for m in ("tensorflow", "tensorflow_federated") '
                          'if m in sys.modules))'],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
  assert light.stdout.strip() == '[]'  # the CLI does not pay for importing TF/TFF
