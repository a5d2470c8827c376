"""DDifs (`learning.ddifs`) against a NumPy reference written from Rieger et al.'s formula.

DDif_{k,i} = (1/N) sum_s p(i | x_s; W_k) / p(i | x_s; G), W_k = G + (the client's step) = G -
TFF's delta. The model is a linear softmax classifier, so the reference's forward pass is one
matrix product in NumPy; the inputs are the module's (checked on their own below).
"""
import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_backdoor.learning import ddifs
from tff_backdoor.learning.side_channel import DDifInputs

SHAPE = (4, 4, 1)
CLASSES = 3


def model_fn():
  keras = tf.keras.Sequential([tf.keras.layers.InputLayer(SHAPE), tf.keras.layers.Flatten(),
                               tf.keras.layers.Dense(CLASSES)])
  return tff.learning.models.from_keras_model(
      keras, input_spec=collections.OrderedDict(x=tf.TensorSpec([None, *SHAPE], tf.float32),
                                                y=tf.TensorSpec([None], tf.int32)),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def softmax(logits):
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def reference(kernel, bias, delta, x):
  """The paper's DDif vector of the client model G - delta on inputs x [N, ...]."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  client = softmax(flat @ (kernel - delta[0]) + (bias - delta[1]))
  glob = softmax(flat @ kernel + bias)
  return (client / glob).mean(axis=0)


def weights(rng):
  kernel = rng.normal(size=(16, CLASSES)).astype(np.float32)
  bias = rng.normal(size=CLASSES).astype(np.float32)
  return tff.learning.models.ModelWeights([kernel, bias], []), (kernel, bias)


@pytest.mark.parametrize('samples, seeds', [(ddifs.BATCH + 37, 2), (50, 3)])
def test_ddifs_match_the_papers_formula(samples, seeds):
  rng = np.random.default_rng(0)
  inputs = DDifInputs(samples=samples, seeds=seeds, seed=7)
  global_weights, (kernel, bias) = weights(rng)
  delta = [rng.normal(size=kernel.shape).astype(np.float32) * 0.3,
           rng.normal(size=bias.shape).astype(np.float32) * 0.3]
  got = ddifs.build_ddif_fn(model_fn, inputs)(global_weights, delta).numpy()
  assert got.shape == (seeds, CLASSES)
  for s in range(seeds):
    x = ddifs.random_inputs(inputs, s, SHAPE).numpy()
    want = reference(kernel, bias, delta, x)
    np.testing.assert_allclose(got[s], want, rtol=2e-5)
    # The sign: the model rebuilt as G + delta would give other numbers.
    assert not np.allclose(got[s], reference(kernel, bias, [-d for d in delta], x), rtol=1e-3)
  assert not np.allclose(got[0], got[1], rtol=1e-4)  # each seed its own inputs


def test_no_update_has_ddifs_one():
  global_weights, (kernel, bias) = weights(np.random.default_rng(1))
  got = ddifs.build_ddif_fn(model_fn, DDifInputs(samples=40, seeds=2))(
      global_weights, [np.zeros_like(kernel), np.zeros_like(bias)])
  np.testing.assert_allclose(got.numpy(), np.ones((2, CLASSES)), rtol=1e-6)


def test_inputs_are_uniform_seeded_and_batch_independent():
  inputs = DDifInputs(samples=ddifs.BATCH + 10, seeds=2, seed=5)
  x = ddifs.random_inputs(inputs, 0, SHAPE).numpy()
  assert x.shape == (ddifs.BATCH + 10, *SHAPE)
  assert x.min() >= 0.0 and x.max() < 1.0 and abs(x.mean() - 0.5) < 0.01
  np.testing.assert_array_equal(x, ddifs.random_inputs(inputs, 0, SHAPE).numpy())
  assert not np.array_equal(x, ddifs.random_inputs(inputs, 1, SHAPE).numpy())
  other_run = DDifInputs(samples=inputs.samples, seeds=2, seed=6)
  assert not np.array_equal(x, ddifs.random_inputs(other_run, 0, SHAPE).numpy())
  # A set's first inputs do not depend on how many there are.
  fewer = ddifs.random_inputs(DDifInputs(samples=20, seeds=2, seed=5), 0, SHAPE).numpy()
  np.testing.assert_array_equal(fewer, x[:20])


def test_ddif_inputs_refuse_no_samples():
  with pytest.raises(ValueError, match='samples >= 1'):
    DDifInputs(samples=0)
