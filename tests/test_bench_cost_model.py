"""bench.cost_model: bench.tff_overhead's cells and its per-round / per-client / per-example fit."""
import numpy as np

from bench import cost_model


def _data(num_clients=4, examples=30):
  xs = [np.full((examples, 28, 28, 1), i, np.float32) for i in range(num_clients)]
  ys = [np.arange(examples, dtype=np.int32) for _ in range(num_clients)]
  return xs, ys


def test_cells_cut_the_first_clients_and_examples_and_keep_the_whole_round():
  xs, ys = _data()
  cells = cost_model.cells(xs, ys, clients=[1, 3], examples=[5, 20])
  assert list(cells) == ['1x5', '1x20', '3x5', '3x20', cost_model.FULL]
  cx, cy = cells['3x5']
  assert [len(y) for y in cy] == [5, 5, 5]
  assert [float(x[0, 0, 0, 0]) for x in cx] == [0.0, 1.0, 2.0]  # the first 3 writers, in order
  np.testing.assert_array_equal(cy[0], np.arange(5))  # the first examples of the order
  assert [len(y) for y in cells[cost_model.FULL][1]] == [30] * 4


def test_fit_recovers_per_round_per_client_and_per_example_costs():
  xs, ys = _data()
  cells = cost_model.cells(xs, ys, clients=[1, 2, 4], examples=[5, 10, 30])
  per_round, per_client, per_example = 0.25, 0.011, 0.0004
  best = {name: per_round + per_client * len(cy) + per_example * sum(len(y) for y in cy)
          for name, (_, cy) in cells.items() if name != cost_model.FULL}
  best[cost_model.FULL] = 100.0  # the whole round is not part of the fit
  fit = cost_model.fit(cells, best)
  assert fit == {'per_round_s': 0.25, 'per_client_ms': 11.0, 'per_example_ms': 0.4}
