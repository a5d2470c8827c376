"""The core library stands alone: no `tff_backdoor` module imports the `studies` package."""
import ast
import pathlib
import re

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


def _layout_section() -> str:
  text = (ROOT / 'README.md').read_text()
  start = text.index('## Layout')
  return text[start:text.index('\n## ', start + 1)]


def test_readme_layout_names_every_module_and_only_real_paths():
  """README's Layout section names every module and subpackage of `tff_backdoor` and every
  module of `studies`, and every path it names exists."""
  section = _layout_section()
  entries = [p for p in sorted((ROOT / 'tff_backdoor').iterdir())
             if (p.suffix == '.py' and p.name != '__init__.py') or (p / '__init__.py').exists()]
  entries += [p for p in sorted((ROOT / 'studies').glob('*.py')) if p.name != '__init__.py']
  missing = [str(p.relative_to(ROOT)) for p in entries
             if (p.name + ('/' if p.is_dir() else '')) not in section
             and not (p.stem.startswith('sweep_') and 'sweep_{' in section)]
  assert not missing, f'README Layout does not name {missing}'
  named = set(re.findall(r'`((?:tff_backdoor|studies)/[\w/]+(?:\.py)?/?)`', section))
  assert len(named) > 10, named
  absent = sorted(p for p in named if not (ROOT / p).exists())
  assert not absent, f'README Layout names missing paths {absent}'
