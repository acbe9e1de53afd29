"""Metrics through a MeterProvider handed in by an embedding application."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from conftest import runtime_pb2 as pb
from conftest import stub


def points(reader: InMemoryMetricReader) -> dict[str, list]:
    found: dict[str, list] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def value(found: dict[str, list], name: str, **attributes: str):
    matching = [p for p in found[name] if all(p.attributes.get(k) == v for k, v in attributes.items())]
    assert len(matching) == 1, (name, attributes, found.get(name))
    point = matching[0]
    return point.count if hasattr(point, "bucket_counts") else point.value


async def test_meter_provider_gets_the_runtime_metrics(serve, channel_to):
    gate = asyncio.Event()

    async def gated(input):
        if input == "fail":
            raise ValueError("no")
        if input == "wait":
            await gate.wait()
        return input

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = await serve(gated, max_concurrency=1, max_queue=0, meter_provider=provider)
    client = stub(channel_to(server.address))
    for _ in range(3):
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="ok")))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="fail")))
    waiting = asyncio.ensure_future(client.Invoke(pb.InvokeRequest(input=pb.Payload(text="wait"))))
    while not server.manager.admission.in_use:
        await asyncio.sleep(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.Invoke(pb.InvokeRequest(input=pb.Payload(text="ok")))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    found = points(reader)
    assert value(found, "agent_runtime_concurrency_limit") == 1
    assert value(found, "agent_runtime_runs_in_flight", agent="gated") == 1
    assert value(found, "agent_runtime_runs_queued", agent="gated") == 0
    gate.set()
    await waiting

    found = points(reader)
    assert value(found, "agent_runtime_runs", agent="gated", status="ok") == 4
    assert value(found, "agent_runtime_runs", agent="gated", status="error") == 1
    assert value(found, "agent_runtime_runs", agent="gated", status="rejected") == 1
    assert value(found, "agent_runtime_run_duration_seconds", agent="gated", status="ok") == 4
    assert value(found, "agent_runtime_queue_wait_seconds", agent="gated") == 5
    assert value(found, "agent_runtime_runs_in_flight", agent="gated") == 0
    assert value(found, "grpc_server_handled", grpc_method="Invoke", grpc_code="OK") == 4
    assert value(found, "grpc_server_handled", grpc_method="Invoke", grpc_code="RESOURCE_EXHAUSTED") == 1
    assert value(found, "grpc_server_handling_seconds", grpc_method="Invoke") == 6
    assert server.metrics is None  # no /metrics port was asked for
    provider.shutdown()
