"""The package's import graph, read with `ast`: no circle, and no stage imports a later one.

Every `import` and `from ... import` of a `tff_backdoor` module counts, also those inside
functions and under `if TYPE_CHECKING:`. `from package import name` counts as an import of the
submodule `package.name` when that is a module, else of the package (its `__init__`).

The stages, in import order: a module may import modules of its own stage or of an earlier
one; importing a later stage is an upward import. Within a stage, the import graph must
still have no circle.
"""
import ast
import pathlib
from typing import Dict, List, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = 'tff_backdoor'

# (stage, the modules and packages in it); earlier stages first.
STAGES = (
    # What everything stands on: config field metadata, record formats, where TFF runs
    # (execution contexts, worker processes, the one module of private TFF imports).
    ('foundations', ('tff_backdoor', 'tff_backdoor.options', 'tff_backdoor.metrics_io',
                     'tff_backdoor.interrupts',
                     'tff_backdoor.lazy_exports', 'tff_backdoor.execution')),
    # Library pieces that need nothing of federated learning: data, models, FLAIN, and the
    # pure NumPy analysis of captured updates (capture format, anomaly scores, diagnostics).
    # Also the two leaves of `learning` that the attacks and defenses stand on: the honest
    # local training (clients, attackers and the server train with it), the typed side
    # channel's types (what the distributor, client work and aggregators exchange) and the
    # DDifs the client work measures for the channel.
    ('pieces', ('tff_backdoor.data', 'tff_backdoor.models', 'tff_backdoor.flain',
                'tff_backdoor.flain_config', 'tff_backdoor.analysis',
                'tff_backdoor.learning.local_training', 'tff_backdoor.learning.side_channel',
                'tff_backdoor.learning.ddifs')),
    # What the clients and the server do: backdoor attacks, and defenses as aggregators.
    ('attacks and defenses', ('tff_backdoor.attacks', 'tff_backdoor.aggregators')),
    # The TFF learning process composed from them (FedAvg, update capture, client datasets).
    ('learning', ('tff_backdoor.learning',)),
    # The run configuration, composing the pieces' own parameters.
    ('config', ('tff_backdoor.config',)),
    # One run: setup, loop and hooks, checkpoints, warm starts, the run directory.
    ('run', ('tff_backdoor.run',)),
    # The programs' front end: flags, one-line errors.
    ('front end', ('tff_backdoor.cli',)),
)


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


MODULES = {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob('*.py'))}


def _imports(path: pathlib.Path) -> Set[str]:
  """The tff_backdoor modules `path` imports, anywhere in the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      assert node.level == 0, f'{path}: relative import'
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        found.add(sub if sub in MODULES else node.module)
  return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + '.')}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _stage(module: str) -> int:
  """Index in STAGES of the longest prefix naming `module`'s package or module."""
  best, rank = -1, None
  for index, (_, members) in enumerate(STAGES):
    for member in members:
      if (module == member or module.startswith(member + '.')) and len(member) > best:
        best, rank = len(member), index
  assert rank is not None, f'{module} is in no stage: add it to STAGES'
  return rank


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
  """Every strongly connected component with a circle (Tarjan), as sorted module lists."""
  index: Dict[str, int] = {}
  low: Dict[str, int] = {}
  stack: List[str] = []
  on_stack: Set[str] = set()
  found: List[List[str]] = []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1 or node in graph.get(node, ()):
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def test_every_module_is_in_a_stage_and_imports_exist():
  for name, imported in GRAPH.items():
    _stage(name)
    missing = sorted(i for i in imported if i not in MODULES)
    assert not missing, f'{name} imports {missing}, which do not exist'


def test_no_import_circle():
  assert _cycles(GRAPH) == []


def test_no_upward_import():
  upward = [f'{name} ({STAGES[_stage(name)][0]}) imports {other} ({STAGES[_stage(other)][0]})'
            for name, imported in sorted(GRAPH.items()) for other in sorted(imported)
            if _stage(other) > _stage(name)]
  assert upward == []


@pytest.mark.parametrize('graph,expected', [
    ({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}, [['a', 'b', 'c']]),
    ({'a': {'a'}, 'b': set()}, [['a']]),
    ({'a': {'b'}, 'b': set()}, []),
])
def test_the_circle_finder_finds_circles(graph, expected):
  assert _cycles(graph) == expected


def test_the_graph_reads_imports_inside_functions_and_type_checking_blocks():
  assert 'tff_backdoor.run.setup' in GRAPH['tff_backdoor.run.evaluation']  # TYPE_CHECKING
  assert 'tff_backdoor.run.warm_start' in GRAPH['tff_backdoor.cli']  # inside a function
  assert _stage('tff_backdoor.run.setup') > _stage('tff_backdoor.config')


def test_the_attacks_import_nothing_from_execution():
  """Issue 40: client work is public TF and TFF; where and how TFF runs is not its concern."""
  reached = sorted(f'{name} imports {other}' for name, imported in GRAPH.items()
                   if name.startswith('tff_backdoor.attacks') for other in imported
                   if other.startswith('tff_backdoor.execution'))
  assert reached == []
