"""How malicious clients build their update: the attack's parameters, TensorFlow-free.

One type for the library and the run: `client_work.build_attacker_client_work` takes an
`AttackConfig`, and the run config (`tff_backdoor.config`) composes it as its `attack`
section, whose fields carry their flags (`--attack`, `--boost`, ...; `tff_backdoor.options`),
so flags are checked before TensorFlow loads.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from tff_backdoor.options import AT_LEAST_ONE, BELOW_ONE, NONNEGATIVE, POSITIVE, UNIT_INTERVAL
from tff_backdoor.options import Rule, check_fields, option

# client_work.ATTACKERS has a builder per name (a test checks they agree).
ATTACK_MODES = ('data_poison', 'boost', 'norm_bounded', 'neurotoxin', 'constrain_scale',
                'anticipate', 'a3fl')
# Modes that train on the benign and malicious examples shuffled together.
MIXTURE_MODES = ('data_poison', 'neurotoxin', 'constrain_scale', 'anticipate', 'a3fl')
# Modes whose attacker reads the last global update (learning.side_channel's global_update).
GLOBAL_UPDATE_MODES = ('neurotoxin',)
# Modes whose trigger the run optimizes before the round (pixel task only; run.adaptive_trigger).
TRIGGER_MODES = ('a3fl',)
# Modes that scale their update by `boost`.
BOOSTED_MODES = ('boost', 'norm_bounded', 'constrain_scale')


def _authors(default: Any, text: str, their_name: str, rule: Rule) -> Any:
  """An option whose default is the attack authors' own (named in its help)."""
  return option(default, f"{text} (the authors' {their_name}).", rule=rule)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """How malicious clients build their update (`client_work`'s module docstring has each mode).

  `boost` None means "the number of clients per round" (Sun et al.'s explicit boosting, so
  the boosted update survives the mean), and so does `anticipate_clients` None; the client
  work needs numbers: the run resolves them with `with_clients_per_round`.
  `malicious_epochs` and `malicious_batch_size` shape the attacker's malicious data
  (`run.client_inputs`), not the client work.
  """
  mode: str = option('boost', 'How attackers build their update.', choices=ATTACK_MODES,
                     flag='attack')
  boost: Optional[float] = option(None, 'Boost factor (0 = clients_per_round); '
                                  "constrain_scale's gamma.", unset=0.0,
                                  rule=NONNEGATIVE)
  norm_bound: float = option(0.33, 'norm_bounded: L2 radius before boosting.', rule=POSITIVE)
  projection_rounds: int = option(5, 'norm_bounded: R.', rule=AT_LEAST_ONE)
  mask_fraction: float = option(
      0.05, 'neurotoxin: share of coordinates (largest in the last global update) the attacker '
      "leaves alone (the authors' EMNIST runs: 1 - gradmask_ratio 0.95).",
      flag='neurotoxin_mask_fraction', rule=BELOW_ONE)
  alpha: float = option(
      0.5, 'constrain_scale: weight of the task loss; 1 - alpha weighs the L2 distance to the '
      "global model (FLPoison's default).", flag='constrain_alpha', rule=UNIT_INTERVAL)
  anticipate_rounds: int = _authors(
      2, 'anticipate: k, the rounds it simulates (this one and k - 1 after it)',
      '--anticipate-steps', AT_LEAST_ONE)
  anticipate_epochs: int = _authors(
      5, "anticipate: passes of its unrolled optimisation over the client's round data",
      '--fl-attacker-local-epochs', AT_LEAST_ONE)
  anticipate_clients: Optional[int] = option(
      None, 'anticipate: n, the clients averaged in the simulated rounds (0 = clients per '
      'round).', unset=0, rule=NONNEGATIVE)
  a3fl_trigger_epochs: int = _authors(200, 'a3fl: outer epochs of the trigger search',
                                      'trigger_outter_epochs', AT_LEAST_ONE)
  a3fl_trigger_lr: float = _authors(0.01, 'a3fl: signed-gradient step of the trigger',
                                    'trigger_lr', POSITIVE)
  a3fl_adv_epochs: int = _authors(5, "a3fl: epochs of the adversarial model's unlearning",
                                  'dm_adv_epochs', AT_LEAST_ONE)
  a3fl_adv_every: int = _authors(1, 'a3fl: outer epochs between adversarial models',
                                 'dm_adv_K', AT_LEAST_ONE)
  a3fl_lambda: float = _authors(0.01, "a3fl: weight of the adversarial model's loss",
                                'noise_loss_lambda', NONNEGATIVE)
  # Sun et al.'s code passes the malicious set as ONE batch, once per pass (one SGD step):
  malicious_epochs: Optional[int] = option(
      None, "Passes over the malicious data (0 = 1 for boost/norm_bounded as in Sun et al.'s "
      'code, local_epochs for the modes that train on the mixture: data_poison, neurotoxin, '
      'constrain_scale).', unset=0, rule=NONNEGATIVE)
  malicious_batch_size: Optional[int] = option(
      None, "Malicious batch size (0 = the whole malicious set in one batch, as in Sun et "
      "al.'s code).", unset=0, rule=NONNEGATIVE)

  def with_clients_per_round(self, clients_per_round: int) -> 'AttackConfig':
    """This config with an unset (None or 0) boost and anticipate_clients replaced by
    `clients_per_round`."""
    return dataclasses.replace(self, boost=float(self.boost or clients_per_round),
                               anticipate_clients=self.anticipate_clients or clients_per_round)

  def validate(self, prefix: str = '') -> 'AttackConfig':
    """Raises ValueError naming the field (`prefix` + its flag) and its rule; returns self."""
    check_fields(self, prefix)
    return self

  @property
  def reads_global_update(self) -> bool:
    """Whether the attacker needs the last global update sent with the model (Neurotoxin)."""
    return self.mode in GLOBAL_UPDATE_MODES

  def validate_for_client_work(self) -> 'AttackConfig':
    """`validate`, and a boost a boosting mode can multiply by."""
    self.validate()
    if self.mode in BOOSTED_MODES and not (self.boost and math.isfinite(self.boost)):
      raise ValueError(f'attack mode {self.mode!r} needs a positive boost; an unset boost means '
                       'clients per round: use AttackConfig.with_clients_per_round(n)')
    if self.mode == 'anticipate' and not self.anticipate_clients:
      raise ValueError("attack mode 'anticipate' needs anticipate_clients; unset means clients "
                       'per round: use AttackConfig.with_clients_per_round(n)')
    return self
