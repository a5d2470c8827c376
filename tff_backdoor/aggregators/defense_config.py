"""The defenses' names and parameters, TensorFlow-free (flags are checked before TF loads).

`registry.build_defense` builds the factory a `DefenseConfig` names; the run config
(`tff_backdoor.config`) composes `DefenseConfig` as its `defense` section.
"""
from __future__ import annotations

import dataclasses

from tff_backdoor.options import AT_LEAST_ONE, BELOW_HALF, NONNEGATIVE, OPEN_UNIT, POSITIVE
from tff_backdoor.options import check_field, option

DEFENSES = ('none', 'clip', 'adaptive_clip', 'zeroing', 'clip_mean', 'weak_dp', 'median',
            'trimmed_mean', 'krum', 'multi_krum', 'bias_filter', 'sun_mean', 'sun_dp',
            'geomed', 'bulyan', 'centered_clip', 'rlr', 'flame',
            'crfl', 'fltrust', 'foolsgold', 'fldetector',
            'deepsight')  # registry.DEFENSE_BUILDERS

# The defenses' parameters: (field, default, rule, help); DefenseConfig's docstring says why
# each default. One row a field: a defense's new parameter is a new row.
DEFENSE_PARAMETERS = (
    ('clip_norm', 3.0, POSITIVE, 'clip, clip_mean, weak_dp, sun_dp: the L2 bound M.'),
    ('adaptive_quantile', 0.5, OPEN_UNIT, 'adaptive_clip: quantile of norms.'),
    ('adaptive_initial_norm', 1.0, POSITIVE, 'adaptive_clip: first bound.'),
    ('adaptive_learning_rate', 0.2, POSITIVE, 'adaptive_clip: bound step.'),
    ('zeroing_norm', 3.0, POSITIVE, 'zeroing: drop updates above it.'),
    ('dp_sigma', 0.025, NONNEGATIVE, 'weak_dp: noise std of the mean.'),
    ('sum_noise_stddev', 0.0, NONNEGATIVE,
     "sun_dp: noise std of the SUM (Sun et al.'s mul_factor)."),
    ('trim_fraction', 0.1, BELOW_HALF, 'trimmed_mean: share cut each end.'),
    ('krum_f', 1, NONNEGATIVE, 'krum, multi_krum: Byzantine clients tolerated.'),
    ('krum_m', 0, NONNEGATIVE, 'multi_krum: updates averaged (0 = clients_per_round - krum_f).'),
    ('bias_z_threshold', 3.5, POSITIVE, 'bias_filter: robust z-score cut-off.'),
    ('bias_index', -1, None, 'bias_filter: index of the bias tensor in the update.'),
    ('geomed_passes', 5, AT_LEAST_ONE, 'geomed: weighted means R (the first + R-1 Weiszfeld).'),
    ('geomed_nu', 1e-6, POSITIVE, 'geomed: Weiszfeld smoothing nu.'),
    ('bulyan_f', 1, NONNEGATIVE, 'bulyan: Byzantine clients f (needs clients_per_round >= 4f+3).'),
    ('cc_tau', 100.0, POSITIVE, 'centered_clip: clipping radius tau.'),
    ('cc_iterations', 1, AT_LEAST_ONE, 'centered_clip: clipping iterations L.'),
    ('rlr_threshold', 4, AT_LEAST_ONE, 'rlr: sign agreement theta (<= clients_per_round).'),
    ('flame_lambda', 0.001, NONNEGATIVE, 'flame: noise std / median update norm.'),
    ('flame_min_samples', 2, AT_LEAST_ONE, "flame: HDBSCAN min_samples (sklearn's, self counts)."),
    ('crfl_sigma', 0.01, NONNEGATIVE, 'crfl: noise std on the global model each round.'),
    ('crfl_clip_base', 4.0, POSITIVE, 'crfl: model norm bound min(base + slope*t, max).'),
    ('crfl_clip_slope', 0.25, NONNEGATIVE, 'crfl: growth of the model norm bound per round.'),
    ('crfl_clip_max', 100.0, POSITIVE, 'crfl: largest model norm bound.'),
    ('fltrust_root_per_class', 10, AT_LEAST_ONE,
     "fltrust: server root-set images per class, from the server split (paper: 100 in all)."),
    ('foolsgold_clients', 0, NONNEGATIVE,
     "foolsgold: population size, identities 0..n-1 (0 = the run's clients)."),
    ('foolsgold_tensors', 2, NONNEGATIVE,
     'foolsgold: trailing update tensors kept in the history (2: output layer; 0: all).'),
    ('foolsgold_confidence', 1.0, POSITIVE, "foolsgold: kappa of the logit (paper: 1)."),
    ('fldetector_clients', 0, NONNEGATIVE,
     "fldetector: population size, identities 0..n-1 (0 = the run's clients)."),
    ('fldetector_window', 10, AT_LEAST_ONE,
     'fldetector: window N of L-BFGS pairs and of scores (paper: 10).'),
    ('fldetector_gap_samples', 20, AT_LEAST_ONE,
     "fldetector: gap statistic's uniform reference sets B (authors' code: 20)."),
    ('fldetector_max_clusters', 10, AT_LEAST_ONE,
     "fldetector: gap statistic's largest k (authors' code: 10)."),
    ('deepsight_tau', 1.0 / 3.0, OPEN_UNIT,
     'deepsight: accept a cluster with fewer suspicious members than this share (paper: 1/3).'),
    ('deepsight_threshold_factor', 0.01, OPEN_UNIT,
     'deepsight: floor of the exceedings threshold / largest NEUP (paper: 0.01).'),
    ('deepsight_min_cluster_size', 5, AT_LEAST_ONE,
     "deepsight: HDBSCAN min_cluster_size (the peers' 5; >= 2)."),
    ('deepsight_min_samples', 4, AT_LEAST_ONE,
     "deepsight: HDBSCAN min_samples, sklearn's convention (FLPoison's 3 + 1)."),
)


def _with_parameters(cls: type) -> type:
  """Adds a field (annotation and `option`) per DEFENSE_PARAMETERS row, before @dataclass."""
  for name, default, rule, help_text in DEFENSE_PARAMETERS:
    cls.__annotations__[name] = type(default).__name__  # 'float' / 'int', as `field_type` reads
    setattr(cls, name, option(default, help_text, rule=rule))
  return cls


@dataclasses.dataclass(frozen=True)
@_with_parameters
class DefenseConfig:
  """Which defense aggregates the updates, and its parameters (aggregators.registry).

  Only the fields of the chosen defense are used. Every default has a concrete type (no
  None), so that command-line flags can be typed from them. Defaults:
  * `clip_norm` = 3.0: the bound M with which Sun et al. (2019) mitigate the attacks at almost
    no cost on EMNIST; also the clip of 'weak_dp' and 'clip_mean'.
  * `adaptive_quantile` = 0.5, `adaptive_learning_rate` = 0.2: TFF's defaults for adaptive
    clipping (the median of client norms); `adaptive_initial_norm` = 1.0, the first round's
    bound, of the order of M = 3 (TFF starts at 0.1; the bound moves by at most a factor
    exp(0.2) a round, so a far-off start costs many rounds).
  * `zeroing_norm` = 3.0: the same bound as the default `clip_norm`, so that 'clip' and
    'zeroing' compare two reactions (shrink vs drop) to the same bound.
  * `dp_sigma` = 0.025: std of the Gaussian noise added to each coordinate of the averaged
    update; a small ("weak DP") level, to be swept in experiments.
  * `sum_noise_stddev` = 0.0: 'sun_dp' is the aggregation of Sun et al.'s script (unweighted
    mean of updates clipped to `clip_norm`, noise on the sum); their `mul_factor` defaults to
    0 (clipping only) and so does this. 'sun_mean' is the same without a bound, their runs
    "without defense".
  * `trim_fraction` = 0.1: drop the 10% largest and 10% smallest values of each coordinate.
  * `krum_f` = 1: Byzantine clients Krum tolerates (needs clients_per_round > 2 f + 2).
  * `krum_m` = 0: number of updates Multi-Krum averages; 0 means n - f (every client but the
    f worst-scored), the usual choice; 'krum' always uses 1.
  * `bias_z_threshold` = 3.5: Iglewicz and Hoaglin's outlier cut-off for robust z-scores
    (see `BiasAnomalyFilterFactory`); `bias_index` = -1: the last tensor of the update, the
    logits bias of a Keras model.
  * geomed, bulyan, centered_clip, rlr, flame, crfl: their papers' (or the authors' code's)
    values; each factory's module docstring says where they come from.
  * `fltrust_root_per_class` = 10: Cao et al.'s root set has 100 examples; 10 a class gives
    that for 10 classes, drawn class-balanced from the server split (theirs is uniform).
  * `foolsgold_tensors` = 2, `foolsgold_confidence` = 1: the history keeps the output layer
    (kernel and bias), as FLPoison's indicative features do; kappa = 1 as in Fung et al.;
    `foolsgold_clients` = 0: a run fills in its population size (`run.setup`).
  * fldetector: window N = 10 (Zhang et al.), gap statistic with B = 20 reference sets and
    k <= 10 (the authors' code); `fldetector_clients` = 0: the run's population, as FoolsGold.
  * deepsight: tau = 1/3 and the 0.01 floor of Rieger et al.; HDBSCAN as the peers call it
    (`aggregators.deepsight` docstring).
  """
  name: str = option('none', 'Defense applied while aggregating client updates.',
                     choices=DEFENSES, flag='defense')
  # then one field per DEFENSE_PARAMETERS row, in its order: clip_norm, ..., bias_index

  def krum_selected(self, clients_per_round: int) -> int:
    """m for this config: 1 for 'krum', else `krum_m`, or n - f if `krum_m` is 0."""
    if self.name == 'krum':
      return 1
    return self.krum_m if self.krum_m else clients_per_round - self.krum_f


def validate_defense(config: DefenseConfig, clients_per_round: int) -> None:
  """Raises ValueError, with a one-line message, if `config` cannot run with this many clients.

  Every numeric field is checked against its rule whatever the defense (a bad value is a
  mistake even if unused); Krum's constraints on the number of clients only for Krum.
  """
  if config.name not in DEFENSES:
    raise ValueError(f'unknown defense {config.name!r}; choose one of: {", ".join(DEFENSES)}')
  if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int) or (
      clients_per_round < 1):
    raise ValueError(f'clients_per_round must be a positive integer, got {clients_per_round!r}')
  for field in dataclasses.fields(config):
    if field.name != 'name':
      check_field(field, getattr(config, field.name))
  if config.name in ('krum', 'multi_krum'):
    n, f = clients_per_round, config.krum_f
    if not n > 2 * f + 2:
      raise ValueError(f'krum_f={f} is too large for clients_per_round={n}: Krum needs '
                       f'clients_per_round > 2*krum_f + 2')
    if config.name == 'krum' and config.krum_m not in (0, 1):
      raise ValueError(f"krum_m={config.krum_m} is for 'multi_krum'; 'krum' selects 1 update")
    m = config.krum_selected(n)
    if not 1 <= m <= n - f:
      raise ValueError(f'krum_m={m} must be in [1, clients_per_round - krum_f] = [1, {n - f}]')
  if config.name == 'bulyan' and not clients_per_round >= 4 * config.bulyan_f + 3:
    raise ValueError(f'bulyan_f={config.bulyan_f} is too large for clients_per_round='
                     f'{clients_per_round}: Bulyan needs clients_per_round >= 4*bulyan_f + 3')
  if config.name == 'fldetector' and config.fldetector_gap_samples < 2:
    raise ValueError('fldetector_gap_samples must be at least 2 (a spread of reference sets)')
  if config.name == 'rlr' and config.rlr_threshold > clients_per_round:
    raise ValueError(f'rlr_threshold={config.rlr_threshold} exceeds clients_per_round='
                     f'{clients_per_round}: every coordinate would be flipped')
