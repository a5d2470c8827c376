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
  assert [t.key for t in tables] == ['durability_lifespan', 'durability_lifespan_censored',
                                     'durability_window_backdoor', 'durability_last_attack_backdoor',
                                     'durability_after_backdoor', 'durability_backdoor',
                                     'durability_test']  # the window: was there a backdoor
  assert [c[1] for c in tables[0].columns] == ['none', 'clip', 'median', 'multi_krum']


def test_the_durability_tables_take_the_lifespan_from_final_json_not_the_rows(tmp_path):
  """The rows below would give lifespan 0 (backdoor never above 0.5); final.json's numbers
  are what the table shows, and a run without them has no cell."""
  import json
  from studies import reproduction
  rows = [{'round': r, 'test_accuracy': 0.9, 'backdoor_accuracy': 0.1, 'num_attackers': 1}
          for r in range(3)]
  entries = []
  for i, (defense, seed, final) in enumerate((
      ('none', 0, {'lifespan_rounds': 4, 'lifespan_censored': False}),
      ('none', 1, {'lifespan_rounds': 6, 'lifespan_censored': True}),
      ('clip', 0, {}))):  # no lifespan in final.json
    run = tmp_path / f'run{i}'
    run.mkdir()
    (run / 'final.json').write_text(json.dumps(
        {'rounds': 3, 'partition': {}, 'test_accuracy': 0.9, 'backdoor_accuracy': 0.1, **final}))
    (run / 'config.json').write_text(json.dumps({'attack_start': 0}))
    (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    entries.append({'name': run.name, 'group': 'g', 'status': 'finished', 'flags': {
        'task': 'pixel', 'attack': 'neurotoxin', 'defense': defense, 'seed': str(seed),
        'attack_stop': '10'}})
  (tmp_path / 'sweep.json').write_text(json.dumps({'runs': entries}))
  runs = reproduction.load_runs([str(tmp_path)])
  lifespan, censored = reproduction.FAMILIES['durability'][:2]
  text, _ = reproduction.cross_markdown(runs, lifespan)
  assert text.splitlines()[-1] == '| pixel | neurotoxin | 1/2 | 5.000 ± 1.414 | - | - | - |'
  text, _ = reproduction.cross_markdown(runs, censored)
  assert text.splitlines()[-1] == '| pixel | neurotoxin | 1/2 | 0.500 ± 0.707 | - | - | - |'
