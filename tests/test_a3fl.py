"""A3FL (Zhang et al. 2023): the trigger step against a NumPy reference, the search against its
own objective, and a run whose backdoor is measured with the optimized trigger."""
import collections
import json

import numpy as np
import pytest
import tensorflow as tf

from tests import tiny
from tff_backdoor.attacks import a3fl
from tff_backdoor.attacks import tasks as tasks_lib
from tff_backdoor.run import adaptive_trigger

SHAPE, CLASSES, TARGET = (4, 4, 1), 3, 2


def _linear(seed):
  model = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=SHAPE),
                               tf.keras.layers.Dense(CLASSES)])
  rng = np.random.default_rng(seed)
  model.set_weights([rng.normal(size=(16, CLASSES)).astype(np.float32),
                     rng.normal(size=CLASSES).astype(np.float32)])
  return model


def _mask():
  mask = np.zeros(SHAPE[:2], bool)
  mask[1:3, 1:3] = True
  return mask


def _ce_gradient(kernel, bias, stamped, mask):
  """d mean CE(target) / d trigger of a linear softmax model, by hand."""
  logits = stamped.reshape(len(stamped), -1) @ kernel + bias
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[:, TARGET] -= 1.0
  d_input = (p @ kernel.T / len(stamped)).reshape(stamped.shape)
  return (d_input * mask[None, :, :, None]).sum(0)


def test_trigger_step_is_the_signed_gradient_of_both_models_losses():
  search = a3fl.TriggerSearch(lambda: _linear(0), _mask(), 1, TARGET, batch_size=8,
                              lr=0.05, noise_lambda=5.0)
  search.adversary.set_weights(_linear(1).get_weights())
  rng = np.random.default_rng(2)
  x = rng.random((6, *SHAPE)).astype(np.float32)
  trigger = rng.random(SHAPE).astype(np.float32)
  m = _mask()[:, :, None]
  stamped = x * (1 - m) + trigger * m
  (k0, b0), (k1, b1) = search.model.get_weights(), search.adversary.get_weights()
  plain = _ce_gradient(k0, b0, stamped, _mask())
  both = plain + 5.0 * 0.7 * _ce_gradient(k1, b1, stamped, _mask())
  for weight, gradient in ((None, plain), (tf.constant(0.7), both)):
    got = search.trigger_step(tf.constant(x), tf.constant(trigger), weight).numpy()
    want = np.clip(trigger - 0.05 * np.sign(gradient), 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(got[~_mask()], trigger[~_mask()])  # off the mask: untouched
  assert np.any(np.sign(plain) != np.sign(both))  # the adversary's term changes the direction


def test_search_lowers_the_backdoor_loss_and_counts_its_passes():
  rng = np.random.default_rng(3)
  x = rng.random((10, *SHAPE)).astype(np.float32)
  y = rng.integers(0, CLASSES, 10).astype(np.int32)
  search = a3fl.TriggerSearch(lambda: _linear(4), _mask(), 1, TARGET, batch_size=4, epochs=3,
                              lr=0.1, adv_epochs=2, adv_every=1)
  weights = search.model.get_weights()

  def loss(trigger):
    stamped = a3fl.stamp(x, tf.constant(trigger), search.mask)
    return float(tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
        np.full(10, TARGET), search.model(stamped), from_logits=True)))

  before = loss(search.trigger)
  np.testing.assert_array_equal(search.trigger, 0.5)  # the authors' grey start
  passes = search.search(weights, x, x, y)
  assert loss(search.trigger) < before - 0.05
  # epoch 0: 10 passes; epochs 1, 2: an adversary (2 epochs x 10) and 2 x 10 passes each.
  assert passes == 10 + 2 * (20 + 20)
  assert 0.0 < a3fl.kernel_similarity(search.adversary, search.model) < 1.0


def test_set_trigger_restamps_the_backdoor_set():
  test_x = np.zeros((4, 6, 6, 1), np.float32)
  task = tasks_lib.PixelTriggerTask(test_x, np.array([0, 0, 1, 2]), target_class=1,
                                    source_class=0, trigger_size=2)
  values = np.random.default_rng(0).random((6, 6, 1)).astype(np.float32)
  task.set_trigger(values)
  x, _ = task.eval_sets()['backdoor']
  np.testing.assert_array_equal(x[:, task.mask], np.broadcast_to(values[task.mask], (2, 4, 1)))
  np.testing.assert_array_equal(x[:, ~task.mask], 0.0)
  poisoned, _ = task.poison(np.ones((1, 6, 6, 1), np.float32), 0)
  np.testing.assert_array_equal(poisoned[0][task.mask], values[task.mask])


def test_the_search_uses_the_first_attacker_with_source_images_as_the_authors():
  """One search a round, on one attacker's images (the authors' `first_adversary`): the first
  attacker of the round's order that holds source images; honest clients never count."""
  participant = collections.namedtuple('participant', 'client_id is_attacker')
  task = collections.namedtuple('task', 'is_source')(lambda y: y == 1)
  image = lambda v, n: np.full((n, 2, 2, 1), v, np.uint8)
  clients = {'honest': (image(9, 4), [1, 1, 1, 1]), 'no_source': (image(7, 2), [0, 2]),
             'a': (image(255, 3), [1, 0, 1]), 'b': (image(51, 5), [1] * 5)}
  round_ = [participant('honest', False), participant('no_source', True),
            participant('a', True), participant('b', True)]
  source, x, y = adaptive_trigger.searched_images(round_, clients, task)
  assert (len(source), len(x)) == (2, 3) and y.tolist() == [1, 0, 1]
  np.testing.assert_array_equal(source, 1.0)  # a's images, as floats in [0, 1]
  assert adaptive_trigger.searched_images(round_[:2], clients, task) is None


def test_a3fl_run_measures_the_backdoor_with_the_optimized_trigger(tmp_path):
  from tff_backdoor.run import driver
  from tff_backdoor.run import setup as setup_lib
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  config = tiny.run_config(
      idx_dir, tmp_path / 'run', num_clients=12, clients_per_round=4, rounds=2,
      batch_size=10, seed=3, task='pixel', source_class=1, target_class=0, trigger_size=3,
      schedule='fixed_frequency', attack_every=1, attack_stop=1, attack='a3fl',
      a3fl_trigger_epochs=3, a3fl_adv_epochs=1, eval_subset=0)
  setup = setup_lib.prepare(config)
  final = driver.run_prepared(setup)
  trigger = setup.task.trigger_value
  assert trigger.shape == (8, 8, 1) and np.any(trigger[setup.task.mask] != 0.5)
  np.testing.assert_array_equal(np.load(tmp_path / 'run' / 'a3fl_trigger.npy'), trigger)
  stamped = setup.eval_sets['backdoor'][0][:, setup.task.mask]  # what backdoor acc. used
  np.testing.assert_array_equal(stamped, np.broadcast_to(trigger[setup.task.mask],
                                                         stamped.shape))
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [r['num_attackers'] for r in rows] == [1, 0]
  assert rows[0]['trigger_search_examples'] > 0 and rows[1]['trigger_search_examples'] == 0
  assert rows[0]['examples_trained'] > rows[0]['trigger_search_examples']
  assert final['examples_trained'] == sum(r['examples_trained'] for r in rows)
  assert final['last_attack_round'] == 0


def _a3fl_config(idx_dir, out, **kw):
  return tiny.run_config(
      idx_dir, out, num_clients=12, clients_per_round=4, rounds=4, batch_size=10, seed=3,
      task='pixel', source_class=1, target_class=0, trigger_size=3, schedule='fixed_frequency',
      attack_every=1, attack='a3fl', a3fl_trigger_epochs=2, a3fl_adv_epochs=1, eval_subset=0,
      checkpoint_every=1, **kw)


def _run_rows(out):
  with open(out / 'metrics.jsonl') as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'round_seconds'} for line in f]


def test_a_killed_and_resumed_a3fl_run_writes_the_rows_of_an_uninterrupted_one(tmp_path):
  """The trigger goes into every checkpoint and comes back on --resume: the search of the
  rounds after the kill continues from it (from the grey trigger the rows would differ)."""
  import tensorflow_federated as tff
  from tff_backdoor.run import driver
  from tff_backdoor.run import setup as setup_lib
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  driver.run_experiment(_a3fl_config(idx_dir, tmp_path / 'ref'))
  reference = _run_rows(tmp_path / 'ref')
  assert all(r['num_attackers'] == 1 and r['trigger_search_examples'] > 0 for r in reference)

  out = tmp_path / 'killed'
  setup = setup_lib.prepare(_a3fl_config(idx_dir, out))
  setup.process = tiny.StopAfter(setup.process, 2)
  with pytest.raises(KeyboardInterrupt):
    driver.run_prepared(setup)
  tff.backends.native.set_sync_local_cpp_execution_context()
  with open(out / 'checkpoints' / 'ckpt-000002' / 'meta.json') as f:
    saved = np.asarray(json.load(f)[adaptive_trigger.META_KEY], np.float32)
  assert saved.shape == (8, 8, 1) and np.any(saved != a3fl.INITIAL_VALUE)

  driver.run_experiment(_a3fl_config(idx_dir, out, resume=True))
  assert _run_rows(out) == reference
  np.testing.assert_array_equal(np.load(out / 'a3fl_trigger.npy'),
                                np.load(tmp_path / 'ref' / 'a3fl_trigger.npy'))


def test_a_checkpoint_without_a_trigger_restarts_the_search_and_says_so(tmp_path, capfd):
  from tff_backdoor.run import setup as setup_lib
  idx_dir = tiny.write_idx_dataset(str(tmp_path / 'idx'))
  setup = setup_lib.prepare(_a3fl_config(idx_dir, tmp_path / 'run'))
  state = setup.process.initialize()
  hook = adaptive_trigger.build(setup, state, {'next_round': 2})
  assert 'holds no A3FL trigger' in capfd.readouterr().err
  np.testing.assert_array_equal(hook.search.trigger, a3fl.INITIAL_VALUE)
  bad = np.zeros((2, 2, 1)).tolist()
  with pytest.raises(ValueError, match='another configuration'):
    adaptive_trigger.build(setup, state, {'next_round': 2, adaptive_trigger.META_KEY: bad})
  good = np.full(hook.search.trigger.shape, 0.25, np.float32)
  restored = adaptive_trigger.build(setup, state, {adaptive_trigger.META_KEY: good.tolist()})
  np.testing.assert_array_equal(setup.task.trigger_value, good)
  np.testing.assert_array_equal(restored.search.trigger, good)
