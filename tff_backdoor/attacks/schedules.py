"""Attacker schedules: per round, which clients participate and which of them attack.

Every schedule has `sample_round(round_num, client_ids, clients_per_round, rng)` returning a
list of `Participant`s. Rounds are 0-based. Attacks happen only in rounds of the window
[start_round, stop_round) (stop_round=None: no end); outside it a round is sampled exactly as
with no attacker (uniformly from every client, malicious ones included, all honest).

Conventions:
- sampling is `rng.choice(sorted ids, k, replace=False)`, so the same rng state gives the same
  participants; the ids are deduplicated first. With `with_replacement=True` it is
  `replace=True`, as in Sun et al.'s code (each round draws writer ids uniformly with
  replacement), so a client can appear twice in a round;
- the result is sorted by client id, so a participant's position says nothing about whether
  it attacks;
- a fixed malicious set (RandomFraction, FixedPerRound) is a pure function of the sorted
  population, the fraction/count and `seed`: round(fraction * population), halves up.

Schedules (METHODS.md): `NoAttack`; `FixedFrequency` (Sun et al. (a): one attacker every k-th
round); `RandomFraction` (Sun et al. (b): a malicious fraction sampled at its natural rate);
`FixedPerRound` (FLAIN: exactly m attackers in every attack round).
"""
from __future__ import annotations

import abc
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Type

import numpy as np


class Participant(NamedTuple):
  """One sampled client of a round; attacker_index is -1 for an honest client."""
  client_id: str
  is_attacker: bool
  attacker_index: int


def _round_half_up(value: float) -> int:
  return int(math.floor(value + 0.5))


def _population(client_ids: Sequence[str]) -> List[str]:
  """Sorted, deduplicated client ids as str."""
  return sorted({str(c) for c in client_ids})


def _check_rng(rng: np.random.Generator) -> None:
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f'rng must be a numpy.random.Generator, got {type(rng).__name__}')


def _choose(ids: Sequence[str], k: int, rng: np.random.Generator,
            replace: bool = False) -> List[str]:
  """k ids drawn uniformly from `ids` (already sorted): distinct, or iid with `replace`."""
  if k == 0:
    return []
  return [str(c) for c in rng.choice(np.asarray(ids, dtype=object), size=k, replace=replace)]


def _check_fraction(name: str, value: float) -> None:
  if not 0.0 <= float(value) <= 1.0:
    raise ValueError(f'{name}={value} must be in [0, 1]')


class Schedule(abc.ABC):
  """Base class: the attack window [start_round, stop_round) and uniform sampling."""

  name: str = 'schedule'

  def __init__(self, start_round: int = 0, stop_round: Optional[int] = None,
               with_replacement: bool = False):
    if start_round < 0:
      raise ValueError(f'start_round must be >= 0, got {start_round}')
    if stop_round is not None and stop_round <= start_round:
      raise ValueError(f'stop_round={stop_round} must be > start_round={start_round}')
    self.start_round = int(start_round)
    self.stop_round = None if stop_round is None else int(stop_round)
    self.with_replacement = bool(with_replacement)

  @property
  def malicious_clients(self) -> Tuple[str, ...]:
    """The fixed malicious set, sorted (empty when there is none)."""
    return ()

  def in_window(self, round_num: int) -> bool:
    """Whether round_num lies in [start_round, stop_round)."""
    return round_num >= self.start_round and (self.stop_round is None
                                              or round_num < self.stop_round)

  def is_attack_round(self, round_num: int) -> bool:
    """Whether attackers may act in this round (in the window; schedules may narrow it)."""
    return self.in_window(round_num)

  def _uniform(self, client_ids: Sequence[str], clients_per_round: int,
               rng: np.random.Generator) -> List[str]:
    """Validated uniform sample (with replacement if so built) from the sorted population."""
    _check_rng(rng)
    ids = _population(client_ids)
    self._check_k(clients_per_round, len(ids))
    return _choose(ids, clients_per_round, rng, self.with_replacement)

  @staticmethod
  def _check_k(clients_per_round: int, population: int) -> None:
    if clients_per_round < 1 or clients_per_round > population:
      raise ValueError(f'clients_per_round={clients_per_round} must be in [1, {population}] '
                       '(the population)')

  @staticmethod
  def _honest(ids: Sequence[str]) -> List[Participant]:
    return sorted(Participant(c, False, -1) for c in ids)

  @abc.abstractmethod
  def sample_round(self, round_num: int, client_ids: Sequence[str], clients_per_round: int,
                   rng: np.random.Generator) -> List[Participant]:
    """The round's participants, sorted by client id."""


class NoAttack(Schedule):
  """Uniform sample of clients_per_round clients, all honest."""

  name = 'none'

  def is_attack_round(self, round_num: int) -> bool:
    return False

  def sample_round(self, round_num: int, client_ids: Sequence[str], clients_per_round: int,
                   rng: np.random.Generator) -> List[Participant]:
    return self._honest(self._uniform(client_ids, clients_per_round, rng))


class FixedFrequency(Schedule):
  """Sun et al.'s fixed-frequency attacker: one attacker in every `attack_every`-th round.

  Clients are sampled uniformly; in rounds with round_num % attack_every == offset (default
  attack_every // 2, as in the authors' code) the first drawn client (a uniform choice, since
  the draw order is random) is the attacker, attacker_index 0; its own data is its benign
  data. With replacement it is the last drawn, as in the authors' code (the same law: the
  draws are iid). The sampled set is the same as NoAttack's for the same rng state.
  """

  name = 'fixed_frequency'

  def __init__(self, attack_every: int, offset: Optional[int] = None, start_round: int = 0,
               stop_round: Optional[int] = None, with_replacement: bool = False):
    super().__init__(start_round, stop_round, with_replacement)
    if attack_every < 1:
      raise ValueError(f'attack_every must be >= 1, got {attack_every}')
    offset = attack_every // 2 if offset is None else offset
    if not 0 <= offset < attack_every:
      raise ValueError(f'offset={offset} must be in [0, {attack_every})')
    self.attack_every = int(attack_every)
    self.offset = int(offset)

  def is_attack_round(self, round_num: int) -> bool:
    return self.in_window(round_num) and round_num % self.attack_every == self.offset

  def sample_round(self, round_num: int, client_ids: Sequence[str], clients_per_round: int,
                   rng: np.random.Generator) -> List[Participant]:
    drawn = self._uniform(client_ids, clients_per_round, rng)
    if not self.is_attack_round(round_num):
      return self._honest(drawn)
    if self.with_replacement:
      return sorted(self._honest(drawn[:-1]) + [Participant(drawn[-1], True, 0)])
    return sorted([Participant(drawn[0], True, 0)] + self._honest(drawn[1:]))


class _FixedMaliciousSet(Schedule):
  """A schedule with a fixed, seeded malicious set.

  The set is chosen from `client_ids` at construction when given, otherwise from the ids of
  the first `sample_round` call (the same set either way, as it depends only on the sorted
  population and the seed). `num_clients_hint`, when given, must equal the population size.
  """

  def __init__(self, malicious_fraction: Optional[float] = None,
               malicious_count: Optional[int] = None,
               client_ids: Optional[Sequence[str]] = None,
               num_clients_hint: Optional[int] = None, seed: int = 0, start_round: int = 0,
               stop_round: Optional[int] = None, with_replacement: bool = False):
    super().__init__(start_round, stop_round, with_replacement)
    if (malicious_fraction is None) == (malicious_count is None):
      raise ValueError('give exactly one of malicious_fraction and malicious_count')
    if malicious_fraction is not None:
      _check_fraction('malicious_fraction', malicious_fraction)
    elif malicious_count < 0:
      raise ValueError(f'malicious_count must be >= 0, got {malicious_count}')
    if num_clients_hint is not None and num_clients_hint < 1:
      raise ValueError(f'num_clients_hint must be >= 1, got {num_clients_hint}')
    self.malicious_fraction = malicious_fraction
    self.malicious_count = malicious_count
    self.num_clients_hint = num_clients_hint
    self.seed = int(seed)
    self._malicious: Optional[Tuple[str, ...]] = None
    self._population: Optional[Tuple[str, ...]] = None
    if client_ids is not None:
      self._bind(client_ids)

  def _count(self, population: int) -> int:
    if self.malicious_count is not None:
      if self.malicious_count > population:
        raise ValueError(f'malicious_count={self.malicious_count} exceeds the population '
                         f'({population})')
      return int(self.malicious_count)
    return _round_half_up(self.malicious_fraction * population)

  def _bind(self, client_ids: Sequence[str]) -> None:
    """Fixes the malicious set for this population (first call) or checks it (later calls)."""
    ids = tuple(_population(client_ids))
    if self._malicious is None:
      if self.num_clients_hint is not None and self.num_clients_hint != len(ids):
        raise ValueError(f'num_clients_hint={self.num_clients_hint} but the population has '
                         f'{len(ids)} clients')
      rng = np.random.default_rng(self.seed)
      self._malicious = tuple(sorted(_choose(ids, self._count(len(ids)), rng)))
      self._population = ids
      self._validate_malicious()
    elif ids != self._population and not set(self._malicious) <= set(ids):
      raise ValueError('the population no longer contains every malicious client')

  def _validate_malicious(self) -> None:
    """Hook for subclasses, run once the malicious set is known."""

  @property
  def malicious_clients(self) -> Tuple[str, ...]:
    if self._malicious is None:
      raise ValueError('the malicious set is chosen at the first sample_round; pass client_ids '
                       'to the constructor to know it earlier')
    return self._malicious

  def _attacker_index(self, client_id: str) -> int:
    return self._malicious.index(client_id)


class RandomFraction(_FixedMaliciousSet):
  """Sun et al.'s random-sampling attacker: a fixed malicious fraction at its natural rate.

  round(malicious_fraction * population) clients are malicious (seeded). Clients are sampled
  uniformly; in the attack window a sampled malicious client attacks, with attacker_index =
  its position in the sorted malicious set; outside it, it behaves honestly.
  """

  name = 'random_fraction'

  def __init__(self, malicious_fraction: float, client_ids: Optional[Sequence[str]] = None,
               num_clients_hint: Optional[int] = None, seed: int = 0, start_round: int = 0,
               stop_round: Optional[int] = None, with_replacement: bool = False):
    super().__init__(malicious_fraction=malicious_fraction, client_ids=client_ids,
                     num_clients_hint=num_clients_hint, seed=seed, start_round=start_round,
                     stop_round=stop_round, with_replacement=with_replacement)

  def sample_round(self, round_num: int, client_ids: Sequence[str], clients_per_round: int,
                   rng: np.random.Generator) -> List[Participant]:
    self._bind(client_ids)
    drawn = self._uniform(client_ids, clients_per_round, rng)
    if not self.is_attack_round(round_num):
      return self._honest(drawn)
    bad = set(self._malicious)
    return sorted(Participant(c, True, self._attacker_index(c)) if c in bad
                  else Participant(c, False, -1) for c in drawn)


class FixedPerRound(_FixedMaliciousSet):
  """FLAIN's setting: exactly `attackers_per_round` attackers in every attack round.

  A fixed malicious set (malicious_fraction or malicious_count, seeded). In each round of the
  attack window, `attackers_per_round` attackers are drawn from the malicious set and the rest
  from the honest clients (attackers first, then honest, from the same rng). Outside the
  window the round is sampled uniformly from everyone, all honest (as the FLAIN code samples
  from everyone when not attacking).
  """

  name = 'fixed_per_round'

  def __init__(self, attackers_per_round: int, malicious_fraction: Optional[float] = None,
               malicious_count: Optional[int] = None,
               client_ids: Optional[Sequence[str]] = None,
               num_clients_hint: Optional[int] = None, seed: int = 0, start_round: int = 0,
               stop_round: Optional[int] = None, with_replacement: bool = False):
    if attackers_per_round < 1:
      raise ValueError(f'attackers_per_round must be >= 1, got {attackers_per_round}')
    self.attackers_per_round = int(attackers_per_round)
    super().__init__(malicious_fraction=malicious_fraction, malicious_count=malicious_count,
                     client_ids=client_ids, num_clients_hint=num_clients_hint, seed=seed,
                     start_round=start_round, stop_round=stop_round,
                     with_replacement=with_replacement)

  def _validate_malicious(self) -> None:
    if self.attackers_per_round > len(self._malicious):
      raise ValueError(f'attackers_per_round={self.attackers_per_round} exceeds the malicious '
                       f'set ({len(self._malicious)} clients)')

  def sample_round(self, round_num: int, client_ids: Sequence[str], clients_per_round: int,
                   rng: np.random.Generator) -> List[Participant]:
    self._bind(client_ids)
    if not self.is_attack_round(round_num):
      return self._honest(self._uniform(client_ids, clients_per_round, rng))
    _check_rng(rng)
    ids = _population(client_ids)
    self._check_k(clients_per_round, len(ids))
    if self.attackers_per_round > clients_per_round:
      raise ValueError(f'attackers_per_round={self.attackers_per_round} exceeds '
                       f'clients_per_round={clients_per_round}')
    bad = set(self._malicious)
    honest_ids = [c for c in ids if c not in bad]
    num_honest = clients_per_round - self.attackers_per_round
    if num_honest > len(honest_ids):
      raise ValueError(f'{num_honest} honest clients needed per round but only '
                       f'{len(honest_ids)} are honest')
    attackers = _choose(self._malicious, self.attackers_per_round, rng, self.with_replacement)
    honest = _choose(honest_ids, num_honest, rng, self.with_replacement)
    return sorted([Participant(c, True, self._attacker_index(c)) for c in attackers] +
                  self._honest(honest))


SCHEDULES: Dict[str, Type[Schedule]] = {
    'none': NoAttack,
    'fixed_frequency': FixedFrequency,
    'random_fraction': RandomFraction,
    'fixed_per_round': FixedPerRound,
}


def build_schedule(name: str, **params) -> Schedule:
  """Builds a schedule by name ('none', 'fixed_frequency', 'random_fraction',
  'fixed_per_round') with its constructor's keyword arguments."""
  if name not in SCHEDULES:
    raise ValueError(f'unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}')
  try:
    return SCHEDULES[name](**params)
  except TypeError as e:
    raise ValueError(f'bad parameters for schedule {name!r}: {e}') from None
