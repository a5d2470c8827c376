"""DDifs (`learning.ddifs`) against a NumPy reference written from Rieger et al.'s formula.

DDif_{k,i} = (1/N) sum_s p(i | x_s; W_k) / p(i | x_s; G), W_k = G + (the client's step) = G -
TFF's delta. The server computes log p(. | x; G) once a round and sends it down; each client
runs only its rebuilt model. The model is a linear softmax classifier, so the reference's
forward pass is one matrix product in NumPy; the inputs are the module's (checked on their
own below).
"""
import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import tiny
from tff_backdoor.learning import ddifs
from tff_backdoor.learning import distributor as distributor_lib
from tff_backdoor.learning import process as process_lib
from tff_backdoor.learning import side_channel
from tff_backdoor.learning.side_channel import DDifInputs, SideChannel

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


def log_softmax(logits):
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


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


def client_ddifs(global_weights, delta, inputs, fn=model_fn):
  """The new path: the server's log p_G (once), then the client's DDifs from them."""
  global_log_probs = ddifs.build_global_log_probs(fn, inputs)(global_weights)
  return ddifs.build_ddif_fn(fn, inputs)(global_weights, delta, global_log_probs).numpy()


def two_model_ddifs(fn, inputs):
  """The path before the server sent log p_G: each client ran both models on every batch."""
  client_model, global_model = fn(), fn()
  shape, steps = ddifs.input_shape(client_model), ddifs.batch_count(inputs)

  def accumulate(i, sums):
    index, step = i // steps, i % steps
    x = ddifs.random_batch(inputs, index, step, shape)
    log_ratio = (tf.nn.log_softmax(client_model.predict_on_batch(x, training=False)) -
                 tf.nn.log_softmax(global_model.predict_on_batch(x, training=False)))
    ratios = tf.reduce_sum(tf.exp(log_ratio), axis=0)
    return i + 1, tf.tensor_scatter_nd_add(sums, [[index]], ratios[tf.newaxis])

  @tf.function(autograph=False)
  def ddif_fn(global_weights, delta):
    tff.learning.models.ModelWeights(
        list(global_weights.trainable),
        list(global_weights.non_trainable)).assign_weights_to(global_model)
    ddifs.rebuilt_weights(global_weights, delta).assign_weights_to(client_model)
    classes = global_weights.trainable[-1].shape[-1]
    _, sums = tf.while_loop(lambda i, _: i < inputs.seeds * steps, accumulate,
                            [tf.constant(0), tf.zeros([inputs.seeds, classes])])
    return sums / float(inputs.samples)

  return ddif_fn


@pytest.mark.parametrize('samples, seeds', [(ddifs.BATCH + 37, 2), (50, 3)])
def test_ddifs_match_the_papers_formula(samples, seeds):
  rng = np.random.default_rng(0)
  inputs = DDifInputs(samples=samples, seeds=seeds, seed=7)
  global_weights, (kernel, bias) = weights(rng)
  delta = [rng.normal(size=kernel.shape).astype(np.float32) * 0.3,
           rng.normal(size=bias.shape).astype(np.float32) * 0.3]
  got = client_ddifs(global_weights, delta, inputs)
  assert got.shape == (seeds, CLASSES)
  for s in range(seeds):
    x = ddifs.random_inputs(inputs, s, SHAPE).numpy()
    want = reference(kernel, bias, delta, x)
    np.testing.assert_allclose(got[s], want, rtol=2e-5)
    # The sign: the model rebuilt as G + delta would give other numbers.
    assert not np.allclose(got[s], reference(kernel, bias, [-d for d in delta], x), rtol=1e-3)
  assert not np.allclose(got[0], got[1], rtol=1e-4)  # each seed its own inputs


@pytest.mark.parametrize('fn', [model_fn, tiny.model_fn()], ids=['linear', 'tiny_cnn'])
def test_global_outputs_sent_down_give_the_two_model_numbers_exactly(fn):
  """The same inputs, forward passes and formula exp(log p_k - log p_G) as when each client
  ran both models, each path as TFF computations as a run executes them (the server's, then
  the client's; before, the client's alone): bit-identical DDifs (no tolerance)."""
  rng = np.random.default_rng(3)
  inputs = DDifInputs(samples=ddifs.BATCH + 37, seeds=2, seed=11)
  weights_type = process_lib.model_weights_type(fn)
  model = tff.learning.models.ModelWeights.from_model(fn())
  global_weights = tff.learning.models.ModelWeights(
      [np.asarray(v) + 0.1 * rng.normal(size=v.shape).astype(np.float32)
       for v in model.trainable], [np.asarray(v) for v in model.non_trainable])
  delta = [0.2 * rng.normal(size=v.shape).astype(np.float32) for v in global_weights.trainable]
  server = ddifs.build_global_log_probs_fn(fn, inputs, weights_type)

  @tff.tensorflow.computation(weights_type, weights_type.trainable,
                              server.type_signature.result)
  def client(global_weights, delta, global_log_probs):
    return ddifs.build_ddif_fn(fn, inputs)(global_weights, delta, global_log_probs)

  @tff.tensorflow.computation(weights_type, weights_type.trainable)
  def both_models_at_the_client(global_weights, delta):
    return two_model_ddifs(fn, inputs)(global_weights, delta)

  new = client(global_weights, delta, server(global_weights))
  old = both_models_at_the_client(global_weights, delta)
  assert not np.allclose(new, 1.0, rtol=1e-3)  # an update that moves the outputs
  np.testing.assert_array_equal(new, old)


def test_no_update_has_ddifs_one():
  global_weights, (kernel, bias) = weights(np.random.default_rng(1))
  got = client_ddifs(global_weights, [np.zeros_like(kernel), np.zeros_like(bias)],
                     DDifInputs(samples=40, seeds=2))
  np.testing.assert_allclose(got, np.ones((2, CLASSES)), rtol=1e-6)


def _received(distributor, global_weights):
  """What one client receives from `distributor` in a round from `global_weights`."""
  state_type, weights_type = distributor.next.type_signature.parameter

  @tff.federated_computation(state_type, weights_type, tff.FederatedType(np.int32, tff.CLIENTS))
  def received(state, weights, clients):  # a client value gives the broadcast its clients
    return tff.federated_map(tff.tensorflow.computation(lambda sent, _: sent),
                             (distributor.next(state, weights).result, clients))

  return received(distributor.initialize(), global_weights, [0])[0]


def test_the_distributor_sends_the_global_models_log_probs():
  inputs = DDifInputs(samples=ddifs.BATCH + 37, seeds=2, seed=7)
  distributor = process_lib.build_distributor(model_fn, SideChannel(ddifs=inputs))
  global_weights, (kernel, bias) = weights(np.random.default_rng(2))
  sent = _received(distributor, global_weights)
  np.testing.assert_array_equal(sent['model'].trainable[0], kernel)
  got = np.asarray(sent['server']['ddif_global_log_probs'])
  assert got.shape == (inputs.seeds, inputs.samples, CLASSES)
  initial = tff.learning.models.ModelWeights.from_model(model_fn()).trainable
  for s in range(inputs.seeds):
    flat = ddifs.random_inputs(inputs, s, SHAPE).numpy().reshape(inputs.samples, -1)
    want = log_softmax(flat.astype(np.float64) @ kernel + bias)
    np.testing.assert_allclose(got[s], want, rtol=1e-6, atol=1e-6)
    # Of the weights sent this round, not of the model's initial ones.
    other = log_softmax(flat.astype(np.float64) @ np.asarray(initial[0]) + np.asarray(initial[1]))
    assert not np.allclose(got[s], other, atol=1e-3)


def test_the_downlink_carries_the_log_probs_only_with_ddifs():
  inputs = DDifInputs(samples=30, seeds=2)
  trainable = tff.types.to_type([tff.TensorType(np.float32, [16, CLASSES]),
                                 tff.TensorType(np.float32, [CLASSES])])
  assert SideChannel(ddifs=inputs).downlink and not SideChannel(client_info=True).downlink
  info = side_channel.server_info_type(trainable, SideChannel(ddifs=inputs, root_update=True))
  assert tff.structure.name_list(info) == ['ddif_global_log_probs', 'root_update']
  assert info[0] == tff.TensorType(np.float32, [2, 30, CLASSES])
  assert 'ddif_global_log_probs' not in tff.structure.name_list(
      side_channel.server_info_type(trainable, SideChannel(root_update=True)))


def test_the_distributor_refuses_a_mismatched_ddif_global_fn():
  weights_type = process_lib.model_weights_type(model_fn)
  inputs = DDifInputs(samples=30, seeds=2)
  fn = ddifs.build_global_log_probs_fn(model_fn, inputs, weights_type)
  with pytest.raises(ValueError, match='ddifs side channel needs ddif_global_fn'):
    distributor_lib.build_distributor(weights_type, SideChannel(ddifs=inputs))
  with pytest.raises(ValueError, match='only it takes one'):
    distributor_lib.build_distributor(weights_type, SideChannel(client_info=True),
                                      ddif_global_fn=fn)


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
