"""TensorFlow thread settings for runs that share this machine's cores (`--parallel=N` sweeps).

TensorFlow's C++ runtime reads `TF_NUM_INTRAOP_THREADS` (threads inside one op, e.g. a
convolution) and `TF_NUM_INTEROP_THREADS` (ops run at once) from the environment when it
builds its thread pools (tensorflow/core/common_runtime/process_util.cc); unset or 0 means one
thread per core. Both the Python process and TFF 0.87's C++ `worker_binary` read them: the
worker takes only `--port`, `--max_concurrent_computation_calls` and
`--grpc_max_message_length_megabytes`, runs every client of a round on its own thread and
every session of every client on the one global inter-op pool (TFF's session options leave
both thread counts at 0), so the environment is the only lever, and the worker inherits it
(`remote._worker_env`). How an op splits its work between intra-op threads can change the
last bits of a float sum, so each run's config.json records the counts it ran with.

With N runs on C cores, TF's default gives each run's worker C intra-op and C inter-op
threads: N x C busy threads spinning on C cores. `thread_env` gives each run its share
(measured figures and the reasoning: BUILD_NOTES.md, "Threads").
"""
from __future__ import annotations

import os
from typing import Dict, Optional

INTRA_OP = 'TF_NUM_INTRAOP_THREADS'
INTER_OP = 'TF_NUM_INTEROP_THREADS'
PARALLEL = 'TFF_BACKDOOR_PARALLEL'  # how many runs the sweep runs at once (recorded only)


def thread_counts(parallel: int, cpu_count: Optional[int] = None) -> Dict[str, int]:
  """(intra-op, inter-op) threads for each of `parallel` runs sharing `cpu_count` cores.

  One run alone keeps TF's defaults (0: one thread per core). N runs each get
  max(1, cores // N) intra-op threads (the cores are already shared out between runs) and
  keep max(1, cores // N) + 1 inter-op threads, so the worker still runs a second client's
  ops while one waits (with a single inter-op thread TFF's clients run one op at a time).
  """
  cores = cpu_count or os.cpu_count() or 1
  if parallel <= 1:
    return {'intra_op_threads': 0, 'inter_op_threads': 0}
  share = max(1, cores // parallel)
  return {'intra_op_threads': share, 'inter_op_threads': share + 1}


def thread_env(parallel: int, cpu_count: Optional[int] = None,
               environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
  """The environment variables for one of `parallel` runs; values already set in `environ`
  (the user's own choice) are kept, so `TF_NUM_INTRAOP_THREADS=4 sweep ...` still wins."""
  environ = os.environ if environ is None else environ
  counts = thread_counts(parallel, cpu_count)
  env = {PARALLEL: str(max(1, parallel))}
  for name, key in ((INTRA_OP, 'intra_op_threads'), (INTER_OP, 'inter_op_threads')):
    if environ.get(name):
      env[name] = environ[name]
    elif counts[key]:
      env[name] = str(counts[key])
  return env


def effective_threads() -> Dict[str, int]:
  """The thread counts this process's TF runs with, as the environment sets them (0 = TF's
  default, one per core), and how many runs shared the machine (`--parallel`, 1 alone)."""
  def number(name: str) -> int:
    try:
      return max(0, int(os.environ.get(name, '0') or 0))
    except ValueError:
      return 0
  return {'intra_op_threads': number(INTRA_OP), 'inter_op_threads': number(INTER_OP),
          'parallel_runs': number(PARALLEL) or 1}
