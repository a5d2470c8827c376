"""NumPy references of the published rules that keep state or need the server's data."""
import numpy as np


def flat(update):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in update])


def fltrust(updates, weights, reference):
  """Cao et al.: sum_i ReLU(cos(g_i, g0)) ||g0||/||g_i|| g_i / sum_i ReLU(cos(g_i, g0))."""
  g0 = flat(reference)
  total, trust_sum = np.zeros_like(g0), 0.0
  for u, w in zip(updates, weights):
    g = flat(u)
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


def foolsgold_round(updates, weights, history, tensors=2, kappa=1.0):
  """(aggregate as a list of arrays, new history, a) of one round; weight = identity + 1."""
  history = np.array(history, np.float64)
  keep = [i for i, w in enumerate(weights) if w > 0 and round(float(w)) - 1 < len(history)]
  ids = [int(round(float(weights[i]))) - 1 for i in keep]
  for i, c in zip(keep, ids):
    history[c] += flat(updates[i][-tensors:] if tensors else updates[i])
  wv = foolsgold_weights(history[ids], kappa) if ids else np.zeros(0)
  aggregate = [sum(a * np.asarray(updates[i][v], np.float64) for a, i in zip(wv, keep))
               / (wv.sum() or 1.0) for v in range(len(updates[0]))]
  return aggregate, history, wv
