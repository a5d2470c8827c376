"""Package attributes that import their module on first use (PEP 562), so a package's
TensorFlow-free names load without TensorFlow."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_exports(package: str, table: Dict[str, str], namespace: Dict[str, Any]
                 ) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
  """`__getattr__` and `__dir__` for `package`: name -> its submodule in `table`, imported
  on first use and then kept in `namespace` (the package's globals())."""

  def getattr_(name: str) -> Any:
    if name in table:
      value = getattr(importlib.import_module(f'{package}.{table[name]}'), name)
      namespace[name] = value
      return value
    raise AttributeError(f'module {package!r} has no attribute {name!r}')

  def dir_() -> List[str]:
    return sorted(set(namespace) | set(table))

  return getattr_, dir_
