"""Helpers of the observability tests: a scripted agent that emits every kind of
event on request, and a `/metrics` scraper that reads samples with prometheus_client's
text parser."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from google.protobuf import json_format, struct_pb2

from agent_runtime import EventType, current_run, emit_chunk, emit_event, tool
from conftest import runtime_pb2


@tool
async def lookup(key: str) -> str:
    """Look a key up; the key `missing` fails.

    Args:
        key: what to look up
    """
    if key == "missing":
        raise KeyError(key)
    return key.upper()


class Scripted:
    """Does what its input asks, in this order: `llm` calls [[model, in, out], ...],
    `tool` lookups [key, ...], `custom` events [[name, data], ...], `chunks` to stream,
    `sleep` seconds, `fail` with an exception."""

    name = "scripted"
    tools = (lookup,)

    async def run(self, script: Any) -> Any:
        script = script if isinstance(script, dict) else {}
        runner = current_run().runner
        for model, input_tokens, output_tokens in script.get("llm", ()):
            runner.emit(EventType.LLM_START, {"model": model})
            runner.emit(EventType.LLM_END, {"model": model, "input_tokens": input_tokens,
                                            "output_tokens": output_tokens, "finish_reason": "stop"})
        for key in script.get("tool", ()):
            try:
                await lookup.invoke({"key": key}, call_id=f"call-{key}")
            except KeyError:
                pass
        for name, data in script.get("custom", ()):
            emit_event(name, data)
        for chunk in script.get("chunks", ()):
            emit_chunk(chunk)
        if script.get("sleep"):
            await asyncio.sleep(script["sleep"])
        if script.get("fail"):
            raise RuntimeError("scripted failure")
        return "done"


def request(script: dict[str, Any] | None = None, **fields: Any) -> runtime_pb2.InvokeRequest:
    """An InvokeRequest for the scripted agent."""
    value = json_format.ParseDict(script or {}, struct_pb2.Value())
    return runtime_pb2.InvokeRequest(agent="scripted", input=runtime_pb2.Payload(structured=value), **fields)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample served on `/metrics`, by (sample name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))

