"""Defenses that act during training, as `tff.aggregators` factories.

Every factory here is a `tff.aggregators.WeightedAggregationFactory` that any TFF project can
pass to `tff.learning.algorithms.build_weighted_fed_avg(model_aggregator=...)`, and reports what
it did in its `measurements`. `build_defense(DefenseConfig(name=...), clients_per_round, seed)`
assembles the one chosen by name, behind a guard against non-finite updates and with client
norm statistics.
"""
from tff_backdoor.aggregators.bias_filter import BiasAnomalyFilterFactory
from tff_backdoor.aggregators.clipping import adaptive_clipping_factory
from tff_backdoor.aggregators.clipping import AggregateClippingFactory
from tff_backdoor.aggregators.clipping import norm_clipping_factory
from tff_backdoor.aggregators.clipping import norm_zeroing_factory
from tff_backdoor.aggregators.dp import seeded_gaussian_fixed
from tff_backdoor.aggregators.dp import SeededGaussianSumQuery
from tff_backdoor.aggregators.dp import weak_dp_factory
from tff_backdoor.aggregators.fltrust import FLTrustFactory
from tff_backdoor.aggregators.foolsgold import FoolsGoldFactory
from tff_backdoor.aggregators.nonfinite import NonFiniteGuardFactory
from tff_backdoor.aggregators.norm_statistics import add_client_norm_measurements
from tff_backdoor.aggregators.registry import build_defense
from tff_backdoor.aggregators.registry import DefenseConfig
from tff_backdoor.aggregators.registry import DEFENSES
from tff_backdoor.aggregators.registry import validate_defense
from tff_backdoor.aggregators.robust_rules import CoordinateMedianFactory
from tff_backdoor.aggregators.robust_rules import federated_stack
from tff_backdoor.aggregators.robust_rules import KrumFactory
from tff_backdoor.aggregators.robust_rules import ServerRuleFactory
from tff_backdoor.aggregators.robust_rules import TrimmedMeanFactory

__all__ = [
    'AggregateClippingFactory', 'BiasAnomalyFilterFactory', 'CoordinateMedianFactory', 'DEFENSES',
    'DefenseConfig', 'FLTrustFactory', 'FoolsGoldFactory', 'KrumFactory', 'NonFiniteGuardFactory',
    'SeededGaussianSumQuery', 'ServerRuleFactory', 'TrimmedMeanFactory',
    'adaptive_clipping_factory', 'add_client_norm_measurements', 'build_defense',
    'federated_stack', 'norm_clipping_factory', 'norm_zeroing_factory', 'seeded_gaussian_fixed',
    'validate_defense', 'weak_dp_factory',
]
