"""Shared pytest setup: quiet TF logs, make the repo importable, and reap TFF workers."""
import os
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A shell's background job starts with SIGINT ignored, and TFF's worker_binary inherits it;
# TFF stops a replaced context's worker with SIGINT and waits for it without a timeout, so
# the run would hang. With a handler installed here, children start with the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

from tff_backdoor.execution import contexts  # noqa: E402
from tff_backdoor.execution import workers  # noqa: E402

# The programs turn oneDNN on before TensorFlow loads; tests that compare a run in this
# process with one in a subprocess need the same kernels (TF 2.14 turns them on by itself
# only on AVX-512 CPUs: on an AVX2 one, the two runs' floats differed from round 0).
contexts.fast_path_defaults()

workers.stop_workers_at_exit()  # no TFF worker outlives the test session
