"""Detection metrics: per-client decisions joined with the true attackers, per round and run."""
import json
import os

import pytest

from tests import test_experiment as experiment
from tff_backdoor.aggregators import _common
from tff_backdoor.run import detection
from tff_backdoor.run import driver

idx_dir = experiment.idx_dir  # the module-scoped tiny idx dataset fixture


def test_counts_and_rates_of_one_round():
  decisions = [1.0, 0.0, 0.0, 0.3, 0.0, 1.0]  # flagged: positions 1, 2, 4
  attackers = [False, True, False, True, True, False]
  row = detection.round_metrics(decisions, attackers)
  assert [row[f'detection_{k}'] for k in ('tp', 'fp', 'fn', 'tn')] == [2, 1, 1, 2]
  assert row['detection_tpr'] == pytest.approx(2 / 3)
  assert row['detection_fpr'] == pytest.approx(1 / 3)
  assert row['detection_precision'] == pytest.approx(2 / 3)


def test_without_attackers_tpr_is_absent_and_fpr_counts_false_alarms():
  row = detection.round_metrics([1.0, 0.0, 1.0, 1.0], [False] * 4)
  assert 'detection_tpr' not in row and 'detection_precision' in row
  assert (row['detection_fp'], row['detection_fpr'], row['detection_precision']) == (1, 0.25, 0.0)
  assert 'detection_precision' not in detection.round_metrics([1.0], [False])  # none flagged


def test_a_decision_per_client_received_or_an_error():
  assert detection.DECISIONS_KEY == _common.DECISIONS_KEY
  with pytest.raises(ValueError, match='one per client'):
    detection.confusion([1.0, 0.0], [True])
  flat = {'aggregator/zeroing/x': 1, 'aggregator/client_decisions': [1.0, 0.0]}
  assert detection.decisions_in(flat) == [1.0, 0.0]
  assert detection.decisions_in({'aggregator/clipped_count': 1}) is None


def test_absent_clients_are_in_no_cell_and_a_nan_weight_is_flagged():
  # -1: took no part (the guard zeroed it); None: a NaN weight once written as JSON.
  row = detection.round_metrics([_common.ABSENT, None, float('nan'), 1.0, _common.ABSENT],
                                [True, True, False, True, False])
  assert [row[f'detection_{k}'] for k in ('tp', 'fp', 'fn', 'tn', 'absent')] == [1, 1, 1, 0, 2]
  guarded_only = {**detection.round_metrics([_common.ABSENT, 1.0], [True, False]),
                  'num_attackers': 1}  # its only attacker never reached the defense
  final = detection.totals([guarded_only])
  assert final['detection_absent'] == 1 and 'detection_fpr_attack_free' not in final
  assert final['detection_fpr_attack_rounds'] == 0.0


def test_totals_split_false_alarms_on_attack_free_rounds():
  rows = [detection.round_metrics([0.0, 1.0, 1.0], [True, False, False]),  # caught
          detection.round_metrics([1.0, 0.0, 1.0, 1.0], [False] * 4),  # a false alarm
          detection.round_metrics([1.0, 1.0], [True, False]),  # missed
          {'round': 3}]  # a row without decisions does not count
  final = detection.totals(rows)
  assert [final[f'detection_{k}'] for k in ('tp', 'fp', 'fn', 'tn')] == [1, 1, 1, 6]
  assert final['detection_rounds'] == 3
  assert final['detection_tpr'] == 0.5 and final['detection_fpr'] == pytest.approx(1 / 7)
  assert final['detection_fpr_attack_free'] == 0.25
  assert final['detection_fpr_attack_rounds'] == 0.0
  assert detection.totals([{'round': 0}]) == {}


def _final_and_rows(out):
  with open(os.path.join(out, 'final.json')) as f:
    final = json.load(f)
  return final, experiment._rows(out)


def test_a_multi_krum_run_writes_detection_per_round_and_in_final(idx_dir, tmp_path):
  driver.run_experiment(experiment._config(idx_dir, tmp_path / 'a', defense={'name': 'multi_krum'},
                                           clients_per_round=5, rounds=2, boost=20.0))
  final, rows = _final_and_rows(tmp_path / 'a')
  for row in rows:  # one boosted attacker among 5: Multi-Krum (f = 1) drops it
    assert (row['detection_tp'], row['detection_fn'], row['detection_fp']) == (1, 0, 0)
    assert row['detection_tpr'] == 1.0 and row['detection_fpr'] == 0.0
  assert (final['detection_tp'], final['detection_tn'], final['detection_tpr']) == (2, 8, 1.0)
  assert 'detection_fpr_attack_free' not in final

  driver.run_experiment(experiment._config(idx_dir, tmp_path / 'b', defense={'name': 'multi_krum'},
                                           clients_per_round=5, rounds=1, schedule='none'))
  final, rows = _final_and_rows(tmp_path / 'b')
  assert 'detection_tpr' not in rows[0] and 'detection_tpr' not in final
  assert rows[0]['detection_fp'] == final['detection_fp'] == 1  # m = n - f: one false alarm
  assert final['detection_fpr'] == final['detection_fpr_attack_free'] == 0.2
