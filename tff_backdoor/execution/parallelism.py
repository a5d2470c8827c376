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

With N runs on C cores, TF's defaults give each run's worker C intra-op and C inter-op
threads: N x C threads on C cores. Measured (BUILD_NOTES.md, "Execution settings"), that
costs no more CPU per round than one thread each (the 5-writer Sun round: 2.5 CPU seconds with 2+2, 1+2 or
1+1 threads), while a run held to one intra-op thread gets a smaller share of the cores
whenever anything else runs (3.6 s best round with the defaults against 10.7 s with 1+2 and
14.4 s with 1+1 under load) and cannot use an idle core while the other run imports, traces
or evaluates. So the sweep keeps TF's defaults at every --parallel (`thread_counts`), records
how many runs shared the machine, and hands on the user's own settings.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

INTRA_OP = 'TF_NUM_INTRAOP_THREADS'
INTER_OP = 'TF_NUM_INTEROP_THREADS'
PARALLEL = 'TFF_BACKDOOR_PARALLEL'  # how many runs the sweep runs at once (recorded only)
RUN_MEMORY_BYTES = 2 * 2**30  # one run's peak: Python + its TFF worker (about 1.9 GB seen)


def default_parallel(cpu_count: Optional[int] = None,
                     available_bytes: Optional[int] = None) -> int:
  """Runs a sweep starts at once by default: one per core, as many as the free memory holds.

  Measured (bench/RESULTS.md, issue 28): 2 runs on 2 cores give about 1.35x the runs per
  hour of one, as one run's imports, tracing and evaluation leave a core idle.
  """
  cpu_count = cpu_count or os.cpu_count() or 1
  if available_bytes is None:
    available_bytes = _available_memory()
  by_memory = available_bytes // RUN_MEMORY_BYTES if available_bytes else cpu_count
  return max(1, min(cpu_count, int(by_memory)))


def _available_memory() -> Optional[int]:
  """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
  try:
    with open('/proc/meminfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def thread_counts(parallel: int, cpu_count: Optional[int] = None) -> Dict[str, int]:
  """Intra-op and inter-op threads for each of `parallel` runs sharing `cpu_count` cores.

  TF's defaults (0: one thread per core) at every `parallel`: fewer threads saved no CPU and
  lost wall time (module docstring). The one place to change if a machine measures otherwise.
  """
  del parallel, cpu_count
  return {'intra_op_threads': 0, 'inter_op_threads': 0}


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
