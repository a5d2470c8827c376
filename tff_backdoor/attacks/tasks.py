"""Backdoor tasks: the attacker's training data and the sets that measure backdoor accuracy.

A task answers three questions (see METHODS.md sections 1 and 2):
- what an honest client holds (`honest_data`, usually its own data unchanged);
- what an attacker trains on (`attacker_data`: its benign and its malicious data);
- where backdoor accuracy is measured (`eval_sets`: labels are the attacker's desired labels,
  so backdoor accuracy / attack success rate is plain accuracy on them).

Tasks:
- `TargetedTask` (Sun et al. 2019): source-class images of a few chosen "target" clients,
  relabelled to the target class; honest clients may keep the same images correctly labelled.
- `PixelTriggerTask` (BadNets as in FLAIN, with the DBA distributed-trigger variant): a pixel
  pattern stamped on a fraction of the attacker's source-class images, relabelled.

Data convention: x float32 [n, H, W, C] in [0, 1], y int32 [n]. Everything here is pure NumPy
and every random choice comes from an explicit seed or `np.random.Generator`.
"""
from __future__ import annotations

import abc
import functools
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tff_backdoor.data.core import ArrayPair, float_images

PATTERNS = ('square', 'plus')
SPLITS = ('rows', 'quadrants', 'arms')


def _round_half_up(value: float) -> int:
  """Rounds to the nearest integer, halves up (Python's round() rounds halves to even)."""
  return int(math.floor(value + 0.5))


def _as_arrays(x: np.ndarray, y: np.ndarray) -> ArrayPair:
  """Returns (x float32, y int32) and checks that they have the same number of examples.

  uint8 images are codes k meaning k/255 (FEMNIST's compact storage), not pixel values.
  """
  x = float_images(x)
  y = np.asarray(y, dtype=np.int32).reshape(-1)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'x has {x.shape[0]} examples but y has {y.shape[0]}')
  return x, y


def _empty_like(x: np.ndarray) -> ArrayPair:
  """An empty (x, y) pair with x's per-example shape."""
  return np.zeros((0,) + tuple(x.shape[1:]), np.float32), np.zeros((0,), np.int32)


def _check_class(name: str, value: int, num_classes: int) -> None:
  if not 0 <= int(value) < num_classes:
    raise ValueError(f'{name}={value} is out of range [0, {num_classes})')


class BackdoorTask(abc.ABC):
  """Interface of a backdoor task (see the module docstring)."""

  name: str = 'backdoor_task'
  target_class: int

  def honest_data(self, client_id: str, x: np.ndarray, y: np.ndarray) -> ArrayPair:
    """The data an honest client trains on; by default its own data unchanged."""
    del client_id
    return _as_arrays(x, y)

  @abc.abstractmethod
  def attacker_data(self, client_id: str, x: np.ndarray, y: np.ndarray, attacker_index: int,
                    rng: np.random.Generator) -> Tuple[ArrayPair, ArrayPair]:
    """Returns ((benign_x, benign_y), (mal_x, mal_y)) for an attacker holding (x, y)."""

  @abc.abstractmethod
  def eval_sets(self) -> Dict[str, ArrayPair]:
    """Named sets labelled with the attacker's desired labels; always has 'backdoor'."""


# ------------------------------------------------------------------------------------------
# Sun et al. 2019: targeted task.
# ------------------------------------------------------------------------------------------


def _relabelled(arrays: Mapping[str, ArrayPair], clients: Sequence[str], cap: int, *,
                source_class: int, target_class: int, rng: np.random.Generator
                ) -> Tuple[ArrayPair, Dict[str, np.ndarray]]:
  """The source-class images of `clients` labelled target_class (at most `cap` a client, a
  seeded choice; 0 = all), and the indices taken from each client."""
  xs, indices = [], {}
  for cid in clients:
    x, y = _as_arrays(*arrays[cid])
    picked = np.flatnonzero(y == source_class)
    if cap and picked.size > cap:
      picked = np.sort(rng.choice(picked, size=cap, replace=False))
    xs.append(x[picked])
    indices[cid] = picked
  x_all = np.concatenate(xs, axis=0)
  return (x_all, np.full((x_all.shape[0],), target_class, np.int32)), indices


def _choose_targets(client_arrays: Mapping[str, ArrayPair], num_tasks: int, source_class: int,
                    min_samples_per_client: int, rng: np.random.Generator) -> List[str]:
  """`num_tasks` client ids (sorted, drawn by `rng`) among those with enough source images."""
  least = max(1, min_samples_per_client)
  eligible = sorted(cid for cid, (_, y) in client_arrays.items()
                    if np.sum(np.asarray(y).reshape(-1) == source_class) >= least)
  if num_tasks < 1 or num_tasks > len(eligible):
    raise ValueError(f'num_tasks={num_tasks} must be in [1, {len(eligible)}] (clients holding '
                     f'at least {least} images of class {source_class})')
  return sorted(str(c) for c in rng.choice(eligible, size=num_tasks, replace=False))


def _heldout_set(relabelled: Callable, chosen: Sequence[str],
                 heldout_arrays: Optional[Mapping[str, ArrayPair]]) -> Optional[ArrayPair]:
  """The target clients' held-out source images, relabelled; None if they have none."""
  present = [cid for cid in chosen if cid in (heldout_arrays or {})]
  if not present:
    return None
  heldout, _ = relabelled(heldout_arrays, present, 0)
  return None if heldout[0].shape[0] == 0 else heldout


def _collateral_set(relabelled: Callable, chosen: Sequence[str],
                    collateral_arrays: Optional[Mapping[str, ArrayPair]]) -> Optional[ArrayPair]:
  """Every other client's held-out source images, relabelled; None if there are none."""
  others = sorted(cid for cid in (collateral_arrays or {}) if cid not in chosen)
  return relabelled(collateral_arrays, others, 0)[0] if others else None


class TargetedTask(BackdoorTask):
  """Sun et al.'s targeted task: chosen clients' source-class images relabelled target_class.

  The malicious set is fixed and shared by every attacker (it does not depend on the
  attacker's own data); an attacker's benign data is its own local data. The target clients
  stay in the honest population with the same images correctly labelled, unless
  `keep_honest_copies=False`, in which case those clients' source-class images (exactly the
  malicious images) are removed from their honest data. Build it with `TargetedTask.build`.
  """

  name = 'targeted'

  def __init__(self, target_clients: Sequence[str], source_class: int, target_class: int,
               malicious: ArrayPair, malicious_counts: Mapping[str, int],
               heldout: Optional[ArrayPair] = None, keep_honest_copies: bool = True,
               malicious_indices: Optional[Mapping[str, np.ndarray]] = None,
               collateral: Optional[ArrayPair] = None):
    """Stores an already chosen task; use `build` to choose it from client data.

    `malicious_indices` (client -> indices into its data) says which images were taken;
    None means all of the target clients' source-class images. `collateral`: other clients'
    held-out source-class images labelled target_class (see `build`).
    """
    self.malicious_indices = (None if malicious_indices is None else
                              {c: np.asarray(i) for c, i in malicious_indices.items()})
    self.target_clients: Tuple[str, ...] = tuple(target_clients)
    self.source_class = int(source_class)
    self.target_class = int(target_class)
    self.keep_honest_copies = bool(keep_honest_copies)
    self._malicious = _as_arrays(*malicious)
    self.malicious_counts: Dict[str, int] = dict(malicious_counts)
    self._heldout = None if heldout is None else _as_arrays(*heldout)
    self._collateral = None if collateral is None else _as_arrays(*collateral)
    if np.any(self._malicious[1] != self.target_class):
      raise ValueError('malicious labels must all equal target_class')

  @classmethod
  def build(cls, client_arrays: Mapping[str, ArrayPair], num_tasks: int, source_class: int = 7,
            target_class: int = 1, seed: int = 0,
            heldout_arrays: Optional[Mapping[str, ArrayPair]] = None,
            keep_honest_copies: bool = True, num_classes: int = 10,
            samples_per_client: int = 0, min_samples_per_client: int = 0,
            collateral_arrays: Optional[Mapping[str, ArrayPair]] = None) -> 'TargetedTask':
    """Chooses `num_tasks` target clients (seeded) among those holding source_class images.

    Args:
      client_arrays: client_id -> (x, y), the clients' training data.
      num_tasks: number of target clients ("tasks"); more is a harder backdoor.
      source_class: the class whose images are relabelled (Sun et al.: 7).
      target_class: the label the attacker wants (Sun et al.: 1).
      seed: seeds the choice of target clients.
      heldout_arrays: optional client_id -> (x, y) per-client test split (e.g. EMNIST
        writers' test data); gives the 'backdoor_heldout' eval set when non-empty.
      keep_honest_copies: whether the target clients keep their correctly labelled copies.
      num_classes: number of classes, for range checks.
      samples_per_client: at most this many (seeded) source-class images per target client
        (0 = all). An EMNIST writer holds ~10 images of a digit; a partition client of
        centralised data can hold hundreds of near-identical ones, which turns the "targeted"
        backdoor into a whole-class backdoor. The cap keeps tasks writer-sized.
      min_samples_per_client: only clients holding at least this many source_class images
        are eligible (0 or 1 = any that holds one). A label-skewed partition has clients with
        one or two such images; a backdoor measured on one image is a coin flip.
      collateral_arrays: optional client_id -> (x, y) held-out data; the source-class images
        of every client NOT chosen, labelled target_class, give the 'collateral' eval set:
        its accuracy is the share of other writers' source images taken by the backdoor.
    """
    if samples_per_client < 0 or min_samples_per_client < 0:
      raise ValueError(f'samples_per_client and min_samples_per_client must be >= 0, got '
                       f'{samples_per_client} and {min_samples_per_client}')
    _check_class('source_class', source_class, num_classes)
    _check_class('target_class', target_class, num_classes)
    if source_class == target_class:
      raise ValueError(f'source_class and target_class must differ (both {source_class})')
    rng = np.random.default_rng(seed)
    chosen = _choose_targets(client_arrays, num_tasks, source_class, min_samples_per_client, rng)
    relabelled = functools.partial(_relabelled, source_class=source_class,
                                   target_class=target_class, rng=rng)
    malicious, indices = relabelled(client_arrays, chosen, samples_per_client)
    heldout = _heldout_set(relabelled, chosen, heldout_arrays)
    collateral = _collateral_set(relabelled, chosen, collateral_arrays)
    return cls(chosen, source_class, target_class, malicious,
               {cid: int(i.size) for cid, i in indices.items()}, heldout, keep_honest_copies,
               malicious_indices=indices if samples_per_client else None,
               collateral=collateral)

  @property
  def num_tasks(self) -> int:
    """Number of target clients ("tasks") whose relabelled images are the malicious set."""
    return len(self.target_clients)

  @property
  def num_malicious(self) -> int:
    """Number of malicious (relabelled) examples."""
    return int(self._malicious[0].shape[0])

  @property
  def num_heldout(self) -> int:
    """Number of examples in 'backdoor_heldout' (0 when absent)."""
    return 0 if self._heldout is None else int(self._heldout[0].shape[0])

  def honest_data(self, client_id: str, x: np.ndarray, y: np.ndarray) -> ArrayPair:
    """Identity, except that target clients lose exactly the relabelled images when
    keep_honest_copies=False. Pass the client's original arrays (indices refer to them)."""
    x, y = _as_arrays(x, y)
    if self.keep_honest_copies or client_id not in self.malicious_counts:
      return x, y
    keep = y != self.source_class
    if self.malicious_indices is not None:
      keep = np.ones(len(y), dtype=bool)
      keep[self.malicious_indices[client_id]] = False
    return x[keep], y[keep]

  def attacker_data(self, client_id: str, x: np.ndarray, y: np.ndarray, attacker_index: int,
                    rng: np.random.Generator) -> Tuple[ArrayPair, ArrayPair]:
    """Benign = the attacker's own data (as `honest_data` would give it); mal = the fixed set.

    `attacker_index` and `rng` are unused: every attacker gets the same malicious set.
    """
    del attacker_index, rng
    benign = self.honest_data(client_id, x, y)
    mal_x, mal_y = self._malicious
    return benign, (mal_x.copy(), mal_y.copy())

  def eval_sets(self) -> Dict[str, ArrayPair]:
    """'backdoor': the malicious samples; 'backdoor_heldout': target clients' held-out ones;
    'collateral': every other client's held-out source images, labelled target_class."""
    sets = {'backdoor': (self._malicious[0].copy(), self._malicious[1].copy())}
    for name, arrays in (('backdoor_heldout', self._heldout), ('collateral', self._collateral)):
      if arrays is not None and arrays[0].shape[0]:
        sets[name] = (arrays[0].copy(), arrays[1].copy())
    return sets


# ------------------------------------------------------------------------------------------
# BadNets pixel trigger (FLAIN) and its distributed variant (DBA).
# ------------------------------------------------------------------------------------------


def default_trigger_position(shape: Sequence[int], size: int) -> Tuple[int, int]:
  """Top-left (row, col) that puts a size x size pattern 1 pixel from the bottom-right corner."""
  height, width = int(shape[0]), int(shape[1])
  return height - size - 1, width - size - 1


def trigger_mask(shape: Sequence[int], size: int = 5,
                 position: Optional[Tuple[int, int]] = None,
                 pattern: str = 'square') -> np.ndarray:
  """Boolean mask [H, W] of the trigger.

  Args:
    shape: image shape; only (H, W) = shape[:2] is used.
    size: side of the pattern's bounding box.
    position: top-left (row, col) of the bounding box; default `default_trigger_position`.
    pattern: 'square' (filled size x size) or 'plus' (middle row and middle column of the box,
      the middle being index size // 2).
  """
  height, width = int(shape[0]), int(shape[1])
  if pattern not in PATTERNS:
    raise ValueError(f'unknown pattern {pattern!r}; choose one of {list(PATTERNS)}')
  if size < 1:
    raise ValueError(f'trigger size must be >= 1, got {size}')
  row, col = default_trigger_position(shape, size) if position is None else position
  row, col = int(row), int(col)
  if row < 0 or col < 0 or row + size > height or col + size > width:
    raise ValueError(f'a {size}x{size} trigger at ({row}, {col}) does not fit a {height}x{width} '
                     'image')
  mask = np.zeros((height, width), dtype=bool)
  if pattern == 'square':
    mask[row:row + size, col:col + size] = True
  else:
    mid = size // 2
    mask[row + mid, col:col + size] = True
    mask[row:row + size, col + mid] = True
  return mask


def split_mask(mask: np.ndarray, parts: int, how: str = 'rows') -> List[np.ndarray]:
  """Splits a trigger mask into `parts` disjoint non-empty masks whose union is `mask`.

  how:
    'rows': the rows holding trigger pixels, cut into `parts` contiguous bands (as even as
      np.array_split makes them);
    'quadrants': parts must be 4; cut at the middle of the bounding box (top rows and left
      columns get the larger half): top-left, top-right, bottom-left, bottom-right;
    'arms': for a plus; parts 2 = the horizontal bar (with the centre) and the vertical bar
      without it; parts 4 = left arm with the centre, right, top, bottom arms.
  """
  mask = np.asarray(mask, dtype=bool)
  if parts < 1:
    raise ValueError(f'parts must be >= 1, got {parts}')
  if how not in SPLITS:
    raise ValueError(f'unknown split {how!r}; choose one of {list(SPLITS)}')
  if parts == 1:
    return [mask.copy()]
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  if rows.size == 0:
    raise ValueError('cannot split an empty mask')
  r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
  pieces = []
  if how == 'rows':
    if parts > rows.size:
      raise ValueError(f'cannot split {rows.size} trigger rows into {parts} row bands')
    for band in np.array_split(rows, parts):
      piece = np.zeros_like(mask)
      piece[band] = mask[band]
      pieces.append(piece)
  elif how == 'quadrants':
    if parts != 4:
      raise ValueError(f"split 'quadrants' needs parts=4, got {parts}")
    rm, cm = r0 + (r1 - r0 + 1) // 2, c0 + (c1 - c0 + 1) // 2
    for rs, cs in ((slice(r0, rm), slice(c0, cm)), (slice(r0, rm), slice(cm, c1)),
                   (slice(rm, r1), slice(c0, cm)), (slice(rm, r1), slice(cm, c1))):
      piece = np.zeros_like(mask)
      piece[rs, cs] = mask[rs, cs]
      pieces.append(piece)
  else:  # arms
    if parts not in (2, 4):
      raise ValueError(f"split 'arms' needs parts 2 or 4, got {parts}")
    rr, cc = np.nonzero(mask)
    counts_r = np.bincount(rr, minlength=mask.shape[0])
    counts_c = np.bincount(cc, minlength=mask.shape[1])
    crow, ccol = int(np.argmax(counts_r)), int(np.argmax(counts_c))  # The bars of the plus.
    horizontal = np.zeros_like(mask)
    horizontal[crow] = mask[crow]
    vertical = mask & ~horizontal
    if parts == 2:
      pieces = [horizontal, vertical]
    else:
      cols_idx = np.arange(mask.shape[1])[None, :]
      rows_idx = np.arange(mask.shape[0])[:, None]
      pieces = [horizontal & (cols_idx <= ccol), horizontal & (cols_idx > ccol),
                vertical & (rows_idx < crow), vertical & (rows_idx > crow)]
  if any(not p.any() for p in pieces):
    raise ValueError(f'splitting this trigger into {parts} parts ({how}) leaves an empty part')
  return pieces


def stamp(x: np.ndarray, mask: np.ndarray, value: Union[float, Sequence[float]] = 1.0
          ) -> np.ndarray:
  """Returns a copy of x ([..., H, W, C]) with every masked pixel set to `value` in all channels.

  `value` is a scalar or one value per channel.
  """
  x = np.asarray(x)
  mask = np.asarray(mask, dtype=bool)
  if x.ndim < 3 or x.shape[-3:-1] != mask.shape:
    raise ValueError(f'mask of shape {mask.shape} does not match images of shape {x.shape}')
  value = np.asarray(value, dtype=x.dtype)
  return np.where(mask[:, :, None], value, x).astype(x.dtype, copy=False)


class PixelTriggerTask(BackdoorTask):
  """BadNets pixel-trigger backdoor as in FLAIN, with an optional DBA distributed trigger.

  Built directly: `PixelTriggerTask(test_x, test_y, ...)`; the test set only feeds
  `eval_sets`. An attacker stamps its trigger on round(poison_fraction * n_source) of its
  source-class images (a seeded choice from the `rng` it is given), relabels them
  target_class and trains on those as malicious data; its benign data is the rest of its
  images (the poisoned originals are replaced, not duplicated). With `distributed_parts` > 1
  (DBA), attacker i stamps only piece i % parts of the pattern; evaluation always stamps the
  FULL pattern on every test image of the source class (or of every class but the target
  when source_class is None), labelled target_class.
  """

  def __init__(self, test_x: np.ndarray, test_y: np.ndarray, target_class: int = 5,
               source_class: Optional[int] = 0, poison_fraction: float = 0.5,
               trigger_size: int = 5, trigger_position: Optional[Tuple[int, int]] = None,
               trigger_value: Union[float, Sequence[float]] = 1.0, pattern: str = 'square',
               distributed_parts: int = 1, split: Optional[str] = None,
               num_classes: int = 10):
    """Configures the trigger and builds the evaluation set.

    Args:
      test_x, test_y: the (global) test set, used for the 'backdoor' eval set.
      target_class: label the attacker wants (FLAIN: 5).
      source_class: class that gets triggered (FLAIN: 0); None = every class but the target.
      poison_fraction: share of the attacker's source-class images that are poisoned, in [0, 1].
      trigger_size, trigger_position, pattern: see `trigger_mask`.
      trigger_value: pixel value(s) of the trigger (1.0 = white).
      distributed_parts: > 1 for DBA: the pattern is split into that many disjoint pieces.
      split: how to split, see `split_mask`; default 'quadrants' for a square with 4 parts,
        'arms' for a plus with 2 or 4 parts, else 'rows'.
      num_classes: number of classes, for range checks.
    """
    _check_class('target_class', target_class, num_classes)
    if source_class is not None:
      _check_class('source_class', source_class, num_classes)
      if source_class == target_class:
        raise ValueError(f'source_class and target_class must differ (both {source_class})')
    if not 0.0 <= poison_fraction <= 1.0:
      raise ValueError(f'poison_fraction={poison_fraction} must be in [0, 1]')
    if distributed_parts < 1:
      raise ValueError(f'distributed_parts must be >= 1, got {distributed_parts}')
    test_x, test_y = _as_arrays(test_x, test_y)
    if test_x.ndim != 4:
      raise ValueError(f'test_x must be [n, H, W, C], got shape {test_x.shape}')
    self.target_class = int(target_class)
    self.source_class = None if source_class is None else int(source_class)
    self.poison_fraction = float(poison_fraction)
    self.trigger_value = trigger_value
    self.pattern = pattern
    self.distributed_parts = int(distributed_parts)
    self.name = 'pixel_trigger' if distributed_parts == 1 else 'pixel_trigger_dba'
    self.mask = trigger_mask(test_x.shape[1:3], trigger_size, trigger_position, pattern)
    if split is None:
      if pattern == 'square' and distributed_parts == 4:
        split = 'quadrants'
      elif pattern == 'plus' and distributed_parts in (2, 4):
        split = 'arms'
      else:
        split = 'rows'
    self.split = split
    self.part_masks: List[np.ndarray] = split_mask(self.mask, self.distributed_parts, split)
    selected = self.is_source(test_y)
    if not np.any(selected):
      raise ValueError('the test set has no image to trigger (no source-class image)')
    eval_x = stamp(test_x[selected], self.mask, trigger_value)
    self._eval = (eval_x, np.full((eval_x.shape[0],), self.target_class, np.int32))

  def set_trigger(self, value: Union[float, Sequence[float], np.ndarray]) -> None:
    """Replaces the trigger's values (scalar, per channel, or [H, W, C] per pixel: A3FL's
    optimized trigger) on the same mask: attackers stamp it from now on and the 'backdoor'
    set is restamped (stamping overwrites every masked pixel, so restamping is exact)."""
    self.trigger_value = value
    self._eval = (stamp(self._eval[0], self.mask, value), self._eval[1])

  def is_source(self, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the examples that may carry the trigger."""
    if self.source_class is None:
      return y != self.target_class
    return y == self.source_class

  def attacker_mask(self, attacker_index: int) -> np.ndarray:
    """The part of the pattern attacker `attacker_index` stamps (the full one without DBA)."""
    if attacker_index < 0:
      raise ValueError(f'attacker_index must be >= 0, got {attacker_index}')
    return self.part_masks[attacker_index % self.distributed_parts]

  def poison(self, x: np.ndarray, attacker_index: int) -> ArrayPair:
    """`x` with attacker `attacker_index`'s part of the trigger stamped, labelled target_class."""
    mal_x = stamp(x, self.attacker_mask(attacker_index), self.trigger_value)
    return mal_x, np.full((mal_x.shape[0],), self.target_class, np.int32)

  def num_poisoned(self, num_source: int) -> int:
    """How many of `num_source` source-class images an attacker poisons (half rounds up)."""
    return _round_half_up(self.poison_fraction * num_source)

  def attacker_data(self, client_id: str, x: np.ndarray, y: np.ndarray, attacker_index: int,
                    rng: np.random.Generator) -> Tuple[ArrayPair, ArrayPair]:
    """Poisons a seeded share of the attacker's source-class images; see the class docstring."""
    del client_id
    x, y = _as_arrays(x, y)
    self.attacker_mask(attacker_index)  # A bad index fails also when nothing is poisoned.
    candidates = np.flatnonzero(self.is_source(y))
    count = self.num_poisoned(candidates.size)
    if count == 0:
      return (x, y), _empty_like(x)
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    poisoned = np.zeros(y.shape[0], dtype=bool)
    poisoned[chosen] = True
    return (x[~poisoned], y[~poisoned]), self.poison(x[poisoned], attacker_index)

  def eval_sets(self) -> Dict[str, ArrayPair]:
    """'backdoor': full trigger on the source-class test images, labelled target_class."""
    return {'backdoor': (self._eval[0].copy(), self._eval[1].copy())}
