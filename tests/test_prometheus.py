"""A real Prometheus (Debian's `prometheus`) scrapes a running server under a load of
concurrent runs; the series are read back through Prometheus's HTTP API. The Grafana
dashboard's queries are run against the same Prometheus and may only name metrics the
server exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from agent_runtime.echo import echo_agent
from conftest import ROOT, free_port, stub
from observed import Scripted, request, scrape

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
LIMIT = 4


class Prometheus:
    """`prometheus` on loopback scraping one target every 100 ms, with its data in `workdir`."""

    def __init__(self, target: str, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run scripts/install-test-deps")
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "100ms", "scrape_timeout": "100ms", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "agent-runtime", "static_configs": [{"targets": [target]}]}]}))
        self.address = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.address}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(self, path: str, **params: str) -> dict:
        url = f"http://{self.address}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def query(self, expr: str) -> list[dict]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, expected: float, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.value(expr) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} is {self.value(expr)}, expected {expected}")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stderr.close()


@pytest.fixture
async def scraped(serve, tmp_path):
    """A server with LIMIT slots and /metrics, and a Prometheus that has scraped it once."""
    port = free_port()
    server = await serve([Scripted(), echo_agent], metrics_port=port, max_concurrency=LIMIT, max_queue=100)
    prometheus = Prometheus(f"127.0.0.1:{port}", tmp_path)
    try:
        await asyncio.to_thread(prometheus.wait_ready)
        await asyncio.to_thread(prometheus.wait_for, 'up{job="agent-runtime"}', 1)
        yield server, prometheus
    finally:
        await asyncio.to_thread(prometheus.stop)


async def test_prometheus_sees_occupancy_within_the_limit_and_every_run(scraped, channel_to):
    server, prometheus = scraped
    client = stub(channel_to(server.address))
    ok, failing = 20, 4
    calls = [client.Invoke(request({"sleep": 0.4})) for _ in range(ok)]
    calls += [client.Invoke(request({"sleep": 0.4, "fail": True})) for _ in range(failing)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(o, grpc.aio.AioRpcError) for o in outcomes) == failing

    # the client may see a status a moment before the server's wrapper counts the call,
    # and Prometheus scrapes every 100 ms: wait for each exact count to show
    total = 'agent_runtime_runs_total{agent="scripted",status="%s"}'
    for expr, count in ((total % "ok", ok), (total % "error", failing),
                        ('sum(grpc_server_handled_total{grpc_method="Invoke"})', ok + failing),
                        ('grpc_server_handled_total{grpc_method="Invoke",grpc_code="INTERNAL"}', failing),
                        ('agent_runtime_queue_wait_seconds_count{agent="scripted"}', ok + failing),
                        ('agent_runtime_runs_in_flight{agent="scripted"}', 0)):
        await asyncio.to_thread(prometheus.wait_for, expr, count)
    value = prometheus.value
    # 24 runs of 0.4 s through 4 slots: the peak is exactly the limit, never above it
    assert value('max_over_time(agent_runtime_runs_in_flight{agent="scripted"}[5m])') == LIMIT
    assert value("max_over_time(agent_runtime_concurrency_limit[5m])") == LIMIT
    assert value('max_over_time(agent_runtime_runs_queued{agent="scripted"}[5m])') > 0


def _dashboard_queries() -> list[str]:
    """Every panel query, with the dashboard's `$agent` variable as "all agents"."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())]
    return [query.replace("$agent", ".*") for query in queries]


def _variable_metrics() -> set[str]:
    """Metric names the dashboard's variables read (`label_values(metric, label)`)."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {match for variable in dashboard["templating"]["list"] if variable["type"] == "query"
            for match in re.findall(r"label_values\(\s*(\w+)", variable["definition"])}


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left after strings, label matchers,
    ranges and `by (...)` clauses are gone, minus functions and keywords."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    keywords = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
    return {word for word in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr)
            if word not in keywords}


def test_metric_names_are_found_in_promql():
    assert _metric_names('histogram_quantile(0.99, sum by (le, agent) (rate(a_bucket{agent=~"x"}[5m])))') \
        == {"a_bucket"}
    assert _metric_names("sum(b) / max(c > 0) - sum without (x) (d offset 5m)") == {"b", "c", "d"}


async def test_dashboard_queries_only_name_exported_metrics_and_run(scraped, channel_to):
    server, prometheus = scraped
    client = stub(channel_to(server.address))
    await client.Invoke(request({"llm": [["m1", 3, 2]], "tool": ["a"], "chunks": ["x"]}))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.Invoke(request({"fail": True}))
    exported = set()
    for name, _ in scrape(server.config.metrics_port):
        exported.add(name)
    assert _variable_metrics() <= exported
    queries = _dashboard_queries()
    assert queries, "the dashboard has no queries"
    for expr in queries:
        names = _metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} names metrics the server does not export: {names - exported}"
        prometheus.query(expr)  # valid PromQL that Prometheus evaluates
