"""The core library stands alone: no `tff_backdoor` module imports the `studies` package."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imported_modules(path: pathlib.Path):
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module


def test_core_never_imports_studies():
  offenders = [f'{path.relative_to(ROOT)} imports {name}'
               for path in sorted((ROOT / 'tff_backdoor').rglob('*.py'))
               for name in _imported_modules(path)
               if name == 'studies' or name.startswith('studies.')]
  assert not offenders, offenders


def test_studies_package_exists():
  assert (ROOT / 'studies' / '__init__.py').exists()
