"""AGL: train any AI agent by turning its runs into spans in a store that an algorithm learns from.

`import agl` is cheap: public names are imported from their modules on first use. Every top-level name of Agent
Lightning 0.3 is here, except the few docs/compatibility.md lists (asking for one raises an AttributeError that
says why and what to use instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agl.optional import import_module

__version__ = "0.3.0"

# Public name -> module that defines it. Everything listed here is importable as `agl.<name>`.
_EXPORTS: dict[str, str] = {}


def _export(module: str, *names: str) -> None:
    for name in names:
        _EXPORTS[name] = module


_export(
    "agl.types.core",
    "UNSET", "Unset", "Attempt", "AttemptStatus", "AttemptedRollout", "EnqueueRolloutRequest", "FilterField",
    "FilterOptions", "PaginatedResult", "Rollout", "RolloutConfig", "RolloutMode", "RolloutStatus", "SortOptions",
    "TaskInput", "Triplet", "Worker", "WorkerStatus",
)  # fmt: skip
_export(
    "agl.types.resources",
    "LLM", "NamedResources", "PromptTemplate", "ProxyLLM", "Resource", "ResourceUnion", "ResourcesUpdate",
)  # fmt: skip
_export(
    "agl.types.tracer",
    "AttributeValue", "Attributes", "Event", "Link", "OtelResource", "Span", "SpanAttributeNames", "SpanContext",
    "SpanCoreFields", "SpanLike", "SpanNames", "StatusCode", "TraceState", "TraceStatus",
)  # fmt: skip
_export("agl.types.dataset", "Dataset")
_export("agl.types.worker_base", "ParallelWorkerBase")
_export("agl.types.legacy", "GenericResponse", "RolloutLegacy", "RolloutRawResultLegacy", "Task", "TaskIfAny")
_export("agl.store.base", "LightningStore", "LightningStoreCapabilities", "LightningStoreStatistics")
_export("agl.store.memory", "InMemoryLightningStore")
_export("agl.store.threading", "LightningStoreThreaded")
_export("agl.store.sqlite", "SqliteLightningStore")
_export("agl.store.postgres", "PostgresLightningStore")
_export("agl.store.errors", "StoreFullError")
_export("agl.store.client_server", "LightningStoreClient", "LightningStoreServer")
_export("agl.store.state", "is_queuing", "is_running", "is_finished", "rollout_status_from_attempt")
_export("agl.emitter.annotation", "emit_annotation")
_export("agl.emitter.exception", "emit_exception")
_export("agl.emitter.message", "emit_message", "get_message_value")
_export("agl.emitter.object", "emit_object", "get_object_value")
_export("agl.emitter.operation", "OperationContext", "operation")
_export(
    "agl.emitter.reward",
    "RewardDimension", "emit_reward", "find_final_reward", "find_reward_spans", "get_reward_value",
    "get_rewards_from_span", "is_reward_span", "reward",
)  # fmt: skip
_export(
    "agl.tracer.base",
    "SpanRecordingContext", "Tracer", "clear_active_tracer", "get_active_tracer", "set_active_tracer",
)  # fmt: skip
_export("agl.tracer.dummy", "DummyTracer")
_export("agl.tracer.otel", "LightningSpanProcessor", "OtelTracer")
_export("agl.tracer.agentops", "AgentOpsTracer")
_export("agl.env_var", "LightningEnvVar", "resolve_bool_env_var", "resolve_int_env_var", "resolve_str_env_var")
_export("agl.logging", "configure_logger", "setup_logging", "setup_module_logging")
_export("agl.adapter.base", "Adapter", "OtelTraceAdapter", "TraceAdapter")
_export("agl.adapter.messages", "OpenAIMessages", "TraceToMessages")
_export("agl.adapter.tree", "TraceTree")
_export(
    "agl.adapter.triplet", "LlmProxyTraceToTriplet", "RewardMatchPolicy", "TraceToTripletBase", "TracerTraceToTriplet",
)  # fmt: skip
_export("agl.litagent.litagent", "LitAgent")
_export("agl.types.rollout_result", "RolloutRawResult")
_export("agl.litagent.decorator", "FunctionalLitAgent", "llm_rollout", "prompt_rollout", "rollout")
_export("agl.runner.base", "Runner")
_export("agl.runner.agent", "LitAgentRunner")
_export("agl.types.hook", "Hook")
_export("agl.algorithm.base", "Algorithm")
_export("agl.algorithm.apo", "APO")
_export("agl.algorithm.verl", "VERL")
_export("agl.algorithm.decorator", "FunctionalAlgorithm", "algo")
_export("agl.algorithm.fast", "Baseline", "FastAlgorithm")
_export("agl.trainer.trainer", "Trainer")
_export("agl.trainer.init_utils", "build_component")
_export("agl.config", "lightning_cli")
_export("agl.execution.base", "AlgorithmBundle", "ExecutionStrategy", "RunnerBundle")
_export("agl.execution.events", "ExecutionEvent", "MultiprocessingEvent", "ThreadingEvent")
_export("agl.execution.shared_memory", "SharedMemoryExecutionStrategy")
_export("agl.execution.client_server", "ClientServerExecutionStrategy")
_export("agl.execution.ray", "RayExecutionStrategy")
_export("agl.llm.proxy", "LLMProxy")

# Modules reachable as attributes (`agl.store`, ...), as `import agentlightning` makes them; `core` and
# `resources` are Agent Lightning's accidental top-level aliases of its type modules.
_MODULES: dict[str, str] = {
    name: f"agl.{name}"
    for name in (
        "adapter", "algorithm", "config", "emitter", "env_var", "execution", "litagent", "llm_proxy", "logging",
        "reward", "runner", "semconv", "store", "tracer", "trainer", "types", "utils",
    )
}  # fmt: skip
_MODULES.update({"core": "agl.types.core", "resources": "agl.types.resources"})

# Agent Lightning names AGL does not provide, with what to use instead (docs/compatibility.md has the reasons).
_NOT_PROVIDED: dict[str, str] = {
    "AgentLightningClient": "the 0.1 task-server client is not provided; use agl.LightningStoreClient",
    "AgentLightningServer": "the 0.1 task server is not provided; use agl.LightningStoreServer (or `agl store`)",
    "DevTaskLoader": "the 0.1 task-server helper is not provided; enqueue rollouts on a store instead",
    "LegacyAgentRunner": "the 0.1 runner is not provided; use agl.LitAgentRunner",
    "CollectionBasedLightningStore": (
        "AGL's stores are not built on collections; subclass agl.LightningStore or use InMemoryLightningStore / "
        "SqliteLightningStore"
    ),
    "client": "the 0.1 module agentlightning.client is not provided; use agl.store.client_server",
    "server": "the 0.1 module agentlightning.server is not provided; use agl.store.client_server",
    "instrumentation": (
        "agentlightning.instrumentation (AgentOps/Weave/LiteLLM/vLLM patches) is not provided; AGL's LLM proxy "
        "records token ids and OtelTracer records OpenTelemetry spans without patching libraries"
    ),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(import_module(module, f"agl.{name}"), name)
    elif name in _MODULES:
        value = import_module(_MODULES[name], f"agl.{name}")
    elif name in _NOT_PROVIDED:
        raise AttributeError(f"agl.{name}: {_NOT_PROVIDED[name]} (see docs/compatibility.md)")
    else:
        raise AttributeError(f"module 'agl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from agl.adapter.base import Adapter, OtelTraceAdapter, TraceAdapter
    from agl.adapter.messages import OpenAIMessages, TraceToMessages
    from agl.adapter.tree import TraceTree
    from agl.adapter.triplet import LlmProxyTraceToTriplet, RewardMatchPolicy, TracerTraceToTriplet, TraceToTripletBase
    from agl.algorithm.apo import APO
    from agl.algorithm.base import Algorithm
    from agl.algorithm.decorator import FunctionalAlgorithm, algo
    from agl.algorithm.fast import Baseline, FastAlgorithm
    from agl.algorithm.verl import VERL
    from agl.config import lightning_cli
    from agl.emitter.annotation import emit_annotation
    from agl.emitter.exception import emit_exception
    from agl.emitter.message import emit_message, get_message_value
    from agl.emitter.object import emit_object, get_object_value
    from agl.emitter.operation import OperationContext, operation
    from agl.emitter.reward import (
        RewardDimension,
        emit_reward,
        find_final_reward,
        find_reward_spans,
        get_reward_value,
        get_rewards_from_span,
        is_reward_span,
        reward,
    )
    from agl.env_var import LightningEnvVar, resolve_bool_env_var, resolve_int_env_var, resolve_str_env_var
    from agl.execution.base import AlgorithmBundle, ExecutionStrategy, RunnerBundle
    from agl.execution.client_server import ClientServerExecutionStrategy
    from agl.execution.events import ExecutionEvent, MultiprocessingEvent, ThreadingEvent
    from agl.execution.ray import RayExecutionStrategy
    from agl.execution.shared_memory import SharedMemoryExecutionStrategy
    from agl.litagent.decorator import FunctionalLitAgent, llm_rollout, prompt_rollout, rollout
    from agl.litagent.litagent import LitAgent
    from agl.llm.proxy import LLMProxy
    from agl.logging import configure_logger, setup_logging, setup_module_logging
    from agl.runner.agent import LitAgentRunner
    from agl.runner.base import Runner
    from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
    from agl.store.client import LightningStoreClient
    from agl.store.errors import StoreFullError
    from agl.store.memory import InMemoryLightningStore
    from agl.store.postgres import PostgresLightningStore
    from agl.store.server import LightningStoreServer
    from agl.store.sqlite import SqliteLightningStore
    from agl.store.state import is_finished, is_queuing, is_running, rollout_status_from_attempt
    from agl.store.threading import LightningStoreThreaded
    from agl.tracer.agentops import AgentOpsTracer
    from agl.tracer.base import (
        SpanRecordingContext,
        Tracer,
        clear_active_tracer,
        get_active_tracer,
        set_active_tracer,
    )
    from agl.tracer.dummy import DummyTracer
    from agl.tracer.otel import LightningSpanProcessor, OtelTracer
    from agl.trainer.init_utils import build_component
    from agl.trainer.trainer import Trainer
    from agl.types.core import (
        UNSET,
        Attempt,
        AttemptedRollout,
        AttemptStatus,
        EnqueueRolloutRequest,
        FilterField,
        FilterOptions,
        PaginatedResult,
        Rollout,
        RolloutConfig,
        RolloutMode,
        RolloutStatus,
        SortOptions,
        TaskInput,
        Triplet,
        Unset,
        Worker,
        WorkerStatus,
    )
    from agl.types.dataset import Dataset
    from agl.types.hook import Hook
    from agl.types.legacy import GenericResponse, RolloutLegacy, RolloutRawResultLegacy, Task, TaskIfAny
    from agl.types.resources import (
        LLM,
        NamedResources,
        PromptTemplate,
        ProxyLLM,
        Resource,
        ResourcesUpdate,
        ResourceUnion,
    )
    from agl.types.rollout_result import RolloutRawResult
    from agl.types.tracer import (
        Attributes,
        AttributeValue,
        Event,
        Link,
        OtelResource,
        Span,
        SpanAttributeNames,
        SpanContext,
        SpanCoreFields,
        SpanLike,
        SpanNames,
        StatusCode,
        TraceState,
        TraceStatus,
    )
    from agl.types.worker_base import ParallelWorkerBase
