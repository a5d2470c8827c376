"""NumPy references of the published rules behind the newer defenses (issue 29).

FLTrust and FoolsGold, which keep state or need the server's data, come last.

Each takes `u`, a list of clients, each a list of arrays (one per variable), and returns the
aggregate as a list of arrays; float64 throughout. FLAME's clustering is scikit-learn's HDBSCAN.
"""
import numpy as np
from sklearn.cluster import HDBSCAN


def flat(u):
  return np.stack([np.concatenate([np.ravel(x) for x in c]) for c in u]).astype(np.float64)


def unflat(vector, like):
  out, start = [], 0
  for x in like:
    out.append(vector[start:start + x.size].reshape(x.shape))
    start += x.size
  return out


def geomed(u, w, passes=5, nu=1e-6):
  """RFA: weighted mean, then passes - 1 smoothed Weiszfeld steps (Pillutla et al.)."""
  x, alpha = flat(u), np.asarray(w, np.float64) / np.sum(w)
  v = alpha @ x
  for _ in range(passes - 1):
    beta = alpha / np.maximum(nu, np.linalg.norm(x - v, axis=1))
    v = beta @ x / beta.sum()
  return unflat(v, u[0])


def krum_pick(x, f):
  """Index Krum picks among the rows of x (squared distances, m - f - 2 neighbours)."""
  m = len(x)
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  k = min(max(m - f - 2, 1), m - 1)
  scores = np.sort(d, axis=1)[:, :k].sum(1)
  return int(np.argmin(scores))


def bulyan(u, f):
  """El Mhamdi et al.: theta = n - 2f recursive Krum picks, mean of beta closest to median."""
  x = flat(u)
  n = len(x)
  theta, remaining, chosen = max(n - 2 * f, 1), list(range(n)), []
  for _ in range(theta):
    chosen.append(remaining.pop(krum_pick(x[remaining], f)))
  s = x[sorted(chosen)]
  beta = max(theta - 2 * f, 1)
  closest = np.argsort(np.abs(s - np.median(s, axis=0)), axis=0, kind='stable')[:beta]
  return unflat(np.take_along_axis(s, closest, axis=0).mean(0), u[0])


def centered_clip(u, center, tau, iterations):
  """Karimireddy et al.: v += mean_i (x_i - v) min(1, tau / ||x_i - v||), L times."""
  x, v = flat(u), np.asarray(center, np.float64)
  for _ in range(iterations):
    diff = x - v
    norms = np.linalg.norm(diff, axis=1)
    v = v + (diff * np.minimum(1.0, tau / np.maximum(norms, 1e-30))[:, None]).mean(0)
  return v


def rlr(u, w, theta):
  """Ozdayi et al.: weighted mean, negated where |sum of signs| < theta."""
  x, w = flat(u), np.asarray(w, np.float64)
  mean = w @ x / w.sum()
  agreement = np.abs(np.sign(x).sum(0))
  return unflat(np.where(agreement >= theta, mean, -mean), u[0])


def cosine_distances(x):
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  d = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
  np.fill_diagonal(d, 0.0)
  return (d + d.T) / 2


def hdbscan_majority(distances, min_samples):
  """scikit-learn's HDBSCAN as FLAME configures it; True for the clients of cluster 0."""
  n = len(distances)
  labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=min(min_samples, n),
                   metric='precomputed', allow_single_cluster=True).fit(
                       distances.copy()).labels_  # fit overwrites its input
  return labels == 0


def flame_filter(u, min_samples=2):
  """FLAME without noise: HDBSCAN cluster on cosine distances, clip at median norm, mean."""
  x = flat(u)
  kept = hdbscan_majority(cosine_distances(x), min_samples)
  norms = np.linalg.norm(x, axis=1)
  bound = np.median(norms)
  clipped = x * np.minimum(1.0, bound / norms)[:, None]
  return unflat(clipped[kept].mean(0), u[0]), kept, bound

def flat_update(update):
  """One update (a list of arrays) as one float64 vector."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in update])


def fltrust(updates, weights, reference):
  """Cao et al.: sum_i ReLU(cos(g_i, g0)) ||g0||/||g_i|| g_i / sum_i ReLU(cos(g_i, g0))."""
  g0 = flat_update(reference)
  total, trust_sum = np.zeros_like(g0), 0.0
  for u, w in zip(updates, weights):
    g = flat_update(u)
    if not w > 0 or not np.linalg.norm(g) > 0:
      continue
    trust = max(0.0, g @ g0 / (np.linalg.norm(g) * np.linalg.norm(g0)))
    total += trust * np.linalg.norm(g0) / np.linalg.norm(g) * g
    trust_sum += trust
  return total / trust_sum if trust_sum else total


def foolsgold_weights(histories, kappa=1.0):
  """The `foolsgold` function of DistributedML/FoolsGold, with its loops."""
  n = len(histories)
  norms = np.linalg.norm(histories, axis=1, keepdims=True)
  unit = np.divide(histories, norms, out=np.zeros_like(histories), where=norms > 0)
  cs = unit @ unit.T - np.eye(n)
  maxcs = np.max(cs, axis=1)
  for i in range(n):
    for j in range(n):
      if i != j and maxcs[i] < maxcs[j]:
        cs[i][j] = cs[i][j] * maxcs[i] / maxcs[j]
  wv = 1 - np.max(cs, axis=1)
  wv[wv > 1] = 1
  wv[wv < 0] = 0
  wv = wv / np.max(wv)
  wv[wv == 1] = .99
  with np.errstate(divide='ignore'):
    wv = kappa * (np.log(wv / (1 - wv)) + 0.5)
  wv[(np.isinf(wv) + wv > 1)] = 1
  wv[wv < 0] = 0
  return wv


def foolsgold_paper_weights(histories, kappa=1.0):
  """alpha of Fung et al. (RAID 2020), Algorithm 1, written from the paper, one client a time.

  Where the paper leaves a case open: j ranges over the other clients and a client's v_i is
  at least 0 (it has no similarity to itself; no client is pardoned towards a negative v);
  a zero history has cosine 0 with everyone; alpha = 1 - max_j cs_ij is kept in [0, 1]
  before it is divided by its maximum (all 0: stays 0); the logit of alpha = 1 is +inf and of
  alpha = 0 is -inf, and the logit is clipped to [0, 1] (the paper: "clipped").
  """
  h = np.asarray(histories, np.float64)
  n = len(h)

  def cosine(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0

  cs = [[cosine(h[i], h[j]) if i != j else None for j in range(n)] for i in range(n)]
  v = [max([0.0] + [cs[i][j] for j in range(n) if j != i]) for i in range(n)]
  alpha = []
  for i in range(n):
    pardoned = [cs[i][j] * v[i] / v[j] if v[j] > v[i] else cs[i][j]
                for j in range(n) if j != i]
    alpha.append(min(1.0, max(0.0, 1.0 - max([0.0] + pardoned))))
  top = max(alpha, default=0.0)
  out = []
  for a in alpha:
    a = a / top if top > 0 else 0.0
    logit = np.inf if a == 1.0 else (-np.inf if a == 0.0 else kappa * (np.log(a / (1 - a)) + 0.5))
    out.append(min(1.0, max(0.0, logit)))
  return np.array(out)


def foolsgold_round(updates, weights, history, tensors=2, kappa=1.0):
  """One round of Fung et al.'s Algorithm 1: (the paper's step, new history, alpha).

  H_i += Delta_i (the last `tensors` tensors: the indicative features this package keeps),
  then w_{t+1} = w_t + sum_i alpha_i Delta_i: the paper's step is NOT divided by sum alpha;
  `ours` gives this package's step. Identity from the weight: client = round(weight) - 1
  (weight 0, or an identity beyond the population: absent).
  """
  history = np.array(history, np.float64)
  keep = [i for i, w in enumerate(weights) if w > 0 and round(float(w)) - 1 < len(history)]
  ids = [int(round(float(weights[i]))) - 1 for i in keep]
  for i, c in zip(keep, ids):
    history[c] += flat_update(updates[i][-tensors:] if tensors else updates[i])
  alpha = foolsgold_paper_weights(history[ids], kappa) if ids else np.zeros(0)
  step = [sum((a * np.asarray(updates[i][v], np.float64) for a, i in zip(alpha, keep)),
              np.zeros(np.shape(updates[0][v]))) for v in range(len(updates[0]))]
  return step, history, alpha


def ours(step, alpha):
  """This package's FoolsGold step from the paper's: divided by sum alpha (0 if all are 0).

  The departure README's defense table and docs/DEFENSES.md give: with FedAvg's model deltas
  the paper's sum would scale the server step with the clients per round.
  """
  total = float(np.sum(alpha))
  return [x / total if total > 0 else np.zeros_like(x) for x in step]
