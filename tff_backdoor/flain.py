"""FLAIN (Ding, Yang, Huang 2024): post-training flip of low-activation neurons' updates.

Applied once to the final global Keras model (METHODS.md section 2); no TFF needed. For a Dense
layer with kernel W (Keras layout [inputs, outputs], row j = input neuron j), a_j is the mean of
input j over a small clean auxiliary set and D = W_final - W_init the total federated update.
With a threshold k raised from `k0` by `step` up to `k_max`, rows with a_j <= k become
W_init[j] - D[j] (the update mirrored about the round-0 weights; other rows keep W_final), until
auxiliary accuracy has dropped by at least `tolerance`. The flipped state at that k is kept, then
the kernel is rescaled to its pre-defense Frobenius norm; the bias is never touched.

Default threshold mode: 'quantile'. The reference code compares a_j with an absolute activation
value k, whose scale depends on the model (architecture, input scaling, training length, layer),
which is why k0/step had to be retuned per dataset (MNIST 0.001/0.001, Fashion-MNIST
0.0005/0.0001, CIFAR-10 0.001/0.0001). In 'quantile' mode k is a quantile level q in [0, 1] and
neurons with a_j <= quantile_q(a) are flipped: scale-free (unchanged if activations are scaled),
comparable across models, datasets and layers (each layer gets its own threshold in 'all_dense'),
and the number of accuracy evaluations is bounded by the number of q steps independently of the
layer width. 'absolute' reproduces the authors' rule (its defaults are their Fashion-MNIST values).
The one difference from their code: they additionally require a_j >= 0, which only matters for
layers whose inputs can be negative (after ReLU/pooling they cannot).

Speed: the layer inputs on the auxiliary set are computed once; a candidate state is evaluated only
when the flipped set changes (accuracy cannot change otherwise), and the layer's pre-activation is
updated incrementally from the cached inputs, so only the layers after it are rerun.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tff_backdoor.flain_config import ALL_DENSE, FlainConfig


@dataclasses.dataclass(frozen=True)
class FlainReport:
  """What FLAIN did.

  `threshold` is the k the search ended at (a quantile level in 'quantile' mode) and
  `activation_thresholds` the matching a_j threshold per layer. `trajectory` holds
  (k, num_flipped, aux_accuracy) for the first k, every k where the flipped set changed and the
  last k tried; k steps in between repeat the previous entry. `aux_accuracy_at_stop` is before the
  rescale, `aux_accuracy_after` is the returned model's.
  """
  layers: Tuple[str, ...]
  threshold_mode: str
  k0: float
  step: float
  threshold: float
  activation_thresholds: Dict[str, float]
  stopped_by_tolerance: bool
  num_flipped: int
  flipped_indices: Dict[str, List[int]]
  aux_accuracy_before: float
  aux_accuracy_at_stop: float
  aux_accuracy_after: float
  kernel_scale: Dict[str, float]
  trajectory: List[Tuple[float, int, float]]
  num_k_steps: int
  num_evaluations: int
  num_aux: int
  seconds: float

  def to_dict(self) -> Dict[str, Any]:
    """JSON-serialisable dict (tuples become lists)."""
    d = dataclasses.asdict(self)
    d['layers'] = list(self.layers)
    d['trajectory'] = [[float(k), int(n), float(a)] for k, n, a in self.trajectory]
    return d


def select_auxiliary(x: np.ndarray, y: np.ndarray, per_class: int, seed: int,
                     num_classes: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Draws `per_class` images of every class without replacement, seeded, in class order.

  Pass a server-side held-out split (not the test set, unlike the reference code). Classes are
  range(num_classes) if given (so a missing class is an error), else the labels present in y.
  """
  x, y = np.asarray(x), np.asarray(y).reshape(-1)
  if len(x) != len(y):
    raise ValueError(f'x has {len(x)} examples but y has {len(y)}')
  if int(per_class) != per_class or per_class < 1:
    raise ValueError(f'per_class must be a positive integer, got {per_class!r}')
  classes = np.arange(num_classes) if num_classes is not None else np.unique(y)
  if len(classes) == 0:
    raise ValueError('no examples to draw the auxiliary set from')
  counts = {int(c): int(np.sum(y == c)) for c in classes}
  short = {c: n for c, n in counts.items() if n < per_class}
  if short:
    raise ValueError(f'classes with fewer than per_class={per_class} examples '
                     f'(class: count): {short}')
  rng = np.random.default_rng(seed)
  idx = np.concatenate([rng.choice(np.flatnonzero(y == c), size=int(per_class), replace=False)
                        for c in classes])
  return x[idx], y[idx]


def target_layers(model: tf.keras.Model, layer: Optional[str]) -> List[tf.keras.layers.Layer]:
  """The Dense layer(s) FLAIN would defend; a clear ValueError if `layer` is absent or not Dense.

  Layers come in model order. Public so that a training run can check its --flain_layer
  before, not after, training.
  """
  dense = [l for l in model.layers if isinstance(l, tf.keras.layers.Dense)]
  dense_names = [l.name for l in dense]
  if layer == ALL_DENSE or layer is None:
    if not dense:
      raise ValueError(f'model {model.name!r} has no Dense layer')
    return dense if layer == ALL_DENSE else dense[:1]
  by_name = {l.name: l for l in model.layers}
  if layer not in by_name:
    raise ValueError(f'model {model.name!r} has no layer {layer!r}; Dense layers: {dense_names}')
  if not isinstance(by_name[layer], tf.keras.layers.Dense):
    raise ValueError(f'layer {layer!r} is a {type(by_name[layer]).__name__}, not Dense; '
                     f'Dense layers: {dense_names}')
  return [by_name[layer]]


def _check_weights(model: tf.keras.Model, initial_weights: Sequence[np.ndarray]
                   ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """(final, initial) weight lists; ValueError on architecture mismatch or non-finite values."""
  names = [v.name for v in model.weights]
  final = model.get_weights()
  initial = [np.asarray(w) for w in initial_weights]
  if len(initial) != len(final):
    raise ValueError(f'initial_weights has {len(initial)} arrays but model {model.name!r} has '
                     f'{len(final)} (model.get_weights() order): different architecture')
  for i, (w0, w1) in enumerate(zip(initial, final)):
    if w0.shape != w1.shape:
      raise ValueError(f'initial_weights[{i}] ({names[i]}) has shape {w0.shape}, the model has '
                       f'{w1.shape}: different architecture')
  for which, weights in (('model', final), ('initial_weights', initial)):
    for i, w in enumerate(weights):
      if not np.all(np.isfinite(w)):
        raise ValueError(f'{which} weight {i} ({names[i]}) has non-finite values')
  return final, initial


def _check_aux(aux_x: np.ndarray, aux_y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Auxiliary images and integer labels (one-hot labels are argmax-ed)."""
  aux_x, aux_y = np.asarray(aux_x), np.asarray(aux_y)
  if len(aux_x) == 0 or len(aux_y) == 0:
    raise ValueError(f'empty auxiliary data ({len(aux_x)} images, {len(aux_y)} labels)')
  if len(aux_x) != len(aux_y):
    raise ValueError(f'aux_x has {len(aux_x)} images but aux_y has {len(aux_y)} labels')
  if aux_y.ndim == 2 and aux_y.shape[1] > 1:
    aux_y = np.argmax(aux_y, axis=1)
  return aux_x, aux_y.reshape(-1).astype(np.int64)


def _layer_inputs(model: tf.keras.Model, layers: Sequence[tf.keras.layers.Layer],
                  x: np.ndarray, batch_size: int) -> List[np.ndarray]:
  """Inputs of `layers` on x (inference mode), one forward pass through the model."""
  if not model.inputs:
    raise ValueError(f'model {model.name!r} has no defined inputs; build it with an Input layer')
  extractor = tf.keras.Model(model.inputs, [l.input for l in layers])
  parts = [[] for _ in layers]
  for start in range(0, len(x), batch_size):
    outs = tf.nest.flatten(extractor(x[start:start + batch_size], training=False))
    for part, out in zip(parts, outs):
      part.append(out.numpy())
  return [np.concatenate(p) for p in parts]


def _downstream(model: tf.keras.Model, layer: tf.keras.layers.Layer
                ) -> Optional[Callable[[tf.Tensor], tf.Tensor]]:
  """Maps `layer`'s output to the model output, or None if the graph does not allow it."""
  if isinstance(model, tf.keras.Sequential):
    rest = model.layers[model.layers.index(layer) + 1:]

    def run(t):
      for l in rest:
        t = l(t, training=False)
      return t
    return run
  try:
    sub = tf.keras.Model(layer.output, model.outputs)
  except (ValueError, AttributeError):  # Graph disconnected (skip paths) or a shared layer.
    return None
  return lambda t: sub(t, training=False)


class _AuxAccuracy:
  """Counts correct auxiliary predictions of `clone` with given kernels of the target layers.

  Fast path: the first target's pre-activation is kept from its cached inputs and updated only on
  changed rows; the (small) rest of the network runs on the whole aux set in one call. Fallback
  (graph not splittable after the layer): a full forward pass in batches.
  """

  def __init__(self, clone, targets, first_inputs, first_kernel, aux_x, aux_y, batch_size):
    self._clone, self._targets = clone, targets
    self._aux_x, self._aux_y, self._bs = aux_x, aux_y, batch_size
    self._down = _downstream(clone, targets[0])
    if self._down is not None:
      self._lead_shape = first_inputs.shape[:-1]
      self._x = first_inputs.reshape(-1, first_inputs.shape[-1]).astype(np.float64)
      self._kernel = np.array(first_kernel, dtype=np.float64)
      self._z = self._x @ self._kernel

  def correct(self, kernels: Sequence[np.ndarray], rows: Optional[np.ndarray] = None) -> int:
    """Correct count; `rows` = the only rows of kernels[0] changed since the last call, if known."""
    if self._down is None:
      for layer, kernel in zip(self._targets, kernels):
        layer.kernel.assign(kernel.astype(layer.kernel.dtype.as_numpy_dtype))
      run = lambda xb: self._clone(xb, training=False)
      return sum(self._count(run, self._aux_x[s:s + self._bs], self._aux_y[s:s + self._bs])
                 for s in range(0, len(self._aux_y), self._bs))
    for layer, kernel in zip(self._targets[1:], kernels[1:]):
      layer.kernel.assign(kernel.astype(layer.kernel.dtype.as_numpy_dtype))
    if rows is None:
      rows = np.flatnonzero(np.any(kernels[0] != self._kernel, axis=1))
    if rows.size:
      self._z += self._x[:, rows] @ (kernels[0][rows] - self._kernel[rows])
      self._kernel[rows] = kernels[0][rows]
    first = self._targets[0]
    z = self._z.reshape(self._lead_shape + (self._z.shape[-1],))
    if first.bias is not None:
      z = z + first.bias.numpy()
    return self._count(self._down, first.activation(tf.constant(z, dtype=first.compute_dtype)),
                       self._aux_y)

  @staticmethod
  def _count(fn, inputs, labels) -> int:
    pred = np.argmax(np.asarray(tf.nest.flatten(fn(inputs))[0]), axis=-1)
    return int(np.sum(pred == labels))


def _kernels(model: tf.keras.Model, targets: Sequence[tf.keras.layers.Layer],
             final: Sequence[np.ndarray], initial: Sequence[np.ndarray]
             ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """The target layers' final kernels W and their flips W_init - (W - W_init), as float64."""
  ids = [id(v) for v in model.weights]
  kernel_idx = [ids.index(id(l.kernel)) for l in targets]
  w_final = [final[i].astype(np.float64) for i in kernel_idx]
  w_init = [initial[i].astype(np.float64) for i in kernel_idx]
  return w_final, [w0 - (w1 - w0) for w0, w1 in zip(w_init, w_final)]


def _thresholds(acts: Sequence[np.ndarray], mode: str, k: float) -> List[float]:
  """Each layer's activation threshold at k: k itself ('absolute') or the k-quantile."""
  if mode == 'absolute':
    return [k] * len(acts)
  return [float(np.quantile(a, min(max(k, 0.0), 1.0))) for a in acts]


@dataclasses.dataclass
class _Search:
  """Where the k search stopped: the flipped kernels, counts per layer, aux correct count."""
  state: List[np.ndarray]
  counts: List[int]
  correct: int
  k: float
  stopped: bool
  steps_done: int
  num_evaluations: int
  trajectory: List[Tuple[float, int, float]]


def _search(evaluator: '_AuxAccuracy', config: FlainConfig, sorted_acts: Sequence[np.ndarray],
            order: Sequence[np.ndarray], thresholds: Callable[[float], List[float]],
            w_final: Sequence[np.ndarray], w_flip: Sequence[np.ndarray], correct_before: int,
            n: int) -> _Search:
  """Raises k step by step, flipping the rows of the least active neurons, until the aux
  accuracy drops by `config.tolerance` or k reaches k_max."""
  k0, step = config.effective_k0, config.effective_step
  trajectory: List[Tuple[float, int, float]] = []
  state = [w.copy() for w in w_final]  # Flipped sets only grow with k: update rows in place.
  counts: Optional[List[int]] = None
  correct = correct_before
  stopped = False
  num_evaluations = 0
  steps_done = 0
  k = k0
  for i in range(config.num_k_steps):
    k = min(k0 + i * step, config.k_max)
    steps_done = i + 1
    new_counts = [int(np.searchsorted(s, t, side='right'))
                  for s, t in zip(sorted_acts, thresholds(k))]
    if new_counts == counts:
      continue  # Same flipped set, same accuracy: the stop test cannot change.
    old = counts or [0] * len(new_counts)
    new_rows = [o[c0:c1] for o, c0, c1 in zip(order, old, new_counts)]
    for w, wf, rows in zip(state, w_flip, new_rows):
      w[rows] = wf[rows]
    counts = new_counts
    if sum(counts) == 0:
      correct = correct_before
    else:
      correct = evaluator.correct(state, new_rows[0])
      num_evaluations += 1
    trajectory.append((float(k), int(sum(counts)), correct / n))
    if correct_before - correct >= config.tolerance * n - 1e-9:
      stopped = True
      break
  if trajectory[-1][0] != float(k):
    trajectory.append((float(k), int(sum(counts)), correct / n))
  return _Search(state, counts, correct, k, stopped, steps_done, num_evaluations, trajectory)


def _rescale(names: Sequence[str], state: Sequence[np.ndarray], w_final: Sequence[np.ndarray],
             rescale: bool) -> Dict[str, float]:
  """Scales each flipped kernel (in place) back to its final norm; returns the factors."""
  scales = {}
  for name, w, w1 in zip(names, state, w_final):
    norm = np.linalg.norm(w)
    scale = float(np.linalg.norm(w1) / norm) if rescale and norm > 0 else 1.0
    w *= scale
    scales[name] = scale
  return scales


def _activation_order(inputs: Sequence[np.ndarray]):
  """Per target layer: the mean input activations a_j, their stable ascending order, sorted a."""
  acts = [x.reshape(-1, x.shape[-1]).mean(axis=0) for x in inputs]  # a_j per layer.
  order = [np.argsort(a, kind='stable') for a in acts]
  return acts, order, [a[o] for a, o in zip(acts, order)]


def _report(config: FlainConfig, names: Sequence[str], order: Sequence[np.ndarray],
            thresholds: Callable, search: _Search, scales: Dict[str, float],
            corrects: Tuple[int, int, int], n: int, started: float) -> FlainReport:
  """The FlainReport of a finished search (correct aux predictions before, at stop, after)."""
  correct_before, correct_at_stop, correct_after = corrects
  return FlainReport(
      layers=names,
      threshold_mode=config.threshold_mode,
      k0=config.effective_k0,
      step=config.effective_step,
      threshold=float(search.k),
      activation_thresholds={nm: float(t) for nm, t in zip(names, thresholds(search.k))},
      stopped_by_tolerance=search.stopped,
      num_flipped=int(sum(search.counts)),
      flipped_indices={nm: sorted(int(j) for j in o[:c])
                       for nm, o, c in zip(names, order, search.counts)},
      aux_accuracy_before=correct_before / n,
      aux_accuracy_at_stop=correct_at_stop / n,
      aux_accuracy_after=correct_after / n,
      kernel_scale=scales,
      trajectory=search.trajectory,
      num_k_steps=search.steps_done,
      num_evaluations=search.num_evaluations,
      num_aux=n,
      seconds=time.perf_counter() - started)


def apply_flain(model: tf.keras.Model,
                initial_weights: Sequence[np.ndarray],
                aux_x: np.ndarray,
                aux_y: np.ndarray,
                config: FlainConfig = FlainConfig()) -> Tuple[tf.keras.Model, FlainReport]:
  """Runs FLAIN on the final global `model`; returns a new defended model and a report.

  `initial_weights` are the round-0 global weights in `model.get_weights()` order; aux_x/aux_y a
  small clean labelled set held by the server. `model` is never modified; the returned clone is
  not compiled. Raises ValueError on a bad layer, empty aux data, mismatched or non-finite weights.
  """
  started = time.perf_counter()
  config.validate()
  targets0 = target_layers(model, config.layer)
  aux_x, aux_y = _check_aux(aux_x, aux_y)
  final, initial = _check_weights(model, initial_weights)
  n = len(aux_y)

  w_final, w_flip = _kernels(model, targets0, final, initial)

  clone = tf.keras.models.clone_model(model)
  clone.set_weights(final)
  targets = [clone.get_layer(l.name) for l in targets0]
  names = tuple(l.name for l in targets)

  inputs = _layer_inputs(clone, targets, aux_x, config.batch_size)
  acts, order, sorted_acts = _activation_order(inputs)
  evaluator = _AuxAccuracy(clone, targets, inputs[0], w_final[0], aux_x, aux_y, config.batch_size)
  del inputs

  thresholds = functools.partial(_thresholds, acts, config.threshold_mode)
  correct_before = evaluator.correct(w_final)
  search = _search(evaluator, config, sorted_acts, order, thresholds, w_final, w_flip,
                   correct_before, n)
  state = search.state
  scales = _rescale(names, state, w_final, config.rescale)
  correct_after = evaluator.correct(state)
  for layer, w in zip(targets, state):
    layer.kernel.assign(w.astype(layer.kernel.dtype.as_numpy_dtype))

  report = _report(config, names, order, thresholds, search, scales,
                   (correct_before, search.correct, correct_after), n, started)
  return clone, report
