"""Where do backdoor updates stand out? Pure NumPy analysis of captured per-client updates.

Implements METHODS.md section 3 (Bilgin, arXiv 2111.14683) and our robust detector on the
final-layer bias, on the rounds `captures` reads.

Conventions: label True = malicious = positive class; a larger score is more suspicious; a
client is flagged iff `score > threshold` (strict). All scores are invariant to adding the same
vector to every client and to negating all updates, so deltas `trained - initial`, TFF's
`initial - trained`, or the trained weights themselves give identical scores.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import scipy.stats

from tff_backdoor.analysis.captures import RoundCapture
from tff_backdoor.metrics_io import to_jsonable

# Constants of the robust scale: s = MAD_SCALE * MAD + MAD_EPSILON (the TF bias_filter uses
# these same two; MAD_SCALE = 1 / Phi^-1(3/4) to 4 decimals, the normal-consistent MAD).
MAD_SCALE = 1.4826
MAD_EPSILON = 1e-12
SCORE_NAMES = ('linf', 'l2', 'l2_raw')
DEFAULT_TARGET_FPRS = (0.01, 0.05)

# Max number of float64 values handled at once by `variable_scores` (~32 MB per temporary).
_CHUNK_VALUES = 4_000_000

Accumulate = Union[bool, str, None]


# ----------------------------------------------------------------------------- scores


def variable_scores_array(updates: np.ndarray) -> Dict[str, np.ndarray]:
  """Robust deviation scores of each client's update from the coordinate-wise median.

  With med, MAD over clients and s = 1.4826*MAD + 1e-12 (per coordinate): 'linf' =
  max_k |u_k - med_k| / s_k; 'l2' = sqrt(mean_k ((u_k - med_k) / s_k)^2); 'l2_raw' =
  ||u - med||_2, the unnormalised Euclidean distance. Computed in float64, in column chunks.
  """
  u = np.asarray(updates)
  n = u.shape[0]
  flat = u.reshape(n, -1)
  d = flat.shape[1]
  linf = np.zeros(n)
  sum_sq = np.zeros(n)
  raw_sq = np.zeros(n)
  step = max(1, _CHUNK_VALUES // max(n, 1))
  for start in range(0, d, step):
    block = flat[:, start:start + step].astype(np.float64)
    med = np.median(block, axis=0)
    dev = np.abs(block - med)
    scale = MAD_SCALE * scipy.stats.median_abs_deviation(block, axis=0) + MAD_EPSILON
    z = dev / scale
    linf = np.maximum(linf, z.max(axis=1))
    sum_sq += np.sum(z * z, axis=1)
    raw_sq += np.sum(dev * dev, axis=1)
  l2 = np.sqrt(sum_sq / d) if d else np.zeros(n)
  return {'linf': linf, 'l2': l2, 'l2_raw': np.sqrt(raw_sq)}


def variable_scores(capture: RoundCapture,
                    variables: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, np.ndarray]]:
  """variable name -> {'linf', 'l2', 'l2_raw'} -> [num_clients] scores for one round."""
  return {name: variable_scores_array(u)
          for name, u in zip(capture.variable_names, capture.updates)
          if variables is None or name in variables}


def bias_scores(bias_updates: np.ndarray) -> np.ndarray:
  """The detector score on the final-layer bias [n, K]: robust z-score, max over classes.

  score_i = max_k |b_ik - med_k| / (1.4826 * MAD_k + 1e-12), med/MAD over clients (np.median:
  the mean of the two middle values for even n). Same formula as the TF `bias_filter`.
  """
  b = np.asarray(bias_updates, dtype=np.float64)
  if b.ndim != 2:
    raise ValueError(f'bias_updates must be [num_clients, num_classes], got {b.shape}')
  return variable_scores_array(b)['linf']


def bilgin_scores(bias_updates: np.ndarray) -> np.ndarray:
  """Bilgin's original score, max_k |mean_k - b_ik|, the mean taken over all clients.

  The mean includes the attacker, as in the author's notebook; kept for comparison only.
  """
  b = np.asarray(bias_updates, dtype=np.float64)
  if b.ndim != 2:
    raise ValueError(f'bias_updates must be [num_clients, num_classes], got {b.shape}')
  if b.shape[0] == 0:
    return np.zeros(0)
  return np.max(np.abs(b.mean(axis=0) - b), axis=1)


# ----------------------------------------------------------------------------- AUC, localization


def _check_scores_labels(scores: Any, labels: Any):
  """Converts to float/bool 1-D arrays of equal length; rejects NaN scores."""
  s = np.asarray(scores, dtype=np.float64).reshape(-1)
  y = np.asarray(labels, dtype=bool).reshape(-1)
  if s.shape != y.shape:
    raise ValueError(f'{s.size} scores but {y.size} labels')
  if np.isnan(s).any():
    raise ValueError('scores contain NaN')
  return s, y


def roc_auc(scores: Any, labels: Any) -> float:
  """ROC-AUC = P(malicious score > honest score) + P(tie)/2 (Mann-Whitney); NaN if a class is empty.

  The rank form: U = (sum of the malicious scores' average ranks) - n_pos (n_pos + 1) / 2.
  """
  s, y = _check_scores_labels(scores, labels)
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  u_stat = scipy.stats.rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u_stat / (n_pos * n_neg))


@dataclasses.dataclass
class LocalizationRow:
  """How well one variable's score separates malicious from honest (client, round) pairs."""
  variable: str
  auc: float
  mean_malicious: float
  mean_honest: float
  ratio: float  # mean_malicious / mean_honest.
  n_malicious: int
  n_honest: int
  round_auc: Dict[int, float]  # Per captured round (NaN if a round lacks a class).


def _safe_mean(x: np.ndarray) -> float:
  return float(np.mean(x)) if x.size else float('nan')


def ratio(a: float, b: float) -> float:
  """a / b for score summaries: NaN if either is NaN or both are 0, +-inf if only b is 0."""
  if math.isnan(a) or math.isnan(b):
    return float('nan')
  if b == 0:
    return float('nan') if a == 0 else math.copysign(float('inf'), a)
  return a / b


def _sort_key_auc(auc: float) -> float:
  return -auc if not math.isnan(auc) else float('inf')


def localization_table(captures: Iterable[RoundCapture], score: str = 'linf',
                       rounds: Optional[Iterable[int]] = None,
                       variables: Optional[Sequence[str]] = None) -> List[LocalizationRow]:
  """Per-variable AUC over pooled (client, round) pairs, ranked by AUC descending (NaN last).

  `score` is 'linf', 'l2' or 'l2_raw'; `rounds` restricts to those round numbers. Captures are
  consumed once, so a generator from `iter_captures` works for big models.
  """
  if score not in SCORE_NAMES:
    raise ValueError(f'unknown score {score!r}; choose one of {SCORE_NAMES}')
  wanted = None if rounds is None else {int(r) for r in rounds}
  order: List[str] = []
  pooled: Dict[str, List[np.ndarray]] = {}
  labels: List[np.ndarray] = []
  round_auc: Dict[str, Dict[int, float]] = {}
  for capture in captures:
    if wanted is not None and capture.round_num not in wanted:
      continue
    labels.append(capture.malicious)
    for name, per_score in variable_scores(capture, variables).items():
      if name not in pooled:
        if labels[:-1]:
          raise ValueError(f'variable {name!r} missing from earlier captures')
        order.append(name)
        pooled[name], round_auc[name] = [], {}
      pooled[name].append(per_score[score])
      round_auc[name][capture.round_num] = roc_auc(per_score[score], capture.malicious)
    if any(len(v) != len(labels) for v in pooled.values()):
      raise ValueError(f'round {capture.round_num}: variables differ from earlier captures')
  y = np.concatenate(labels) if labels else np.zeros(0, dtype=bool)
  rows = []
  for name in order:
    s = np.concatenate(pooled[name])
    mean_mal, mean_hon = _safe_mean(s[y]), _safe_mean(s[~y])
    rows.append(LocalizationRow(
        variable=name, auc=roc_auc(s, y), mean_malicious=mean_mal, mean_honest=mean_hon,
        ratio=ratio(mean_mal, mean_hon), n_malicious=int(y.sum()), n_honest=int((~y).sum()),
        round_auc=dict(sorted(round_auc[name].items()))))
  # Stable sort: equal AUCs keep model order.
  return sorted(rows, key=lambda r: _sort_key_auc(r.auc))


def per_round_auc(rows: Sequence[LocalizationRow]) -> Dict[str, Dict[int, float]]:
  """variable -> {round: AUC} from a localization table, to compare early and late rounds."""
  return {r.variable: dict(r.round_auc) for r in rows}


# ----------------------------------------------------------------------------- detector


def default_bias_variable(variable_names: Sequence[str]) -> str:
  """The last variable whose name (without a ':0' suffix) ends with 'bias'."""
  for name in reversed(list(variable_names)):
    if re.sub(r':\d+$', '', name).endswith('bias'):
      return name
  raise ValueError(f'no variable name ends with "bias": {list(variable_names)}')


@dataclasses.dataclass
class ClientRoundScores:
  """Detector scores of every (client, round) pair, in capture order."""
  round_num: np.ndarray  # int [m]
  client_id: np.ndarray  # str [m]
  malicious: np.ndarray  # bool [m]
  raw_score: np.ndarray  # float [m], this round's score alone.
  score: np.ndarray  # float [m], accumulated over the client's rounds so far (or raw).


def _accumulate_mode(accumulate: Accumulate) -> Optional[str]:
  if accumulate in (None, False):
    return None
  if accumulate is True:
    return 'mean'
  if accumulate in ('mean', 'max'):
    return accumulate
  raise ValueError(f"accumulate must be False, True, 'mean' or 'max', got {accumulate!r}")


def client_round_scores(captures: Iterable[RoundCapture], bias_variable: Optional[str] = None,
                        accumulate: Accumulate = False,
                        score_fn: Callable[[np.ndarray], np.ndarray] = bias_scores
                        ) -> ClientRoundScores:
  """Scores every (client, round) pair on the final-layer bias, optionally accumulated.

  accumulate: False = the round's score; True/'mean' = running mean of the client's scores over
  the captured rounds it took part in up to this one; 'max' = running max.
  """
  mode = _accumulate_mode(accumulate)
  history: Dict[str, List[float]] = {}
  cols: Dict[str, list] = {k: [] for k in ('round_num', 'client_id', 'malicious', 'raw', 'acc')}
  for capture in sorted(captures, key=lambda c: c.round_num):
    name = bias_variable or default_bias_variable(capture.variable_names)
    b = capture.variable(name)
    raw = score_fn(b.reshape(b.shape[0], -1))
    for cid, mal, s in zip(capture.client_ids, capture.malicious, raw):
      h = history.setdefault(cid, [])
      h.append(float(s))
      acc = float(s) if mode is None else (float(np.mean(h)) if mode == 'mean' else max(h))
      cols['round_num'].append(capture.round_num)
      cols['client_id'].append(cid)
      cols['malicious'].append(bool(mal))
      cols['raw'].append(float(s))
      cols['acc'].append(acc)
  return ClientRoundScores(
      round_num=np.array(cols['round_num'], dtype=np.int64),
      client_id=np.array(cols['client_id'], dtype=np.str_),
      malicious=np.array(cols['malicious'], dtype=bool),
      raw_score=np.array(cols['raw'], dtype=np.float64),
      score=np.array(cols['acc'], dtype=np.float64))


def threshold_at_fpr(honest_scores: Any, target_fpr: float) -> float:
  """Smallest threshold t with #{honest > t} <= floor(target_fpr * n_honest); NaN if no honest.

  t is always an honest score, so ties at t are never flagged (strict `>`) and the empirical
  FPR never exceeds the target. With fewer than 1/target_fpr honest scores no false positive
  is allowed and t = max honest score (FPR 0).
  """
  h = np.sort(np.asarray(honest_scores, dtype=np.float64).reshape(-1))
  if h.size == 0:
    return float('nan')
  if not 0.0 <= target_fpr < 1.0:
    raise ValueError(f'target_fpr must be in [0, 1), got {target_fpr}')
  allowed = int(math.floor(target_fpr * h.size + 1e-9))
  return float(h[h.size - allowed - 1])


def _fpr_key(target: float) -> str:
  return f'{100 * target:g}pct'.replace('.', 'p')


def detection_metrics(scores: Any, labels: Any,
                      target_fprs: Sequence[float] = DEFAULT_TARGET_FPRS) -> Dict[str, Any]:
  """AUC and, per target FPR, the threshold chosen on the honest scores and the TPR there.

  Keys: auc, n_malicious, n_honest and, for 1%: threshold_at_fpr_1pct, tpr_at_fpr_1pct,
  fpr_at_fpr_1pct (achieved, <= target). The threshold is fit in-sample on these honest scores.
  """
  s, y = _check_scores_labels(scores, labels)
  pos, neg = s[y], s[~y]
  out: Dict[str, Any] = {'auc': roc_auc(s, y), 'n_malicious': int(pos.size),
                         'n_honest': int(neg.size)}
  for target in target_fprs:
    key = _fpr_key(target)
    t = threshold_at_fpr(neg, target)
    flagged = lambda x: float(np.mean(x > t)) if x.size and not math.isnan(t) else float('nan')
    out[f'threshold_at_fpr_{key}'] = t
    out[f'tpr_at_fpr_{key}'] = flagged(pos)
    out[f'fpr_at_fpr_{key}'] = flagged(neg)
  return out


def _first_detections(table: ClientRoundScores, threshold: float) -> Dict[str, Dict[str, Any]]:
  """Per malicious client: first detection round, first malicious round, participations used."""
  out: Dict[str, Dict[str, Any]] = {}
  mal_ids = list(dict.fromkeys(table.client_id[table.malicious].tolist()))
  for cid in mal_ids:
    idx = np.flatnonzero(table.client_id == cid)  # In round order.
    hits = idx[table.score[idx] > threshold]
    out[cid] = {
        'first_detection_round': int(table.round_num[hits[0]]) if hits.size else None,
        'first_malicious_round': int(table.round_num[idx[table.malicious[idx]][0]]),
        'participations_to_detection': (int(np.flatnonzero(idx == hits[0])[0]) + 1
                                        if hits.size else None),
    }
  return out


def rounds_to_first_detection(captures: Iterable[RoundCapture], threshold: float,
                              accumulate: Accumulate = False,
                              bias_variable: Optional[str] = None) -> Dict[str, Optional[int]]:
  """For each client ever labelled malicious: first captured round with score > threshold, or None."""
  table = client_round_scores(captures, bias_variable, accumulate)
  return {cid: d['first_detection_round']
          for cid, d in _first_detections(table, threshold).items()}


def false_positive_rate(captures: Iterable[RoundCapture], threshold: float,
                        accumulate: Accumulate = False, bias_variable: Optional[str] = None,
                        per_client: bool = False) -> float:
  """Share of honest (client, round) pairs with score > threshold; NaN if none is honest.

  per_client=True: share of never-malicious clients flagged in at least one round.
  """
  table = client_round_scores(captures, bias_variable, accumulate)
  flagged = table.score > threshold
  if not per_client:
    honest = ~table.malicious
    return float(np.mean(flagged[honest])) if honest.any() else float('nan')
  bad = set(table.client_id[table.malicious].tolist())
  honest_ids = [c for c in dict.fromkeys(table.client_id.tolist()) if c not in bad]
  if not honest_ids:
    return float('nan')
  return float(np.mean([flagged[table.client_id == c].any() for c in honest_ids]))


def detector_report(captures: Iterable[RoundCapture], threshold: Optional[float] = None,
                    bias_variable: Optional[str] = None,
                    accumulate: Accumulate = False) -> Dict[str, Any]:
  """Everything about the final-layer-bias detector, as JSON-able values (NaN/inf -> None).

  threshold=None uses the in-sample 1%-FPR threshold of `detection_metrics`. Also reports
  Bilgin's mean-centred score and the per-round AUC of the raw robust score.
  """
  captures = sorted(captures, key=lambda c: c.round_num)
  if not captures:
    raise ValueError('no captures')
  name = bias_variable or default_bias_variable(captures[0].variable_names)
  table = client_round_scores(captures, name, accumulate)
  metrics = detection_metrics(table.score, table.malicious)
  if threshold is None:
    threshold = metrics[f'threshold_at_fpr_{_fpr_key(DEFAULT_TARGET_FPRS[0])}']
  bilgin = client_round_scores(captures, name, accumulate, score_fn=bilgin_scores)
  round_auc = {}
  for r in np.unique(table.round_num):
    sel = table.round_num == r
    round_auc[int(r)] = roc_auc(table.raw_score[sel], table.malicious[sel])
  first = _first_detections(table, threshold) if not math.isnan(threshold) else {}
  flagged = table.score > threshold
  honest = ~table.malicious
  report = {
      'bias_variable': name,
      'accumulate': _accumulate_mode(accumulate) or False,
      'rounds': [c.round_num for c in captures],
      'n_pairs': int(table.score.size),
      'threshold': threshold,
      'metrics': metrics,
      'bilgin_metrics': detection_metrics(bilgin.score, bilgin.malicious),
      'tpr_at_threshold': float(np.mean(flagged[table.malicious])) if table.malicious.any()
                          else float('nan'),
      'fpr_at_threshold': float(np.mean(flagged[honest])) if honest.any() else float('nan'),
      'honest_clients_flagged_fraction': false_positive_rate(
          captures, threshold, accumulate, name, per_client=True),
      'rounds_to_first_detection': {c: d['first_detection_round'] for c, d in first.items()},
      'first_detection': first,
      'per_round_auc': round_auc,
      'mean_score_malicious': _safe_mean(table.score[table.malicious]),
      'mean_score_honest': _safe_mean(table.score[honest]),
  }
  return to_jsonable(report)


# ----------------------------------------------------------------------------- tables to files


def table_to_records(rows: Sequence[LocalizationRow]) -> List[Dict[str, Any]]:
  """Flat JSON-able dicts, one per variable, with a column `auc_round_<NNNN>` per round."""
  records = []
  for rank, r in enumerate(rows, start=1):
    rec = {'rank': rank, 'variable': r.variable, 'auc': r.auc,
           'mean_malicious': r.mean_malicious, 'mean_honest': r.mean_honest, 'ratio': r.ratio,
           'n_malicious': r.n_malicious, 'n_honest': r.n_honest}
    rec.update({f'auc_round_{k:04d}': v for k, v in r.round_auc.items()})
    records.append(to_jsonable(rec))
  return records
