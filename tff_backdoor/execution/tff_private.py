"""Every use of TFF's private modules and attributes, in one place, pinned to TFF 0.87.

The remote execution context, the client work's non-finite guard and `data.client_arrays`
need pieces TFF 0.87 does not export. They are all reached through this module, which imports
them on first use (importing it loads nothing). Upgrading TFF means checking this file
against the new release: the paths below are `tensorflow_federated/python/...` of 0.87.
"""
from __future__ import annotations

import functools
import gc
import sys
import types
from typing import Any, Optional

TFF_VERSION = '0.87.0'  # the release these private paths and attributes are read from


@functools.lru_cache(maxsize=None)
def internals() -> types.SimpleNamespace:
  """TFF and its private modules used here, imported on first use."""
  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff
  from tensorflow_federated.python.common_libs import async_utils
  from tensorflow_federated.python.core.backends.native import compiler as native_compiler
  from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
  from tensorflow_federated.python.core.environments.tensorflow_frontend import (
      tensorflow_computation)
  from tensorflow_federated.python.core.impl.execution_contexts import (
      mergeable_comp_execution_context as mergeable_lib)
  from tensorflow_federated.python.core.impl.executors import cardinalities_utils
  from tensorflow_federated.python.core.impl.executors import executors_errors
  from tensorflow_federated.python.core.impl.types import type_analysis
  from tensorflow_federated.python.core.impl.types import type_conversions
  from tensorflow_federated.python.learning import tensor_utils
  # pylint: enable=g-import-not-at-top
  return types.SimpleNamespace(
      tff=tff, async_utils=async_utils, native_compiler=native_compiler,
      mergeable_comp_compiler=mergeable_comp_compiler,
      tensorflow_computation=tensorflow_computation, mergeable_lib=mergeable_lib,
      cardinalities_utils=cardinalities_utils, executors_errors=executors_errors,
      type_analysis=type_analysis, type_conversions=type_conversions, tensor_utils=tensor_utils)


def zero_all_if_any_non_finite(structure: Any) -> Any:
  """TFF's own guard of its client work: (structure zeroed if any value is NaN/Inf, flag)."""
  return internals().tensor_utils.zero_all_if_any_non_finite(structure)


def tensor_slices(client_data: Any) -> Optional[dict]:
  """The arrays behind a `tff.simulation.datasets.TestClientData` (client id -> slices), or
  None if this TFF keeps them elsewhere."""
  return getattr(client_data, '_tensor_slices_dict', None)


def disarm_service_managers() -> None:
  """Stops TFF's ServiceManager.__del__ from running at shutdown (we stop the worker instead).

  Run at interpreter exit it fails with "Exception ignored ... 'NoneType' object has no
  attribute 'Popen'" because module globals are already torn down.
  """
  if 'tensorflow_federated' not in sys.modules:
    return
  for obj in gc.get_objects():
    cls = type(obj)
    if cls.__name__ == 'ServiceManager' and cls.__module__.endswith('executor_factory'):
      cls.__del__ = lambda self: None
