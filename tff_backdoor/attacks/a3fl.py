"""A3FL's trigger search (Zhang, Jia, Wang, Li, NeurIPS 2023), in TensorFlow on the run's side.

Before an attack round the attacker optimizes its trigger t (the pixel task's mask, values in
[0, 1]) against the global model it downloaded AND against an adversarially adapted copy of it
(the authors' `Attacker.search_trigger` in hfzhang31/A3FL fl_utils/attacker.py):

- every `adv_every` outer epochs but the first: the adversarial model is the global model
  trained `adv_epochs` epochs on the attacker's images with the CURRENT trigger and their TRUE
  labels (SGD lr 0.01, momentum 0.9, weight decay 5e-4): the global model unlearning the
  trigger, as the benign clients' training would; its weight w is the mean cosine similarity
  of its conv kernels with the global model's;
- each batch: one signed-gradient step t <- clip(t - lr * sign(grad_t loss), 0, 1) on
  loss = CE(f(x_t), target) + lambda * w * CE(f_adv(x_t), target), x_t = x (1 - m) + t m.

The attacker then trains as data_poison on its images stamped with the new trigger, and the
trigger carries over to its next attack round. Defaults are the authors' config.yaml:
trigger_outter_epochs 200, trigger_lr 0.01, dm_adv_epochs 5, dm_adv_K 1, one adversarial
model, noise_loss_lambda 0.01; the trigger starts at 0.5 grey (their `setup`).

Departures: images are in [0, 1] unnormalised, so the trigger is clipped to [0, 1] (theirs to
[-2, 2] in normalised CIFAR space); w uses the kernels' values, as BackFed's a3fl.py (the
authors' takes the cosine of the kernels' .grad fields left over from earlier backward passes);
the trigger loss uses the attacker's images of the task's source class(es), the images the
backdoor is measured on (the authors' all-to-one task uses every image); the unlearning uses
all its images, as theirs.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

INITIAL_VALUE = 0.5  # the authors' initial trigger: mid grey
_ADV_LR, _ADV_MOMENTUM, _ADV_DECAY = 0.01, 0.9, 5e-4  # the authors' adversarial SGD


def stamp(x: tf.Tensor, trigger: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """x with the trigger's values where mask ([H, W, 1] of 0/1) is 1."""
  return x * (1.0 - mask) + trigger * mask


def _cross_entropy(model: tf.keras.Model, x: tf.Tensor, labels: tf.Tensor,
                   training: bool = False) -> tf.Tensor:
  logits = model(x, training=training)
  return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
      labels, logits, from_logits=True))


def kernel_similarity(adversary: tf.keras.Model, model: tf.keras.Model) -> float:
  """Mean cosine similarity of the two models' conv kernels (all kernels if no conv layer)."""
  pairs = [(a.kernel, b.kernel) for a, b in zip(adversary.layers, model.layers)
           if isinstance(a, tf.keras.layers.Conv2D)]
  if not pairs:
    pairs = [(a.kernel, b.kernel) for a, b in zip(adversary.layers, model.layers)
             if hasattr(a, 'kernel')]
  sims = [float(tf.reduce_sum(a * b) / (tf.norm(a) * tf.norm(b) + 1e-8)) for a, b in pairs]
  return float(np.mean(sims)) if sims else 0.0


class TriggerSearch:
  """A3FL's attacker: the trigger it carries from round to round and the search that updates it.

  `keras_builder` builds the run's model (logits); `mask` [H, W] bool is the pixel task's.
  """

  def __init__(self, keras_builder: Callable[[], tf.keras.Model], mask: np.ndarray,
               channels: int, target_class: int, batch_size: int, epochs: int = 200,
               lr: float = 0.01, adv_epochs: int = 5, adv_every: int = 1,
               noise_lambda: float = 0.01):
    self.model, self.adversary = keras_builder(), keras_builder()
    self.mask = tf.constant(np.asarray(mask, np.float32)[:, :, None])
    self.trigger = np.full(tuple(np.shape(mask)) + (channels,), INITIAL_VALUE, np.float32)
    self.target_class, self.batch_size = int(target_class), int(batch_size)
    self.epochs, self.lr, self.noise_lambda = epochs, lr, noise_lambda
    self.adv_epochs, self.adv_every = adv_epochs, adv_every
    self._momentum = [tf.Variable(tf.zeros_like(v), trainable=False)
                      for v in self.adversary.trainable_variables]

  @tf.function
  def trigger_step(self, x: tf.Tensor, trigger: tf.Tensor,
                   adv_weight: Optional[tf.Tensor] = None) -> tf.Tensor:
    """One signed-gradient step of the trigger on batch x (adv_weight None: no adversary)."""
    labels = tf.fill(tf.shape(x)[:1], self.target_class)
    with tf.GradientTape() as tape:
      tape.watch(trigger)
      stamped = stamp(x, trigger, self.mask)
      loss = _cross_entropy(self.model, stamped, labels)
      if adv_weight is not None:
        loss += self.noise_lambda * adv_weight * _cross_entropy(self.adversary, stamped, labels)
    gradient = tape.gradient(loss, trigger)
    return tf.clip_by_value(trigger - self.lr * tf.sign(gradient), 0.0, 1.0)

  @tf.function
  def _unlearn_step(self, x: tf.Tensor, labels: tf.Tensor, trigger: tf.Tensor) -> None:
    variables = self.adversary.trainable_variables
    with tf.GradientTape() as tape:
      loss = _cross_entropy(self.adversary, stamp(x, trigger, self.mask), labels, True)
    for v, b, g in zip(variables, self._momentum, tape.gradient(loss, variables)):
      b.assign(_ADV_MOMENTUM * b + g + _ADV_DECAY * v)  # torch.optim.SGD's momentum and decay
      v.assign_sub(_ADV_LR * b)

  def _batches(self, *arrays: np.ndarray) -> List[Sequence[np.ndarray]]:
    n = len(arrays[0])
    return [[a[i:i + self.batch_size] for a in arrays] for i in range(0, n, self.batch_size)]

  def adversarial_model(self, weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray,
                        trigger: tf.Tensor) -> float:
    """Trains the adversary from `weights` to unlearn `trigger`; returns its weight w."""
    self.adversary.set_weights(weights)
    for b in self._momentum:
      b.assign(tf.zeros_like(b))
    for _ in range(self.adv_epochs):
      for xb, yb in self._batches(x, y):
        self._unlearn_step(tf.constant(xb), tf.constant(yb, tf.int32), trigger)
    return kernel_similarity(self.adversary, self.model)

  def search(self, weights: Sequence[np.ndarray], source_x: np.ndarray,
             all_x: Optional[np.ndarray] = None, all_y: Optional[np.ndarray] = None) -> int:
    """Updates `self.trigger` against the global `weights`; returns the example passes spent
    (forward and backward through a model: 2 per trigger-step example with an adversary)."""
    self.model.set_weights(weights)
    all_x = source_x if all_x is None else all_x
    all_y = np.full(len(all_x), self.target_class) if all_y is None else all_y
    trigger, adv_weight, passes = tf.constant(self.trigger), None, 0
    for epoch in range(self.epochs):
      if epoch % self.adv_every == 0 and epoch != 0:
        adv_weight = self.adversarial_model(weights, all_x, all_y, trigger)
        passes += self.adv_epochs * len(all_x)
      for (xb,) in self._batches(source_x):
        weight = None if adv_weight is None else tf.constant(adv_weight, tf.float32)
        trigger = self.trigger_step(tf.constant(xb), trigger, weight)
        passes += len(xb) * (1 if adv_weight is None else 2)
    self.trigger = trigger.numpy()
    return passes
