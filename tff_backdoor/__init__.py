"""tff_backdoor: backdoor attacks and defenses in federated learning, on TensorFlow Federated.

Modules: `data` (ClientData sources and partitioners), `models`, `attacks` (backdoor tasks,
attacker client work, schedules), `aggregators` (defenses as tff.aggregators factories),
`process` (the composed TFF learning process), `flain`, `anomaly`. Importing any of them
changes no global state: programs install execution contexts and cleanup (`runtime`).
"""
__version__ = '0.1.0'
