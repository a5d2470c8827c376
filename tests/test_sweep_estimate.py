"""The sweep's time-left estimate (studies.sweep_estimate) against hand-computed medians."""
import pytest

from studies import sweep_estimate
from studies.sweep_plan import Run


def _run(attack, seed):
  return Run(f'attack={attack},seed={seed}', {'attack': attack, 'seed': str(seed)},
             f'attack={attack}', '/nowhere', [], [])


def test_each_configuration_goes_by_its_own_seeds_first_then_by_all():
  runs = [_run(a, s) for a in ('cheap', 'dear', 'new') for s in (0, 1, 2)]
  finals = {'attack=cheap,seed=0': {'seconds': 100}, 'attack=cheap,seed=1': {'seconds': 140},
            'attack=dear,seed=0': {'seconds': 4000}}
  todo = [r for r in runs if r.name not in finals]
  result = sweep_estimate.estimate(runs, finals, todo)
  # cheap,2: median(100, 140) = 120; dear,1 and dear,2: 4000 each; new,0-2: the median of
  # every finished run, median(100, 140, 4000) = 140 each.
  assert result.seconds == pytest.approx(120 + 2 * 4000 + 3 * 140)
  assert (result.from_group, result.from_all, result.unknown) == (3, 3, 0)
  assert result.finished == 3 and result.median_all == 140
  line = sweep_estimate.describe(result)
  assert line.startswith('time left: about 2.4 h of runs one at a time (3 from finished seeds '
                         'of their own configuration; 3 from the median of all 3 finished, '
                         '140 s;')


def test_done_files_without_a_wall_clock_estimate_nothing():
  runs = [_run('a', 0), _run('a', 1)]
  for final in ({}, {'seconds': 'slow'}, {'seconds': True}, {'seconds': -1.0}, None):
    result = sweep_estimate.estimate(runs, {'attack=a,seed=0': final}, runs[1:])
    assert (result.seconds, result.unknown, result.finished) == (0.0, 1, 0)
    assert sweep_estimate.describe(result) == (
        'time left: unknown (no finished configuration reports its wall clock)')
  assert sweep_estimate.describe(sweep_estimate.estimate(runs, {}, [])) == 'time left: none'
