"""Backdoor attacks: tasks (what to inject), attacker client work (how), schedules (when).

`AttackConfig` and the mode names are TensorFlow-free and load eagerly (the run config
composes `AttackConfig` as its `attack` section); the client work loads on first use.
"""
from __future__ import annotations

from tff_backdoor.attacks.attack_config import ATTACK_MODES, MIXTURE_MODES, AttackConfig
from tff_backdoor.lazy_exports import lazy_exports

# The client work's builders, which import TensorFlow.
_LAZY = dict.fromkeys(('build_attacker_client_work', 'build_client_update', 'client_data_type',
                       'make_client_data'), 'client_work')

__all__ = ['ATTACK_MODES', 'MIXTURE_MODES', 'AttackConfig'] + list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
