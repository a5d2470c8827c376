"""FLAME (Nguyen et al. 2022): keep the majority cosine cluster, clip at the median norm, add noise.

"FLAME: Taming Backdoors in Federated Learning" (USENIX Security 2022), Algorithm 1, per round
with n updates:
1. Cosine distances c_ij = 1 - cos(w_i, w_j); HDBSCAN with min cluster size n/2 + 1 keeps the
   clients of the majority cluster (`hdbscan_rule.majority_cluster`); the others are dropped.
2. S = median of the L2 norms of all n updates; each kept update is clipped to norm S.
3. The kept, clipped updates are averaged (unweighted), and Gaussian noise of std
   sigma = lambda * S is added; lambda = 0.001, the paper's value for image classification.
`FlameFilterFactory` is steps 1-2 and the mean; `flame_factory` wraps it in
`median_noise.MedianNormNoiseFactory` for step 3.

Departures, ours and others':
* The paper computes the cosine distances between the local *models* W_i = G + w_i (as
  FLPoison does, with the previous global model at hand); an aggregator sees only the
  updates w_i, so we cluster the updates. (Between models sharing a large G every cosine is
  close to 1, so the models' distances mostly measure G; the updates' show the directions.)
* HDBSCAN's min_samples is not given in the paper. The popular implementations (FLPoison,
  BackFed) call the `hdbscan` library with min_samples=1, which counts the nearest *other*
  point; in scikit-learn's convention, used here, that is min_samples = 2, our default.
* FLPoison and BackFed scale the noise of every tensor by that tensor's standard deviation
  (std = lambda * S * std(W)), FLPoison with lambda = 1.2e-5 by default; BackFed computes its
  clustering vectors from the global model instead of each client's (every vector is equal).
"""
from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import _rows
from tff_backdoor.aggregators import hdbscan_rule
from tff_backdoor.aggregators import median_noise
from tff_backdoor.aggregators import robust_rules


class FlameFilterFactory(robust_rules.ServerRuleFactory):
  """`WeightedAggregationFactory` for FLAME's clustering and median-norm clipping (no noise).

  Unweighted like the paper; clients with weight 0 are absent (see `robust_rules`).

  Measurements: `rejected_count` (clients outside the cluster), `clipping_norm` (S, the
  median norm), `clipped_count` (kept clients whose norm exceeded S) and `client_decisions`
  (1 in the cluster, 0 outside).
  """

  def __init__(self, min_samples: int = 2):
    """Initializes the factory.

    Args:
      min_samples: HDBSCAN's min_samples, scikit-learn's convention (the point counts), >= 1.
    """
    self._min_samples = _common.integer_at_least(min_samples, 'min_samples', 1)

  def _rule(self, stacked, weights, value_spec):
    del weights, value_spec  # Unweighted, like the paper.
    rows = _rows.flat_rows(stacked)
    kept = hdbscan_rule.majority_cluster(hdbscan_rule.cosine_distances(rows), self._min_samples)
    norms = tf.norm(rows, axis=1)
    bound = robust_rules.coordinate_median(norms)
    scales = tf.where(norms > bound, tf.math.divide_no_nan(bound, norms), 1.0)
    kept_float = tf.cast(kept, tf.float32)
    result = _rows.combine_rows(kept_float * scales / tf.reduce_sum(kept_float), stacked)
    return result, collections.OrderedDict(
        rejected_count=tf.reduce_sum(tf.cast(tf.logical_not(kept), _common.COUNT_TF_TYPE)),
        clipping_norm=bound,
        clipped_count=tf.reduce_sum(tf.cast(kept & (norms > bound), _common.COUNT_TF_TYPE)),
        **{_common.DECISIONS_KEY: kept_float})

  def _empty_measurements(self):
    return collections.OrderedDict(rejected_count=tf.constant(0, _common.COUNT_TF_TYPE),
                                   clipping_norm=tf.constant(0.0, _common.NORM_TF_TYPE),
                                   clipped_count=tf.constant(0, _common.COUNT_TF_TYPE),
                                   **{_common.DECISIONS_KEY: robust_rules.no_decisions()})


def flame_factory(noise_ratio: float = 0.001, min_samples: int = 2,
                  seed: Optional[int] = None) -> tff.aggregators.WeightedAggregationFactory:
  """FLAME: `FlameFilterFactory` plus noise of std `noise_ratio` x the median norm.

  Args:
    noise_ratio: lambda >= 0 (the paper: 0.001 for image classification).
    min_samples: HDBSCAN's min_samples, scikit-learn's convention.
    seed: Seed of the noise (the experiment's `--seed`); None draws it from the clock.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory`; measurements of both parts.
  """
  return median_noise.MedianNormNoiseFactory(noise_ratio, seed,
                                             FlameFilterFactory(min_samples))
