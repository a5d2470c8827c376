"""Every use of TFF's private modules and attributes, in one place, pinned to TFF 0.87.

The remote execution context, `data.client_arrays` and the workers' shutdown need pieces
TFF 0.87 does not export. They are all reached through this module, which imports them on
first use (importing it loads nothing). Upgrading TFF means checking this file against the new
release: the paths below are `tensorflow_federated/python/...` of 0.87, and
`tests/test_tff_private.py` imports each and looks up every attribute in `PRIVATE_ATTRIBUTES`,
so a moved one fails there by name.
"""
from __future__ import annotations

import functools
import gc
import sys
import types
from typing import Any, Optional

TFF_VERSION = '0.87.0'  # the release these private paths and attributes are read from

# internals() member -> the attributes of it this package uses (tests/test_tff_private.py
# checks that each exists, and that the package uses no other).
PRIVATE_ATTRIBUTES = {
    'async_utils': ('AsyncThreadRunner',),
    'native_compiler': ('desugar_and_transform_to_native',),
    'tensorflow_computation': ('transform_args', 'transform_result'),
    'mergeable_lib': ('MergeableCompExecutionContextValue', '_repackage_partitioned_values'),
    'cardinalities_utils': ('infer_cardinalities',),
    'executors_errors': ('RetryableError',),
    'type_analysis': ('contains_only',),
    'type_conversions': ('type_to_py_container',),
}
# Read without an import: TestClientData's arrays (`tensor_slices`) and the module whose
# ServiceManager `disarm_service_managers` disarms.
TENSOR_SLICES_ATTRIBUTE = '_tensor_slices_dict'
SERVICE_MANAGER_MODULE = 'tensorflow_federated.python.core.impl.executor_stacks.executor_factory'


@functools.lru_cache(maxsize=None)
def internals() -> types.SimpleNamespace:
  """TFF and its private modules used here, imported on first use."""
  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff
  from tensorflow_federated.python.common_libs import async_utils
  from tensorflow_federated.python.core.backends.native import compiler as native_compiler
  from tensorflow_federated.python.core.environments.tensorflow_frontend import (
      tensorflow_computation)
  from tensorflow_federated.python.core.impl.execution_contexts import (
      mergeable_comp_execution_context as mergeable_lib)
  from tensorflow_federated.python.core.impl.executors import cardinalities_utils
  from tensorflow_federated.python.core.impl.executors import executors_errors
  from tensorflow_federated.python.core.impl.types import type_analysis
  from tensorflow_federated.python.core.impl.types import type_conversions
  # pylint: enable=g-import-not-at-top
  return types.SimpleNamespace(
      tff=tff, async_utils=async_utils, native_compiler=native_compiler,
      tensorflow_computation=tensorflow_computation, mergeable_lib=mergeable_lib,
      cardinalities_utils=cardinalities_utils, executors_errors=executors_errors,
      type_analysis=type_analysis, type_conversions=type_conversions)


def tensor_slices(client_data: Any) -> Optional[dict]:
  """The arrays behind a `tff.simulation.datasets.TestClientData` (client id -> slices), or
  None if this TFF keeps them elsewhere."""
  return getattr(client_data, TENSOR_SLICES_ATTRIBUTE, None)


def disarm_service_managers() -> None:
  """Stops TFF's ServiceManager.__del__ from running at shutdown (we stop the worker instead).

  Run at interpreter exit it fails with "Exception ignored ... 'NoneType' object has no
  attribute 'Popen'" because module globals are already torn down.
  """
  if 'tensorflow_federated' not in sys.modules:
    return
  for obj in gc.get_objects():
    cls = type(obj)
    if cls.__name__ == 'ServiceManager' and cls.__module__ == SERVICE_MANAGER_MODULE:
      cls.__del__ = lambda self: None
