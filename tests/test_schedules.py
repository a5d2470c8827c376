"""Tests for tff_backdoor.attacks.schedules (pure NumPy, no TFF)."""
import numpy as np
import pytest

from tff_backdoor.attacks import schedules as sch

IDS = [f'client_{i:03d}' for i in range(100)]


def _attackers(parts):
  return [p for p in parts if p.is_attacker]


def _check_round(parts, k):
  """Common invariants of one round's participants."""
  ids = [p.client_id for p in parts]
  assert len(parts) == k and len(set(ids)) == k
  assert set(ids) <= set(IDS)
  assert ids == sorted(ids)
  for p in parts:
    assert isinstance(p, sch.Participant)
    assert (p.attacker_index >= 0) == p.is_attacker


def test_no_attack_uniform_and_deterministic():
  s = sch.NoAttack()
  a = s.sample_round(0, IDS, 10, np.random.default_rng(3))
  b = s.sample_round(0, list(reversed(IDS)), 10, np.random.default_rng(3))
  _check_round(a, 10)
  assert a == b  # Same rng state (and same population in any order) -> same participants.
  assert not _attackers(a) and s.malicious_clients == ()
  assert a != s.sample_round(0, IDS, 10, np.random.default_rng(4))
  # Uniform: over many rounds every client shows up about equally often.
  rng = np.random.default_rng(0)
  counts = dict.fromkeys(IDS, 0)
  for r in range(500):
    for p in s.sample_round(r, IDS, 10, rng):
      counts[p.client_id] += 1
  assert 30 <= min(counts.values()) and max(counts.values()) <= 75  # Mean 50.


def test_fixed_frequency_pattern():
  s = sch.FixedFrequency(attack_every=4)
  assert s.offset == 2
  rng = np.random.default_rng(0)
  attack_rounds = []
  for r in range(20):
    parts = s.sample_round(r, IDS, 5, rng)
    _check_round(parts, 5)
    att = _attackers(parts)
    assert len(att) in (0, 1)
    if att:
      assert att[0].attacker_index == 0
      attack_rounds.append(r)
  assert attack_rounds == [2, 6, 10, 14, 18]
  assert sch.FixedFrequency(attack_every=1).offset == 0


def test_fixed_frequency_same_clients_as_no_attack():
  a = sch.FixedFrequency(3, offset=0).sample_round(0, IDS, 7, np.random.default_rng(11))
  b = sch.NoAttack().sample_round(0, IDS, 7, np.random.default_rng(11))
  assert [p.client_id for p in a] == [p.client_id for p in b]
  assert len(_attackers(a)) == 1


def test_fixed_frequency_window():
  s = sch.FixedFrequency(attack_every=2, offset=1, start_round=5, stop_round=12)
  rng = np.random.default_rng(0)
  rounds = [r for r in range(20) if _attackers(s.sample_round(r, IDS, 3, rng))]
  assert rounds == [5, 7, 9, 11]
  assert [r for r in range(20) if s.is_attack_round(r)] == rounds


def test_random_fraction_set_and_natural_rate():
  s = sch.RandomFraction(0.2, client_ids=IDS, seed=1)
  mal = s.malicious_clients
  assert len(mal) == 20 and list(mal) == sorted(mal) and set(mal) <= set(IDS)
  assert s.malicious_clients == sch.RandomFraction(0.2, client_ids=IDS, seed=1).malicious_clients
  assert s.malicious_clients != sch.RandomFraction(0.2, client_ids=IDS, seed=2).malicious_clients
  # round(0.25 * 50) = 12.5 rounds up to 13 (not to even).
  assert len(sch.RandomFraction(0.25, client_ids=IDS[:50]).malicious_clients) == 13
  rng = np.random.default_rng(7)
  sampled = attackers = 0
  for r in range(400):
    parts = s.sample_round(r, IDS, 10, rng)
    _check_round(parts, 10)
    for p in parts:
      sampled += 1
      assert p.is_attacker == (p.client_id in mal)
      if p.is_attacker:
        attackers += 1
        assert mal[p.attacker_index] == p.client_id
  rate = attackers / sampled
  assert abs(rate - 0.2) < 0.02, rate


def test_random_fraction_deterministic_and_lazy_binding():
  eager = sch.RandomFraction(0.1, client_ids=IDS, seed=4)
  lazy = sch.RandomFraction(0.1, num_clients_hint=100, seed=4)
  with pytest.raises(ValueError, match='first sample_round'):
    _ = lazy.malicious_clients
  a = eager.sample_round(3, IDS, 20, np.random.default_rng(5))
  b = lazy.sample_round(3, IDS, 20, np.random.default_rng(5))
  assert a == b and lazy.malicious_clients == eager.malicious_clients
  with pytest.raises(ValueError, match='num_clients_hint'):
    sch.RandomFraction(0.1, num_clients_hint=99).sample_round(0, IDS, 5,
                                                              np.random.default_rng(0))


def test_random_fraction_window():
  s = sch.RandomFraction(0.5, client_ids=IDS, seed=0, start_round=3, stop_round=6)
  rng = np.random.default_rng(0)
  per_round = [len(_attackers(s.sample_round(r, IDS, 20, rng))) for r in range(10)]
  assert all(per_round[r] == 0 for r in (0, 1, 2, 6, 7, 8, 9))
  assert all(per_round[r] > 0 for r in (3, 4, 5))


def test_fixed_per_round_exact_count():
  s = sch.FixedPerRound(attackers_per_round=5, malicious_fraction=0.2, client_ids=IDS[:50],
                        seed=0)
  mal = s.malicious_clients
  assert len(mal) == 10
  rng = np.random.default_rng(0)
  seen = set()
  for r in range(50):
    parts = s.sample_round(r, IDS[:50], 25, rng)
    ids = [p.client_id for p in parts]
    assert len(ids) == 25 and len(set(ids)) == 25
    att = _attackers(parts)
    assert len(att) == 5
    assert all(mal[p.attacker_index] == p.client_id for p in att)
    assert not set(mal) & {p.client_id for p in parts if not p.is_attacker}
    seen |= {p.client_id for p in att}
  assert seen == set(mal)  # Every malicious client gets to attack.


def test_fixed_per_round_count_window_and_determinism():
  s = sch.FixedPerRound(attackers_per_round=2, malicious_count=3, seed=9, start_round=2,
                        stop_round=4)
  runs = []
  for _ in range(2):
    rng = np.random.default_rng(1)
    runs.append([s.sample_round(r, IDS, 10, rng) for r in range(6)])
  assert runs[0] == runs[1]
  assert [len(_attackers(parts)) for parts in runs[0]] == [0, 0, 2, 2, 0, 0]
  assert len(s.malicious_clients) == 3
  # Outside the window: sampled from everyone, exactly like NoAttack.
  a = s.sample_round(10, IDS, 10, np.random.default_rng(2))
  assert a == sch.NoAttack().sample_round(10, IDS, 10, np.random.default_rng(2))


@pytest.mark.parametrize('make', [
    lambda: sch.FixedFrequency(attack_every=0),
    lambda: sch.FixedFrequency(attack_every=3, offset=3),
    lambda: sch.RandomFraction(1.5, client_ids=IDS),
    lambda: sch.RandomFraction(-0.1, client_ids=IDS),
    lambda: sch.FixedPerRound(2, malicious_fraction=1.2),
    lambda: sch.FixedPerRound(0, malicious_count=3),
    lambda: sch.FixedPerRound(4, malicious_count=3, client_ids=IDS),
    lambda: sch.FixedPerRound(1, malicious_count=101, client_ids=IDS),
    lambda: sch.FixedPerRound(1, malicious_count=2, malicious_fraction=0.1),
    lambda: sch.FixedPerRound(1),
    lambda: sch.NoAttack(start_round=5, stop_round=5),
    lambda: sch.NoAttack(start_round=5, stop_round=2),
    lambda: sch.NoAttack(start_round=-1),
])
def test_constructor_errors(make):
  with pytest.raises(ValueError):
    make()


def test_sampling_errors():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match='clients_per_round'):
    sch.NoAttack().sample_round(0, IDS, 101, rng)
  with pytest.raises(ValueError, match='clients_per_round'):
    sch.NoAttack().sample_round(0, IDS, 0, rng)
  with pytest.raises(ValueError, match='exceeds clients_per_round'):
    sch.FixedPerRound(5, malicious_count=10, client_ids=IDS).sample_round(0, IDS, 4, rng)
  with pytest.raises(ValueError, match='attackers_per_round'):  # Bound lazily.
    sch.FixedPerRound(3, malicious_count=2).sample_round(0, IDS, 10, rng)
  with pytest.raises(ValueError, match='honest'):
    sch.FixedPerRound(1, malicious_count=95, client_ids=IDS).sample_round(0, IDS, 10, rng)
  with pytest.raises(TypeError):
    sch.NoAttack().sample_round(0, IDS, 5, 0)


def test_build_schedule():
  assert isinstance(sch.build_schedule('none'), sch.NoAttack)
  ff = sch.build_schedule('fixed_frequency', attack_every=10, start_round=1)
  assert isinstance(ff, sch.FixedFrequency) and ff.offset == 5 and ff.start_round == 1
  rf = sch.build_schedule('random_fraction', malicious_fraction=0.1, client_ids=IDS, seed=0)
  assert isinstance(rf, sch.RandomFraction) and len(rf.malicious_clients) == 10
  fp = sch.build_schedule('fixed_per_round', attackers_per_round=1, malicious_count=2)
  assert isinstance(fp, sch.FixedPerRound)
  with pytest.raises(ValueError, match='unknown schedule'):
    sch.build_schedule('sometimes')
  with pytest.raises(ValueError, match='bad parameters'):
    sch.build_schedule('fixed_frequency', every=3)


def test_with_replacement_draws_iid_and_the_last_draw_attacks():
  ids = [f'c{i}' for i in range(4)]
  plain = sch.FixedFrequency(attack_every=1)
  iid = sch.FixedFrequency(attack_every=1, with_replacement=True)
  rng = np.random.default_rng(3)
  rounds = [iid.sample_round(r, ids, 4, rng) for r in range(200)]
  # With 4 draws from 4 clients, a round without a repeat has probability 4!/4^4 = 0.094.
  repeats = sum(len({p.client_id for p in ps}) < 4 for ps in rounds)
  assert 150 < repeats < 200
  assert all(sum(p.is_attacker for p in ps) == 1 for ps in rounds)
  # The attacker is the last draw of the same rng stream.
  rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
  drawn = [str(c) for c in rng_b.choice(np.asarray(sorted(ids), dtype=object), 4, replace=True)]
  attackers = [p.client_id for p in iid.sample_round(0, ids, 4, rng_a) if p.is_attacker]
  assert attackers == [drawn[-1]]
  # Without replacement, never a repeat (the default is unchanged).
  rng = np.random.default_rng(3)
  assert all(len({p.client_id for p in plain.sample_round(r, ids, 4, rng)}) == 4
             for r in range(50))


def test_build_schedule_passes_with_replacement():
  for name, params in (('none', {}), ('random_fraction', {'malicious_fraction': 0.5}),
                       ('fixed_per_round', {'malicious_fraction': 0.5,
                                            'attackers_per_round': 1})):
    schedule = sch.build_schedule(name, with_replacement=True, **params)
    assert schedule.with_replacement
    rng = np.random.default_rng(0)
    rounds = [schedule.sample_round(r, ['a', 'b', 'c', 'd'], 3, rng) for r in range(60)]
    assert any(len({p.client_id for p in ps}) < 3 for ps in rounds)
