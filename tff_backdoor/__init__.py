"""tff_backdoor: backdoor attacks and defenses in federated learning, on TensorFlow Federated.

Subpackages by stage of a run (README "Layout"): `data` (ClientData sources and
partitioners), `attacks` (backdoor tasks, attacker client work, schedules), `aggregators`
(defenses as tff.aggregators factories), `learning` (the composed TFF learning process), `run`
(setup, the round loop and its hooks, the run directory), `analysis` (captured updates,
anomaly scores, diagnostics) and `execution` (TFF execution contexts and workers); `models`,
`flain`, the run configuration `config` and the programs' glue `cli` sit beside them.
Importing any of them changes no global state: programs install execution contexts and
worker cleanup explicitly (`execution`).
"""
__version__ = '0.1.0'
