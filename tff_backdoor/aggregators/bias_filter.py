"""Rejects clients whose final-layer bias update is a robust outlier (Bilgin 2021, METHODS.md 3).

With softmax and cross-entropy, the gradient of the loss with respect to the logits bias,
p - y, does not depend on the input: relabelled samples push the target-class bias up and the
source-class bias down in every step. A backdoor therefore shows up in about num_classes
numbers of the update, while on kernels the same push is spread over thousands of weights.

Scoring (the same formula as the NumPy detector `analysis.anomaly.bias_scores`): with b_ik the bias
update of participating client i, coordinate k,
  med_k = median_i b_ik,  MAD_k = median_i |b_ik - med_k|,
  dev_ik = |b_ik - med_k| / (1.4826 MAD_k + 1e-12),  score_i = max_k dev_ik,
and client i is rejected if score_i > z_threshold. 1.4826 MAD estimates the standard deviation
of normal data, so dev_ik is a robust z-score (the "modified z-score" of Iglewicz and Hoaglin).
"""
from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import robust_rules
from tff_backdoor.analysis import anomaly

MAD_TO_STDDEV = anomaly.MAD_SCALE
MAD_EPSILON = anomaly.MAD_EPSILON


def client_scores(biases: tf.Tensor, center: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
  """score_i = max_k |biases[i, k] - center[k]| / scale[k], for biases of shape [n, K]."""
  return tf.reduce_max(tf.abs(biases - center) / scale, axis=1)


class BiasAnomalyFilterFactory(robust_rules.ServerRuleFactory):
  """`WeightedAggregationFactory` that drops bias outliers, then takes the weighted mean.

  Every client's (update, weight) is stacked at the server (`robust_rules.federated_stack`);
  over the clients with weight > 0 the server computes the scores of the module docstring on
  the bias variable, sets the weight of every client with score > `z_threshold` to 0, and
  returns the weighted mean of the others. Never everyone is rejected: if every score exceeds
  `z_threshold`, the threshold in force becomes the lowest score, so the client with the
  lowest score (and any exact tie) is kept.

  Why everything goes to the server, when only the bias is needed for scoring: with a second
  step that broadcasts med/MAD for each client to decide for itself, the round would contain
  one aggregation that depends on another, which TFF cannot split across workers
  (`tff.backends.native.compile_to_mergeable_comp_form` rejects it). With one aggregation the
  filter runs wherever the other robust rules do. To clip first, wrap this factory in a
  clipping factory.

  Default `z_threshold` = 3.5: the cut-off Iglewicz and Hoaglin recommend for modified
  z-scores. For normal data a single coordinate exceeds it with probability 5e-4, so with
  K = 10 classes about 0.5% of benign clients are rejected per round; dropping a benign client
  only costs its examples for one round, while a boosted backdoor update lies far beyond it.
  With few clients or label-skewed (non-IID) clients the benign scores are heavier-tailed and
  more of them are rejected: watch `rejected_count`.

  Measurements: `rejected_count` (participating clients rejected), `bias_score_max` (largest
  score), `bias_threshold` (threshold in force this round) and `client_decisions` (1 kept,
  0 rejected).
  """

  def __init__(self, z_threshold: float = 3.5, bias_index: int = -1):
    """Initializes the factory.

    Args:
      z_threshold: Reject clients with score above this (> 0).
      bias_index: Position of the bias variable in `tf.nest.flatten` of the update; the
        default -1 is the last tensor, the logits bias of a Keras model's trainable weights.
        A tensor of any shape is flattened to a vector.
    """
    z_threshold = float(z_threshold)
    if z_threshold <= 0:
      raise ValueError(f'z_threshold must be positive, found {z_threshold}')
    self._z_threshold = z_threshold
    self._bias_index = int(bias_index)

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    specs = tf.nest.flatten(tff.types.type_to_tf_tensor_specs(value_type))
    if not -len(specs) <= self._bias_index < len(specs):
      raise ValueError(f'bias_index {self._bias_index} is out of range for an update of '
                       f'{len(specs)} tensors')
    if specs[self._bias_index].shape.num_elements() == 0:
      raise ValueError(f'the tensor at bias_index {self._bias_index} is empty')
    return super().create(value_type, weight_type)

  def _rule(self, stacked, weights, value_spec):
    del value_spec
    bias = tf.nest.flatten(stacked)[self._bias_index]
    biases = tf.reshape(tf.cast(bias, tf.float32), [tf.shape(bias)[0], -1])
    center = robust_rules.coordinate_median(biases)
    scale = MAD_TO_STDDEV * robust_rules.coordinate_median(tf.abs(biases - center)) + MAD_EPSILON
    scores = client_scores(biases, center, scale)
    threshold = tf.maximum(self._z_threshold, tf.reduce_min(scores))
    rejected = scores > threshold
    weights = tf.where(rejected, tf.zeros_like(weights), weights)

    def weighted_mean(x):
      mean = tf.tensordot(weights, tf.cast(x, tf.float32), axes=1) / tf.reduce_sum(weights)
      return tf.cast(mean, x.dtype)

    return tf.nest.map_structure(weighted_mean, stacked), collections.OrderedDict(
        rejected_count=tf.reduce_sum(tf.cast(rejected, _common.COUNT_TF_TYPE)),
        bias_score_max=tf.reduce_max(scores), bias_threshold=threshold,
        **{_common.DECISIONS_KEY: 1.0 - tf.cast(rejected, tf.float32)})

  def _empty_measurements(self):
    return collections.OrderedDict(
        rejected_count=tf.constant(0, _common.COUNT_TF_TYPE),
        bias_score_max=tf.constant(0.0, _common.NORM_TF_TYPE),
        bias_threshold=tf.constant(self._z_threshold, _common.NORM_TF_TYPE),
        **{_common.DECISIONS_KEY: robust_rules.no_decisions()})
