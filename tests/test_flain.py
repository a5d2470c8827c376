"""Tests for tff_backdoor.flain: a planted dormant backdoor neuron, the flip rule, bad input."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tff_backdoor import flain
from tff_backdoor import flain_config

NUM_CLASSES = 3
TRIGGER = 3  # Index of the trigger feature = the dormant input neuron of 'dense_features'.
TARGET = 2


def _clean(n_per_class, seed):
  """Clean inputs: class c lights feature c; the trigger feature is exactly 0."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(NUM_CLASSES), n_per_class)
  x = rng.uniform(0.0, 0.05, (len(y), 4)).astype(np.float32)
  x[np.arange(len(y)), y] += rng.uniform(0.5, 1.5, len(y)).astype(np.float32)
  x[:, TRIGGER] = 0.0
  return x, y


def _triggered(seed):
  """Non-target-class inputs with the trigger on, labelled with the attacker's target."""
  x, y = _clean(20, seed)
  x = x[y != TARGET]
  x[:, TRIGGER] = 4.0
  return x, np.full(len(x), TARGET)


def _sequential():
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(4,)),
      tf.keras.layers.ReLU(name='relu_in'),
      tf.keras.layers.Dense(3, activation='relu', name='dense_features'),
      tf.keras.layers.Dense(NUM_CLASSES, name='logits'),
  ])


def _functional(skip):
  inp = tf.keras.Input((4,))
  h = tf.keras.layers.ReLU(name='relu_in')(inp)
  h = tf.keras.layers.Dense(3, activation='relu', name='dense_features')(h)
  out = tf.keras.layers.Dense(NUM_CLASSES, name='logits')(h)
  if skip:  # A path around the FLAIN layer: the fast downstream evaluation cannot be used.
    side = tf.keras.layers.Dense(NUM_CLASSES, kernel_initializer='zeros', name='skip')(inp)
    out = tf.keras.layers.Add(name='add')([out, side])
  return tf.keras.Model(inp, out)


def _planted(build=_sequential):
  """(final model, round-0 weights): the trigger row of the kernel was learned to hit TARGET."""
  model = build()
  rng = np.random.default_rng(0)
  w_init = rng.normal(0.0, 0.05, (4, 3)).astype(np.float32)
  layer = model.get_layer('dense_features')
  layer.kernel.assign(w_init)
  model.get_layer('logits').kernel.assign(np.eye(3, dtype=np.float32))
  initial = model.get_weights()
  w_final = w_init.copy()
  w_final[:3] = np.eye(3)  # Clean rows: feature c -> unit c.
  w_final[TRIGGER] += np.array([0.0, 0.0, 3.0], np.float32)  # Dormant row routes to TARGET.
  layer.kernel.assign(w_final)
  return model, initial


def _accuracy(model, x, y):
  return float(np.mean(np.argmax(model(x, training=False).numpy(), axis=1) == y))


def _kernel(model, name='dense_features'):
  return model.get_layer(name).kernel.numpy()


def test_planted_backdoor_neuron_is_flipped_and_clean_accuracy_holds():
  model, initial = _planted()
  aux_x, aux_y = _clean(30, seed=1)
  test_x, test_y = _clean(50, seed=2)
  bd_x, bd_y = _triggered(seed=3)
  assert _accuracy(model, test_x, test_y) == 1.0
  assert _accuracy(model, bd_x, bd_y) == 1.0  # The backdoor works before the defense.
  # Thresholds stay below the clean neurons' activations (~1/3): accuracy never drops.
  config = flain.FlainConfig(threshold_mode='absolute', k0=0.01, step=0.01, k_max=0.1)
  defended, report = flain.apply_flain(model, initial, aux_x, aux_y, config)
  assert report.layers == ('dense_features',)
  assert report.flipped_indices == {'dense_features': [TRIGGER]}
  assert not report.stopped_by_tolerance and report.threshold == pytest.approx(0.1)
  assert report.trajectory == [(0.01, 1, 1.0), (pytest.approx(0.1), 1, 1.0)]  # First, last k.
  assert _accuracy(defended, bd_x, bd_y) == 0.0
  assert _accuracy(defended, test_x, test_y) == 1.0
  assert report.aux_accuracy_before == report.aux_accuracy_after == 1.0


def test_default_config_stops_at_first_tolerance_drop():
  model, initial = _planted()
  aux_x, aux_y = _clean(30, seed=1)
  bd_x, bd_y = _triggered(seed=3)
  config = flain.FlainConfig()
  assert config.threshold_mode == 'quantile'
  defended, report = flain.apply_flain(model, initial, aux_x, aux_y, config)
  drops = [report.aux_accuracy_before - acc for _, _, acc in report.trajectory]
  assert report.stopped_by_tolerance
  assert drops[-1] >= config.tolerance and all(d < config.tolerance for d in drops[:-1])
  assert report.trajectory[0][1] == 1  # q = 0 flips only the minimum: the dormant neuron.
  assert TRIGGER in report.flipped_indices['dense_features']
  assert report.aux_accuracy_at_stop == pytest.approx(report.trajectory[-1][2])
  assert _accuracy(defended, bd_x, bd_y) == 0.0
  # The report's accuracy (cached-activation path) is that of the returned model.
  assert report.aux_accuracy_after == pytest.approx(_accuracy(defended, aux_x, aux_y))


def test_stop_rule_is_drop_at_least_tolerance():
  model, initial = _planted()
  aux_x, aux_y = _clean(30, seed=1)
  run = lambda tol: flain.apply_flain(model, initial, aux_x, aux_y,
                                      flain.FlainConfig(tolerance=tol))[1]
  full = run(1.0)
  k, _, acc = next(t for t in full.trajectory if t[2] < full.aux_accuracy_before)
  drop = full.aux_accuracy_before - acc
  assert run(drop).threshold == k  # A drop equal to the tolerance stops the search ...
  assert run(drop + 0.5 / len(aux_y)).threshold > k  # ... a smaller one does not.


def test_absolute_mode_only_evaluates_when_the_flipped_set_changes():
  model, initial = _planted()
  aux_x, aux_y = _clean(30, seed=1)
  config = flain.FlainConfig(threshold_mode='absolute')  # Authors' FMNIST k0/step.
  _, report = flain.apply_flain(model, initial, aux_x, aux_y, config)
  assert (report.k0, report.step) == flain_config.MODE_DEFAULTS['absolute']
  assert report.num_k_steps > 1000  # ~0.3 / 0.0001 thresholds tried ...
  assert report.num_evaluations <= 3  # ... but only a few distinct flipped sets.
  assert report.stopped_by_tolerance


@pytest.mark.parametrize('skip', [False, True])
def test_functional_models_match_sequential(skip):
  aux_x, aux_y = _clean(30, seed=1)
  config = flain.FlainConfig(layer='dense_features')
  seq, seq_report = flain.apply_flain(*_planted(), aux_x, aux_y, config)
  model, initial = _planted(lambda: _functional(skip))
  assert (flain._downstream(model, model.get_layer('dense_features')) is None) == skip
  fun, report = flain.apply_flain(model, initial, aux_x, aux_y, config)
  assert report.flipped_indices == seq_report.flipped_indices
  assert report.trajectory == pytest.approx(seq_report.trajectory)
  np.testing.assert_allclose(_kernel(fun), _kernel(seq), rtol=1e-6)


def test_cached_evaluation_matches_full_forward_pass():
  model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(6,)),
                               tf.keras.layers.Dense(16, activation='relu', name='dense_features'),
                               tf.keras.layers.Dense(5, name='logits')])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 6)).astype(np.float32)
  y = rng.integers(0, 5, 300)
  layer = model.get_layer('dense_features')
  kernel = layer.kernel.numpy().astype(np.float64)
  evaluator = flain._AuxAccuracy(model, [layer], x, kernel, x, y, batch_size=64)
  for rows in ([0, 3], [1], None):  # Incremental row updates, then a whole-kernel change.
    kernel = kernel.copy()
    kernel[rows if rows is not None else slice(None)] *= -1.5
    got = evaluator.correct([kernel], None if rows is None else np.array(rows))
    layer.kernel.assign(kernel.astype(np.float32))
    assert got == round(_accuracy(model, x, y) * len(y))


def test_zero_update_leaves_model_unchanged():
  model, _ = _planted()
  aux_x, aux_y = _clean(10, seed=1)
  defended, report = flain.apply_flain(model, model.get_weights(), aux_x, aux_y,
                                       flain.FlainConfig(layer=flain.ALL_DENSE))
  assert report.layers == ('dense_features', 'logits')
  assert report.num_flipped > 0  # Rows were "flipped" but D = 0 leaves them as they were.
  for before, after in zip(model.get_weights(), defended.get_weights()):
    np.testing.assert_array_equal(before, after)


def _hand_model():
  """Dense(3 -> 2) with hand-made kernels and aux inputs whose means are a = [0, 0.5, 2]."""
  model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(3,)),
                               tf.keras.layers.Dense(2, name='d')])
  w_init = np.array([[1.0, -1.0], [0.5, 2.0], [-3.0, 0.25]], np.float32)
  w_final = np.array([[1.5, -2.0], [0.0, 2.5], [-1.0, 1.0]], np.float32)
  model.get_layer('d').kernel.assign(w_init)
  model.get_layer('d').bias.assign([0.3, -0.7])
  initial = model.get_weights()
  model.get_layer('d').kernel.assign(w_final)
  aux_x = np.array([[0.0, 0.0, 2.0], [0.0, 1.0, 2.0]], np.float32)
  return model, initial, w_init, w_final, aux_x, np.array([0, 1])


@pytest.mark.parametrize('k,flipped', [(0.0, [0]), (0.6, [0, 1]), (2.0, [0, 1, 2])])
def test_flip_formula_on_hand_made_kernel(k, flipped):
  model, initial, w_init, w_final, aux_x, aux_y = _hand_model()
  config = flain.FlainConfig(threshold_mode='absolute', k0=k, step=0.1, k_max=k, rescale=False)
  defended, report = flain.apply_flain(model, initial, aux_x, aux_y, config)
  assert report.flipped_indices == {'d': flipped}
  expected = w_final.copy()
  expected[flipped] = w_init[flipped] - (w_final[flipped] - w_init[flipped])
  kernel = _kernel(defended, 'd')
  np.testing.assert_allclose(kernel, expected, rtol=1e-6)
  kept = [j for j in range(3) if j not in flipped]
  np.testing.assert_array_equal(kernel[kept], w_final[kept])
  np.testing.assert_array_equal(defended.get_layer('d').bias.numpy(), initial[1])


def test_rescale_restores_frobenius_norm():
  model, initial, w_init, w_final, aux_x, aux_y = _hand_model()
  config = flain.FlainConfig(threshold_mode='absolute', k0=0.6, step=0.1, k_max=0.6)
  defended, report = flain.apply_flain(model, initial, aux_x, aux_y, config)
  flipped = w_final.copy()
  flipped[:2] = 2 * w_init[:2] - w_final[:2]
  kernel = _kernel(defended, 'd')
  assert np.linalg.norm(kernel) == pytest.approx(np.linalg.norm(w_final), rel=1e-6)
  scale = np.linalg.norm(w_final) / np.linalg.norm(flipped)
  assert report.kernel_scale['d'] == pytest.approx(scale) and abs(scale - 1) > 0.05
  np.testing.assert_allclose(kernel, flipped * scale, rtol=1e-5)


@pytest.mark.parametrize('q,flipped', [(0.0, [1]), (0.5, [1, 3]), (1.0, [0, 1, 2, 3])])
def test_quantile_mode_flips_neurons_below_the_quantile(q, flipped):
  model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(4,)),
                               tf.keras.layers.Dense(2, name='d')])
  initial = [w + 1.0 for w in model.get_weights()]
  aux_x = np.array([[3.0, 0.0, 2.0, 1.0]], np.float32)  # a = [3, 0, 2, 1].
  config = flain.FlainConfig(k0=q, k_max=q, rescale=False)
  _, report = flain.apply_flain(model, initial, aux_x, np.array([0]), config)
  assert report.threshold_mode == 'quantile'
  assert report.flipped_indices == {'d': flipped}
  assert report.activation_thresholds['d'] == pytest.approx(np.quantile([3, 0, 2, 1], q))
  # Scale-free: multiplying the activations by 1000 flips the same neurons.
  _, scaled = flain.apply_flain(model, initial, aux_x * 1000, np.array([0]), config)
  assert scaled.flipped_indices == report.flipped_indices


def test_input_model_is_not_mutated_and_report_is_json():
  model, initial = _planted()
  before = [w.copy() for w in model.get_weights()]
  aux_x, aux_y = _clean(10, seed=1)
  defended, report = flain.apply_flain(model, initial, aux_x, aux_y)
  assert defended is not model
  for w0, w1 in zip(before, model.get_weights()):
    np.testing.assert_array_equal(w0, w1)
  assert not np.array_equal(_kernel(defended), _kernel(model))
  d = json.loads(json.dumps(report.to_dict()))
  assert d['layers'] == ['dense_features'] and d['num_flipped'] == report.num_flipped
  assert len(d['trajectory'][0]) == 3 and d['seconds'] >= 0


def _bad_inputs():
  model, initial = _planted()
  aux_x, aux_y = _clean(5, seed=1)
  nan_initial = [w.copy() for w in initial]
  nan_initial[0][0, 0] = np.nan
  wrong_shape = [np.zeros((5, 3), np.float32)] + initial[1:]
  return model, initial, aux_x, aux_y, {
      'missing layer': (dict(config=flain.FlainConfig(layer='nope')), 'no layer'),
      'not dense': (dict(config=flain.FlainConfig(layer='relu_in')), 'not Dense'),
      'empty aux': (dict(aux_x=aux_x[:0], aux_y=aux_y[:0]), 'empty auxiliary'),
      'weight count': (dict(initial=initial[:-1]), 'has 3 arrays but'),
      'weight shape': (dict(initial=wrong_shape), r'initial_weights\[0\] \(dense_features'),
      'non-finite': (dict(initial=nan_initial), 'non-finite'),
  }


@pytest.mark.parametrize('case', ['missing layer', 'not dense', 'empty aux', 'weight count',
                                  'weight shape', 'non-finite'])
def test_bad_input_raises_one_clear_value_error(case):
  model, initial, aux_x, aux_y, cases = _bad_inputs()
  kwargs, match = cases[case]
  args = dict(initial=initial, aux_x=aux_x, aux_y=aux_y, config=flain.FlainConfig())
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    flain.apply_flain(model, args['initial'], args['aux_x'], args['aux_y'], args['config'])


def test_non_finite_final_weights_raise():
  model, initial = _planted()
  model.get_layer('logits').bias.assign([np.inf, 0.0, 0.0])
  with pytest.raises(ValueError, match=r'model weight 3 .*non-finite'):
    flain.apply_flain(model, initial, *_clean(5, seed=1))


@pytest.mark.parametrize('kwargs', [dict(threshold_mode='relative'), dict(step=0.0),
                                    dict(k0=0.5, k_max=0.1), dict(k_max=1.5),
                                    dict(tolerance=-0.1), dict(batch_size=0)])
def test_bad_config_raises(kwargs):
  with pytest.raises(ValueError):
    flain.FlainConfig(**kwargs).validate()
  model, initial = _planted()
  with pytest.raises(ValueError):  # apply_flain checks its config first
    flain.apply_flain(model, initial, *_clean(5, seed=1), config=flain.FlainConfig(**kwargs))


def test_select_auxiliary_is_seeded_and_per_class():
  y = np.repeat(np.arange(4), 50)
  x = np.arange(len(y))
  ax, ay = flain.select_auxiliary(x, y, per_class=5, seed=7)
  np.testing.assert_array_equal(np.bincount(ay), [5, 5, 5, 5])
  np.testing.assert_array_equal(y[ax], ay)  # Images stay paired with their labels.
  assert len(set(ax.tolist())) == 20
  np.testing.assert_array_equal(flain.select_auxiliary(x, y, 5, seed=7)[0], ax)
  assert not np.array_equal(flain.select_auxiliary(x, y, 5, seed=8)[0], ax)
  with pytest.raises(ValueError, match='fewer than per_class=51'):
    flain.select_auxiliary(x, y, per_class=51, seed=7)
  with pytest.raises(ValueError, match=r'\{4: 0\}'):
    flain.select_auxiliary(x, y, per_class=5, seed=7, num_classes=5)
