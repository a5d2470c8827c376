"""Anticipate (Wen, Geiping, Fowl, Goldblum, Goldstein, ICML 2022): the gradient of the backdoor
loss through simulated future rounds, in pure TensorFlow.

The attacker of a round that starts from global weights w0 chooses its model w_a so that the
backdoor survives the next rounds, whose other clients it models with its own clean data
(the authors' `anticipate` in thinking-two-moves-ahead/training.py):

  B(w)     = w - lr * grad L_clean(w; b0)       one SGD step on the attacker's first clean
                                                 batch b0: an honest client's update estimate
  g_1      = (w_a + (n - 1) B(w0)) / n          this round's FedAvg mean: the attacker and
                                                 n - 1 honest clients (equal weights)
  g_{j+1}  = B(g_j)                              a future round without the attacker
  loss     = sum_{j=1..k} L_backdoor(g_j; m)    m: the attacker's batch (clean + triggered)

and takes SGD steps on w_a along d loss / d w_a. Its gradient is computed here by hand in
reverse through the unroll, with the model's own variables as the point of evaluation (Keras
layers have no functional call), and Hessian-vector products for the Jacobians of B:

  v_k = grad L_backdoor(g_k);  v_j = grad L_backdoor(g_j) + (I - lr H_clean(g_j)) v_{j+1};
  d loss / d w_a = v_1 / n

which is what the authors' functorch autodiff computes. Like the authors' code the loss is the
SUM over the k future models (not their mean: a factor k on the step size), the first clean
batch stands for every honest client, and benign updates have equal weight. Departures: one
simulated step per round (the authors take `fl_local_epochs` steps on that batch; the matrix
trains one local epoch), the simulated learning rate is the client's (theirs decays per
round), and the update is not scaled (their `fl_scale_update` multiplies by
--fl-weight-scale, which assumes model replacement and contradicts the 1/n above).
"""
from __future__ import annotations

from typing import Any, List, Sequence

import tensorflow as tf


class Simulator:
  """A scratch copy of the model whose variables are set to each simulated global model."""

  def __init__(self, model: Any, variables: Sequence[tf.Variable]):
    self.model = model
    self.variables = list(variables)

  def assign(self, values: Sequence[tf.Tensor]) -> List[tf.Operation]:
    return [v.assign(t) for v, t in zip(self.variables, values)]

  def gradient(self, values: Sequence[tf.Tensor], batch: Any) -> List[tf.Tensor]:
    """grad of the model's loss on `batch` at weights `values`."""
    with tf.control_dependencies(self.assign(values)):
      with tf.GradientTape() as tape:
        loss = self.model.forward_pass(batch, training=True).loss
    return tape.gradient(loss, self.variables)

  def hessian_vector(self, values: Sequence[tf.Tensor], batch: Any,
                     vector: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """H v of the model's loss on `batch` at weights `values` (reverse over reverse)."""
    with tf.control_dependencies(self.assign(values)):
      with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
          loss = self.model.forward_pass(batch, training=True).loss
        grads = inner.gradient(loss, self.variables)
      return outer.gradient(grads, self.variables, output_gradients=list(vector))

  def benign_step(self, values: Sequence[tf.Tensor], batch: Any, lr: tf.Tensor
                  ) -> List[tf.Tensor]:
    """B(w): one SGD step on the clean batch, the estimate of an honest client's model."""
    return [w - lr * g for w, g in zip(values, self.gradient(values, batch))]


def anticipated_gradient(sim: Simulator, attack_weights: Sequence[tf.Tensor],
                       honest_model: Sequence[tf.Tensor], clean_batch: Any,
                       backdoor_batch: Any, clients: int, rounds: int,
                       lr: tf.Tensor) -> List[tf.Tensor]:
  """d/d w_a of sum_j L_backdoor(g_j) (module docstring); `honest_model` is B(w0)."""
  n = float(clients)
  points = [[(a + (n - 1.0) * h) / n for a, h in zip(attack_weights, honest_model)]]
  for _ in range(rounds - 1):
    points.append(sim.benign_step(points[-1], clean_batch, lr))
  v = sim.gradient(points[-1], backdoor_batch)
  for point in reversed(points[:-1]):
    backdoor = sim.gradient(point, backdoor_batch)
    hv = sim.hessian_vector(point, clean_batch, v)
    v = [b + x - lr * h for b, x, h in zip(backdoor, v, hv)]
  return [x / n for x in v]


def examples_per_step(rounds: int, clean: tf.Tensor, backdoor: tf.Tensor) -> tf.Tensor:
  """Example passes of one attack step: k backdoor gradients, k - 1 benign steps and k - 1
  Hessian-vector products (counted as 2 passes each) on the clean batch."""
  return rounds * backdoor + 3 * (rounds - 1) * clean
