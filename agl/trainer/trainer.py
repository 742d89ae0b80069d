"""`Trainer`: wires an agent, an algorithm, a store and runners together through an execution strategy."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from agl.adapter.base import Adapter
from agl.algorithm.base import Algorithm
from agl.algorithm.fast import Baseline, FastAlgorithm
from agl.execution.base import ExecutionStrategy
from agl.execution.events import ExecutionEvent
from agl.execution.registry import STRATEGY_REGISTRY, resolve_strategy_class
from agl.litagent.litagent import LitAgent
from agl.runner.agent import LitAgentRunner
from agl.runner.base import Runner
from agl.runner.hooks import Hook
from agl.store.base import LightningStore
from agl.store.memory import InMemoryLightningStore
from agl.tracer.base import Tracer
from agl.trainer.init_utils import build_component
from agl.types.resources import NamedResources

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


def _default_tracer() -> Tracer:
    from agl.optional import import_module

    tracer_class: type[Tracer] = import_module("agl.tracer.otel", "Trainer's default tracer (OtelTracer)").OtelTracer
    return tracer_class()


def _default_adapter() -> Adapter[Any, Any]:
    from agl.adapter.triplet import TracerTraceToTriplet

    return TracerTraceToTriplet()


def _deprecated_alias(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value to use when a deprecated keyword `old` may stand in for `new`."""
    if old_value is None:
        return new_value
    warnings.warn(f"Trainer({old}=...) is deprecated; use {new}=...", DeprecationWarning, stacklevel=3)
    if new_value is None:
        return old_value
    if new_value != old_value:
        logger.warning("Trainer: %s=%r ignored in favour of %s=%r", old, old_value, new, new_value)
    return new_value


class Trainer:
    """Runs training: `fit(agent, train_dataset, val_dataset=...)` starts the algorithm and `n_runners` runners.

    Every component may be given as an instance, a class, a zero-argument factory, an import path or alias string,
    or a dict `{"type": ..., **kwargs}`; None picks the default (OtelTracer, TracerTraceToTriplet adapter,
    InMemoryLightningStore, LitAgentRunner, the `cs` client-server strategy).
    """

    def __init__(
        self,
        *,
        dev: bool = False,
        n_runners: int | None = None,
        max_rollouts: int | None = None,
        initial_resources: NamedResources | None = None,
        tracer: Any = None,
        adapter: Any = None,
        store: Any = None,
        runner: Any = None,
        strategy: Any = None,
        port: int | None = None,
        algorithm: Any = None,
        llm_proxy: Any = None,
        n_workers: int | None = None,
        max_tasks: int | None = None,
        daemon: bool = True,
        triplet_exporter: Any = None,
        hooks: Hook | Sequence[Hook] | None = None,
    ) -> None:
        if dev:
            warnings.warn("Trainer(dev=True) is deprecated; use Trainer.dev()", DeprecationWarning, stacklevel=2)
        if not daemon:
            logger.warning("Trainer(daemon=False) has no effect")
        self.dev_mode = dev
        self.daemon = daemon
        self.n_runners: int = _deprecated_alias("n_workers", n_workers, "n_runners", n_runners) or 1
        if self.n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, got {self.n_runners}")
        self.max_rollouts: int | None = _deprecated_alias("max_tasks", max_tasks, "max_rollouts", max_rollouts)
        adapter = _deprecated_alias("triplet_exporter", triplet_exporter, "adapter", adapter)
        self.initial_resources = initial_resources
        self.port = port

        self.tracer: Tracer = build_component(
            tracer, expected_type=Tracer, spec_name="tracer", default_factory=_default_tracer
        )
        from agl.adapter.triplet import TracerTraceToTriplet

        self.adapter: Adapter[Any, Any] = build_component(
            adapter,
            expected_type=Adapter,
            spec_name="adapter",
            default_factory=_default_adapter,
            dict_requires_type=False,
            dict_default_cls=TracerTraceToTriplet,
        )
        strategy_defaults: dict[str, Any] = {"n_runners": self.n_runners}
        if port is not None:
            strategy_defaults["server_port"] = port
        self.strategy: ExecutionStrategy = build_component(
            strategy,
            expected_type=ExecutionStrategy,
            spec_name="strategy",
            default_factory=lambda: resolve_strategy_class("cs")(**strategy_defaults),
            optional_defaults=strategy_defaults,
            registry=STRATEGY_REGISTRY,
        )
        if port is not None and hasattr(self.strategy, "server_port"):
            self.strategy.server_port = port
        self.n_runners = int(getattr(self.strategy, "n_runners", self.n_runners))
        self.store: LightningStore = build_component(
            store, expected_type=LightningStore, spec_name="store", default_factory=InMemoryLightningStore
        )
        runner_defaults: dict[str, Any] = {"tracer": self.tracer}
        if self.max_rollouts is not None:
            runner_defaults["max_rollouts"] = self.max_rollouts
        self.runner: Runner[Any] = build_component(
            runner,
            expected_type=Runner,
            spec_name="runner",
            default_factory=lambda: LitAgentRunner(**runner_defaults),
            optional_defaults=runner_defaults,
        )
        self.algorithm: Algorithm | None = build_component(
            algorithm, expected_type=Algorithm, spec_name="algorithm", allow_none=True
        )
        self.llm_proxy: Any = llm_proxy
        if llm_proxy is not None and hasattr(llm_proxy, "get_store") and hasattr(llm_proxy, "set_store"):
            try:
                llm_proxy.get_store()
            except Exception:
                llm_proxy.set_store(self.store)
        if hooks is None:
            self.hooks: list[Hook] = []
        elif isinstance(hooks, Hook):
            self.hooks = [hooks]
        else:
            self.hooks = list(hooks)
            for hook in self.hooks:
                if not isinstance(hook, Hook):
                    raise TypeError(f"hooks must be Hook instances, got {type(hook).__name__}")

    # -- entry points -----------------------------------------------------------------------------------------
    def fit(self, agent: LitAgent[Any], train_dataset: Any = None, *, val_dataset: Any = None) -> None:
        """Train: run the algorithm over the datasets while `n_runners` runners execute the agent's rollouts."""
        self._execute(self.algorithm, agent, train_dataset, val_dataset)

    def dev(self, agent: LitAgent[Any], train_dataset: Any = None, *, val_dataset: Any = None) -> None:
        """A quick run with a `FastAlgorithm` (default `Baseline()`) to check that the agent works."""
        algorithm = self.algorithm if self.algorithm is not None else Baseline()
        if not isinstance(algorithm, FastAlgorithm):
            raise TypeError(
                "Trainer.dev() requires an algorithm that inherits from FastAlgorithm (e.g. Baseline); "
                f"got {type(algorithm).__name__}. Use fit() for full training."
            )
        self._execute(algorithm, agent, train_dataset, val_dataset)

    def _execute(self, algorithm: Algorithm | None, agent: LitAgent[Any], train_dataset: Any, val_dataset: Any) -> None:
        if isinstance(train_dataset, str):
            raise ValueError(
                "fit(agent, '<url>') was the v0.1 server protocol, which AGL does not support; pass a dataset "
                "(anything with __len__ and __getitem__, e.g. a list)"
            )
        if not isinstance(agent, LitAgent):
            raise TypeError(f"agent must be a LitAgent (or made with @rollout), got {type(agent).__name__}")
        agent.set_trainer(self)
        self.strategy.execute(
            functools.partial(
                self._algorithm_bundle, algorithm=algorithm, train_dataset=train_dataset, val_dataset=val_dataset
            ),
            functools.partial(self._runner_bundle, agent=agent),
            self.store,
        )

    # -- bundles run by the strategy --------------------------------------------------------------------------
    async def _algorithm_bundle(
        self,
        store: LightningStore,
        event: ExecutionEvent,
        *,
        algorithm: Algorithm | None,
        train_dataset: Any,
        val_dataset: Any,
    ) -> None:
        if algorithm is None:
            while not event.is_set():
                await asyncio.sleep(0.1)
            return
        algorithm.set_trainer(self)
        algorithm.set_store(store)
        algorithm.set_adapter(self.adapter)
        if self.initial_resources is not None:
            algorithm.set_initial_resources(self.initial_resources)
        if self.llm_proxy is not None:
            if hasattr(self.llm_proxy, "set_store"):
                self.llm_proxy.set_store(store)
            algorithm.set_llm_proxy(self.llm_proxy)
        try:
            if algorithm.is_async():
                await algorithm.run(train_dataset=train_dataset, val_dataset=val_dataset)
            else:
                algorithm.run(train_dataset=train_dataset, val_dataset=val_dataset)
        except Exception:
            logger.exception("The algorithm %s failed", type(algorithm).__name__)
            raise

    async def _runner_bundle(
        self, store: LightningStore, worker_id: int, event: ExecutionEvent, *, agent: LitAgent[Any]
    ) -> None:
        # Runners sharing one process (threads) each get their own runner object: a runner holds per-worker state.
        runner = copy.copy(self.runner) if self.n_runners > 1 else self.runner
        runner.init(agent, hooks=self.hooks)
        try:
            runner.init_worker(worker_id, store)
            try:
                await runner.iter(event=event)
            finally:
                try:
                    runner.teardown_worker(worker_id)
                except Exception:
                    logger.exception("Runner %d: teardown_worker failed", worker_id)
        finally:
            try:
                runner.teardown()
            except Exception:
                logger.exception("Runner %d: teardown failed", worker_id)
