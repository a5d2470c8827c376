"""Per-class accuracy of a model and how often one class is predicted as another.

What a backdoor costs each class: on Fashion-MNIST the targeted task's relabelled sneakers
carry over to every sneaker, which the overall accuracy hides. Pure NumPy apart from
`predict_labels`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray,
                       num_classes: int) -> np.ndarray:
  """Accuracy on each true class (NaN for a class with no examples)."""
  labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
  if labels.shape != predictions.shape:
    raise ValueError(f'{labels.size} labels but {predictions.size} predictions')
  out = np.full(num_classes, np.nan)
  for c in range(num_classes):
    mask = labels == c
    if mask.any():
      out[c] = float(np.mean(predictions[mask] == c))
  return out


def confusion_rate(labels: np.ndarray, predictions: np.ndarray, source: int,
                   target: int) -> float:
  """Share of true `source` examples predicted as `target` (NaN without `source` examples)."""
  labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
  mask = labels == source
  return float(np.mean(predictions[mask] == target)) if mask.any() else float('nan')


def predict_labels(model: Any, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Arg-max class of a Keras model's outputs."""
  return np.asarray(model.predict(x, batch_size=batch_size, verbose=0)).argmax(axis=-1)


def class_report(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                 source: Optional[int] = None, target: Optional[int] = None) -> Dict[str, Any]:
  """Overall and per-class accuracy, plus the source -> target rate when both are given."""
  labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
  report: Dict[str, Any] = {
      'accuracy': float(np.mean(labels == predictions)) if labels.size else float('nan'),
      'per_class_accuracy': [float(a) for a in per_class_accuracy(labels, predictions,
                                                                  num_classes)]}
  if source is not None and target is not None and source >= 0:
    report['source_class'], report['target_class'] = int(source), int(target)
    report['source_to_target'] = confusion_rate(labels, predictions, source, target)
  return report


def attack_round_summary(clean_rows: Sequence[Mapping[str, Any]],
                         attacked_rows: Sequence[Mapping[str, Any]],
                         backdoor_threshold: float = 0.9) -> Dict[str, Any]:
  """Compares an attacked run's metric rows with an unattacked run's, round by round.

  Over the rounds with attackers: how often backdoor accuracy exceeded `backdoor_threshold`,
  the first such round, the main-accuracy gap (clean minus attacked) in those rounds, and
  the mean test and backdoor accuracy beside the clean run's mean over the same rounds.
  Rows are metrics.jsonl rows; rounds without a test accuracy are skipped.
  """
  clean = {r['round']: r['test_accuracy'] for r in clean_rows
           if r.get('test_accuracy') is not None}
  attacked = [r for r in attacked_rows if r.get('num_attackers', 0) > 0
              and r.get('test_accuracy') is not None and r['round'] in clean]
  if not attacked:
    raise ValueError('no evaluated attack round that the clean run also evaluated')
  hits = [r for r in attacked if r.get('backdoor_accuracy', 0.0) > backdoor_threshold]
  gaps = [clean[r['round']] - r['test_accuracy'] for r in hits]
  return {
      'attack_rounds': len(attacked), 'rounds_above': len(hits),
      'first_round_above': hits[0]['round'] if hits else None,
      'gap_min': min(gaps) if gaps else None, 'gap_max': max(gaps) if gaps else None,
      'mean_test': float(np.mean([r['test_accuracy'] for r in attacked])),
      'mean_clean_test': float(np.mean([clean[r['round']] for r in attacked])),
      'mean_backdoor': float(np.mean([r.get('backdoor_accuracy', 0.0) for r in attacked]))}
