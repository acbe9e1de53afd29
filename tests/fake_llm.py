"""A fake OpenAI-compatible chat completions server for tests (HTTP/1.1 on loopback).

It speaks the real protocol (JSON answers, SSE streams with `data: [DONE]`,
tool calls, usage, error bodies) and answers each request with the next
scripted reply; a request with no reply left gets HTTP 500 naming that. It
records every request body, and sets `disconnected` when a client closes a
stream or a hanging request before the answer ended.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Reply:
    """One scripted answer: `text`, or `tool_calls` [(name, arguments JSON text)], or an
    HTTP error `status`, or `hang` (never answer). A streamed answer may be `cut` (the
    connection closes half way, with no finish reason and no [DONE]) or end in an SSE
    `stream_error`; `garbage` is a 200 answer whose body is not JSON; `no_choices` one
    with an empty `choices` list."""

    text: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    chunk_delay: float = 0.0
    usage: tuple[int, int] = (11, 7)
    cut: bool = False
    stream_error: str = ""
    garbage: bool = False
    no_choices: bool = False


class FakeLLM:
    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.disconnected = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def user_messages(self, request: int = -1) -> list[str]:
        """The user messages the model was sent in one request (the last by default), oldest first."""
        return [m["content"] for m in self.requests[request]["messages"] if m["role"] == "user"]

    # -- scripting ---------------------------------------------------------
    def reply(self, text: str = "", **kwargs: Any) -> "FakeLLM":
        self.script.append(Reply(text=text, **kwargs))
        return self

    def call(self, *calls: tuple[str, Any], **kwargs: Any) -> "FakeLLM":
        """Ask for tool calls: (name, arguments dict or raw JSON text) each."""
        self.script.append(Reply(tool_calls=[
            (name, args if isinstance(args, str) else json.dumps(args)) for name, args in calls], **kwargs))
        return self

    def fail(self, status: int, message: str = "scripted failure", **headers: str) -> "FakeLLM":
        self.script.append(Reply(text=message, status=status, headers=headers))
        return self

    def hang(self) -> "FakeLLM":
        self.script.append(Reply(hang=True))
        return self

    # -- serving -----------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            if self._handlers:
                await asyncio.wait(self._handlers)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        handler = asyncio.current_task()
        self._handlers.add(handler)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode().split(" ", 2)
        headers = {}
        while (header := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method != "POST" or path != CHAT_PATH:
            await _send_json(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return True
        request = json.loads(body)
        request["_headers"] = headers
        self.requests.append(request)
        reply = self.script.popleft() if self.script else Reply(text="fake LLM: no scripted reply left",
                                                                status=500)
        if reply.status != 200:
            await _send_json(writer, reply.status, {"error": {
                "message": reply.text, "type": "invalid_request_error" if reply.status < 500 else "server_error",
                "code": None}}, reply.headers)
            return True
        if reply.hang:
            await self._await_disconnect(reader)
            return False
        if request.get("stream"):
            await self._stream(request, reply, reader, writer)
            return False
        if reply.garbage:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{not json")
            await writer.drain()
            return True
        await _send_json(writer, 200, _completion(request, reply))
        return True

    async def _await_disconnect(self, reader: asyncio.StreamReader) -> None:
        if not await reader.read(1):
            self.disconnected.set()

    async def _stream(self, request: dict[str, Any], reply: Reply, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        watcher = asyncio.ensure_future(self._await_disconnect(reader))
        chunks = _chunks(request, reply)
        if reply.cut:
            chunks = chunks[:len(chunks) // 2]
        if reply.stream_error:
            chunks = chunks[:2] + [{"error": {"message": reply.stream_error, "type": "server_error"}}]
        try:
            for chunk in chunks:
                if watcher.done():
                    return
                writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await writer.drain()
                if reply.chunk_delay:
                    await asyncio.wait((watcher,), timeout=reply.chunk_delay)
            if reply.cut:
                return
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        finally:
            watcher.cancel()


async def _send_json(writer: asyncio.StreamWriter, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
                 f"{extra}\r\n".encode() + data)
    await writer.drain()


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(reply.tool_calls)]
    choices = [] if reply.no_choices else [{"index": 0, "message": message, "logprobs": None,
                                            "finish_reason": "tool_calls" if reply.tool_calls else "stop"}]
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": choices, "usage": _usage(reply)}


def _chunks(request: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    """The SSE chunks of a reply: words of text, or each tool call's name then its
    arguments in two pieces; then the finish reason and (when asked) the usage."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                "model": request["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    words = reply.text.split(" ")
    chunks += [chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(words) if reply.text]
    for i, (name, args) in enumerate(reply.tool_calls):
        half = len(args) // 2
        chunks.append(chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                             "function": {"name": name, "arguments": args[:half]}}]}))
        chunks.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]}))
    chunks.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
    if (request.get("stream_options") or {}).get("include_usage"):
        chunks.append({**chunk({}), "choices": [], "usage": _usage(reply)})
    return chunks
