"""Admission invariants under a randomized mix of 10,000 runs (ok, raise, SystemExit,
slow, hung; callers that wait, stream, cancel or set deadlines), most through the
Python API and a good share over real gRPC:

- agents executing at once (not counting abandoned ones, which hold no slot by
  design) never exceed `max_concurrency`;
- at the end every slot, queue place and per-user count is free;
- every started run has exactly one end event, after its start;
- admission's `closed` flag (what a server asks of each call) is `refuses_every_run()`
  whenever an event is seen.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import grpc
import pytest

from agent_runtime import (AgentRuntimeError, EventType, Overloaded, RunStatus, SessionManager,
                           current_run, emit_chunk)
from conftest import runtime_pb2 as pb
from conftest import stub

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run

LIMIT = 4
SETTINGS = dict(max_concurrency=LIMIT, max_queue=12, queue_timeout=0.5, per_user_limit=5,
                cancel_grace=0.02)
BEHAVIOURS = ["ok"] * 40 + ["slow"] * 25 + ["raise"] * 10 + ["sysexit"] * 3 + ["stream"] * 18 + ["hung"] * 4
CALLERS = ["wait"] * 45 + ["stream"] * 20 + ["cancel"] * 15 + ["deadline"] * 15 + ["leave"] * 5


class Mixed:
    """Does what its input says; counts the agents executing at once."""

    name = "mixed"

    def __init__(self) -> None:
        self.executing: set = set()
        self.peak = 0
        self.entered = 0

    async def run(self, input: str):
        runner = current_run().runner
        self.executing.add(runner)
        self.entered += 1
        self.peak = max(self.peak, sum(1 for r in self.executing if not r.abandoned))
        try:
            if input == "ok":
                return "ok"
            if input == "slow":
                await asyncio.sleep(0.002)
                return "slow"
            if input == "raise":
                raise ValueError("boom")
            if input == "sysexit":
                raise SystemExit(3)
            if input == "stream":
                for piece in ("a", "b", "c"):
                    emit_chunk(piece)
                    await asyncio.sleep(0)
                return "abc"
            loop = asyncio.get_running_loop()
            until = loop.time() + 0.1
            while loop.time() < until:  # hung: swallows cancellation for a while
                try:
                    await asyncio.sleep(until - loop.time())
                except asyncio.CancelledError:
                    pass
            return "hung"
        finally:
            self.executing.discard(runner)


class Ledger:
    """Checks each run's events: one start, then one end; and the admission gate's flag."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.ended: Counter = Counter()
        self.statuses: Counter = Counter()
        self.out_of_order = 0
        self.gate: Counter = Counter()  # (closed, as it should be) at each event

    def on_event(self, event) -> None:
        admission = event.run.runner.manager.admission
        self.gate[admission.closed, admission.refuses_every_run()] += 1
        run_id = event.run.run_id
        if event.type is EventType.RUN_START:
            self.started.add(run_id)
        elif event.type is EventType.RUN_END:
            if run_id not in self.started:
                self.out_of_order += 1
            self.ended[run_id] += 1
            self.statuses[event.data["status"]] += 1


async def settle(manager: SessionManager) -> None:
    for _ in range(300):
        if not manager.abandoned and not manager.runs:
            return
        await asyncio.sleep(0.01)


def assert_invariants(agent: Mixed, ledger: Ledger, manager: SessionManager) -> None:
    admission = manager.admission
    assert agent.peak <= LIMIT
    assert agent.peak == LIMIT  # the limit was reached: the test exercised it
    assert not agent.executing
    assert admission.in_use == 0 and admission.waiting == 0
    assert set(admission.running.values()) <= {0} and set(admission.queued.values()) <= {0}
    assert admission._per_user == {}
    assert not manager.runs and manager.abandoned == 0
    assert ledger.out_of_order == 0
    assert set(ledger.ended) == ledger.started
    assert set(ledger.gate) == {(False, False), (True, True)}, ledger.gate  # right, and both seen
    assert not admission.closed
    assert set(ledger.ended.values()) == {1}
    assert ledger.statuses.keys() >= {RunStatus.OK, RunStatus.ERROR, RunStatus.CANCELLED, RunStatus.TIMEOUT}


async def python_caller(manager: SessionManager, rng: random.Random, outcomes: Counter) -> None:
    behaviour, caller = rng.choice(BEHAVIOURS), rng.choice(CALLERS)
    timeout = rng.uniform(0.001, 0.004) if caller == "deadline" else 0.05
    try:
        async with manager.session(user_id=f"u{rng.randrange(6)}") as session:
            async with session.run(behaviour, timeout=timeout) as runner:
                if caller == "cancel":
                    task = asyncio.ensure_future(runner.result())
                    await asyncio.sleep(rng.choice((0, 0.001)))
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                elif caller in ("stream", "leave"):
                    events = runner.events()
                    async for event in events:
                        if caller == "leave" and event.type is EventType.CHUNK:
                            break  # the client goes away mid-stream
                    await events.aclose()
                else:
                    await runner.result()
        outcomes["completed"] += 1
    except Overloaded:
        outcomes["refused"] += 1
    except AgentRuntimeError as exc:
        outcomes[type(exc).__name__] += 1


async def workers(count: int, calls_each: int, call) -> None:
    """`count` concurrent callers (more than slots + queue places), each making calls in turn."""

    async def worker() -> None:
        for _ in range(calls_each):
            await call()

    await asyncio.gather(*(worker() for _ in range(count)))


async def test_ten_thousand_runs_keep_the_semaphore_exact(serve, channel_to):
    rng = random.Random(20261123)

    # 8,000 runs through the Python API
    agent, ledger = Mixed(), Ledger()
    manager = SessionManager(agent, sinks=[ledger], **SETTINGS)
    outcomes: Counter = Counter()
    await workers(20, 400, lambda: python_caller(manager, rng, outcomes))
    await settle(manager)
    assert sum(outcomes.values()) == 8000
    assert outcomes["completed"] > 4000 and outcomes["refused"] > 0, outcomes
    assert_invariants(agent, ledger, manager)

    # 2,000 runs over real gRPC
    grpc_agent, grpc_ledger = Mixed(), Ledger()
    server = await serve(grpc_agent, sinks=[grpc_ledger], **SETTINGS)
    clients = [stub(channel_to(server.address)) for _ in range(4)]
    codes: Counter = Counter()

    async def grpc_caller() -> None:
        client = rng.choice(clients)
        behaviour, caller = rng.choice(BEHAVIOURS), rng.choice(CALLERS)
        request = pb.InvokeRequest(input=pb.Payload(text=behaviour), user_id=f"u{rng.randrange(6)}")
        request.timeout.FromMilliseconds(50)
        deadline = rng.uniform(0.002, 0.01) if caller == "deadline" else 10
        try:
            if caller in ("stream", "leave"):
                call = client.InvokeStream(request, timeout=deadline)
                async for event in call:
                    if caller == "leave" and event.HasField("chunk"):
                        call.cancel()
                        break
                codes["OK" if caller == "stream" else "CANCELLED"] += 1
            else:
                call = client.Invoke(request, timeout=deadline)
                if caller == "cancel":
                    await asyncio.sleep(rng.choice((0, 0.001)))
                    call.cancel()
                await call
                codes["OK"] += 1
        except asyncio.CancelledError:
            codes["CANCELLED"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1

    await workers(20, 100, grpc_caller)
    await settle(server.manager)
    assert sum(codes.values()) == 2000
    assert set(codes) <= {"OK", "INTERNAL", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    assert codes["OK"] > 500 and codes["INTERNAL"] > 0, codes
    assert_invariants(grpc_agent, grpc_ledger, server.manager)
