"""Defenses that act during training, as `tff.aggregators` factories.

Every factory here is a `tff.aggregators.WeightedAggregationFactory` that any TFF project can
pass to `tff.learning.algorithms.build_weighted_fed_avg(model_aggregator=...)`, and reports what
it did in its `measurements`. `build_defense(DefenseConfig(name=...), clients_per_round, seed)`
assembles the one chosen by name, behind a guard against non-finite updates and with client
norm statistics. Each defense is described by one `DefenseSpec` (`aggregators.defenses`).
The TensorFlow-free names (`DefenseConfig`, `DefenseSpec`, `DEFENSES`, `validate_defense`)
load eagerly; the factories load on first use, so the run config reads the defenses'
parameters without TensorFlow.
"""
from __future__ import annotations

from tff_backdoor.aggregators.defense_config import DEFENSES, DefenseConfig, validate_defense
from tff_backdoor.aggregators.defense_spec import DefenseSpec
from tff_backdoor.lazy_exports import lazy_exports

_LAZY = {
    'BiasAnomalyFilterFactory': 'bias_filter',
    'BulyanFactory': 'bulyan',
    'CenteredClippingFactory': 'centered_clipping',
    'CrflOptimizer': 'crfl',
    'DeepSightFactory': 'deepsight',
    'DeltasOnlyFactory': 'deltas_only',
    'flame_factory': 'flame',
    'FlameFilterFactory': 'flame',
    'FLDetectorFactory': 'fldetector',
    'FLTrustFactory': 'fltrust',
    'FoolsGoldFactory': 'foolsgold',
    'GeometricMedianFactory': 'geometric_median',
    'MedianNormNoiseFactory': 'median_noise',
    'RobustLearningRateFactory': 'robust_lr',
    'build_server_optimizer': 'registry',
    'sun_aggregation_factory': 'dp',
    'adaptive_clipping_factory': 'clipping',
    'AggregateClippingFactory': 'clipping',
    'norm_clipping_factory': 'clipping',
    'norm_zeroing_factory': 'clipping',
    'seeded_gaussian_fixed': 'dp',
    'SeededGaussianSumQuery': 'dp',
    'weak_dp_factory': 'dp',
    'NonFiniteGuardFactory': 'nonfinite',
    'add_client_norm_measurements': 'norm_statistics',
    'build_defense': 'registry',
    'CoordinateMedianFactory': 'robust_rules',
    'federated_stack': 'robust_rules',
    'KrumFactory': 'robust_rules',
    'ServerRuleFactory': 'robust_rules',
    'TrimmedMeanFactory': 'robust_rules',
}

__all__ = ['DEFENSES', 'DefenseConfig', 'DefenseSpec', 'validate_defense'] + list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
