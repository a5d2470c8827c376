"""How long loading a LEAF FEMNIST folder takes, and how much memory: cold parse and cached.

  python -m bench.femnist_load [--data_dir=../shared/data/femnist] [--repeats=2]

Cold = a new, empty cache directory (every file parsed and validated, the cache folder
written); cached = the same call again (the memory-mapped cache). Prints the writers and
images read, the best of --repeats for each, and the peak resident memory of this process and
of the largest parser process (`resource.getrusage`; the parsers exist only when cold).
`/usr/bin/time -v python -m experiments.emnist_backdoor ...` measures a whole run the same way.
"""
import resource
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
  train, test = leaf.read_leaf_packed(data_dir, cache_dir=cache_dir)
  return time.perf_counter() - start, train, test


def _peak_gb(who: int) -> float:
  return resource.getrusage(who).ru_maxrss / 2**20  # Linux reports kilobytes


def main(argv):
  del argv
  cold, cached = [], []
  for _ in range(FLAGS.repeats):
    with tempfile.TemporaryDirectory() as cache:
      seconds, train, test = cli.run_or_fail(lambda c=cache: _timed(FLAGS.data_dir, c))
      cold.append(seconds)
      cached.append(_timed(FLAGS.data_dir, cache)[0])
  images = sum(int(split.sizes.sum()) for split in (train, test))
  stored = sum(split.pixels.nbytes + split.labels.nbytes for split in (train, test))
  print(f'{FLAGS.data_dir}: {len(train.writers)} train writers, {len(test.writers)} test '
        f'writers, {images} images, {stored / 2**30:.2f} GB as stored '
        f'({train.pixels.dtype} pixels)')
  print(f'cold (parse + validate + write cache): best {min(cold):.2f} s of {len(cold)}')
  print(f'cached: best {min(cached):.2f} s of {len(cached)}')
  print(f'peak resident memory: {_peak_gb(resource.RUSAGE_SELF):.2f} GB this process, '
        f'{_peak_gb(resource.RUSAGE_CHILDREN):.2f} GB the largest parser process')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.one_line_flags_parser)
