"""One structured log line per run end: JSON with `--log-format json`, key=value text
otherwise; with the run id, trace id, agent, status, duration and queue wait."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from opentelemetry.sdk.trace import TracerProvider

from conftest import runtime_pb2, stub
from observed import Scripted, request


async def _one_ok_one_failed(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        client = stub(channel)
        reply = await client.Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="hi")))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(
                structured=json_format.ParseDict({"tool": "nope"}, struct_pb2.Value()))))
    return reply.run_id


async def _log_of_two_runs(server_process, *flags: str) -> tuple[str, list[str]]:
    proc = await asyncio.to_thread(server_process, *flags)
    run_id = await _one_ok_one_failed(proc.address)
    proc.signal()
    assert await asyncio.to_thread(proc.wait) == 0
    return run_id, proc.proc.stderr.read().splitlines()


async def test_json_log_line_per_run_end(server_process):
    run_id, lines = await _log_of_two_runs(server_process, "--log-format", "json")
    entries = [json.loads(line) for line in lines]  # every line is JSON
    ended = [entry for entry in entries if entry["message"] == "run ended"]
    assert len(ended) == 2
    ok, failed = ended
    assert ok["run_id"] == run_id and ok["agent"] == "echo" and ok["status"] == "ok"
    assert ok["level"] == "info" and ok["logger"] == "agent_runtime.runs" and ok["trace_id"] == ""
    assert ok["duration_s"] >= 0 and ok["queue_wait_s"] >= 0 and "error" not in ok
    assert failed["status"] == "error" and failed["level"] == "warning" and "nope" in failed["error"]


async def test_text_log_line_per_run_end(server_process):
    run_id, lines = await _log_of_two_runs(server_process)
    ended = [line for line in lines if "agent_runtime.runs: run ended" in line]
    assert len(ended) == 2
    assert f"run_id={run_id} trace_id= agent=echo status=ok duration_s=" in ended[0]
    assert "queue_wait_s=" in ended[0] and "status=error" in ended[1]


async def test_log_line_carries_the_runs_trace_id(serve, channel_to, caplog):
    provider = TracerProvider()
    caplog.set_level(logging.INFO, logger="agent_runtime.runs")  # before the server is built, as --log-level is
    server = await serve(Scripted(), tracer_provider=provider)
    reply = await stub(channel_to(server.address)).Invoke(request())
    (record,) = [r for r in caplog.records if r.name == "agent_runtime.runs"]
    assert record.fields["trace_id"] == reply.trace_id != ""
    assert record.fields["run_id"] == reply.run_id
    provider.shutdown()


async def test_no_log_work_when_run_lines_are_off(serve, channel_to, caplog):
    server = await serve(Scripted())
    with caplog.at_level(logging.WARNING, logger="agent_runtime.runs"):
        await stub(channel_to(server.address)).Invoke(request())
    assert not [r for r in caplog.records if r.name == "agent_runtime.runs"]
