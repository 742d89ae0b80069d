"""Resources an algorithm publishes for runners: LLM endpoints, proxied LLMs and prompt templates."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LLM",
    "NamedResources",
    "PromptTemplate",
    "ProxyLLM",
    "Resource",
    "ResourceUnion",
    "ResourcesUpdate",
]

logger = logging.getLogger(__name__)


class Resource(BaseModel):
    """Base of every resource; `resource_type` tells the kinds apart on the wire."""

    model_config = ConfigDict(extra="allow")

    resource_type: Any


class LLM(Resource):
    """An OpenAI-compatible LLM endpoint and the model/sampling settings to use with it."""

    resource_type: Literal["llm"] = "llm"
    endpoint: str
    model: str
    api_key: str | None = None
    sampling_parameters: dict[str, Any] = Field(default_factory=dict)

    def get_base_url(self, *args: Any, **kwargs: Any) -> str:
        """The base URL to send requests to (the endpoint itself)."""
        return str(self.__dict__["endpoint"])


class ProxyLLM(LLM):
    """An LLM behind the LLM proxy: its base URL is specific to each rollout and attempt."""

    resource_type: Literal["proxy_llm"] = "proxy_llm"  # type: ignore[assignment]

    def __getattribute__(self, name: str) -> Any:
        if name == "endpoint":
            logger.warning(
                "Reading ProxyLLM.endpoint directly skips the per-attempt route; use get_base_url(rollout_id, attempt_id)."
            )
        return super().__getattribute__(name)

    def get_base_url(self, rollout_id: str | None = None, attempt_id: str | None = None) -> str:
        """The endpoint with `/rollout/{rollout_id}/attempt/{attempt_id}` inserted before a trailing `/v1`."""
        endpoint = str(self.__dict__["endpoint"])
        if rollout_id is None and attempt_id is None:
            return endpoint
        if not isinstance(rollout_id, str) or not isinstance(attempt_id, str):
            raise ValueError("rollout_id and attempt_id must be strings or all be empty")
        if endpoint.endswith("/"):
            endpoint = endpoint[:-1]
        has_v1 = endpoint.endswith("/v1")
        if has_v1:
            endpoint = endpoint[: -len("/v1")]
        url = f"{endpoint}/rollout/{rollout_id}/attempt/{attempt_id}"
        return url + "/v1" if has_v1 else url

    def with_attempted_rollout(self, rollout: Any) -> LLM:
        """A plain `LLM` whose endpoint routes through the proxy for this rollout's attempt."""
        return LLM(
            endpoint=self.get_base_url(rollout.rollout_id, rollout.attempt.attempt_id),
            model=self.model,
            api_key=self.api_key,
            sampling_parameters=dict(self.sampling_parameters),
        )


class PromptTemplate(Resource):
    """A prompt template and the engine that renders it."""

    resource_type: Literal["prompt_template"] = "prompt_template"
    template: str
    engine: Literal["jinja", "f-string", "poml"]

    def format(self, **kwargs: Any) -> str:
        """Render the template with `kwargs` (only the `f-string` engine is supported)."""
        if self.engine == "f-string":
            return self.template.format(**kwargs)
        raise NotImplementedError(f"PromptTemplate.format supports only engine='f-string', not {self.engine!r}")


ResourceUnion = Annotated[LLM | ProxyLLM | PromptTemplate, Field(discriminator="resource_type")]
"""Any resource, told apart by `resource_type`."""

NamedResources = dict[str, ResourceUnion]
"""Resources by name, e.g. `{"main_llm": LLM(...), "system_prompt": PromptTemplate(...)}`."""


class ResourcesUpdate(BaseModel):
    """A versioned snapshot of named resources stored in the store."""

    model_config = ConfigDict(extra="allow")

    resources_id: str
    create_time: float
    update_time: float
    version: int = 1
    resources: NamedResources
