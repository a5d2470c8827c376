"""DeepSight (Rieger, Nguyen, Miettinen, Sadeghi, NDSS 2022): label, cluster, keep clean clusters.

The paper's Algorithm 1, per round with n updates (the output layer: kernel W [F, P] and bias
b [P], P classes):
1. Update energies e_j = sum_k |dW_kj| + |db_j| per output neuron; NEUPs c_j = e_j^2 / sum e^2.
2. Threshold exceedings TE = #{j : c_j > xi}, xi = max(0.01, 1/P) max_j c_j. A model
   trained on few labels (a backdoor's) has few; models with TE <= median(TE) / 2 are
   labelled suspicious.
3. Clusterings with HDBSCAN: of the cosine distances of the bias updates, of the NEUPs
   (Euclidean) and of the DDifs (Euclidean, one clustering per seed); each gives a 0/1 "not
   in the same cluster" matrix, a noise point being in no one's cluster. The DDif matrices
   are averaged over the seeds first, then merged = mean(DDif, NEUP, cosine), so the DDifs
   weigh 1/3 whatever the number of seeds (the paper's clustering pseudocode, which both
   peers transcribe: merged_ddif_clust_dists = average over seeds; merged_distances =
   mean(merged_ddif, neup, cosine)), and merged is clustered again (HDBSCAN, precomputed).
4. A cluster is accepted if fewer than tau = 1/3 of its members are suspicious; a noise
   point is a cluster of its own (accepted iff not suspicious, as BackFed).
5. The accepted updates are clipped to the median L2 norm of all n updates and averaged
   (unweighted). HDBSCAN is `hdbscan_eom` (scikit-learn's flat clustering, in TF).

DDifs (division differences). The paper: for client k and class i, DDif_{k,i} = (1/N) sum_s
p(i | x_s; W_k) / p(i | x_s; G), the softmax outputs of the client's model over the global
model's, on N = 20,000 random input samples, computed on 3 seeds. Ours (`learning.ddifs`),
with the same formula and defaults (`--deepsight_ddif_samples`, `--deepsight_ddif_seeds`):
an aggregator sees updates, not models, so each client work computes its update's DDifs
after local training and sends them up the side channel (`learning.side_channel`, ClientInfo
`ddifs`, float32 [seeds, P]), on exactly the model the server would rebuild, W_k = G - delta
(TFF's sign; after any attacker scaling; the global model's non-trainable weights). The
global model's outputs are the same for every client: the server computes them once a round
and sends them down (ServerInfo `ddif_global_log_probs`), so a client runs only W_k. A real
server computes them itself from the reported update; computing them at client placement
gives the same numbers from the same update. The inputs are uniform in [0, 1) (our pixels'
range) of the model's input shape, set s keyed by (the run's `--seed`, s): every client and
the global model see the same inputs, the same every round. The factory refuses, in one
line, a value without DDifs (TFF's plain `build_weighted_fed_avg`), unless built with
`use_ddifs=False`: then the ensemble is mean(NEUP, cosine), a departure.

Where we depart from the paper, and why:
* HDBSCAN settings are not in the paper; we take the peers' calls of the hdbscan library:
  min_cluster_size 5 and FLPoison's min_samples 3, which is 4 in scikit-learn's
  convention (the point counts), our default, also for each DDif clustering; no single
  cluster allowed (as BackFed).
* The paper does not say how its random inputs are drawn; we take the peers' uniform
  [0, 1) noise, keyed by the run's seed rather than the peers' fixed seeds 0, 1, 2.
* Ties in the mutual reachability distances are merged in a stable order; scikit-learn and
  the hdbscan library sort them with NumPy's unstable sort, so clusterings can differ where
  merges tie (`hdbscan_eom`).
Peers (bench/peer_detectors.py runs their NEUP, TE and clustering computations on the same
updates, without DDifs):
* FLPoison counts two noise points as one cluster (label -1 == -1) in the 0/1 matrices and
  drops every noise point of the final clustering, and allows a single final cluster;
  its clipping bound is the median norm, as here. Its DDifs: 20,000 samples of
  torch.rand (uniform [0, 1)) per seed, seeds 0, 1, 2 drawn once; it divides the models'
  raw outputs (its LeNet returns logits, no softmax) with 1e-6 added to the global's;
  each seed's DDifs clustered with HDBSCAN(min_samples=3), averaged, merged as the paper.
* BackFed counts NEUPs >= xi with xi = max_j c_j / P (no 0.01 floor), calls HDBSCAN with
  the library defaults (min_samples = min_cluster_size = 5), clusters the merged matrix
  without metric='precomputed' (its rows as Euclidean points), and accepts a cluster when
  the share of its members labelled *benign* is below tau, the reverse of the paper's rule.
  Its DDifs: 20,000 torch.rand samples per seed, torch.manual_seed(0, 1, 2) every round;
  raw model outputs divided with 1e-30 added to the global's, no softmax; averaged over
  seeds and merged as the paper.

Measurements: `rejected_count`, `deepsight_suspicious_count` (labelled by TE),
`clipping_norm` (the median norm), `clipped_count`, `client_decisions` (1 accepted, 0 not).
"""
from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.aggregators import _rows
from tff_backdoor.aggregators import hdbscan_eom
from tff_backdoor.aggregators import hdbscan_rule
from tff_backdoor.aggregators import robust_rules
from tff_backdoor.learning import side_channel


def neups(kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
  """[n, P] normalised update energies of the output neurons (kernel [n, F, P], bias [n, P])."""
  energy = tf.reduce_sum(tf.abs(kernel), axis=1) + tf.abs(bias)
  squared = tf.square(energy)
  return tf.math.divide_no_nan(squared, tf.reduce_sum(squared, axis=1, keepdims=True))


def threshold_exceedings(neup: tf.Tensor, threshold_factor: float) -> tf.Tensor:
  """[n] number of NEUPs above max(threshold_factor, 1/P) x the client's largest NEUP."""
  classes = tf.cast(tf.shape(neup)[1], neup.dtype)
  factor = tf.maximum(tf.cast(threshold_factor, neup.dtype), 1.0 / classes)
  xi = factor * tf.reduce_max(neup, axis=1, keepdims=True)
  return tf.reduce_sum(tf.cast(neup > xi, tf.int32), axis=1)


def suspicious(exceedings: tf.Tensor) -> tf.Tensor:
  """bool [n]: TE <= median(TE) / 2 (few exceedings: homogeneous, backdoor-like training)."""
  median = robust_rules.coordinate_median(tf.cast(exceedings, tf.float32))
  return tf.cast(exceedings, tf.float32) <= median / 2.0


def euclidean_distances(rows: tf.Tensor) -> tf.Tensor:
  """[n, n] Euclidean distances between rows, zero diagonal."""
  return tf.norm(rows[:, tf.newaxis, :] - rows[tf.newaxis, :, :], axis=-1)


def apart(labels: tf.Tensor) -> tf.Tensor:
  """[n, n] 0 where i and j share a cluster (noise: only itself), 1 elsewhere; float64."""
  same = tf.logical_and(tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :]),
                        labels[:, tf.newaxis] >= 0)
  same = tf.logical_or(same, tf.eye(tf.shape(labels)[0], dtype=tf.bool))
  return 1.0 - tf.cast(same, tf.float64)


def accepted_clusters(labels: tf.Tensor, flagged: tf.Tensor, tau: float) -> tf.Tensor:
  """bool [n]: members of clusters with fewer than tau of them suspicious."""
  together = 1.0 - apart(labels)
  members = tf.reduce_sum(together, axis=1)
  suspects = tf.linalg.matvec(together, tf.cast(flagged, tf.float64))
  return suspects < tau * members


class DeepSightFactory(robust_rules.ServerRuleFactory):
  """`WeightedAggregationFactory` for DeepSight (see the module docstring).

  Reads each update's DDifs from its ClientInfo (`learning.side_channel`; a process of
  `learning.process.build_attacked_fed_avg(ddifs=...)` sends them) and refuses, in one line,
  a value without them, unless built with `use_ddifs=False` (our departure: two clusterings).
  Unweighted like the paper; clients with weight 0 are absent (see `robust_rules`).
  """

  def __init__(self, tau: float = 1.0 / 3.0, threshold_factor: float = 0.01,
               min_cluster_size: int = 5, min_samples: int = 4, kernel_index: int = -2,
               bias_index: int = -1, use_ddifs: bool = True):
    """Initializes the factory.

    Args:
      tau: A cluster is accepted if fewer than this share of it is suspicious (paper 1/3).
      threshold_factor: The floor of xi / max NEUP (paper 0.01).
      min_cluster_size: HDBSCAN's min_cluster_size (the peers' 5).
      min_samples: HDBSCAN's min_samples, scikit-learn's convention (FLPoison's 3 + 1).
      kernel_index, bias_index: Positions of the output layer's kernel [F, P] and bias [P]
        in `tf.nest.flatten` of the update (a Keras model's last two trainable weights).
      use_ddifs: Whether to cluster the updates' DDifs too (the paper); False clusters
        bias cosines and NEUPs only, on a plain model delta.
    """
    if not 0.0 < tau <= 1.0 or not 0.0 <= threshold_factor < 1.0:
      raise ValueError(f'bad DeepSight parameters: tau={tau}, threshold_factor='
                       f'{threshold_factor}')
    self._tau, self._threshold_factor = float(tau), float(threshold_factor)
    self._min_cluster_size = _common.integer_at_least(min_cluster_size, 'min_cluster_size', 2)
    self._min_samples = _common.integer_at_least(min_samples, 'min_samples', 1)
    self._kernel_index, self._bias_index = int(kernel_index), int(bias_index)
    self._reads = ('ddifs', "DeepSight needs each update's DDifs (or DeepSightFactory("
                   'use_ddifs=False), the departure without them)',
                   'ddifs=side_channel.DDifInputs(samples, seeds, seed)') if use_ddifs else None

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    delta_type = side_channel.delta_type(value_type)
    specs = tf.nest.flatten(tff.types.type_to_tf_tensor_specs(delta_type))
    kernel, bias = specs[self._kernel_index], specs[self._bias_index]
    if len(kernel.shape) != 2 or bias.shape != kernel.shape[1:]:
      raise ValueError(f'DeepSight needs an output kernel [F, P] and bias [P], found '
                       f'{kernel.shape} and {bias.shape}')
    return super().create(value_type, weight_type)

  def _labels(self, distances: tf.Tensor) -> tf.Tensor:
    return hdbscan_eom.cluster_labels(tf.cast(distances, tf.float64), self._min_cluster_size,
                                      self._min_samples)

  def _ddif_apart(self, ddifs: tf.Tensor) -> tf.Tensor:
    """[n, n] the mean over seeds of the 0/1 matrices of HDBSCAN on each seed's DDifs
    (Euclidean; `ddifs` [n, seeds, P])."""
    matrices = [apart(self._labels(euclidean_distances(tf.cast(ddifs[:, s], tf.float64))))
                for s in range(ddifs.shape[1])]
    return sum(matrices[1:], matrices[0]) / float(len(matrices))  # NumPy's order of sums

  def accepted(self, kernel: tf.Tensor, bias: tf.Tensor,
               ddifs: Optional[tf.Tensor] = None) -> tuple:
    """(accepted bool [n], suspicious bool [n]) from the output layer's updates and, if
    given, the DDifs [n, seeds, P]."""
    neup = neups(tf.cast(kernel, tf.float32), tf.cast(bias, tf.float32))
    flagged = suspicious(threshold_exceedings(neup, self._threshold_factor))
    bias_clusters = self._labels(hdbscan_rule.cosine_distances(tf.cast(bias, tf.float32)))
    neup_clusters = self._labels(euclidean_distances(neup))
    if ddifs is None:
      merged = 0.5 * (apart(bias_clusters) + apart(neup_clusters))
    else:
      merged = (apart(bias_clusters) + apart(neup_clusters) + self._ddif_apart(ddifs)) / 3.0
    return accepted_clusters(self._labels(merged), flagged, self._tau), flagged

  def _rule(self, stacked, weights, value_spec, ddifs=None):
    del weights, value_spec  # Unweighted, like the paper.
    tensors = tf.nest.flatten(stacked)
    accepted, flagged = self.accepted(tensors[self._kernel_index], tensors[self._bias_index],
                                      ddifs)
    norms = _rows.row_norms(stacked)
    bound = robust_rules.coordinate_median(norms)
    scales = tf.where(norms > bound, tf.math.divide_no_nan(bound, norms), 1.0)
    kept = tf.cast(accepted, tf.float32)
    result = _rows.combine_rows(tf.math.divide_no_nan(kept * scales, tf.reduce_sum(kept)),
                                stacked)
    count = lambda mask: tf.reduce_sum(tf.cast(mask, _common.COUNT_TF_TYPE))
    return result, collections.OrderedDict([
        ('rejected_count', count(~accepted)), ('deepsight_suspicious_count', count(flagged)),
        ('clipping_norm', bound), ('clipped_count', count(accepted & (norms > bound))),
        (_common.DECISIONS_KEY, kept)])

  def _empty_measurements(self):
    zero = tf.constant(0, _common.COUNT_TF_TYPE)
    return collections.OrderedDict([
        ('rejected_count', zero), ('deepsight_suspicious_count', zero),
        ('clipping_norm', tf.constant(0.0, _common.NORM_TF_TYPE)), ('clipped_count', zero),
        (_common.DECISIONS_KEY, robust_rules.no_decisions())])
