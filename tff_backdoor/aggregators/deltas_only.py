"""Lets a defense that needs no side information take client updates that carry some.

A process with a side channel (`learning.side_channel`) sends each client's update as
`OrderedDict(delta, info)`; `deltas_only(factory)` aggregates the `delta` alone with
`factory` and returns its result (the plain trainable update the finalizer applies). On a
plain value type (TFF's own `build_weighted_fed_avg`) it is `factory` unchanged.
"""
from __future__ import annotations

import tensorflow_federated as tff

from tff_backdoor.aggregators import _common
from tff_backdoor.learning import side_channel


class DeltasOnlyFactory(tff.aggregators.WeightedAggregationFactory):
  """`WeightedAggregationFactory` running `inner` on the deltas of the client updates."""

  def __init__(self, inner: tff.aggregators.WeightedAggregationFactory):
    _common.check_weighted_factory(inner, 'inner')
    self._inner = inner

  def create(self, value_type: tff.Type,
             weight_type: tff.Type) -> tff.templates.AggregationProcess:
    if not side_channel.carries_info(value_type):
      return self._inner.create(value_type, weight_type)
    inner_process = self._inner.create(side_channel.delta_type(value_type), weight_type)

    @tff.federated_computation(
        inner_process.initialize.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      return inner_process.next(state, getattr(value, side_channel.DELTA), weight)

    return tff.templates.AggregationProcess(inner_process.initialize, next_fn)


def deltas_only(factory: tff.aggregators.WeightedAggregationFactory) -> DeltasOnlyFactory:
  """`factory` on the deltas of updates with side information (see the module docstring)."""
  return DeltasOnlyFactory(factory)
