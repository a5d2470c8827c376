"""Backdoor attacks: tasks (what to inject), attacker client work (how), schedules (when)."""
from tff_backdoor.attacks.client_work import (ATTACK_MODES, AttackConfig,
                                              build_attacker_client_work, build_client_update,
                                              make_client_data,
                                              client_data_type)
