"""`CriticChat`: the chat calls APO makes to its critic model, on any OpenAI-compatible endpoint.

Either an `openai.AsyncOpenAI` client (or anything with the same `chat.completions.create`) is given, or the
endpoint comes from `base_url`/`api_key`, else `OPENAI_BASE_URL`/`OPENAI_API_KEY`, and is called with httpx (the
client the LLM proxy uses), so APO needs no `openai` package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_BASE_URL", "CriticChat", "CriticError"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""The endpoint used when neither `base_url` nor `OPENAI_BASE_URL` is set."""


class CriticError(RuntimeError):
    """The critic endpoint failed or answered something that is not a chat completion."""


class CriticChat:
    """Chat completions from the critic model.

    Args:
        client: an `openai.AsyncOpenAI`-like client; when given, `base_url`/`api_key` are not used.
        base_url: the endpoint's base URL (the part before `/chat/completions`); default `OPENAI_BASE_URL`, else
            OpenAI's.
        api_key: sent as a bearer token; default `OPENAI_API_KEY`. Required for OpenAI's own endpoint.
        timeout: seconds allowed for one completion.
    """

    def __init__(
        self, client: Any = None, *, base_url: str | None = None, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        if client is not None and not hasattr(getattr(getattr(client, "chat", None), "completions", None), "create"):
            raise TypeError(
                f"async_openai_client must be an openai.AsyncOpenAI-like client with chat.completions.create, "
                f"got {type(client).__name__}"
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.client = client
        self.timeout = timeout
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if client is None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"the critic's base_url must start with http:// or https://, got {self.base_url!r}")
        if client is None and self.base_url == DEFAULT_BASE_URL and not self.api_key:
            raise ValueError(
                "APO's critic would call OpenAI's endpoint without a key: set OPENAI_API_KEY, or point it at another "
                "OpenAI-compatible endpoint with OPENAI_BASE_URL (or APO(base_url=...), or pass async_openai_client)"
            )

    async def complete(
        self, model: str, messages: Sequence[dict[str, str]], *, temperature: float, max_tokens: int | None
    ) -> str:
        """The text of one chat completion of `messages` by `model`.

        Raises:
            CriticError: the endpoint failed, answered an error status, or sent no message text.
        """
        body: dict[str, Any] = {"model": model, "messages": list(messages), "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if self.client is not None:
            try:
                response = await self.client.chat.completions.create(**body)
            except Exception as exc:  # the client's own errors vary by version; report them as one kind
                raise CriticError(f"the critic model {model!r} failed: {type(exc).__name__}: {exc}") from exc
            choices = getattr(response, "choices", None) or []
            text = getattr(getattr(choices[0], "message", None), "content", None) if choices else None
        else:
            text = await self._post(body)
        if not isinstance(text, str):
            raise CriticError(f"the critic model {model!r} sent no message text")
        return text

    async def _post(self, body: dict[str, Any]) -> Any:
        from agl.optional import import_optional

        httpx = import_optional("httpx", "apo", "APO's critic calls (without an async_openai_client)")

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url}/chat/completions"
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise CriticError(f"the critic endpoint {url} could not be reached: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise CriticError(f"the critic endpoint {url} answered {response.status_code}: {response.text[:500]}")
        try:
            return response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CriticError(f"the critic endpoint {url} answered something that is not a chat completion") from exc
