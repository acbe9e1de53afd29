"""The Python client against two server replicas (two processes) with round_robin: calls
spread over both, and retries carry calls over when a replica goes away or drains."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import pytest

from agent_runtime.client import SyncAgentRuntimeClient
from conftest import ROOT

CALLS = 20


@pytest.fixture
def replicas(server_process):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ["PYTHONPATH"]])}
    procs = [server_process("--agent", "interop_agents:whoami", "--drain-timeout", "20", env=env)
             for _ in range(2)]
    return procs, "ipv4:" + ",".join(proc.address for proc in procs)


def served_by(client: SyncAgentRuntimeClient, calls: int = CALLS) -> Counter:
    return Counter(client.invoke(str(i), timeout=30).output["pid"] for i in range(calls))


def test_round_robin_spreads_calls_over_both_replicas(replicas):
    procs, target = replicas
    with SyncAgentRuntimeClient(target) as client:
        client.health(timeout=10)
        pids = served_by(client)
    assert set(pids) == {proc.proc.pid for proc in procs}
    assert sum(pids.values()) == CALLS


def test_calls_succeed_when_a_replica_is_killed(replicas):
    procs, target = replicas
    with SyncAgentRuntimeClient(target) as client:
        assert len(served_by(client)) == 2
        procs[0].proc.kill()
        procs[0].proc.wait(10)
        pids = served_by(client)  # every call succeeds: refused connections are retried elsewhere
    assert set(pids) == {procs[1].proc.pid}


def test_calls_go_to_the_other_replica_while_one_drains(replicas):
    procs, target = replicas
    draining = procs[0]
    started, ended = threading.Event(), []

    def slow_run() -> None:
        with SyncAgentRuntimeClient(draining.address) as direct:
            for event in direct.stream({"sleep": 2}, timeout=30):
                if event.kind == "started":
                    started.set()
                ended.append(event)

    holder = threading.Thread(target=slow_run)
    holder.start()
    assert started.wait(30)
    draining.signal(signal.SIGTERM)  # the run in progress may finish; new runs are refused there
    with SyncAgentRuntimeClient(target) as client:
        pids = served_by(client)
    holder.join(30)
    assert set(pids) == {procs[1].proc.pid}
    assert ended[-1].kind == "ended" and ended[-1].data["output"]["pid"] == draining.proc.pid
    assert draining.wait(30) == 0
