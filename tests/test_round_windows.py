"""Means over windows of rounds (studies.round_windows) against hand-computed numbers."""
import os

import pytest

from tests.test_reproduction import _program, _sweep

from studies import reproduction
from studies import round_windows


def _rows(backdoor):
  return [{'round': r, 'backdoor_accuracy': b} for r, b in enumerate(backdoor)]


def test_run_windows_leave_out_the_last_round_and_skip_missing_values():
  rows = _rows([0.0, 1.0, 0.5, None, 0.2, 0.9])  # round 5 is the final evaluation
  rows[3] = {'round': 3}
  assert round_windows.run_windows(rows, 'backdoor_accuracy', 2) == pytest.approx(
      [0.5, 0.5, 0.2])  # (0 + 1) / 2, 0.5 alone, 0.2 alone (round 5 left out)
  assert round_windows.run_windows(rows, 'backdoor_accuracy', 10) == pytest.approx([0.425])
  assert round_windows.run_windows(rows, 'absent', 2) == [None, None, None]
  assert round_windows.run_windows([], 'backdoor_accuracy', 2) == []


def test_table_averages_seeds_per_window_and_skips_configurations_without_runs(tmp_path):
  sweep = _sweep(tmp_path / 's', [
      ({'attack': 'boost', 'seed': '0'}, {'test_accuracy': 0.9}, _rows([0.2, 0.4, 0.6, 0.8, 1.0])),
      ({'attack': 'boost', 'seed': '1'}, {'test_accuracy': 0.9}, _rows([0.4, 0.6, 0.8, 1.0, 0.0])),
      ({'attack': 'none', 'seed': '0'}, {'test_accuracy': 0.9}, _rows([0.1, 0.0, 0.0, 0.0, 0.0]))])
  table = round_windows.WindowTable(
      'w', 'title', 'backdoor_accuracy',
      (('clean', {'attack': 'none'}), ('absent', {'attack': 'x'}),
       ('boosted', {'attack': 'boost'})), width=2)
  runs = reproduction.load_runs([sweep])
  out = table.render(runs, str(tmp_path / 'o'))
  # boosted: windows [0, 2) = 0.3 and 0.5, [2, 4) = 0.7 and 0.9 over the seeds; round 4 left out.
  assert out[0].splitlines() == [
      '**title**', '',
      '|  | seeds | rounds 0-1 | rounds 2-3 |', '| --- | ---: | ---: | ---: |',
      '| clean | 1 | 0.050 | 0.000 |',
      '| boosted | 2 | 0.400 ± 0.141 | 0.800 ± 0.141 |']
  assert os.path.basename(out[1]) == 'w.csv' and os.path.exists(out[1])
  empty = round_windows.WindowTable('e', 'nothing', 'backdoor_accuracy', (('a', {'attack': 'x'}),))
  assert empty.render(runs) == ['**nothing**: no finished run yet']


def test_the_300_round_tables_are_printed_for_their_sweep(tmp_path):
  """The program lists them for --families=sun_full_300 (run as a program: its flags)."""
  (tmp_path / 's').mkdir()
  result = _program(str(_sweep(tmp_path / 's', [])), '--families=sun_full_300')
  assert result.returncode == 0, result.stderr
  titles = [spec.title for spec in round_windows.SUN_FULL_300_WINDOWS]
  assert len(titles) == 4
  for title in titles:
    assert f'**{title}**: no finished run yet' in result.stdout
