"""experiments.reprint_check: which commands of a report it finds and what it compares."""
from experiments import reprint_check

REPORT = '''# r
```sh
.venv/bin/python -m experiments.reproduction_tables a \\
  --families=x --output_dir=o
```
## 1. first
`.venv/bin/python -m experiments.reproduction_tables a --families=x --output_dir=o` printed:

| t | 1 |
| t | 2 |
## 2. second
```sh
python -m experiments.reproduction_tables b --families=y
```
| u | 1 |
'''


def test_commands_are_joined_and_checked_where_they_stand_last():
  found = reprint_check.printed_commands(REPORT)
  assert [args for args, _ in found] == [['a', '--families=x', '--output_dir=o'],
                                         ['b', '--families=y']]
  assert found[0][1] == ['', '| t | 1 |', '| t | 2 |']  # up to the next heading
  assert found[1][1] == ['```', '| u | 1 |']


def test_table_lines_must_stand_in_order():
  report = ['x', '| a |', 'y', '| b |']
  assert reprint_check.in_order(['| a |', '| b |'], report) is None
  assert reprint_check.in_order(['| b |', '| a |'], report) == '| a |'
  assert reprint_check.in_order(['| c |'], report) == '| c |'


def test_a_command_reading_a_missing_directory_fails_without_running(tmp_path):
  ok, what = reprint_check.check([str(tmp_path / 'gone'), '--families=x'], [])
  assert not ok and 'not in the repository' in what


def test_every_printed_line_counts_but_the_paths_of_written_files():
  stdout = ('wall clock: 3 runs, 10 s per run\n\n**Plateau?** change +0.001\n\n| a | 1 |\n'
            '/tmp/x/family.csv\n/tmp/x/family.png\n')
  assert reprint_check.printed_lines(stdout, '/tmp/x') == [
      'wall clock: 3 runs, 10 s per run', '**Plateau?** change +0.001', '| a | 1 |']
  report = ['**Plateau?** change +0.001', '| a | 1 |']  # the wall-clock line left out
  assert reprint_check.in_order(reprint_check.printed_lines(stdout, '/tmp/x'), report) == \
      'wall clock: 3 runs, 10 s per run'
