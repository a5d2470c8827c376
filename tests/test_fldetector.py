"""FLDetector against a NumPy reference of the paper's Algorithm 1, round after round."""
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tests import detector_references as refs
from tests import test_experiment as experiment
from tests import tiny
from tff_backdoor.aggregators import fldetector
from tff_backdoor.aggregators import kmeans_1d

SHAPES = ((3, 2), (4,), (2,))
WIDTH = 12
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
UPDATE_TYPE = tiny.info_update_type(VALUE_TYPE, client_info=True)
WEIGHT_TYPE = tff.TensorType(np.float32)
POPULATION, PER_ROUND, WINDOW = 12, 8, 3


def test_lbfgs_product_is_the_bfgs_recursion():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 6))
  hessian = a @ a.T + 6 * np.eye(6)  # pairs of positive curvature, as from a quadratic
  s = rng.normal(size=(4, 6))
  y = s @ hessian + 0.1 * rng.normal(size=(4, 6))
  v = rng.normal(size=6)
  got = fldetector.lbfgs_product(tf.constant(s, tf.float32), tf.constant(y, tf.float32),
                                 tf.constant(v, tf.float32)).numpy()
  np.testing.assert_allclose(got, refs.bfgs_hessian(s, y) @ v, rtol=1e-4, atol=1e-4)


def test_gap_statistic_and_two_means_match_scikit_learn():
  rng = np.random.default_rng(1)
  for n, attackers in ((8, 0), (8, 2), (12, 3), (6, 1), (10, 0)):
    scores = rng.uniform(0.08, 0.12, n)
    scores[:attackers] += 0.3
    reference = rng.uniform(size=(20, n))
    got = int(kmeans_1d.estimated_clusters(tf.constant(scores), tf.constant(reference), 10))
    assert got == refs.gap_clusters(scores, reference), (n, attackers)
    assert (got >= 2) == (attackers > 0), (n, attackers)
    upper = kmeans_1d.upper_of_two_means(tf.constant(scores)).numpy()
    if attackers:
      assert list(np.flatnonzero(upper)) == list(range(attackers))
  values = rng.normal(size=(3, 9))
  want = [[refs.inertia(v, k) for k in range(1, 6)] for v in values]
  np.testing.assert_allclose(kmeans_1d.within_sums(tf.constant(values), 5), want, rtol=1e-6,
                             atol=1e-9)


def _cohort(rng, t):
  """Eight of the twelve; ids 0 and 1, the attackers, in every odd round."""
  ids = sorted(rng.choice(POPULATION, PER_ROUND, replace=False).tolist())
  if t % 2:
    ids = sorted(set(ids[2:]) | {0, 1})
  return ids


def test_rounds_match_the_reference_and_flag_the_attackers():
  factory = fldetector.FLDetectorFactory(POPULATION, PER_ROUND, window=WINDOW, seed=5)
  process = factory.create(UPDATE_TYPE, WEIGHT_TYPE)
  reference = refs.FLDetector(POPULATION, WINDOW)
  rng = np.random.default_rng(2)
  curvature = np.diag(rng.uniform(0.5, 1.5, WIDTH))
  centers = rng.normal(size=(POPULATION, WIDTH)) * 0.3
  w, state, flagged_attackers = np.ones(WIDTH), process.initialize(), 0
  for t in range(9):
    ids = _cohort(rng, t)
    rows = np.array([curvature @ (w - centers[c]) + (2.0 * rng.normal(size=WIDTH) if c < 2 else 0.0)
                     + 0.01 * rng.normal(size=WIDTH) for c in ids], np.float32)
    updates = [[r[:6].reshape(3, 2), r[6:10], r[10:]] for r in rows]
    output = process.next(state, tiny.with_info(updates, ids), [np.float32(3)] * len(ids))
    draws = fldetector.reference_draws(5, tf.constant(t), 20, len(ids)).numpy()
    aggregate, admitted, scores = reference.round(rows, ids, draws)
    got = np.concatenate([np.ravel(x) for x in output.result])
    np.testing.assert_allclose(got, aggregate, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(output.measurements['client_decisions']),
                                  admitted.astype(np.float32))
    if scores is not None:
      np.testing.assert_allclose(output.measurements['fldetector_score_max'], scores.max(),
                                 rtol=1e-4)
      flagged_attackers += sum(1 for c, a in zip(ids, admitted) if c < 2 and not a)
      assert all(a for c, a in zip(ids, admitted) if c >= 2)  # no honest client flagged
    state, w = output.state, w - 0.5 * got
  assert flagged_attackers >= 4  # detection from round WINDOW + 1 on, both attackers
  tff.backends.native.compile_to_mergeable_comp_form(process.next)


idx_dir = experiment.idx_dir  # the module-scoped tiny idx dataset fixture


def test_a_run_with_fldetector_reports_its_decisions(idx_dir, tmp_path):
  """--defense=fldetector end to end: identities reach it, detection starts after N pairs."""
  from tff_backdoor.run import driver  # pylint: disable=g-import-not-at-top
  config = experiment._config(idx_dir, tmp_path, rounds=3, boost=20.0,
                              defense={'name': 'fldetector', 'fldetector_window': 1})
  final = driver.run_experiment(config)
  rows = experiment._rows(tmp_path)
  assert [r['aggregator/client_count'] for r in rows] == [4, 4, 4]
  assert rows[0]['detection_fp'] == rows[0]['detection_tp'] == 0  # warm-up: all admitted
  assert rows[2]['aggregator/fldetector_score_max'] > 0  # scored from round N + 1 = 2
  assert final['detection_rounds'] == 3 and 'detection_tpr' in final
