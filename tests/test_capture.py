"""Capture from inside the round: the same updates as re-running the clients, at no change to training."""
import collections
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import tiny
from tff_backdoor.aggregators import registry
from tff_backdoor.analysis import captures as captures_lib
from tff_backdoor.attacks import AttackConfig, build_attacker_client_work, make_client_data
from tff_backdoor.learning import process as process_lib
from tff_backdoor.learning import update_capture
from tff_backdoor.run import capture as capture_lib
from tff_backdoor.run import client_inputs
from tff_backdoor.run import driver
from tff_backdoor.run import rundir
from tff_backdoor.run import setup as setup_lib


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')), n_train=240, n_test=60)


def _config(idx_dir, out, **overrides):
  base = dict(num_clients=6, clients_per_round=3, rounds=2, batch_size=10, client_lr=0.1,
              seed=5, task='targeted', source_class=2, target_class=0, num_tasks=1,
              schedule='fixed_frequency', attack_every=1, attack='boost', capture_rounds='all')
  return tiny.run_config(idx_dir, out, **{**base, **overrides})


def test_experiment_captures_equal_the_rerun_path_bit_for_bit(idx_dir, tmp_path):
  """run_experiment's in-round captures == capture_lib.capture_round on the same inputs."""
  config = _config(idx_dir, tmp_path / 'new', defense=registry.DefenseConfig(name='clip',
                                                                             clip_norm=0.5))
  setup = setup_lib.prepare(config)
  driver.run_prepared(setup)
  # Replay the loop's inputs (same streams, same order of draws) with the re-training path.
  streams = setup_lib.streams(config.run.seed)  # pylint: disable=protected-access
  state = setup.process.initialize()
  names = [n for n in captures_lib.load_capture(captures_lib.capture_path(
      str(tmp_path / 'new' / 'captures'), 0)).variable_names]
  for round_num in range(config.fed_avg.rounds):
    participants = setup.schedule.sample_round(round_num, setup.client_ids,
                                               config.fed_avg.clients_per_round, streams['sampling'])
    client_data, _ = client_inputs.round_client_data(setup, participants, streams['round_data'])
    capture_lib.capture_round(setup, state, client_data, participants, round_num,
                             str(tmp_path / 'old'), names)
    state = setup.process.next(state, client_data).state
  for round_num in range(config.fed_avg.rounds):
    new = captures_lib.load_capture(captures_lib.capture_path(str(tmp_path / 'new' / 'captures'),
                                                    round_num))
    old = captures_lib.load_capture(captures_lib.capture_path(str(tmp_path / 'old'), round_num))
    assert new.client_ids == old.client_ids and new.variable_names == old.variable_names
    np.testing.assert_array_equal(new.malicious, old.malicious)
    assert new.malicious.sum() == 1  # the attacker's boosted row is among them
    for a, b in zip(new.updates, old.updates):
      assert a.dtype == b.dtype and a.shape == b.shape
      assert np.array_equal(a, b)  # bit-identical, not merely close


@pytest.mark.parametrize('spool', [False, True])
def test_capture_process_shares_state_and_leaves_training_unchanged(spool, tmp_path):
  """Round by round with a stateful defense: same state, metrics and updates as without.

  Both ways out of the round: stacked in the measurements, or spooled to files.
  """
  model_fn = tiny.model_fn()
  attack = AttackConfig('boost', boost=3.0)
  client_work = build_attacker_client_work(model_fn, tff.learning.optimizers.build_sgdm(0.1),
                                           attack, 4)
  factory = registry.build_defense(registry.DefenseConfig(name='adaptive_clip'), 3, seed=0)
  args = dict(batch_size=4, attack=attack, model_aggregator=factory)
  sgd = tff.learning.optimizers.build_sgdm
  plain = process_lib.build_attacked_fed_avg(model_fn, sgd(0.1), sgd(1.0), **args)
  capturing = process_lib.build_attacked_fed_avg(
      model_fn, sgd(0.1), sgd(1.0), capture_updates=True, capture_spool_dir=str(tmp_path) if spool else None,
      **args)
  empty = tiny.dataset(0, 0)
  state = plain.initialize()
  for round_num in range(2):
    data = [make_client_data(tiny.dataset(6 + i, 10 * round_num + i),
                             tiny.dataset(4, 50 + i) if i == 0 else empty, i == 0,
                             seed=1000 * round_num + i) for i in range(3)]
    reference = update_capture.capture_client_updates(client_work, state,
                                                   plain.get_model_weights(state), data)
    without, with_capture = plain.next(state, data), capturing.next(state, data)
    stacks = update_capture.pop_captured_updates(with_capture.metrics, data)
    assert with_capture.metrics == without.metrics  # nothing else added or changed
    for v, stack in enumerate(stacks):
      assert np.array_equal(stack, np.stack([u[v] for u in reference]))
    for a, b in zip(tf.nest.flatten(with_capture.state), tf.nest.flatten(without.state)):
      assert np.array_equal(a, b)
    state = with_capture.state  # the next round runs the plain process on it
    assert os.listdir(tmp_path) == []  # spool files are read and removed


def _fake_round(seeds_sent, seeds_received):
  data = [make_client_data(tiny.dataset(0, 0), tiny.dataset(0, 0), False, s)
          for s in seeds_sent]
  rows = np.array([[float(s)] for s in seeds_received], np.float32)
  metrics = {'client_work': collections.OrderedDict(
      train=1.0, **{update_capture.CAPTURE_KEY: collections.OrderedDict(
          updates=[rows], seeds=np.array(seeds_received, np.int64))})}
  return metrics, data


def test_pop_captured_updates_puts_rows_back_in_client_order():
  metrics, data = _fake_round([7, 3, 9], [9, 7, 3])  # e.g. shares merged out of order
  (stack,) = update_capture.pop_captured_updates(metrics, data)
  assert stack[:, 0].tolist() == [7.0, 3.0, 9.0]
  assert metrics == {'client_work': {'train': 1.0}}  # the capture is taken out of the metrics
  with pytest.raises(ValueError, match='cannot match'):
    update_capture.pop_captured_updates(*_fake_round([4, 4, 5], [4, 5, 4]))
  with pytest.raises(ValueError, match='cannot match'):
    update_capture.pop_captured_updates(*_fake_round([1, 2], [1, 3]))
  metrics, data = _fake_round([4, 4, 5], [4, 4, 5])  # equal seeds, but already in order
  assert update_capture.pop_captured_updates(metrics, data)[0][:, 0].tolist() == [4.0, 4.0, 5.0]


def test_run_experiment_refuses_capture_without_a_capture_process(idx_dir, tmp_path):
  config = _config(idx_dir, tmp_path, rounds=1, capture_rounds='')
  setup = setup_lib.prepare(config)
  assert setup.capture_process is None  # not built (nor paid for) without --capture_rounds
  setup.config = _config(idx_dir, tmp_path, rounds=1, capture_rounds='0')
  with pytest.raises(ValueError, match='capture_process'):
    driver.run_prepared(setup)
  assert not os.path.exists(tmp_path / 'captures')


def test_a_round_whose_clients_share_a_seed_is_captured_by_rerunning_them(idx_dir, tmp_path,
                                                                         monkeypatch):
  """Spool files are named by control seed; equal seeds fall back to the re-training path."""
  config = _config(idx_dir, tmp_path / 'normal', rounds=1)
  driver.run_experiment(config)
  calls = []
  rerun = capture_lib.capture_round

  def counting_rerun(*args, **kwargs):
    calls.append(1)
    return rerun(*args, **kwargs)
  monkeypatch.setattr(update_capture, 'client_seeds', lambda data: [1] * len(data))
  monkeypatch.setattr(capture_lib, 'capture_round', counting_rerun)
  driver.run_experiment(_config(idx_dir, tmp_path / 'shared', rounds=1))
  assert calls == [1]
  a = captures_lib.load_capture(captures_lib.capture_path(str(tmp_path / 'normal' / 'captures'), 0))
  b = captures_lib.load_capture(captures_lib.capture_path(str(tmp_path / 'shared' / 'captures'), 0))
  assert all(np.array_equal(u, v) for u, v in zip(a.updates, b.updates))
  assert not os.path.exists(rundir.spool_dir(config.run.output_dir))  # cleaned up at the end


@pytest.mark.parametrize('compress', [True, False])
def test_capture_files_read_the_same_compressed_or_not(tmp_path, compress):
  updates = [np.arange(12, dtype=np.float32).reshape(2, 6), np.ones((2, 3), np.float32)]
  path = captures_lib.save_round_capture(str(tmp_path), 3, updates, ['k', 'b'], ['c0', 'c1'],
                                    [False, True], compress=compress)
  capture = captures_lib.load_capture(path)
  assert capture.round_num == 3 and capture.client_ids == ['c0', 'c1']
  assert all(np.array_equal(u, v) for u, v in zip(capture.updates, updates))
