"""TFF's internals that `execution.tff_private` reaches: still where TFF 0.87 had them.

Fails by name when a TFF upgrade moves a private module or attribute: the version, each
private import of `internals()`, each attribute of `PRIVATE_ATTRIBUTES`, the two read without
an import, and that the package uses no private attribute the table does not list. Only
`execution.tff_private` imports TFF's private paths.
"""
import importlib
import inspect
import pathlib
import re

import numpy as np
import tensorflow_federated as tff

from tff_backdoor.execution import tff_private

PACKAGE = pathlib.Path(tff_private.__file__).resolve().parent.parent
# `internals().member.attribute`, or `t.member.attribute` after `t = internals()`.
_USE = re.compile(r'(?:internals\(\)|\bt)\.(\w+)\.(\w+)')


def test_the_installed_tff_is_the_release_the_private_paths_are_read_from():
  assert tff.__version__ == tff_private.TFF_VERSION, (
      f'TFF {tff.__version__} installed; execution/tff_private.py is pinned to '
      f'{tff_private.TFF_VERSION}: check each private path and attribute against it')


def test_every_private_module_imports_and_has_the_attributes_used():
  internals = tff_private.internals()
  for member, attributes in tff_private.PRIVATE_ATTRIBUTES.items():
    module = getattr(internals, member)
    missing = [a for a in attributes if not hasattr(module, a)]
    assert not missing, f'{module.__name__} no longer has {missing}'


def test_the_package_uses_only_the_listed_private_attributes():
  used = set()
  for path in PACKAGE.rglob('*.py'):
    text = path.read_text()
    if 'internals' in text:
      used |= {m for m in _USE.findall(text) if m[0] != 'tff'}
  listed = {(m, a) for m, attributes in tff_private.PRIVATE_ATTRIBUTES.items()
            for a in attributes}
  assert used == listed


def test_only_tff_private_imports_tff_internals():
  private = re.compile(r'^\s*(?:from|import)\s+tensorflow_federated\.python', re.M)
  importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob('*.py')
                     if private.search(p.read_text()))
  assert importers == ['execution/tff_private.py']


def test_test_client_data_keeps_its_arrays_where_tensor_slices_reads_them():
  data = tff.simulation.datasets.TestClientData({'a': {'x': np.zeros([2, 3], np.float32)}})
  slices = tff_private.tensor_slices(data)
  assert slices is not None and list(slices) == ['a'], tff_private.TENSOR_SLICES_ATTRIBUTE
  np.testing.assert_array_equal(slices['a']['x'], np.zeros([2, 3]))


def test_the_service_manager_disarmed_at_exit_is_still_there():
  source = inspect.getsource(importlib.import_module(tff_private.SERVICE_MANAGER_MODULE))
  assert re.search(r'class ServiceManager\b[\s\S]*def __del__', source)


def test_the_mergeable_compiler_is_public():
  assert callable(tff.backends.native.compile_to_mergeable_comp_form)
