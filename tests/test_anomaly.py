"""Tests of analysis.anomaly and anomaly_plots against hand computations (pure NumPy, fast)."""
import itertools
import json
import os

import numpy as np
import pytest

from tests import pictures
from tff_backdoor import metrics_io
from tff_backdoor.analysis import anomaly
from tff_backdoor.analysis import captures as captures_lib

from studies import anomaly_plots

S = 1.4826  # MAD scale.

# A 4 clients x 3 classes bias matrix whose medians and MADs are worked out by hand below.
B = np.array([[0., 0., 0.],
              [1., 2., 0.],
              [2., 4., 3.],
              [10., 0., 1.]])
# Column 0: sorted 0,1,2,10 -> med 1.5; |dev| 1.5,.5,.5,8.5 -> MAD 1.0.
# Column 1: sorted 0,0,2,4 -> med 1.0; |dev| 1,1,3,1 -> MAD 1.0.
# Column 2: sorted 0,0,1,3 -> med 0.5; |dev| .5,.5,2.5,.5 -> MAD 0.5.
B_DEV = np.array([[1.5, 1., .5],
                  [.5, 1., .5],
                  [.5, 3., 2.5],
                  [8.5, 1., .5]])
B_SCALE = np.array([S * 1.0, S * 1.0, S * 0.5])


def _capture(round_num, updates, malicious, names=None, ids=None):
  names = names or [f'v{i}' for i in range(len(updates))]
  ids = ids or [f'c{i}' for i in range(len(malicious))]
  return captures_lib.RoundCapture(round_num, [np.asarray(u) for u in updates], names, ids,
                              np.asarray(malicious, dtype=bool))


def _pairwise_auc(scores, labels):
  scores, labels = np.asarray(scores), np.asarray(labels, dtype=bool)
  pairs = list(itertools.product(scores[labels], scores[~labels]))
  return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


# ----------------------------------------------------------------------------- scores


def test_bias_scores_match_hand_computed_median_mad():
  expected = np.array([1.5 / S, 1.0 / S, 2.5 / (S * .5), 8.5 / S])
  np.testing.assert_allclose(anomaly.bias_scores(B), expected, rtol=1e-9)
  # Client 3 (the big class-0 outlier) ranks first, client 1 last.
  assert np.argmax(anomaly.bias_scores(B)) == 3
  assert np.argmin(anomaly.bias_scores(B)) == 1


def test_variable_scores_l2_and_raw_match_hand_computation():
  scores = anomaly.variable_scores(_capture(0, [B], [0, 0, 0, 1]))['v0']
  np.testing.assert_allclose(scores['linf'], (B_DEV / B_SCALE).max(axis=1), rtol=1e-9)
  np.testing.assert_allclose(scores['l2'], np.sqrt(np.mean((B_DEV / B_SCALE)**2, axis=1)),
                             rtol=1e-9)
  np.testing.assert_allclose(scores['l2_raw'][3], np.sqrt(8.5**2 + 1 + .25), rtol=1e-12)
  assert set(scores) == set(anomaly.SCORE_NAMES)


def test_bilgin_scores_use_the_mean_including_attacker():
  # Column means (3.25, 1.5, 1.0).
  np.testing.assert_allclose(anomaly.bilgin_scores(B), [3.25, 2.25, 2.5, 6.75])


def test_zero_mad_uses_epsilon_scale():
  b = np.array([[1., 0.], [1., 1.], [1., 2.], [1., 3.], [1.5, 4.]])
  # Column 0: med 1, MAD 0 -> s = 1e-12, so client 4 scores 0.5 / 1e-12.
  scores = anomaly.bias_scores(b)
  assert scores[4] == pytest.approx(0.5 / anomaly.MAD_EPSILON, rel=1e-9)
  # Other clients: column 0 contributes 0; column 1 has med 2, MAD 1.
  np.testing.assert_allclose(scores[:4], np.array([2., 1., 0., 1.]) / S, rtol=1e-9)


def test_scores_invariant_to_shift_and_sign_and_chunking(monkeypatch):
  rng = np.random.default_rng(0)
  u = rng.normal(size=(7, 6, 5))
  ref = anomaly.variable_scores_array(u)
  shifted = anomaly.variable_scores_array(-(u + rng.normal(size=(1, 6, 5))))
  monkeypatch.setattr(anomaly, '_CHUNK_VALUES', 7 * 4)  # 4 columns per chunk, ragged end.
  chunked = anomaly.variable_scores_array(u)
  for key in anomaly.SCORE_NAMES:
    np.testing.assert_allclose(shifted[key], ref[key], rtol=1e-9)
    np.testing.assert_allclose(chunked[key], ref[key], rtol=1e-12)


# ----------------------------------------------------------------------------- AUC


def test_roc_auc_hand_example_with_tie():
  # Positives .35, .8, .4 vs negatives .1, .4: 1+0 + 1+1 + 1+.5 = 4.5 of 6 pairs.
  assert anomaly.roc_auc([.1, .4, .35, .8, .4], [0, 0, 1, 1, 1]) == pytest.approx(0.75)


def test_roc_auc_matches_pair_enumeration_with_many_ties():
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 4, size=40).astype(float)
  labels = rng.random(40) < 0.3
  assert anomaly.roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))


def test_roc_auc_edge_cases():
  assert np.isnan(anomaly.roc_auc([1., 2.], [0, 0]))
  assert np.isnan(anomaly.roc_auc([1., 2.], [1, 1]))
  assert anomaly.roc_auc([3., 3., 3.], [1, 0, 0]) == 0.5
  assert anomaly.roc_auc([0., 5.], [1, 0]) == 0.0
  with pytest.raises(ValueError):
    anomaly.roc_auc([np.nan, 1.], [1, 0])


# ----------------------------------------------------------------------------- localization


def _planted_captures(num_rounds=3, shifted_rounds=None, shift=8.0, seed=0):
  """8 clients, 4 variables; client 5 is malicious and shifted only in variable v2."""
  rng = np.random.default_rng(seed)
  shapes = [(3, 3), (5,), (4, 2), (10,)]
  shifted_rounds = range(num_rounds) if shifted_rounds is None else shifted_rounds
  caps = []
  for r in range(num_rounds):
    updates = [rng.normal(size=(8,) + s) for s in shapes]
    if r in shifted_rounds:
      updates[2][5] += shift
    caps.append(_capture(r, updates, np.arange(8) == 5))
  return caps


@pytest.mark.parametrize('score', anomaly.SCORE_NAMES)
def test_localization_ranks_planted_variable_first(score):
  rows = anomaly.localization_table(_planted_captures(), score=score)
  assert [r.variable for r in rows][0] == 'v2'
  assert rows[0].auc == 1.0
  assert all(r.auc < 1.0 for r in rows[1:])
  assert sorted(r.variable for r in rows) == ['v0', 'v1', 'v2', 'v3']
  assert [r.auc for r in rows] == sorted((r.auc for r in rows), reverse=True)
  assert rows[0].n_malicious == 3 and rows[0].n_honest == 21


def test_localization_means_and_per_round_auc():
  caps = _planted_captures(num_rounds=3, shifted_rounds=[0, 1])
  rows = {r.variable: r for r in anomaly.localization_table(caps)}
  pooled = np.concatenate([anomaly.variable_scores(c)['v2']['linf'] for c in caps])
  labels = np.concatenate([c.malicious for c in caps])
  assert rows['v2'].mean_malicious == pytest.approx(pooled[labels].mean())
  assert rows['v2'].mean_honest == pytest.approx(pooled[~labels].mean())
  assert rows['v2'].ratio == pytest.approx(pooled[labels].mean() / pooled[~labels].mean())
  assert rows['v2'].auc == pytest.approx(_pairwise_auc(pooled, labels))
  # Early rounds separate perfectly, the unshifted round does not.
  assert rows['v2'].round_auc[0] == 1.0 and rows['v2'].round_auc[1] == 1.0
  assert rows['v2'].round_auc[2] < 1.0
  assert anomaly.per_round_auc(list(rows.values()))['v2'] == rows['v2'].round_auc
  # Restricting to the late round loses the signal.
  late = {r.variable: r for r in anomaly.localization_table(caps, rounds=[2])}
  assert late['v2'].auc == rows['v2'].round_auc[2] and set(late['v2'].round_auc) == {2}


def test_localization_accepts_generator_and_rejects_bad_score():
  rows = anomaly.localization_table(iter(_planted_captures()))
  assert rows[0].variable == 'v2'
  with pytest.raises(ValueError):
    anomaly.localization_table(_planted_captures(), score='l1')


# ----------------------------------------------------------------------------- thresholds


def test_threshold_allows_floor_of_target_false_positives():
  honest = np.arange(100.)
  assert anomaly.threshold_at_fpr(honest, 0.01) == 98.0  # Only 99 > 98: FPR exactly 1%.
  assert anomaly.threshold_at_fpr(honest, 0.05) == 94.0  # 95..99: FPR exactly 5%.
  # Fewer than 1/target honest samples: no false positive allowed, threshold = max honest.
  assert anomaly.threshold_at_fpr(np.arange(10.), 0.05) == 9.0
  assert np.isnan(anomaly.threshold_at_fpr([], 0.05))


def test_threshold_with_ties_never_exceeds_target():
  # Allowed 2 of 4, but the three 3s are tied: flagging any would give FPR 3/4.
  assert anomaly.threshold_at_fpr([0., 3., 3., 3.], 0.5) == 3.0
  m = anomaly.detection_metrics([0., 3., 3., 3., 3., 4.], [0, 0, 0, 0, 1, 1], [0.5])
  assert m['threshold_at_fpr_50pct'] == 3.0
  assert m['fpr_at_fpr_50pct'] == 0.0
  assert m['tpr_at_fpr_50pct'] == 0.5  # The malicious 3 ties the threshold: not flagged.


def test_detection_metrics_values_and_missing_classes():
  honest = np.arange(100.)
  scores = np.r_[honest, [98.5, 96.0, 200.0, 50.0]]
  labels = np.r_[np.zeros(100, bool), np.ones(4, bool)]
  m = anomaly.detection_metrics(scores, labels)
  assert m['threshold_at_fpr_1pct'] == 98.0 and m['tpr_at_fpr_1pct'] == 0.5
  assert m['threshold_at_fpr_5pct'] == 94.0 and m['tpr_at_fpr_5pct'] == 0.75
  assert m['fpr_at_fpr_1pct'] == 0.01 and m['fpr_at_fpr_5pct'] == 0.05
  assert m['auc'] == pytest.approx(_pairwise_auc(scores, labels))
  assert (m['n_malicious'], m['n_honest']) == (4, 100)
  no_mal = anomaly.detection_metrics([1., 2.], [0, 0])
  assert np.isnan(no_mal['auc']) and np.isnan(no_mal['tpr_at_fpr_1pct'])
  assert no_mal['threshold_at_fpr_1pct'] == 2.0 and no_mal['fpr_at_fpr_1pct'] == 0.0
  no_hon = anomaly.detection_metrics([1., 2.], [1, 1])
  assert np.isnan(no_hon['threshold_at_fpr_5pct']) and np.isnan(no_hon['tpr_at_fpr_5pct'])


# ----------------------------------------------------------------------------- detector


NAMES = ['conv1/kernel', 'conv1/bias', 'logits/kernel', 'logits/bias']
HONEST_BIAS = np.array([[0., 0., 0.], [1., -1., .5], [-1., 1., 0.], [.5, .5, -1.]])


def _detector_captures():
  """3 rounds, clients h0..h3 honest, m and n malicious; m is an outlier from round 1 on."""
  rng = np.random.default_rng(3)
  caps = []
  for r, m_shift in enumerate([0.0, 30.0, 500.0]):
    honest = HONEST_BIAS + 0.1 * r + 0.2 * rng.normal(size=HONEST_BIAS.shape)
    bias = np.vstack([honest, [[0.2 + m_shift, -m_shift, 0.]], [[0.1, 0., .2]]])
    kernel = np.zeros((6, 2, 3))
    updates = [kernel, np.zeros((6, 2)), kernel, bias]
    caps.append(captures_lib.RoundCapture(r, updates, NAMES, ['h0', 'h1', 'h2', 'h3', 'm', 'n'],
                                     np.array([0, 0, 0, 0, 1, 1], bool)))
  return caps


def test_default_bias_variable():
  assert anomaly.default_bias_variable(NAMES) == 'logits/bias'
  assert anomaly.default_bias_variable(['a/bias:0', 'b/kernel:0']) == 'a/bias:0'
  with pytest.raises(ValueError):
    anomaly.default_bias_variable(['a/kernel'])


def test_rounds_to_first_detection_raw_and_accumulated():
  caps = _detector_captures()
  table = anomaly.client_round_scores(caps)
  raw = {(int(r), c): s for r, c, s in zip(table.round_num, table.client_id, table.raw_score)}
  assert max(s for (r, c), s in raw.items() if c != 'm' or r == 0) < 10.0
  assert raw[(1, 'm')] > 10.0 and raw[(2, 'm')] > 10 * raw[(1, 'm')]
  threshold = 0.8 * raw[(1, 'm')]
  assert anomaly.rounds_to_first_detection(caps, threshold) == {'m': 1, 'n': None}
  # Flagging is strict: a score equal to the threshold is not a detection.
  assert anomaly.rounds_to_first_detection(caps, raw[(1, 'm')]) == {'m': 2, 'n': None}
  # The running mean (raw0 + raw1) / 2 stays below; round 2 brings it above.
  assert (raw[(0, 'm')] + raw[(1, 'm')]) / 2 < threshold
  assert anomaly.rounds_to_first_detection(caps, threshold, accumulate=True) == {
      'm': 2, 'n': None}
  acc = anomaly.client_round_scores(caps, accumulate='mean')
  m_rows = acc.client_id == 'm'
  np.testing.assert_allclose(acc.score[m_rows], np.cumsum(acc.raw_score[m_rows]) / [1, 2, 3])
  with pytest.raises(ValueError):
    anomaly.client_round_scores(caps, accumulate='median')


def test_false_positive_rate_pairs_and_clients():
  caps = _detector_captures()
  table = anomaly.client_round_scores(caps)
  honest_scores = np.sort(table.score[~table.malicious])
  assert honest_scores.size == 12
  # Threshold between the two largest honest scores: exactly one honest pair is flagged.
  t = (honest_scores[-1] + honest_scores[-2]) / 2
  assert anomaly.false_positive_rate(caps, t) == pytest.approx(1 / 12)
  assert anomaly.false_positive_rate(caps, t, per_client=True) == pytest.approx(1 / 4)
  assert anomaly.false_positive_rate(caps, honest_scores[-1]) == 0.0


def test_detector_report_is_json_and_consistent():
  caps = _detector_captures()
  report = anomaly.detector_report(caps)
  json.dumps(report, allow_nan=False)
  assert report['bias_variable'] == 'logits/bias'
  assert report['rounds'] == [0, 1, 2] and report['n_pairs'] == 18
  # 12 honest pairs: 1% allows none, so the threshold is the max honest score.
  table = anomaly.client_round_scores(caps)
  assert report['threshold'] == pytest.approx(table.score[~table.malicious].max())
  assert report['fpr_at_threshold'] == 0.0
  assert report['rounds_to_first_detection'] == {'m': 1, 'n': None}
  assert report['first_detection']['m']['participations_to_detection'] == 2
  assert report['per_round_auc']['0'] is not None and report['per_round_auc']['2'] >= 0.5
  assert report['bilgin_metrics']['n_honest'] == 12
  fixed = anomaly.detector_report(caps, threshold=1e9, accumulate=True)
  assert fixed['rounds_to_first_detection'] == {'m': None, 'n': None}
  assert fixed['accumulate'] == 'mean' and fixed['tpr_at_threshold'] == 0.0


# ----------------------------------------------------------------------------- I/O


def test_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  written = {}
  for r in (12, 3):  # Written out of order.
    updates = [rng.normal(size=(3, 2, 2)).astype(np.float32), rng.normal(size=(3, 4))]
    path = captures_lib.save_round_capture(str(tmp_path), r, updates, ['k', 'b'],
                                      ['x', 'y', 'z'], [False, True, False])
    written[r] = updates
    assert os.path.basename(path) == f'round_{r:04d}.npz'
  assert sorted(os.listdir(tmp_path)) == ['round_0003.npz', 'round_0012.npz']
  caps = captures_lib.load_captures(str(tmp_path))
  assert [c.round_num for c in caps] == [3, 12]
  for c in caps:
    assert c.variable_names == ['k', 'b'] and c.client_ids == ['x', 'y', 'z']
    assert c.malicious.dtype == bool and c.malicious.tolist() == [False, True, False]
    for got, want in zip(c.updates, written[c.round_num]):
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(got, want)
  only_b = captures_lib.load_captures(str(tmp_path), variables=['b'], rounds=[12])
  assert len(only_b) == 1 and only_b[0].variable_names == ['b']
  np.testing.assert_array_equal(only_b[0].variable('b'), written[12][1])
  explicit = captures_lib.save_round_capture(str(tmp_path / 'x.npz'), 5, [np.zeros((1, 2))], ['b'],
                                        ['a'], [True])
  assert captures_lib.load_capture(explicit).round_num == 5


def test_save_rejects_inconsistent_shapes(tmp_path):
  with pytest.raises(ValueError):
    captures_lib.save_round_capture(str(tmp_path), 0, [np.zeros((2, 3))], ['b'], ['a', 'b', 'c'],
                               [0, 0, 1])
  with pytest.raises(ValueError):
    captures_lib.save_round_capture(str(tmp_path), 0, [np.zeros((2, 3))], ['b', 'c'], ['a', 'b'],
                               [0, 1])
  assert os.listdir(tmp_path) == []


def test_records_csv_and_json(tmp_path):
  rows = anomaly.localization_table(_planted_captures(num_rounds=2))
  records = anomaly.table_to_records(rows)
  assert records[0]['rank'] == 1 and records[0]['variable'] == 'v2'
  assert records[0]['auc_round_0000'] == 1.0 and 'auc_round_0001' in records[0]
  csv_path = metrics_io.write_csv(str(tmp_path / 'loc.csv'), records)
  lines = open(csv_path).read().splitlines()
  assert len(lines) == 5 and lines[0].startswith('rank,variable,auc,')
  json_path = metrics_io.write_json(str(tmp_path / 'loc.json'), {'rows': rows, 'x': float('nan')})
  loaded = json.load(open(json_path))
  assert loaded['x'] is None and loaded['rows'][0]['variable'] == 'v2'
  assert loaded['rows'][0]['round_auc'] == {'0': 1.0, '1': 1.0}


# ----------------------------------------------------------------------------- plots


# Log-axis tick labels go through matplotlib's mathtext, which trips pyparsing 3.3 deprecations.
@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_plots_write_png_files(tmp_path):
  rows = anomaly.localization_table(_planted_captures())
  pictures.check_png(anomaly_plots.plot_localization_auc(rows, str(tmp_path / 'auc.png')))
  pictures.check_png(anomaly_plots.plot_round_auc(rows, str(tmp_path / 'round_auc.png')))
  caps = _detector_captures()
  pictures.check_png(anomaly_plots.plot_bias_scores(caps, str(tmp_path / 'bias.png'),
                                                    threshold=5.0))
  table = anomaly.client_round_scores(caps, accumulate=True)
  pictures.check_png(anomaly_plots.plot_bias_scores(table, str(tmp_path / 'bias_acc.png'),
                                             log_scale=False))
