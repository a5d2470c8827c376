"""DeepSight and its HDBSCAN against scikit-learn and a NumPy reference of the paper."""
import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from sklearn.cluster import HDBSCAN
from sklearn.cluster._hdbscan import _linkage
from sklearn.cluster._hdbscan import _tree

from tests import detector_references as refs
from tests import test_experiment as experiment
from tff_backdoor.aggregators import deepsight
from tff_backdoor.aggregators import hdbscan_eom
from tff_backdoor.aggregators import hdbscan_rule

idx_dir = experiment.idx_dir  # the module-scoped tiny idx dataset fixture
SHAPES = ((5,), (4, 10), (10,))  # a hidden bias, then the output kernel [F, P] and bias [P]
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
WEIGHT_TYPE = tff.TensorType(np.float32)


@functools.lru_cache(maxsize=None)
def _labeller(size, samples):
  """HDBSCAN's labels as a traced function (eager while loops are slow)."""
  return tf.function(lambda d: hdbscan_eom.cluster_labels(d, size, samples),
                     input_signature=[tf.TensorSpec([None, None], tf.float64)])


@functools.lru_cache(maxsize=None)
def _process():
  return deepsight.DeepSightFactory().create(VALUE_TYPE, WEIGHT_TYPE)


def _same_partition(a, b):
  a, b = np.asarray(a), np.asarray(b)
  if not np.array_equal(a < 0, b < 0):
    return False
  pairs = set(zip(a[a >= 0], b[b >= 0]))
  return len(pairs) == len(set(a[a >= 0])) == len(set(b[b >= 0]))


def _blobs(rng):
  n, k = int(rng.integers(6, 26)), int(rng.integers(1, 4))
  x = (rng.normal(size=(k, 3)) * 5)[rng.integers(0, k, n)] + rng.normal(size=(n, 3))
  return np.linalg.norm(x[:, None] - x[None], axis=-1), int(rng.choice([2, 3, 5]))


def test_hdbscan_matches_scikit_learn_without_ties():
  rng = np.random.default_rng(0)
  for _ in range(25):  # min_samples 1: the distances themselves, no equal merges
    distances, size = _blobs(rng)
    want = HDBSCAN(metric='precomputed', min_cluster_size=size,
                   min_samples=1).fit(distances.copy()).labels_
    got = _labeller(size, 1)(tf.constant(distances)).numpy()
    assert _same_partition(got, want), (got, want)


def test_hdbscan_tree_and_selection_match_scikit_learn_on_our_merge_order():
  """With core distances merges tie; scikit-learn orders ties by an unstable sort, so the
  condensed tree, stabilities, selection and labels are checked on our (stable) order."""
  rng = np.random.default_rng(1)
  trees = {s: tf.function(lambda d, s=s: hdbscan_eom.spanning_tree(
      hdbscan_rule.mutual_reachability(d, s)),
      input_signature=[tf.TensorSpec([None, None], tf.float64)]) for s in (2, 4)}
  for _ in range(20):
    distances, size = _blobs(rng)
    samples = int(rng.choice([2, 4]))
    source, target, weight = (t.numpy() for t in trees[samples](tf.constant(distances)))
    order = np.argsort(weight, kind='stable')
    edges = np.rec.fromarrays([source[order], target[order], weight[order]],
                              dtype=_linkage.MST_edge_dtype)
    want = _tree.tree_to_labels(_linkage.make_single_linkage(edges), size)[0]
    got = _labeller(size, samples)(tf.constant(distances)).numpy()
    assert _same_partition(got, want), (got, want)


def _round(rng, attackers=3, n=12):
  """Honest clients spread over the 10 classes; attackers push class 0 (few exceedings)."""
  updates = []
  for i in range(n):
    kernel = rng.normal(size=(4, 10)) * 0.1
    bias = rng.normal(size=10) * 0.1
    if i < attackers:
      kernel[:, 0] += 1.0 + 0.1 * rng.normal(size=4)
      bias[0] += 1.0
      bias[1:] *= 0.1
      kernel[:, 1:] *= 0.1
    updates.append([rng.normal(size=5).astype(np.float32) * 0.1, kernel.astype(np.float32),
                    bias.astype(np.float32)])
  return updates


def test_neups_exceedings_and_labels_match_the_reference():
  updates = _round(np.random.default_rng(2))
  kernel = tf.constant(np.stack([u[1] for u in updates]))
  bias = tf.constant(np.stack([u[2] for u in updates]))
  neup = deepsight.neups(kernel, bias).numpy()
  energy = np.abs(kernel.numpy()).sum(1) + np.abs(bias.numpy())
  np.testing.assert_allclose(neup, energy ** 2 / (energy ** 2).sum(1, keepdims=True), rtol=1e-5)
  exceedings = deepsight.threshold_exceedings(tf.constant(neup), 0.01).numpy()
  assert list(exceedings[:3]) == [1, 1, 1] and min(exceedings[3:]) >= 4
  flagged = deepsight.suspicious(tf.constant(exceedings)).numpy()
  _, _, want = refs.deepsight(updates)
  assert list(flagged) == list(want) == [True] * 3 + [False] * 9


@pytest.mark.parametrize('seed, attackers', [(3, 3), (4, 0), (5, 5)])
def test_rounds_match_the_reference(seed, attackers):
  updates = _round(np.random.default_rng(seed), attackers)
  process = _process()
  output = process.next(process.initialize(), updates, [1.0] * len(updates))
  aggregate, accepted, suspect = refs.deepsight(updates)
  np.testing.assert_array_equal(np.asarray(output.measurements['client_decisions']),
                                accepted.astype(np.float32))
  for got, want in zip(output.result, aggregate):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert output.measurements['deepsight_suspicious_count'] == suspect.sum()
  assert not accepted[:attackers].any() and accepted[attackers:].sum() >= 5


def test_a_run_with_deepsight_reports_its_decisions(idx_dir, tmp_path):
  from tff_backdoor.run import driver  # pylint: disable=g-import-not-at-top
  driver.run_experiment(experiment._config(idx_dir, tmp_path, rounds=1,
                                            defense={'name': 'deepsight'}))
  row = experiment._rows(tmp_path)[0]
  assert row['aggregator/client_count'] == 4 and row['aggregator/clipping_norm'] > 0
  assert row['detection_tp'] + row['detection_fn'] == 1
  tff.backends.native.compile_to_mergeable_comp_form(_process().next)
