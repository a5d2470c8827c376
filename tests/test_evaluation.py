"""Evaluation: the compiled loop equals Keras' evaluate; the in-between subset; final figures."""
import json
import os

import numpy as np
import pytest

from tests import tiny
from tff_backdoor import models
from tff_backdoor.run import driver
from tff_backdoor.run import evaluation
from tff_backdoor.run import setup as setup_lib


def test_evaluator_gives_what_keras_evaluate_gives_bit_for_bit():
  builder = lambda: models.tiny_cnn(tiny.SHAPE, tiny.NUM_CLASSES, seed=4)
  for batch_size in (7, 64):  # 50 = 7 * 7 + 1: a short last batch; 64: one batch
    evaluator = evaluation.Evaluator(builder, batch_size)
    sets = {'a': tiny.arrays(50, seed=1), 'b': tiny.arrays(13, seed=2),
            'empty': tiny.arrays(0, seed=3)}
    got = evaluator.evaluate(sets)
    assert sorted(got) == ['a_accuracy', 'a_loss', 'b_accuracy', 'b_loss']  # empty skipped
    for name in ('a', 'b'):
      loss, acc = evaluator.model.evaluate(*sets[name], batch_size=batch_size, verbose=0)
      assert got[f'{name}_loss'] == loss and got[f'{name}_accuracy'] == acc
    assert 0.0 < got['a_accuracy'] < 1.0  # a real mixture of right and wrong


def _setup(idx_dir, out, **overrides):
  base = dict(num_clients=6, clients_per_round=3, rounds=3, batch_size=10, seed=1,
              task='targeted', source_class=2, target_class=0, num_tasks=1,
              schedule='fixed_frequency', attack='boost', eval_subset=60)
  return tiny.run_config(idx_dir, out, **{**base, **overrides})


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return tiny.write_idx_dataset(str(tmp_path_factory.mktemp('idx')), n_train=240, n_test=150)


def test_between_rounds_subset_is_fixed_seeded_and_stratified(idx_dir, tmp_path):
  setup = setup_lib.prepare(_setup(idx_dir, tmp_path))
  sets = evaluation.between_rounds_eval_sets(setup)
  (x, y), (fx, fy) = sets['test'], setup.eval_sets['test']
  assert len(y) == 60 and x.shape[1:] == fx.shape[1:]
  full_share = np.bincount(fy, minlength=3) / len(fy)
  assert np.abs(np.bincount(y, minlength=3) / 60 - full_share).max() <= 1 / 60  # stratified
  assert all(sets[k] is setup.eval_sets[k] for k in sets if k != 'test')  # backdoor sets whole
  again = evaluation.between_rounds_eval_sets(setup)['test']
  assert np.array_equal(again[0], x) and np.array_equal(again[1], y)
  setup.config.run.seed = 2
  other = evaluation.between_rounds_eval_sets(setup)['test']
  assert not np.array_equal(other[0], x)  # another seed, other images
  for n in (0, len(fy)):
    setup.config.run.eval_subset = n
    assert evaluation.between_rounds_eval_sets(setup) is setup.eval_sets


def _rows(out):
  with open(os.path.join(out, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_subset_rounds_keep_backdoor_every_round_and_final_figures(idx_dir, tmp_path):
  subset = driver.run_experiment(_setup(idx_dir, tmp_path / 'subset'))
  whole = driver.run_experiment(_setup(idx_dir, tmp_path / 'whole', eval_subset=0))
  for key in ('test_accuracy', 'test_loss', 'backdoor_accuracy', 'backdoor_loss'):
    assert subset[key] == whole[key]  # final-round figures do not change
  rows, whole_rows = _rows(tmp_path / 'subset'), _rows(tmp_path / 'whole')
  assert [r['test_examples'] for r in rows] == [60, 60, 150]  # the last round: whole
  assert [r['test_examples'] for r in whole_rows] == [150, 150, 150]
  for r, w in zip(rows, whole_rows):
    assert r['backdoor_accuracy'] == w['backdoor_accuracy']  # whole, every round
    assert r['train_loss'] == w['train_loss']  # evaluation does not touch training
  assert rows[0]['test_loss'] != whole_rows[0]['test_loss']  # measured on the subset
