"""PNG plots for `anomaly`: AUC per variable and final-layer-bias scores over rounds.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tff_backdoor.analysis import anomaly
from tff_backdoor.analysis import captures as captures_lib


def _save(fig: Figure, path: str) -> str:
  """Renders `fig` to `path` with the Agg canvas and returns the path."""
  FigureCanvasAgg(fig)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  return path


def plot_localization_auc(rows: Sequence[anomaly.LocalizationRow], path: str,
                          title: Optional[str] = None) -> str:
  """Bar chart of pooled ROC-AUC per variable (in the rows' order) with the 0.5 chance line."""
  fig = Figure(figsize=(max(4.0, 0.5 * len(rows) + 2.0), 3.5))
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(rows))
  aucs = np.array([r.auc for r in rows], dtype=float)
  ax.bar(x, np.nan_to_num(aucs, nan=0.0), color=['tab:red' if a > 0.5 else 'tab:gray'
                                                 for a in aucs])
  ax.axhline(0.5, color='k', linestyle='--', linewidth=0.8, label='chance')
  ax.set_xticks(x)
  ax.set_xticklabels([r.variable for r in rows], rotation=60, ha='right', fontsize=8)
  ax.set_ylim(0.0, 1.0)
  ax.set_ylabel('ROC-AUC (malicious vs honest)')
  ax.set_title(title or 'Where the backdoor shows: AUC per variable')
  ax.legend(loc='lower right', fontsize=8)
  return _save(fig, path)


def plot_round_auc(rows: Sequence[anomaly.LocalizationRow], path: str, top: int = 5,
                   title: Optional[str] = None) -> str:
  """AUC per round of the `top` first rows (early vs late rounds), one line per variable."""
  fig = Figure(figsize=(6.0, 3.5))
  ax = fig.add_subplot(1, 1, 1)
  for r in rows[:top]:
    rounds = sorted(r.round_auc)
    ax.plot(rounds, [r.round_auc[k] for k in rounds], marker='o', markersize=3, label=r.variable)
  ax.axhline(0.5, color='k', linestyle='--', linewidth=0.8)
  ax.set_ylim(0.0, 1.05)
  ax.set_xlabel('round')
  ax.set_ylabel('ROC-AUC')
  ax.set_title(title or 'Per-round AUC')
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_bias_scores(data: Union[anomaly.ClientRoundScores, Iterable[captures_lib.RoundCapture]],
                     path: str, threshold: Optional[float] = None,
                     accumulate: anomaly.Accumulate = False, log_scale: bool = True,
                     title: Optional[str] = None) -> str:
  """Final-layer-bias score of attackers (red) vs honest clients (gray, median line) per round."""
  table = (data if isinstance(data, anomaly.ClientRoundScores)
           else anomaly.client_round_scores(data, accumulate=accumulate))
  fig = Figure(figsize=(6.0, 3.5))
  ax = fig.add_subplot(1, 1, 1)
  honest = ~table.malicious
  # Keep zeros visible on a log axis.
  floor = np.min(table.score[table.score > 0]) / 2 if np.any(table.score > 0) else 1e-12
  y = np.maximum(table.score, floor) if log_scale else table.score
  ax.scatter(table.round_num[honest], y[honest], s=8, color='tab:gray', alpha=0.5,
             label='honest')
  ax.scatter(table.round_num[table.malicious], y[table.malicious], s=18, color='tab:red',
             marker='x', label='malicious')
  rounds = np.unique(table.round_num[honest])
  if rounds.size:
    med = [np.median(y[honest & (table.round_num == r)]) for r in rounds]
    ax.plot(rounds, med, color='k', linewidth=1.0, label='honest median')
  if threshold is not None and np.isfinite(threshold):
    ax.axhline(threshold, color='tab:blue', linestyle='--', linewidth=0.8, label='threshold')
  if log_scale:
    ax.set_yscale('log')
  ax.set_xlabel('round')
  ax.set_ylabel('robust bias score (max_k |z|)')
  ax.set_title(title or 'Final-layer bias: attackers vs honest clients')
  ax.legend(fontsize=7)
  return _save(fig, path)
