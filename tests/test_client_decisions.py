"""Per-client decisions (`client_decisions`) of the defenses that admit, reject or weight clients.

Each defense is built through `build_defense` (behind the non-finite guard), fed 7 clients of
which one is absent (weight 0) and one sends NaN, and must report one decision per client
received, in the order received, equal to what a NumPy reference of its rule decides.
"""
import numpy as np
import pytest

from tests import defense_references as refs
from tests import test_aggregators as agg
from tff_backdoor.aggregators import _common

ABSENT, NONFINITE = 1, 4  # positions of the weight-0 client and of the NaN client


def _round(seed=3):
  updates, weights = agg._updates(seed)
  weights[ABSENT] = 0.0
  updates[NONFINITE][0][0, 0] = np.nan
  present = [i for i in range(agg.N) if i not in (ABSENT, NONFINITE)]
  return updates, weights, present


def _spread(present, decisions):
  """Decisions over the present clients -> over all 7, ABSENT (-1) for the others."""
  full = np.full(agg.N, _common.ABSENT)
  full[present] = decisions
  return full


def _krum_admitted(u, m):
  scores = agg._krum(u, 1, m)[1]
  admitted = np.zeros(len(u))
  admitted[np.argsort(scores, kind='stable')[:m]] = 1.0
  return admitted


def _bulyan_selected(u, f):
  """1 for the theta = n - 2f clients Bulyan's recursive Krum picks (refs.bulyan's loop)."""
  x, remaining, chosen = refs.flat(u), list(range(len(u))), []
  for _ in range(max(len(u) - 2 * f, 1)):
    chosen.append(remaining.pop(refs.krum_pick(x[remaining], f)))
  return np.isin(np.arange(len(u)), chosen).astype(float)


EXPECTED = {
    'krum': lambda u: _krum_admitted(u, 1),
    'multi_krum': lambda u: _krum_admitted(u, 3),
    'bulyan': lambda u: _bulyan_selected(u, 1),
    'bias_filter': lambda u: (agg._bias_scores(u) <= max(3.5, agg._bias_scores(u).min())
                              ).astype(float),
    'zeroing': lambda u: np.array([agg._norm(c) <= 3.0 for c in u], float),
    'flame': lambda u: refs.flame_filter(u)[1].astype(float),
}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_decisions_are_per_client_in_the_order_received(name):
  updates, weights, present = _round()
  _, m = agg._run(name, updates, weights)
  expected = _spread(present, EXPECTED[name]([updates[i] for i in present]))
  np.testing.assert_array_equal(np.asarray(m['client_decisions']), expected)
  assert 0 < expected[present].sum() < len(present)  # the rule kept some and dropped some


def test_decisions_follow_the_clients_when_the_order_changes():
  updates, weights, _ = _round()
  order = [6, 0, 5, 2, 1, 3, 4]  # the outlying bias client (6) now comes first
  _, m = agg._run('bias_filter', [updates[i] for i in order], [weights[i] for i in order])
  _, unordered = agg._run('bias_filter', updates, weights)
  np.testing.assert_array_equal(np.asarray(m['client_decisions']),
                                np.asarray(unordered['client_decisions'])[order])
  assert m['client_decisions'][0] == 0.0


def test_a_round_without_participants_reports_every_client_absent():
  updates, weights, _ = _round()
  _, m = agg._run('multi_krum', updates, [0.0] * agg.N)
  np.testing.assert_array_equal(np.asarray(m['client_decisions']),
                                np.full(agg.N, _common.ABSENT))


def test_weighting_rules_report_their_weights():
  updates, weights, _ = _round()
  _, m = agg._run('fltrust', updates, weights)  # no server update: every trust is 0
  np.testing.assert_array_equal(np.asarray(m['client_decisions']),
                                _spread(_round()[2], np.zeros(agg.N - 2)))
  updates[5] = [1.5 * x for x in updates[0]]  # a sybil of client 0: FoolsGold gives both 0
  ids = [1.0, 2.0, 0.0, 4.0, 5.0, 6.0, 7.0]  # weight = identity + 1; position 2 is absent
  _, m = agg._run('foolsgold', updates, ids)
  ids[NONFINITE] = 0.0  # the guard's doing
  _, _, wv = refs.foolsgold_round(updates, ids, np.zeros([8, 15]))  # 12 + 3 columns
  expected = _spread([i for i in range(agg.N) if ids[i] > 0], wv)
  np.testing.assert_allclose(np.asarray(m['client_decisions']), expected, atol=1e-5)
  assert expected[0] == expected[5] == 0.0 and 0.0 < expected.max()
