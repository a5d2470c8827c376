"""Tests for tff_backdoor.attacks.tasks (pure NumPy, no TFF)."""
import numpy as np
import pytest

from tff_backdoor.attacks import tasks

H = W = 12


def _client(rng, labels):
  y = np.asarray(labels, np.int32)
  x = rng.uniform(0.0, 0.5, size=(y.size, H, W, 1)).astype(np.float32)
  return x, y


def _clients(seed=0):
  """8 clients; c0..c5 hold some 7s, c6 and c7 none."""
  rng = np.random.default_rng(seed)
  out = {}
  for i in range(6):
    out[f'c{i}'] = _client(rng, [7] * (i + 1) + [1, 2, 3])
  out['c6'] = _client(rng, [0, 1, 2])
  out['c7'] = _client(rng, [3, 4])
  return out


# ----------------------------------------------------------------------------- TargetedTask


def test_targeted_chooses_clients_with_source_class():
  data = _clients()
  task = tasks.TargetedTask.build(data, num_tasks=3, seed=1)
  assert len(task.target_clients) == 3 == task.num_tasks
  assert len(set(task.target_clients)) == 3
  assert not {'c6', 'c7'} & set(task.target_clients)
  expected = sum(int(np.sum(data[c][1] == 7)) for c in task.target_clients)
  assert task.num_malicious == expected == sum(task.malicious_counts.values())
  for c in task.target_clients:
    assert task.malicious_counts[c] == int(np.sum(data[c][1] == 7))


def test_targeted_malicious_labels_and_images():
  data = _clients()
  task = tasks.TargetedTask.build(data, num_tasks=2, seed=3)
  rng = np.random.default_rng(0)
  (bx, by), (mx, my) = task.attacker_data('c7', *data['c7'], attacker_index=0, rng=rng)
  assert np.all(my == 1) and my.dtype == np.int32 and mx.dtype == np.float32
  expected_x = np.concatenate([data[c][0][data[c][1] == 7] for c in task.target_clients])
  np.testing.assert_array_equal(mx, expected_x)
  # Benign data = the attacker's own data.
  np.testing.assert_array_equal(bx, data['c7'][0])
  np.testing.assert_array_equal(by, data['c7'][1])
  # Same malicious set for every attacker, whatever its own data.
  _, (mx2, _) = task.attacker_data('c0', *data['c0'], attacker_index=5, rng=rng)
  np.testing.assert_array_equal(mx, mx2)


def test_targeted_keeps_honest_copies_by_default():
  data = _clients()
  task = tasks.TargetedTask.build(data, num_tasks=2, seed=0)
  c = task.target_clients[0]
  x, y = task.honest_data(c, *data[c])
  np.testing.assert_array_equal(x, data[c][0])
  np.testing.assert_array_equal(y, data[c][1])
  assert np.sum(y == 7) == task.malicious_counts[c] > 0


def test_targeted_removes_honest_copies():
  data = _clients()
  task = tasks.TargetedTask.build(data, num_tasks=2, seed=0, keep_honest_copies=False)
  for c in task.target_clients:
    x, y = task.honest_data(c, *data[c])
    assert not np.any(y == 7)
    assert y.size == data[c][1].size - task.malicious_counts[c]
    np.testing.assert_array_equal(x, data[c][0][data[c][1] != 7])
    # Idempotent: filtering twice removes nothing more.
    assert task.honest_data(c, x, y)[1].size == y.size
    # An attacker that is a target client does not get the removed copies back as benign.
    (_, by), _ = task.attacker_data(c, *data[c], attacker_index=0,
                                    rng=np.random.default_rng(0))
    assert not np.any(by == 7)
  other = next(c for c in data if c not in task.target_clients and np.any(data[c][1] == 7))
  assert task.honest_data(other, *data[other])[1].size == data[other][1].size


def test_targeted_eval_sets():
  data = _clients()
  rng = np.random.default_rng(9)
  heldout = {c: _client(rng, [7, 7, 0]) for c in data}
  task = tasks.TargetedTask.build(data, num_tasks=2, seed=0, heldout_arrays=heldout)
  sets = task.eval_sets()
  assert set(sets) == {'backdoor', 'backdoor_heldout'}
  bx, by = sets['backdoor']
  assert bx.shape[0] == task.num_malicious and np.all(by == 1)
  hx, hy = sets['backdoor_heldout']
  assert hx.shape[0] == 4 == task.num_heldout and np.all(hy == 1)
  expected = np.concatenate([heldout[c][0][:2] for c in task.target_clients])
  np.testing.assert_array_equal(hx, expected)
  # Without held-out data, or with no 7s in it, there is no held-out set.
  assert set(tasks.TargetedTask.build(data, 2, seed=0).eval_sets()) == {'backdoor'}
  no7 = {c: _client(rng, [0, 1]) for c in data}
  assert set(tasks.TargetedTask.build(data, 2, seed=0, heldout_arrays=no7).eval_sets()) == {
      'backdoor'}


def test_targeted_deterministic_per_seed():
  data = _clients()
  a = tasks.TargetedTask.build(data, num_tasks=3, seed=5).target_clients
  b = tasks.TargetedTask.build(data, num_tasks=3, seed=5).target_clients
  assert a == b
  chosen = {tasks.TargetedTask.build(data, num_tasks=3, seed=s).target_clients
            for s in range(10)}
  assert len(chosen) > 1  # The seed matters.


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_tasks=0), 'num_tasks'),
    (dict(num_tasks=7), 'num_tasks'),
    (dict(num_tasks=1, source_class=1, target_class=1), 'differ'),
    (dict(num_tasks=1, source_class=10), 'out of range'),
    (dict(num_tasks=1, target_class=-1), 'out of range'),
])
def test_targeted_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tasks.TargetedTask.build(_clients(), **kwargs)


# ------------------------------------------------------------------------------ trigger masks


def test_trigger_mask_default_square_bottom_right():
  mask = tasks.trigger_mask((28, 28), size=5)
  assert mask.shape == (28, 28) and mask.dtype == bool and mask.sum() == 25
  rows, cols = np.nonzero(mask)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (22, 26, 22, 26)  # 1-pixel margin.


def test_trigger_mask_explicit_position_and_plus():
  mask = tasks.trigger_mask((10, 10), size=3, position=(1, 2))
  expected = np.zeros((10, 10), bool)
  expected[1:4, 2:5] = True
  np.testing.assert_array_equal(mask, expected)
  plus = tasks.trigger_mask((10, 10), size=5, position=(0, 0), pattern='plus')
  assert plus.sum() == 9
  assert plus[2, :5].all() and plus[:5, 2].all() and not plus[0, 0]


@pytest.mark.parametrize('kwargs', [
    dict(size=5, position=(8, 0)), dict(size=0), dict(pattern='circle'),
    dict(size=5, position=(-1, 0))])
def test_trigger_mask_errors(kwargs):
  with pytest.raises(ValueError):
    tasks.trigger_mask((10, 10), **kwargs)


def test_stamp_changes_exactly_the_mask():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 0.5, size=(4, H, W, 3)).astype(np.float32)
  mask = tasks.trigger_mask((H, W), size=3)
  out = tasks.stamp(x, mask, 1.0)
  assert out.dtype == np.float32 and out.shape == x.shape
  assert np.all(out[:, mask, :] == 1.0)
  np.testing.assert_array_equal(out[:, ~mask, :], x[:, ~mask, :])
  assert np.all(x < 0.5)  # Input untouched.
  per_channel = tasks.stamp(x[0], mask, [0.1, 0.2, 0.3])
  np.testing.assert_allclose(per_channel[mask], np.tile([0.1, 0.2, 0.3], (9, 1)))
  with pytest.raises(ValueError):
    tasks.stamp(x, np.zeros((5, 5), bool))


@pytest.mark.parametrize('pattern, parts, how', [
    ('square', 2, 'rows'), ('square', 5, 'rows'), ('square', 4, 'quadrants'),
    ('plus', 2, 'arms'), ('plus', 4, 'arms'), ('plus', 3, 'rows')])
def test_split_mask_disjoint_and_covers(pattern, parts, how):
  mask = tasks.trigger_mask((28, 28), size=5, pattern=pattern)
  pieces = tasks.split_mask(mask, parts, how)
  assert len(pieces) == parts
  assert all(p.any() for p in pieces)
  total = np.sum(pieces, axis=0)
  assert total.max() == 1  # Disjoint.
  np.testing.assert_array_equal(total.astype(bool), mask)  # Union = the full pattern.


def test_split_mask_errors():
  mask = tasks.trigger_mask((28, 28), size=5)
  with pytest.raises(ValueError):
    tasks.split_mask(mask, 6, 'rows')
  with pytest.raises(ValueError):
    tasks.split_mask(mask, 3, 'quadrants')
  with pytest.raises(ValueError):
    tasks.split_mask(tasks.trigger_mask((28, 28), size=1, pattern='plus'), 4, 'arms')


# --------------------------------------------------------------------------- PixelTriggerTask


def _test_set(seed=0):
  rng = np.random.default_rng(seed)
  return _client(rng, np.arange(40) % 10)  # 4 images of each class.


def test_pixel_poison_fraction_and_replacement():
  tx, ty = _test_set()
  task = tasks.PixelTriggerTask(tx, ty, poison_fraction=0.5, trigger_size=3)
  x, y = _client(np.random.default_rng(1), [0] * 7 + [1, 2, 5])
  (bx, by), (mx, my) = task.attacker_data('a', x, y, attacker_index=0,
                                          rng=np.random.default_rng(0))
  assert my.size == 4 == task.num_poisoned(7)  # 3.5 rounds up.
  assert task.num_poisoned(5) == 3 and task.num_poisoned(0) == 0  # Halves up, not to even.
  assert np.all(my == 5)
  assert by.size + my.size == y.size  # Replaced, not duplicated.
  assert np.sum(by == 0) == 3 and np.sum(by != 0) == 3
  assert np.all(mx[:, task.mask, :] == 1.0)
  # The malicious images are stamped copies of 4 distinct original class-0 images.
  originals = x[y == 0]
  unstamped = [np.flatnonzero([np.array_equal(m[~task.mask], o[~task.mask]) for o in originals])
               for m in mx]
  assert all(u.size == 1 for u in unstamped)
  assert len({int(u[0]) for u in unstamped}) == 4
  # The benign class-0 images are the 3 others, unchanged.
  for b in bx[by == 0]:
    assert any(np.array_equal(b, o) for o in originals)


def test_pixel_poison_choice_is_seeded():
  tx, ty = _test_set()
  task = tasks.PixelTriggerTask(tx, ty, poison_fraction=0.3)
  x, y = _client(np.random.default_rng(1), [0] * 20)
  run = lambda s: task.attacker_data('a', x, y, 0, np.random.default_rng(s))[1][0]
  np.testing.assert_array_equal(run(4), run(4))
  assert run(4).shape[0] == 6
  assert not all(np.array_equal(run(4), run(s)) for s in range(5, 10))


def test_pixel_no_source_images_gives_empty_mal():
  tx, ty = _test_set()
  task = tasks.PixelTriggerTask(tx, ty)
  x, y = _client(np.random.default_rng(1), [1, 2, 3])
  (bx, by), (mx, my) = task.attacker_data('a', x, y, 0, np.random.default_rng(0))
  assert mx.shape == (0, H, W, 1) and my.shape == (0,)
  np.testing.assert_array_equal(bx, x)


def test_pixel_source_none_poisons_all_but_target():
  tx, ty = _test_set()
  task = tasks.PixelTriggerTask(tx, ty, source_class=None, poison_fraction=1.0)
  x, y = _client(np.random.default_rng(1), [0, 1, 5, 5, 9])
  (bx, by), (mx, my) = task.attacker_data('a', x, y, 0, np.random.default_rng(0))
  assert my.size == 3 and np.all(my == 5)
  np.testing.assert_array_equal(by, [5, 5])
  ex, ey = task.eval_sets()['backdoor']
  assert ex.shape[0] == 36 and np.all(ey == 5)  # 9 non-target classes x 4 images.


def test_pixel_eval_uses_full_trigger_on_source_class():
  tx, ty = _test_set()
  task = tasks.PixelTriggerTask(tx, ty, distributed_parts=4, trigger_size=4)
  sets = task.eval_sets()
  assert set(sets) == {'backdoor'}
  ex, ey = sets['backdoor']
  assert ex.shape[0] == 4 and np.all(ey == 5)
  assert np.all(ex[:, task.mask, :] == 1.0)
  np.testing.assert_array_equal(ex[:, ~task.mask, :], tx[ty == 0][:, ~task.mask, :])


def test_dba_attackers_stamp_only_their_piece():
  tx, ty = _test_set()
  task = tasks.PixelTriggerTask(tx, ty, pattern='plus', distributed_parts=4, poison_fraction=1.0,
                                trigger_size=5)
  assert task.name == 'pixel_trigger_dba' and task.split == 'arms'
  x, y = _client(np.random.default_rng(1), [0, 0, 3])
  seen = []
  for i in range(6):
    _, (mx, _) = task.attacker_data('a', x, y, i, np.random.default_rng(0))
    piece = task.attacker_mask(i)
    np.testing.assert_array_equal(piece, task.part_masks[i % 4])
    assert np.all(mx[:, piece, :] == 1.0)
    rest = task.mask & ~piece
    assert np.all(mx[:, rest, :] < 0.5)  # The other pieces are not stamped.
    seen.append(piece)
  np.testing.assert_array_equal(np.sum(seen[:4], axis=0).astype(bool), task.mask)
  with pytest.raises(ValueError):
    task.attacker_mask(-1)


def test_dba_default_split_of_square():
  tx, ty = _test_set()
  quads = tasks.PixelTriggerTask(tx, ty, distributed_parts=4)
  assert quads.split == 'quadrants' and [p.sum() for p in quads.part_masks] == [9, 6, 6, 4]
  bands = tasks.PixelTriggerTask(tx, ty, distributed_parts=2)
  assert bands.split == 'rows' and [p.sum() for p in bands.part_masks] == [15, 10]


@pytest.mark.parametrize('kwargs', [
    dict(source_class=5, target_class=5), dict(target_class=10), dict(poison_fraction=1.5),
    dict(distributed_parts=0), dict(source_class=-1)])
def test_pixel_errors(kwargs):
  tx, ty = _test_set()
  with pytest.raises(ValueError):
    tasks.PixelTriggerTask(tx, ty, **kwargs)


def test_pixel_needs_source_images_in_test_set():
  tx, ty = _test_set()
  with pytest.raises(ValueError, match='no image'):
    tasks.PixelTriggerTask(tx[ty != 0], ty[ty != 0])


def test_targeted_samples_per_client_caps_and_removes_exactly_those():
  rng = np.random.default_rng(0)
  clients = {f'c{i}': (rng.random((40, 4, 4, 1)).astype(np.float32),
                       rng.integers(0, 3, 40).astype(np.int32)) for i in range(3)}
  task = tasks.TargetedTask.build(clients, num_tasks=2, source_class=1, target_class=0,
                                  seed=3, num_classes=3, samples_per_client=4,
                                  keep_honest_copies=False)
  assert task.num_malicious == 8 and set(task.malicious_counts.values()) == {4}
  for cid in task.target_clients:
    x, y = clients[cid]
    hx, hy = task.honest_data(cid, x, y)
    assert len(hy) == len(y) - 4  # only the 4 taken images are gone
    assert (hy == 1).sum() == (y == 1).sum() - 4
    taken = x[task.malicious_indices[cid]]
    assert not any(np.array_equal(t, h) for t in taken for h in hx)
  again = tasks.TargetedTask.build(clients, num_tasks=2, source_class=1, target_class=0,
                                   seed=3, num_classes=3, samples_per_client=4)
  np.testing.assert_array_equal(again.eval_sets()['backdoor'][0], task.eval_sets()['backdoor'][0])
  with pytest.raises(ValueError, match='samples_per_client'):
    tasks.TargetedTask.build(clients, num_tasks=1, source_class=1, target_class=0,
                             num_classes=3, samples_per_client=-1)


def test_targeted_min_samples_only_picks_clients_with_enough_source_images():
  rng = np.random.default_rng(1)
  counts = {'few0': 1, 'few1': 2, 'many0': 6, 'many1': 9}
  clients = {}
  for cid, n in counts.items():
    y = np.concatenate([np.ones(n, np.int32), np.zeros(12, np.int32)])
    clients[cid] = (rng.random((len(y), 4, 4, 1)).astype(np.float32), y)
  for seed in range(6):
    task = tasks.TargetedTask.build(clients, num_tasks=2, source_class=1, target_class=0,
                                    seed=seed, num_classes=2, min_samples_per_client=5)
    assert set(task.target_clients) == {'many0', 'many1'}
  anyone = {tuple(tasks.TargetedTask.build(clients, num_tasks=1, source_class=1, target_class=0,
                                           seed=s, num_classes=2).target_clients)
            for s in range(12)}
  assert any(c[0].startswith('few') for c in anyone)  # without the floor, small ones are picked
  with pytest.raises(ValueError, match='at least 7 images of class 1'):
    tasks.TargetedTask.build(clients, num_tasks=2, source_class=1, target_class=0,
                             num_classes=2, min_samples_per_client=7)
  with pytest.raises(ValueError, match='min_samples_per_client'):
    tasks.TargetedTask.build(clients, num_tasks=1, source_class=1, target_class=0,
                             num_classes=2, min_samples_per_client=-1)
