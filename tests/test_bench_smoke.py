"""The benchmark harness works: a smoke run end to end, and its proof of success.

Figures are never asserted (two shared cores): only that the harness runs,
verifies calls on the server side, and writes its report.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

from conftest import ROOT, runtime_pb2

from bench.h2load import LoadResult
from bench.harness import VerificationError, verify
from bench.servers import bare_echo
from bench.servers.counting import counted_all
from bench.servers.sidechannel import STATUS_NAMES, new_counts


def test_smoke_run_writes_a_verified_report(tmp_path):
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = out.read_text()
    for heading in ("## Machine", "## Targets", "## Unary echo", "## Streaming runs of 100 chunks",
                    "## Overload", "## Memory and liveness", "## Instructions per call (callgrind)"):
        assert heading in report
    assert "| unary c=256 | (b) runtime |" in report
    assert "overload: rejected calls/s / served calls/s" in report
    assert (tmp_path / "benchmarks.png").read_bytes().startswith(b"\x89PNG")
    assert "[PASS]" in proc.stdout or "[FAIL]" in proc.stdout


def _result(succeeded: int, started: int, failed: int = 0) -> LoadResult:
    return LoadResult(1.0, float(succeeded), started, succeeded, succeeded, failed)


def test_verify_accepts_server_counts_within_what_h2load_saw():
    assert verify("x", {"OK": 10}, {"OK": 110, "in_use": 3}, _result(100, 104), "OK", 4) == 100


@pytest.mark.parametrize("after, result, complaint", [
    ({"OK": 90}, _result(100, 100), "server counted 90 OK calls"),
    ({"OK": 100, "INTERNAL": 1}, _result(100, 100), "unexpected statuses {'INTERNAL': 1}"),
    ({"OK": 100, "CANCELLED": 9}, _result(100, 100), "unexpected statuses {'CANCELLED': 9}"),
    ({"OK": 200}, _result(100, 104), "server counted 200 OK calls"),
    ({"OK": 100}, _result(100, 101, failed=1), "h2load saw 1 failed"),
])
def test_verify_rejects_counts_that_do_not_match(after, result, complaint):
    with pytest.raises(VerificationError, match=complaint.replace("{", r"\{").replace("}", r"\}")):
        verify("x", {}, after, result, "OK", 4)


async def test_counting_wrapper_counts_final_statuses():
    async def invoke(request, context):
        if request.input.text == "full":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "over capacity")
        if request.input.text == "crash":
            raise ValueError("boom")
        return runtime_pb2.InvokeResponse()

    async def invoke_stream(request, context):
        yield runtime_pb2.InvokeEvent(seq=1)
        if request.input.text == "wait":
            await asyncio.sleep(30)

    counts = new_counts()
    handlers = counted_all(bare_echo.handlers(invoke, invoke_stream), counts)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("agent_runtime.v1.AgentRuntime",
                                                                          handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary("/agent_runtime.v1.AgentRuntime/Invoke",
                                        request_serializer=runtime_pb2.InvokeRequest.SerializeToString,
                                        response_deserializer=runtime_pb2.InvokeResponse.FromString)
            stream = channel.unary_stream("/agent_runtime.v1.AgentRuntime/InvokeStream",
                                          request_serializer=runtime_pb2.InvokeRequest.SerializeToString,
                                          response_deserializer=runtime_pb2.InvokeEvent.FromString)

            def request(text):
                return runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text=text))

            await unary(request("hi"))
            for text, code in (("full", grpc.StatusCode.RESOURCE_EXHAUSTED), ("crash", grpc.StatusCode.UNKNOWN)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await unary(request(text))
                assert caught.value.code() is code
            assert [event.seq async for event in stream(request("hi"))] == [1]
            call = stream(request("wait"))
            await call.read()
            call.cancel()
            for _ in range(100):
                if counts[STATUS_NAMES.index("CANCELLED")]:
                    break
                await asyncio.sleep(0.05)
    finally:
        await server.stop(0)
    by_name = {name: n for name, n in zip(STATUS_NAMES, counts) if n}
    assert by_name == {"OK": 2, "RESOURCE_EXHAUSTED": 1, "UNKNOWN": 1, "CANCELLED": 1}
