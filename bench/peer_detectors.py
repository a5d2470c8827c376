"""Our FLDetector and DeepSight beside FLPoison's and BackFed's computations, on the same updates.

  python -m bench.peer_detectors [--detector=both|fldetector|deepsight] [--rounds=24]
      [--seed=0] [--window=10] [--seeds=8]

FLDetector:
A world where every client takes part in every round (the paper's and FLPoison's setting): 10
clients on a shared quadratic loss, each with its own optimum, take a step from the global
model w; clients 0 and 1 are attackers and add a fresh random push of norm ~3 to theirs.
The global model follows our aggregate. Every round the same updates go to
* ours: `aggregators.FLDetectorFactory` (TF), through TFF;
* FLPoison's `aggregators/fldetector.py` (vio1etus/FLPoison), ported line by line to NumPy
  below (`FLPoisonFLDetector`), with `start_epoch` 0 instead of 50 so that it scores within
  the run;
* BackFed's `backfed/servers/fldetector_server.py` and its `gap_statistics`
  (thinh-dao/BackFed), ported from PyTorch to NumPy (`BackFedFLDetector`); its restart
  (reloading the initial model) is not simulated, the exclusion list and the reset of its
  tracking variables are (excluded clients still send updates here; BackFed stops sampling
  them, so its K_max counts the others).
The table prints, per round, which clients each flags and its scores of the two attackers
and of the highest-scored honest client; the differences, and why, are in
`tff_backdoor/aggregators/fldetector.py`'s docstring.

DeepSight: independent rounds of 12 output layers (kernel [4, 10], bias [10]); honest
clients learn 3 to 6 of the 10 classes, clients 0-2 push class 0 (a backdoor's relabelled
examples). Ours (`DeepSightFactory`, TF, through TFF) beside FLPoison's
`aggregators/deepsight.py` and BackFed's `backfed/servers/deepsight_server.py`, ported to
NumPy. The comparison covers NEUPs, threshold exceedings and the clustering without DDifs:
a DDif needs models to run on random inputs, which this world of bare output layers does not
have (ours computes them in the client work, `learning.ddifs`, and is run here as
`DeepSightFactory(use_ddifs=False)`; the peers' DDifs and ours: `docs/DEFENSES.md`), so the
ensemble is the NEUP and bias-cosine clusterings. The peers call the `hdbscan` library (not installed here);
scikit-learn's HDBSCAN stands in, with the library's min_samples + 1 (its convention does
not count the point itself). Differences and reasons: `tff_backdoor/aggregators/deepsight.py`.
"""
from __future__ import annotations

import collections
from typing import Dict, List

import numpy as np
from absl import app
from absl import flags
from sklearn.cluster import KMeans

flags.DEFINE_integer('rounds', 24, 'Rounds simulated.', lower_bound=2)
flags.DEFINE_integer('seed', 0, 'Seed of the synthetic world and of the peers.')
flags.DEFINE_integer('window', 10, 'FLDetector window N for all three.', lower_bound=1)
flags.DEFINE_integer('seeds', 8, 'DeepSight: independent rounds compared.', lower_bound=1)
flags.DEFINE_enum('detector', 'both', ['fldetector', 'deepsight', 'both'], 'Which table.')
FLAGS = flags.FLAGS

CLIENTS, ATTACKERS, WIDTH = 10, (0, 1), 12
SHAPES = ((3, 2), (4,), (2,))


class FLPoisonFLDetector:
  """FLPoison's FLDetector.aggregate, its LBFGS and gap_statistics, as NumPy (start_epoch 0)."""

  def __init__(self, window: int, num_clients: int):
    self.window_size, self.start_epoch, self.num_clients = window, 0, num_clients
    self.global_weight_diffs, self.global_grad_diffs = [], []
    self.last_global_grad, self.last_grad_updates, self.malicious_score = 0, 0, []

  def aggregate(self, gradient_updates: np.ndarray, epoch: int):
    benign_idx, score = np.arange(len(gradient_updates)), None
    if epoch - self.start_epoch > self.window_size:
      hvp = lbfgs_flpoison(self.global_weight_diffs, self.global_grad_diffs,
                           self.last_global_grad)
      pred_grad = self.last_grad_updates + hvp
      distance = np.linalg.norm(pred_grad - gradient_updates, axis=1)
      self.malicious_score.append(distance / np.sum(distance))
    if len(self.malicious_score) > self.window_size:
      score = np.mean(np.stack(self.malicious_score[-self.window_size:], axis=0), axis=0)
      if gap_flpoison(score, 20, 10, self.num_clients) >= 2:
        labels = KMeans(n_clusters=2, n_init=10).fit(score.reshape(-1, 1)).labels_
        benign_label = 1 if np.mean(score[labels == 0]) > np.mean(score[labels == 1]) else 0
        benign_idx = np.argwhere(labels == benign_label).squeeze(axis=1)
    agg = np.mean(gradient_updates[benign_idx], axis=0)
    self.global_weight_diffs.append(agg)
    self.global_grad_diffs.append(agg - self.last_global_grad)
    if len(self.global_weight_diffs) > self.window_size:
      del self.global_weight_diffs[0]
      del self.global_grad_diffs[0]
    self.last_global_grad, self.last_grad_updates = agg, gradient_updates
    flagged = sorted(set(range(len(gradient_updates))) - set(benign_idx.tolist()))
    return flagged, score


def lbfgs_flpoison(s_list, y_list, v):
  """FLPoison's (and BackFed's) compact L-BFGS product, column vectors as theirs."""
  s_list = [i.reshape(-1, 1) for i in s_list]
  y_list = [i.reshape(-1, 1) for i in y_list]
  v = v.reshape(-1, 1)
  s_k, y_k = np.concatenate(s_list, axis=1), np.concatenate(y_list, axis=1)
  sty, sts = s_k.T @ y_k, s_k.T @ s_k
  r_k = np.triu(sty)
  l_k = sty - r_k
  sigma = (y_list[-1].T @ s_list[-1]) / (s_list[-1].T @ s_list[-1])
  mat = np.concatenate([np.concatenate([sigma * sts, l_k], axis=1),
                        np.concatenate([l_k.T, -np.diag(np.diag(sty))], axis=1)], axis=0)
  p_mat = np.concatenate([s_k.T @ (sigma * v), y_k.T @ v], axis=0)
  product = sigma * v - np.concatenate([sigma * s_k, y_k], axis=1) @ np.linalg.inv(mat) @ p_mat
  return product.squeeze()


def gap_flpoison(data, num_sampling, k_max, n):
  """FLPoison's gap_statistics: inertia, log of the mean, and num_cluster = k + 1."""
  data = ((data - data.min()) / (data.max() - data.min())).reshape(-1, 1)
  gaps, s = [], []
  k_max = min(k_max, data.shape[0])
  for k in range(1, k_max + 1):
    inertia = KMeans(n_clusters=k, n_init=10).fit(data).inertia_
    fake = [KMeans(n_clusters=k, n_init=10).fit(np.random.rand(n, 1)).inertia_
            for _ in range(num_sampling)]
    gaps.append(np.log(np.mean(fake)) - np.log(inertia))
    s.append(np.std(np.log(fake)) * np.sqrt((1 + num_sampling) / num_sampling))
  for k in range(1, k_max):
    if gaps[k - 1] - gaps[k] + s[k] >= 0:
      return k + 1
  return k_max


def gap_backfed(data, num_sampling, k_max, n, seed):
  """BackFed's AnomalyDetectionServer.gap_statistics: W_k a sum of (unsquared) distances."""
  data = data.reshape(data.shape[0], -1)
  low, high = data.min(0), data.max(0)
  data_c = np.where(high > low, (data - low) / np.where(high > low, high - low, 1), 0.0)

  def dispersion(points, k):
    fit = KMeans(n_clusters=k, init='k-means++', random_state=seed, n_init=10).fit(points)
    return sum(np.sum(np.linalg.norm(points[fit.labels_ == i] - fit.cluster_centers_[i], axis=1))
               for i in range(k))

  gaps, s_values = [], []
  for k in range(1, k_max + 1):
    wk = dispersion(data_c, k)
    wkbs = [np.log(dispersion(np.random.uniform(0, 1, size=(n, data_c.shape[1])), k) + 1e-10)
            for _ in range(num_sampling)]
    gaps.append(np.mean(wkbs) - np.log(wk + 1e-10))
    s_values.append(np.std(wkbs) * np.sqrt(1 + 1 / num_sampling))
  for k in range(1, k_max):
    if gaps[k - 1] >= gaps[k] - s_values[k]:
      return k
  return k_max


class BackFedFLDetector:
  """BackFed's FLDetectorServer.detect_anomalies on flat vectors (model - global = -update)."""

  def __init__(self, window: int, seed: int):
    self.window_size, self.seed, self.start_round = window, seed, 0
    self.exclude_list: List[int] = []
    self.malicious_scores_dict: Dict[int, List[float]] = {}
    self._reset()

  def _reset(self):
    # BackFed's reset assigns `self.malicious_score_dict = {}` (sic): the scores are kept.
    self.weight_record, self.grad_record = [], []
    self.old_grad_list, self.last_weight, self.last_grad = [], 0, 0

  def detect(self, current_round: int, ids: List[int], params: np.ndarray, weights: np.ndarray):
    """(flagged ids, summed scores by id or None); `params` are local models - global."""
    client_ids = [c for c in ids if c not in self.exclude_list]
    param_list = [params[ids.index(c)] for c in client_ids]
    grad = np.mean(param_list, axis=0)
    scores = None
    if current_round - self.start_round > self.window_size:
      hvp = lbfgs_flpoison(self.weight_record, self.grad_record, weights - self.last_weight)
      pred = np.array([g + hvp for g in self.old_grad_list])
      distance = np.linalg.norm(pred - np.array(param_list), axis=1)
      distance = distance / distance.sum()
      for i, c in enumerate(client_ids):
        self.malicious_scores_dict.setdefault(c, []).append(distance[i])
        self.malicious_scores_dict[c] = self.malicious_scores_dict[c][-self.window_size:]
      scores = {c: sum(v) for c, v in self.malicious_scores_dict.items() if v}
      keys = list(scores)
      score_np = np.array([scores[c] for c in keys]).reshape(-1, 1)
      # K_max = len(client_updates): excluded clients are no longer sampled in BackFed.
      if gap_backfed(score_np, 10, len(client_ids), len(scores), self.seed) >= 2:
        labels = KMeans(n_clusters=2, init='k-means++', random_state=self.seed,
                        n_init=10).fit(score_np).labels_
        if np.mean(score_np[labels == 0]) < np.mean(score_np[labels == 1]):
          labels = 1 - labels
        self.exclude_list += [keys[i] for i, label in enumerate(labels) if label == 0]
        self.start_round = current_round
        self._reset()
        return sorted(c for c in ids if c in self.exclude_list), scores
    self.weight_record.append(weights - self.last_weight)
    self.grad_record.append(grad - self.last_grad)
    if len(self.weight_record) > self.window_size:
      self.weight_record.pop(0)
      self.grad_record.pop(0)
    self.last_weight, self.last_grad, self.old_grad_list = weights, grad, param_list
    return sorted(c for c in ids if c in self.exclude_list), scores


def _ours(window: int, seed: int):
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from tff_backdoor.aggregators import fldetector  # pylint: disable=g-import-not-at-top
  value_type = tff.types.to_type([tff.TensorType(np.float32, s) for s in SHAPES])
  factory = fldetector.FLDetectorFactory(CLIENTS, CLIENTS, window=window, seed=seed)
  return factory.create(value_type, tff.TensorType(np.float32))


def _fmt(flagged) -> str:
  return ','.join(str(c) for c in flagged) or '-'


def _scores(score_of: Dict[int, float]) -> str:
  if not score_of:
    return ''
  honest = max(v for c, v in score_of.items() if c not in ATTACKERS)
  return ' '.join(f'{score_of.get(c, float("nan")):.3f}' for c in ATTACKERS) + f' / {honest:.3f}'


def compare(rounds: int, seed: int, window: int) -> List[str]:
  """The agreement table's lines (markdown)."""
  rng = np.random.default_rng(seed)
  np.random.seed(seed)  # the peers' unseeded draws
  curvature = np.diag(rng.uniform(0.5, 1.5, WIDTH))
  centers = rng.normal(size=(CLIENTS, WIDTH)) * 0.3
  process = _ours(window, seed)
  state, w = process.initialize(), np.ones(WIDTH)
  flpoison, backfed = FLPoisonFLDetector(window, CLIENTS), BackFedFLDetector(window, seed)
  ids = list(range(CLIENTS))
  lines = ['| round | ours: flagged | FLPoison: flagged | BackFed: flagged | ours: scores 0 1 / '
           'top honest | FLPoison: scores | BackFed: summed scores |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  totals = collections.Counter()
  for t in range(rounds):
    rows = np.array([curvature @ (w - centers[c]) + (rng.normal(size=WIDTH) if c in ATTACKERS
                                                     else 0.01 * rng.normal(size=WIDTH))
                     for c in ids], np.float32)
    updates = [[r[:6].reshape(3, 2), r[6:10], r[10:]] for r in rows]
    output = process.next(state, updates, [np.float32(c + 1) for c in ids])
    ours = [c for c, d in zip(ids, output.measurements['client_decisions']) if d == 0]
    our_scores = dict(zip(ids, np.asarray(output.measurements['fldetector_scores'])))
    fp_flagged, fp_score = flpoison.aggregate(rows.astype(np.float64), t)
    bf_flagged, bf_score = backfed.detect(t, ids, -rows.astype(np.float64), -w)
    for name, flagged in (('ours', ours), ('FLPoison', fp_flagged), ('BackFed', bf_flagged)):
      totals[name, 'tp'] += len(set(flagged) & set(ATTACKERS))
      totals[name, 'fp'] += len(set(flagged) - set(ATTACKERS))
    lines.append(f'| {t} | {_fmt(ours)} | {_fmt(fp_flagged)} | {_fmt(bf_flagged)} | '
                 f'{_scores(our_scores) if any(our_scores.values()) else ""} | '
                 f'{_scores(dict(zip(ids, fp_score))) if fp_score is not None else ""} | '
                 f'{_scores(bf_score or {})} |')
    state = output.state
    w = w - 0.5 * np.concatenate([np.ravel(x) for x in output.result])
  lines.append('')
  lines.append('attacker-rounds flagged / honest-rounds flagged over the run: ' + '; '.join(
      f'{name} {totals[name, "tp"]} / {totals[name, "fp"]}'
      for name in ('ours', 'FLPoison', 'BackFed')))
  return lines


# DeepSight, without DDifs for all three (no models in this world; see the module docstring).
CLASSES, FEATURES, COHORT, DS_ATTACKERS = 10, 4, 12, (0, 1, 2)


def _output_layers(rng):
  """[COHORT] (kernel [F, P], bias [P]): honest clients train on 3 to 6 of the classes (label
  skew), attackers push class 0 (their poisoned examples relabelled to it)."""
  layers = []
  for i in range(COHORT):
    kernel, bias = rng.normal(size=(FEATURES, CLASSES)) * 0.05, rng.normal(size=CLASSES) * 0.05
    if i in DS_ATTACKERS:
      kernel[:, 0] += 1.0 + 0.1 * rng.normal(size=FEATURES)
      bias[0] += 1.0
    else:
      seen = rng.choice(CLASSES, int(rng.integers(3, 7)), replace=False)
      kernel[:, seen] += rng.normal(size=(FEATURES, len(seen))) * 0.5
      bias[seen] += rng.normal(size=len(seen)) * 0.5
    layers.append((kernel, bias))
  return layers


def _energies(layers):
  kernel = np.stack([k for k, _ in layers])
  bias = np.stack([b for _, b in layers])
  energy = np.sum(np.abs(kernel), axis=1) + np.abs(bias)
  return energy ** 2 / np.sum(energy ** 2, axis=1, keepdims=True), bias


def _hdbscan(data, library_min_samples=None, precomputed=False, single=False):
  """The hdbscan library's call as scikit-learn's: min_cluster_size 5, min_samples + 1."""
  from sklearn.cluster import HDBSCAN  # pylint: disable=g-import-not-at-top
  samples = 5 if library_min_samples is None else library_min_samples
  return HDBSCAN(min_cluster_size=5, min_samples=min(samples + 1, len(data)),
                 metric='precomputed' if precomputed else 'euclidean',
                 allow_single_cluster=single).fit(np.array(data, np.float64)).labels_


def deepsight_flpoison(layers, tau=0.33):
  """FLPoison's DeepSight.aggregate minus DDifs: (flagged, suspicious)."""
  from sklearn.metrics.pairwise import cosine_distances  # pylint: disable=g-import-not-at-top
  neups, bias = _energies(layers)
  threshold = max(0.01, 1 / CLASSES) * neups.max(axis=1)
  tes = np.sum(neups > threshold[:, None], axis=1)
  same = lambda labels: np.where(labels[:, None] == labels, 0, 1)  # noise == noise: 0
  merged = np.mean([same(_hdbscan(neups, 3)),
                    same(_hdbscan(cosine_distances(bias), 3, precomputed=True))], axis=0)
  labels = _hdbscan(merged, 3, precomputed=True, single=True)
  suspicious = tes <= np.median(tes) / 2
  accepted = []
  for i in range(len(set(labels)) - (1 if -1 in labels else 0)):
    members = np.where(labels == i)[0]
    if np.sum(suspicious[members]) < tau * len(members):
      accepted.extend(members)
  return sorted(set(range(COHORT)) - set(accepted)), np.flatnonzero(suspicious).tolist()


def deepsight_backfed(layers, tau=1 / 3):
  """BackFed's DeepSightServer.detect_anomalies minus DDifs: (flagged, suspicious)."""
  neups, bias = _energies(layers)
  tes = [sum(1 for j in row if j >= (1 / CLASSES) * np.max(row)) for row in neups]
  labels_malicious = [not te > np.median(tes) * 0.5 for te in tes]
  norms = np.linalg.norm(bias, axis=1)
  cosine = np.zeros((COHORT, COHORT))
  for i in range(COHORT):
    for j in range(i + 1, COHORT):
      cosine[i, j] = cosine[j, i] = 1.0 - bias[i] @ bias[j] / (norms[i] * norms[j] + 1e-10)

  def dists(clusters):
    pairwise = np.ones((COHORT, COHORT))
    for i in range(COHORT):
      for j in range(COHORT):
        if clusters[i] == clusters[j] and clusters[i] != -1:
          pairwise[i][j] = 0
    return pairwise

  merged = np.mean([dists(_hdbscan(neups)), dists(_hdbscan(cosine, precomputed=True))], axis=0)
  final = _hdbscan(merged)  # BackFed calls HDBSCAN() here: rows as points, Euclidean
  positives = collections.Counter(int(c) for c, bad in zip(final, labels_malicious)
                                  if c != -1 and not bad)
  totals = collections.Counter(int(c) for c in final if c != -1)
  flagged = [i for i, c in enumerate(final)
             if (c != -1 and not positives[int(c)] / totals[int(c)] < tau)
             or (c == -1 and labels_malicious[i])]
  return flagged, [i for i, bad in enumerate(labels_malicious) if bad]


def deepsight_table(seeds: int) -> List[str]:
  """The DeepSight agreement table's lines (one independent round per seed)."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from tff_backdoor.aggregators import deepsight  # pylint: disable=g-import-not-at-top
  value_type = tff.types.to_type([tff.TensorType(np.float32, (FEATURES, CLASSES)),
                                  tff.TensorType(np.float32, (CLASSES,))])
  process = deepsight.DeepSightFactory(use_ddifs=False).create(value_type,
                                                               tff.TensorType(np.float32))
  lines = ['| seed | ours: rejected | FLPoison: rejected | BackFed: rejected | ours: '
           'suspicious (TE) | FLPoison: suspicious | BackFed: suspicious |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  totals = collections.Counter()
  for seed in range(seeds):
    layers = _output_layers(np.random.default_rng(100 + seed))
    updates = [[k.astype(np.float32), b.astype(np.float32)] for k, b in layers]
    output = process.next(process.initialize(), updates, [1.0] * COHORT)
    ours = [i for i, d in enumerate(output.measurements['client_decisions']) if d == 0]
    kernel = np.stack([k for k, _ in layers])
    ours_suspicious = np.flatnonzero(deepsight.suspicious(deepsight.threshold_exceedings(
        deepsight.neups(kernel.astype(np.float32), np.stack([b for _, b in layers]).astype(
            np.float32)), 0.01)).numpy()).tolist()
    flpoison, fp_suspicious = deepsight_flpoison(layers)
    backfed, bf_suspicious = deepsight_backfed(layers)
    for name, flagged in (('ours', ours), ('FLPoison', flpoison), ('BackFed', backfed)):
      totals[name, 'tp'] += len(set(flagged) & set(DS_ATTACKERS))
      totals[name, 'fp'] += len(set(flagged) - set(DS_ATTACKERS))
    lines.append(f'| {seed} | {_fmt(ours)} | {_fmt(flpoison)} | {_fmt(backfed)} | '
                 f'{_fmt(ours_suspicious)} | {_fmt(fp_suspicious)} | {_fmt(bf_suspicious)} |')
  lines.append('')
  lines.append(f'attackers {",".join(map(str, DS_ATTACKERS))} of {COHORT}; attackers rejected / '
               'honest rejected over the seeds: ' + '; '.join(
                   f'{name} {totals[name, "tp"]} / {totals[name, "fp"]}'
                   for name in ('ours', 'FLPoison', 'BackFed')))
  return lines


def main(argv):
  del argv
  if FLAGS.detector in ('fldetector', 'both'):
    print('FLDetector\n')
    print('\n'.join(compare(FLAGS.rounds, FLAGS.seed, FLAGS.window)))
  if FLAGS.detector in ('deepsight', 'both'):
    print('\nDeepSight (no DDifs)\n')
    print('\n'.join(deepsight_table(FLAGS.seeds)))


if __name__ == '__main__':
  app.run(main)
