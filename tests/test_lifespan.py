"""Backdoor lifespan on hand-made backdoor curves (analysis.lifespan)."""
from tff_backdoor.analysis import lifespan as lifespan_lib

# Rounds 0-9; attackers in rounds 2-4; the backdoor decays after round 4.
ROUNDS = list(range(10))
ATTACKED = [r in (2, 3, 4) for r in ROUNDS]


def _life(backdoor, threshold=0.5):
  return lifespan_lib.lifespan(ROUNDS, backdoor, ATTACKED, threshold)


def test_counts_rounds_until_the_backdoor_stays_below():
  # above at rounds 5, 6; below at 7; back above at 8 (a revival); below from 9 on.
  curve = [0.1, 0.2, 0.9, 0.95, 0.97, 0.8, 0.6, 0.4, 0.55, 0.3]
  life = _life(curve)
  assert (life.rounds, life.censored, life.last_attack_round) == (4, False, 4)  # 9 - (4 + 1)
  assert _life(curve, threshold=0.7).rounds == 1  # below 0.7 from round 6 on
  assert _life(curve, threshold=0.99).rounds == 0  # already below in round 5


def test_still_above_at_the_end_is_censored_at_the_rounds_observed():
  life = _life([0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.7, 0.6])
  assert (life.rounds, life.censored) == (5, True)  # >= 5 rounds (rounds 5-9)


def test_unevaluated_rounds_are_skipped_and_no_attack_has_no_lifespan():
  # eval_every=3 style: only rounds 5 and 8 evaluated after the attack.
  curve = [None, None, 0.9, None, None, 0.9, None, None, 0.2, None]
  assert _life(curve).rounds == 3  # first evaluated round below: 8 -> 8 - 5
  none = lifespan_lib.lifespan(ROUNDS, [0.9] * 10, [False] * 10)
  assert none.rounds is None and none.last_attack_round is None
  unevaluated = _life([0.9] * 5 + [None] * 5)
  assert unevaluated.rounds is None and unevaluated.last_attack_round == 4


def test_from_rows_reads_metrics_rows():
  rows = [{'round': r, 'num_attackers': int(a), 'backdoor_accuracy': b}
          for r, a, b in zip(ROUNDS, ATTACKED, [0, 0, 1, 1, 1, 1, 0.2, 0.1, 0.1, 0.1])]
  rows[7].pop('backdoor_accuracy')
  assert lifespan_lib.from_rows(rows, 0.5) == {
      'lifespan_rounds': 1, 'lifespan_censored': False, 'last_attack_round': 4,
      'lifespan_threshold': 0.5}


def test_tables_read_the_lifespan_from_final_json():
  from studies import reproduction
  assert reproduction.lifespan_values({'lifespan_rounds': 7, 'lifespan_censored': True}) == {
      'lifespan': 7.0, 'lifespan_censored': 1.0}
  assert reproduction.lifespan_values({})['lifespan'] is None
  tables = reproduction.FAMILIES['durability']
  assert [t.key for t in tables][:2] == ['durability_lifespan', 'durability_lifespan_censored']
  assert [c[1] for c in tables[0].columns] == ['none', 'clip', 'median', 'multi_krum']
