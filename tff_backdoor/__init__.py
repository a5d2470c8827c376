"""tff_backdoor: backdoor attacks and defenses in federated learning, on TensorFlow Federated.

Modules: `data` (ClientData sources and partitioners), `models`, `attacks` (backdoor tasks,
attacker client work, schedules), `aggregators` (defenses as tff.aggregators factories),
`process` (the composed TFF learning process), `flain`, `anomaly`.
"""
from tff_backdoor import runtime as _runtime  # noqa: F401  (registers worker cleanup at exit)

__version__ = '0.1.0'
