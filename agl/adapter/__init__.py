"""Adapters: turn a rollout's trace into training data (triplets) or chat conversations (messages)."""

from __future__ import annotations

from agl.adapter.base import Adapter, OtelTraceAdapter, TraceAdapter
from agl.adapter.messages import OpenAIMessages, TraceToMessages
from agl.adapter.tree import TraceTree
from agl.adapter.triplet import LlmProxyTraceToTriplet, RewardMatchPolicy, TracerTraceToTriplet, TraceToTripletBase

__all__ = [
    "Adapter",
    "LlmProxyTraceToTriplet",
    "OpenAIMessages",
    "OtelTraceAdapter",
    "RewardMatchPolicy",
    "TraceAdapter",
    "TraceToMessages",
    "TraceToTripletBase",
    "TraceTree",
    "TracerTraceToTriplet",
]
