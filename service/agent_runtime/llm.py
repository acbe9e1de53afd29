"""The OpenAI-compatible chat client: `provider/model` names, endpoints and keys
from settings and environment, timeouts, retries, and provider failures as
domain errors.

A model name is `provider/model` ("openai/gpt-4o-mini", "nvidia/meta/llama-3.1-8b-instruct",
"ollama/llama3.2"); a name without a slash is an OpenAI model. The endpoint is,
first found: the agent's `base_url`, the environment's `<PROVIDER>_BASE_URL`
(`OPENAI_BASE_URL`, `NVIDIA_BASE_URL`, ...), the provider's public default. The
API key: the agent's `api_key`, the variable its `api_key_env` names,
`<PROVIDER>_API_KEY`. A key is required only for a provider's public endpoint.

The `openai` SDK retries 408/409/429/5xx and connection errors with exponential
backoff (honouring `Retry-After`) up to `max_retries` times; what still fails is
`ProviderUnavailable` (an outage: retry later) or `ProviderRejected` (the request
itself is bad). `openai` is imported when a ChatModel is made (at start-up, not
with the package, and not by the first run, which would stall the event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .errors import AgentRuntimeError, ProviderRejected, ProviderUnavailable, ServerMisconfigured


@dataclass(frozen=True, slots=True)
class Provider:
    base_url: str
    needs_key: bool = True


PROVIDERS: dict[str, Provider] = {
    "openai": Provider("https://api.openai.com/v1"),
    "nvidia": Provider("https://integrate.api.nvidia.com/v1"),
    "groq": Provider("https://api.groq.com/openai/v1"),
    "openrouter": Provider("https://openrouter.ai/api/v1"),
    "together": Provider("https://api.together.xyz/v1"),
    "mistral": Provider("https://api.mistral.ai/v1"),
    "deepseek": Provider("https://api.deepseek.com/v1"),
    "ollama": Provider("http://localhost:11434/v1", needs_key=False),
    "vllm": Provider("http://localhost:8000/v1", needs_key=False),
    "litellm": Provider("http://localhost:4000/v1", needs_key=False),
}

RESERVED_SETTINGS = frozenset({"model", "messages", "tools", "stream", "stream_options", "response_format"})
_NO_KEY = "unused"  # the SDK insists on a key; local servers ignore it
_MAX_DETAIL = 300


def env_prefix(provider: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", provider.upper())


def split_model(name: str) -> tuple[str, str]:
    """`provider/model` as (provider, model); a bare model name is OpenAI's."""
    provider, sep, model = name.partition("/")
    if not sep:
        return "openai", name
    if not provider or not model:
        raise ValueError(f"model {name!r} is not `provider/model` (e.g. openai/gpt-4o-mini)")
    return provider.lower(), model


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """One tool call the model asked for; `arguments` is the model's JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ModelResponse:
    text: str
    tool_calls: tuple[ToolCallRequest, ...]
    finish_reason: str
    input_tokens: int
    output_tokens: int

    def message(self) -> dict[str, Any]:
        """The assistant message to put back into the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}
                for call in self.tool_calls]
        return message


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str
    api_key: str


class ChatModel:
    """One agent's model: resolves its endpoint per call and keeps one pooled
    client per event loop and endpoint."""

    def __init__(self, name: str, *, base_url: str | None = None, api_key: str | None = None,
                 api_key_env: str | None = None, timeout: float = 60.0, max_retries: int = 2,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.provider, self.model = split_model(name)
        self.name = f"{self.provider}/{self.model}"
        if timeout <= 0 or max_retries < 0:
            raise ValueError("request_timeout must be > 0 and max_retries >= 0")
        reserved = RESERVED_SETTINGS & set(settings or {})
        if reserved:
            raise ValueError(f"model_settings cannot set {sorted(reserved)}: the agent sets them")
        self.base_url = base_url
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.settings = dict(settings or {})
        import openai.resources.chat  # noqa: F401  (loaded now, not inside the first run)

        if self.provider not in PROVIDERS and not self._configured_base_url():
            raise ValueError(
                f"unknown model provider {self.provider!r} (of model {name!r}): give the agent a "
                f"base_url or set {env_prefix(self.provider)}_BASE_URL; known providers: "
                f"{', '.join(sorted(PROVIDERS))}")
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Endpoint, Any]] = (
            weakref.WeakKeyDictionary())

    def _configured_base_url(self) -> str | None:
        return self.base_url or os.environ.get(f"{env_prefix(self.provider)}_BASE_URL") or None

    def endpoint(self) -> Endpoint:
        """Where to call and with which key, from the settings and the environment now."""
        configured = self._configured_base_url()
        prefix = env_prefix(self.provider)
        key_env = self.api_key_env or f"{prefix}_API_KEY"
        key = self.api_key or os.environ.get(key_env) or ""
        provider = PROVIDERS.get(self.provider)
        if configured is None and provider is not None and provider.needs_key and not key:
            raise ServerMisconfigured(f"the server has no API key for model provider {self.provider!r}: "
                                      f"its operator must set {key_env} in the server's environment")
        return Endpoint(configured or provider.base_url, key or _NO_KEY)

    def _client(self, endpoint: Endpoint) -> Any:
        clients = self._clients.setdefault(asyncio.get_running_loop(), {})
        client = clients.get(endpoint)
        if client is None:
            import openai

            client = clients[endpoint] = openai.AsyncOpenAI(
                base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=self.max_retries,
                timeout=openai.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
        return client

    async def aclose(self) -> None:
        """Close this loop's clients (their pooled connections)."""
        clients = self._clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()

    async def complete(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] = (),
                       response_format: Mapping[str, Any] | None = None,
                       on_text: Callable[[str], Awaitable[None]] | None = None) -> ModelResponse:
        """One chat completion; with `on_text`, streamed, each text delta awaited by it
        (so a slow consumer slows the reading of the stream).

        Cancelling the caller closes the HTTP request or stream to the provider.
        """
        endpoint = self.endpoint()
        client = self._client(endpoint)
        request: dict[str, Any] = {**self.settings, "model": self.model, "messages": list(messages)}
        if tools:
            request["tools"] = list(tools)
        if response_format is not None:
            request["response_format"] = dict(response_format)
        import openai

        try:
            if on_text is None:
                completion = await client.chat.completions.create(**request)
                return _response(completion)
            stream = await client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True})
            async with stream:
                return await _collect(stream, on_text)
        except openai.OpenAIError as exc:
            raise self._domain_error(exc, endpoint) from exc
        except json.JSONDecodeError as exc:
            raise ProviderUnavailable(f"model provider {self.provider!r} answered with malformed JSON: "
                                      f"{exc}") from exc

    def _domain_error(self, exc: Exception, endpoint: Endpoint) -> AgentRuntimeError:
        import openai

        who = f"model provider {self.provider!r}"
        if isinstance(exc, openai.APITimeoutError):
            return ProviderUnavailable(f"{who} did not answer within {self.timeout:g}s "
                                       f"({self.max_retries} retries)")
        if isinstance(exc, openai.APIConnectionError):
            return ProviderUnavailable(f"cannot reach {who} at {endpoint.base_url} "
                                       f"({self.max_retries} retries)")
        if isinstance(exc, openai.APIStatusError):
            code, detail = exc.status_code, _detail(exc)
            if code in (401, 403):
                return ProviderUnavailable(f"{who} refused this server's credentials (HTTP {code}): {detail}")
            if code in (408, 409, 429) or code >= 500:
                return ProviderUnavailable(f"{who} is unavailable (HTTP {code} after {self.max_retries} "
                                           f"retries): {detail}")
            return ProviderRejected(f"{who} rejected the request (HTTP {code}): {detail}")
        return ProviderUnavailable(f"{who} reported an error: {_detail(exc)}")


def _detail(exc: Exception) -> str:
    """The provider's own error message (from the error body when there is one)."""
    body = getattr(exc, "body", None)
    text = body.get("message") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        text = getattr(exc, "message", None) or str(exc)
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def _response(completion: Any) -> ModelResponse:
    if not completion.choices:
        raise ProviderUnavailable("the model provider answered with no choices")
    choice = completion.choices[0]
    message = choice.message
    calls = tuple(ToolCallRequest(call.id, call.function.name, call.function.arguments or "")
                  for call in message.tool_calls or () if getattr(call, "function", None) is not None)
    usage = completion.usage
    return ModelResponse(message.content or "", calls, choice.finish_reason or "",
                         usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)


async def _collect(stream: Any, on_text: Callable[[str], Awaitable[None]]) -> ModelResponse:
    """Fold a streamed completion into one response, handing text deltas on as they come."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
    finish_reason, input_tokens, output_tokens = "", 0, 0
    async for chunk in stream:
        if chunk.usage is not None:
            input_tokens, output_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.content:
            text.append(delta.content)
            await on_text(delta.content)
        for part in delta.tool_calls or ():
            call = calls.setdefault(part.index, ["", "", ""])
            call[0] = part.id or call[0]
            if part.function is not None:
                call[1] = call[1] or part.function.name or ""
                call[2] += part.function.arguments or ""
        finish_reason = choice.finish_reason or finish_reason
    if not finish_reason:
        raise ProviderUnavailable("the model provider's stream ended before the answer was complete")
    tool_calls = tuple(ToolCallRequest(call_id or f"call_{index}", name, arguments)
                       for index, (call_id, name, arguments) in sorted(calls.items()))
    return ModelResponse("".join(text), tool_calls, finish_reason, input_tokens, output_tokens)
