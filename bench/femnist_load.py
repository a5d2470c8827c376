"""How long loading the LEAF FEMNIST folder takes: parsing the JSON (cold) and from the cache.

  python -m bench.femnist_load [--data_dir=../shared/data/femnist]

Cold = a new, empty cache directory (every file parsed and validated); cached = the same call
again. Prints the writers and images read and the best of --repeats for each.
"""
import tempfile
import time

from absl import app
from absl import flags

from tff_backdoor import cli
from tff_backdoor.data import leaf

flags.DEFINE_string('data_dir', '../shared/data/femnist', 'A LEAF folder with train/, test/.')
flags.DEFINE_integer('repeats', 2, 'Timings per case; the best is reported.')
FLAGS = flags.FLAGS


def _timed(data_dir: str, cache_dir: str):
  start = time.perf_counter()
  train, test = leaf.read_leaf_dir(data_dir, cache_dir=cache_dir)
  return time.perf_counter() - start, train, test


def main(argv):
  del argv
  cold, cached = [], []
  for _ in range(FLAGS.repeats):
    with tempfile.TemporaryDirectory() as cache:
      seconds, train, test = cli.run_or_fail(lambda c=cache: _timed(FLAGS.data_dir, c))
      cold.append(seconds)
      cached.append(_timed(FLAGS.data_dir, cache)[0])
  images = sum(len(y) for split in (train, test) for _, y in split.values())
  print(f'{FLAGS.data_dir}: {len(train)} train writers, {len(test)} test writers, '
        f'{images} images')
  print(f'cold (parse + validate + write cache): best {min(cold):.2f} s of {len(cold)}')
  print(f'cached: best {min(cached):.2f} s of {len(cached)}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
