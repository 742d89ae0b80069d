"""Turn a plain function into a `LitAgent`: `@rollout`, `@llm_rollout`, `@prompt_rollout`."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

from agl.litagent.litagent import LitAgent, RolloutRawResult
from agl.types.core import AttemptedRollout, Rollout
from agl.types.resources import LLM, NamedResources, PromptTemplate, ProxyLLM

__all__ = ["FunctionalLitAgent", "llm_rollout", "prompt_rollout", "rollout"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _parameters(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


def _check_signature(func: Callable[..., Any], needed: str) -> None:
    params = list(_parameters(func))
    if not params or params[0] != "task":
        raise ValueError(f"{func.__name__}: the first parameter must be named 'task' (got {params[:1] or 'none'})")
    if len(params) < 2 or needed not in params:
        raise ValueError(f"{func.__name__}: needs a parameter named {needed!r} besides 'task' (got {params})")


class FunctionalLitAgent(LitAgent[Any]):
    """A `LitAgent` made from a function `(task, *, llm | prompt_template, rollout)`; still callable as the function.

    At each rollout the function receives, by parameter name: `rollout` (the rollout record), `llm` (the first LLM of
    the resources; a `ProxyLLM` is resolved to this attempt's URL when `strip_proxy`) and `prompt_template` (the
    first prompt template).
    """

    def __init__(self, func: Callable[..., Any], *, strip_proxy: bool = True) -> None:
        super().__init__()
        self.func = func
        self.strip_proxy = strip_proxy
        self._params = _parameters(func)
        self._async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def is_async(self) -> bool:
        """True when the wrapped function is a coroutine function."""
        return self._async

    def _inject(self, resources: NamedResources, rollout: Rollout) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if "rollout" in self._params:
            kwargs["rollout"] = rollout
        if "llm" in self._params:
            llms = [r for r in resources.values() if isinstance(r, LLM)]
            if not llms:
                raise ValueError(
                    f"No LLM resource found for {self.func.__name__}(llm=...): publish an LLM or ProxyLLM in the "
                    f"resources (got {sorted(resources) or 'no resources'})"
                )
            if len(llms) > 1:
                logger.warning("Several LLM resources found; %s gets the first one", self.func.__name__)
            llm = llms[0]
            if self.strip_proxy and isinstance(llm, ProxyLLM):
                if not isinstance(rollout, AttemptedRollout):
                    raise ValueError("A ProxyLLM needs an attempted rollout to build its per-attempt URL")
                llm = llm.with_attempted_rollout(rollout)
            kwargs["llm"] = llm
        if "prompt_template" in self._params:
            templates = [r for r in resources.values() if isinstance(r, PromptTemplate)]
            if not templates:
                raise ValueError(
                    f"No PromptTemplate resource found for {self.func.__name__}(prompt_template=...): publish one "
                    f"in the resources (got {sorted(resources) or 'no resources'})"
                )
            kwargs["prompt_template"] = templates[0]
        return kwargs

    def rollout(self, task: Any, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """Call the wrapped (sync) function with the injected arguments."""
        if self._async:
            raise RuntimeError(f"{self.func.__name__} is async: call rollout_async()")
        return self.func(task, **self._inject(resources, rollout))  # type: ignore[no-any-return]

    async def rollout_async(self, task: Any, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """Await the wrapped (async) function with the injected arguments."""
        if not self._async:
            raise RuntimeError(f"{self.func.__name__} is not async: call rollout()")
        return await self.func(task, **self._inject(resources, rollout))  # type: ignore[no-any-return]


@overload
def llm_rollout(func: Callable[..., Any], *, strip_proxy: bool = True) -> FunctionalLitAgent: ...
@overload
def llm_rollout(
    func: None = None, *, strip_proxy: bool = True
) -> Callable[[Callable[..., Any]], FunctionalLitAgent]: ...
def llm_rollout(
    func: Callable[..., Any] | None = None, *, strip_proxy: bool = True
) -> FunctionalLitAgent | Callable[[Callable[..., Any]], FunctionalLitAgent]:
    """Make an agent from `func(task, llm, [rollout])`; usable as `@llm_rollout` or `@llm_rollout(strip_proxy=...)`."""

    def wrap(f: Callable[..., Any]) -> FunctionalLitAgent:
        _check_signature(f, "llm")
        return FunctionalLitAgent(f, strip_proxy=strip_proxy)

    return wrap(func) if func is not None else wrap


@overload
def prompt_rollout(func: Callable[..., Any]) -> FunctionalLitAgent: ...
@overload
def prompt_rollout(func: None = None) -> Callable[[Callable[..., Any]], FunctionalLitAgent]: ...
def prompt_rollout(
    func: Callable[..., Any] | None = None,
) -> FunctionalLitAgent | Callable[[Callable[..., Any]], FunctionalLitAgent]:
    """Make an agent from `func(task, prompt_template, [rollout])`; usable with or without parentheses."""

    def wrap(f: Callable[..., Any]) -> FunctionalLitAgent:
        _check_signature(f, "prompt_template")
        return FunctionalLitAgent(f)

    return wrap(func) if func is not None else wrap


def rollout(func: Callable[..., Any]) -> FunctionalLitAgent:
    """Make an agent from a function taking `task` and `llm` or `prompt_template` (plus optionally `rollout`)."""
    for needed in ("llm", "prompt_template"):
        try:
            _check_signature(func, needed)
        except ValueError:
            continue
        return FunctionalLitAgent(func)
    raise NotImplementedError(
        f"Function signature {inspect.signature(func)} of {func.__name__} does not match any known agent patterns: "
        "expected (task, llm, ...) or (task, prompt_template, ...)"
    )
