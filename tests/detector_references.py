"""NumPy references of FLDetector and DeepSight, written from the papers, not from our TF code.

FLDetector's Hessian is the BFGS recursion itself (dense, B_0 = sigma I, one rank-two update
per pair), not the compact form the TF code uses; its clusterings are scikit-learn's KMeans.
DeepSight's clusterings are scikit-learn's HDBSCAN.
"""
import numpy as np
import threadpoolctl
from sklearn.cluster import HDBSCAN
from sklearn.cluster import KMeans

from tests.defense_references import flat, unflat


def bfgs_hessian(s, y):
  """Dense BFGS estimate of the Hessian from pairs s, y [N, D] (oldest first)."""
  sigma = y[-1] @ s[-1] / (s[-1] @ s[-1])
  b = sigma * np.eye(s.shape[1])
  for sk, yk in zip(s, y):
    bs = b @ sk
    b = b - np.outer(bs, bs) / (sk @ bs) + np.outer(yk, yk) / (yk @ sk)
  return b


def inertia(values, k):
  if k >= len(np.unique(values)):
    return 0.0
  with threadpoolctl.threadpool_limits(1):  # tiny fits: threads only cost on a shared machine
    return KMeans(n_clusters=k, n_init=5, random_state=0).fit(values[:, None]).inertia_


def gap_clusters(scores, reference, k_max=10):
  """Tibshirani's gap statistic on min-max scaled scores against uniform reference sets."""
  x = (scores - scores.min()) / (scores.max() - scores.min())
  k_max = min(k_max, len(x))
  floor = 1e-12
  gap, spread = [], []
  for k in range(1, k_max + 1):
    logs = np.log([max(inertia(r, k), floor) for r in reference])
    gap.append(logs.mean() - np.log(max(inertia(x, k), floor)))
    spread.append(logs.std() * np.sqrt(1 + 1 / len(reference)))
  for k in range(1, k_max):
    if gap[k - 1] >= gap[k] - spread[k]:
      return k
  return k_max


class FLDetector:
  """Algorithm 1 of Zhang et al., with a sampled cohort (see `fldetector`'s departures)."""

  def __init__(self, num_clients, window=10):
    self.window = window
    self.moves, self.update_moves = [], []  # Delta w (as a_{k-1}), Delta g
    self.last_aggregate = None
    self.last = {}  # identity -> its update in the previous round
    self.distances = {c: [] for c in range(num_clients)}

  def round(self, rows, ids, reference):
    """(aggregate, admitted bool [n], scores [n] or None) of one round."""
    rows, n = np.asarray(rows, np.float64), len(ids)
    admitted, scores = np.ones(n, bool), None
    if len(self.moves) == self.window:
      hvp = bfgs_hessian(np.array(self.moves), np.array(self.update_moves)) @ self.last_aggregate
      predicted = np.array([self.last.get(c, self.last_aggregate) for c in ids]) + hvp
      d = np.linalg.norm(predicted - rows, axis=1)
      d = d / d.sum()
      for c, di in zip(ids, d):
        self.distances[c] = (self.distances[c] + [di])[-self.window:]
      scores = np.array([np.mean(self.distances[c]) for c in ids])
      if n > 1 and scores.max() > scores.min() and gap_clusters(scores, reference) >= 2:
        with threadpoolctl.threadpool_limits(1):
          labels = KMeans(n_clusters=2, n_init=10, random_state=0).fit(scores[:, None]).labels_
        upper = int(scores[labels == 1].mean() > scores[labels == 0].mean())
        admitted = labels != upper
    aggregate = rows[admitted].mean(0)
    if self.last_aggregate is not None:
      self.moves = (self.moves + [self.last_aggregate])[-self.window:]
      self.update_moves = (self.update_moves + [aggregate - self.last_aggregate])[-self.window:]
    self.last_aggregate = aggregate
    self.last = dict(zip(ids, rows))
    return aggregate, admitted, scores


def deepsight(u, tau=1 / 3, factor=0.01, min_cluster_size=5, min_samples=4, ddifs=None):
  """Rieger et al.'s Algorithm 1: (aggregate, accepted, suspicious) on updates u (lists of
  arrays whose last two are the output kernel [F, P] and bias [P]) and their DDifs [n, seeds,
  P]; without DDifs (None) the ensemble is the bias cosines' and the NEUPs' alone."""
  kernel = np.stack([c[-2] for c in u]).astype(np.float64)
  bias = np.stack([c[-1] for c in u]).astype(np.float64)
  energy = np.abs(kernel).sum(axis=1) + np.abs(bias)
  neup = energy ** 2 / (energy ** 2).sum(axis=1, keepdims=True)
  xi = max(factor, 1 / neup.shape[1]) * neup.max(axis=1, keepdims=True)
  te = (neup > xi).sum(axis=1)
  suspect = te <= np.median(te) / 2

  def labels(distances):
    return HDBSCAN(metric='precomputed', min_cluster_size=min_cluster_size,
                   min_samples=min(min_samples, len(u))).fit(distances.copy()).labels_

  def apart(lab):
    same = (lab[:, None] == lab[None]) & (lab[:, None] >= 0)
    np.fill_diagonal(same, True)
    return 1.0 - same

  unit = bias / np.linalg.norm(bias, axis=1, keepdims=True)
  cosine = np.clip(1 - unit @ unit.T, 0, 2)
  np.fill_diagonal(cosine, 0)
  euclid = np.linalg.norm(neup[:, None] - neup[None], axis=-1)
  ensemble = [apart(labels(cosine)), apart(labels(euclid))]
  if ddifs is not None:  # the paper: the mean over seeds of each seed's DDif clustering
    ddifs = np.asarray(ddifs, np.float64)
    ensemble.append(np.mean([apart(labels(np.linalg.norm(d[:, None] - d[None], axis=-1)))
                             for d in ddifs.transpose(1, 0, 2)], axis=0))
  final = labels(np.mean(ensemble, axis=0))
  accepted = np.array([
      suspect[m].sum() < tau * m.sum()
      for m in ((final == f) if f >= 0 else (np.arange(len(u)) == i) for i, f in enumerate(final))])
  x = flat(u)
  norms = np.linalg.norm(x, axis=1)
  clipped = x * np.minimum(1.0, np.median(norms) / norms)[:, None]
  aggregate = clipped[accepted].mean(0) if accepted.any() else np.zeros(x.shape[1])
  return unflat(aggregate, u[0]), accepted, suspect
