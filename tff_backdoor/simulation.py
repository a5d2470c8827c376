"""The names older code imports from `simulation`, now each in a module of its own.

config (ExperimentConfig), experiment_setup (prepare, builders), client_inputs, loop,
evaluation, capture, flain_run, progress, experiment (run_experiment). New code imports those.
"""
from tff_backdoor import process as process_lib  # noqa: F401
from tff_backdoor.aggregators import registry as defense_registry  # noqa: F401
from tff_backdoor.capture import capture_round, save_capture  # noqa: F401
from tff_backdoor.capture import spool_dir as capture_spool_dir  # noqa: F401
from tff_backdoor.client_inputs import round_client_data  # noqa: F401
from tff_backdoor.config import TASKS, ExperimentConfig, parse_rounds  # noqa: F401
from tff_backdoor.evaluation import Evaluator, between_rounds_eval_sets  # noqa: F401
from tff_backdoor.experiment import run_experiment  # noqa: F401
from tff_backdoor.experiment_setup import ExperimentSetup, build_schedule  # noqa: F401
from tff_backdoor.experiment_setup import build_task, load_data, load_run_config  # noqa: F401
from tff_backdoor.experiment_setup import prepare  # noqa: F401
from tff_backdoor.experiment_setup import streams as _streams  # noqa: F401
from tff_backdoor.flain_run import FLAIN_FIELDS, reapply_flain, run_flain  # noqa: F401
from tff_backdoor.progress import Progress, describe_setup  # noqa: F401
