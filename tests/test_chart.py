"""The Helm chart, rendered with real Helm: lint, every object against the Kubernetes
OpenAPI schemas of two Kubernetes versions, what the objects say, and values the
schema or the templates refuse with a message that names the mistake."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

from agent_runtime.cli import build_parser, load_server_config
from chart_render import (CHART, FULLNAME, NAMESPACE, RELEASE, config_file, config_mount_path, container,
                          kinds, objects, one, pod_spec, render, with_image)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ("1.27", kubernetes_validate.latest_version())
# Custom resources kubernetes-validate has no schema for; checked field by field below.
CUSTOM_KINDS = {"ServiceMonitor", "GRPCRoute"}
SELECTOR = {"app.kubernetes.io/name": "agent-runtime", "app.kubernetes.io/instance": RELEASE}

VALUE_SETS = {
    "defaults": {},
    "autoscaling": {"autoscaling": {"enabled": True, "queueDepth": {"enabled": True},
                                    "inFlight": {"enabled": True, "averageValue": "4"}}},
    "headless": {"service": {"headless": True}},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "networkpolicy": {"networkPolicy": {
        "enabled": True,
        "grpcFrom": [{"podSelector": {"matchLabels": {"role": "caller"}}}],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}]}},
    "exposed": {"ingress": {"enabled": True, "className": "nginx", "hosts": [{"host": "agents.example.com"}],
                            "tls": [{"secretName": "agents-tls", "hosts": ["agents.example.com"]}]},
                "grpcRoute": {"enabled": True, "parentRefs": [{"name": "gw", "namespace": "gateways"}],
                              "hostnames": ["agents.example.com"]}},
    "configured": {"agents": ["slow_agent:slow_agent", {"ref": "agent_runtime.echo:echo_agent", "name": "echo2"}],
                   "server": {"max_concurrency": 16, "drain_timeout": 50, "log_level": "debug"},
                   "envFromSecret": "llm-keys", "extraArgs": ["--no-reflection"],
                   "env": [{"name": "OTEL_SERVICE_NAME", "value": "agents"}],
                   "ports": {"grpc": 6000, "metrics": 0}, "preStopSleepSeconds": 0,
                   "podDisruptionBudget": {"minAvailable": "50%"}, "topologySpread": {"enabled": False}},
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    return request.param, objects(VALUE_SETS[request.param])


def test_lint_passes_strictly_for_every_value_set():
    for name, values in VALUE_SETS.items():
        report = helm_python.lint(CHART, with_image(values), strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{name}: {problems}"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_matches_the_kubernetes_schemas(rendered, version):
    _, objs = rendered
    for obj in objs:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_catches_what_kubelet_would_refuse():
    deployment = copy.deepcopy(one(objects(), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError, match="is not of type 'integer'"):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_every_object_is_labelled_and_namespaced(rendered):
    _, objs = rendered
    for obj in objs:
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["labels"].items() >= SELECTOR.items()


def test_default_objects():
    assert kinds(objects()) == ["ConfigMap", "Deployment", "Pod", "PodDisruptionBudget", "Service",
                                "ServiceAccount"]


def test_deployment_probes_the_health_service_on_the_numeric_port(rendered):
    name, objs = rendered
    main = container(objs)
    grpc_port = VALUE_SETS[name].get("ports", {}).get("grpc", 50051)
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in main["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["grpc"] == {"port": grpc_port}
    assert f"--port={grpc_port}" in main["args"]


def test_deployment_runs_locked_down(rendered):
    _, objs = rendered
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    security = container(objs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    spec = pod_spec(objs)
    assert spec.writable_paths == ("/tmp",) and spec.user == "10001:10001"
    assert container(objs)["resources"]["requests"]


def test_termination_grace_exceeds_the_drain(rendered):
    name, objs = rendered
    values = VALUE_SETS[name]
    drain = values.get("server", {}).get("drain_timeout", 25)
    pre_stop = values.get("preStopSleepSeconds", 5)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    hook = container(objs).get("lifecycle", {}).get("preStop")
    assert hook == ({"exec": {"command": ["sleep", str(pre_stop)]}} if pre_stop else None)


def test_the_config_file_is_what_the_server_loads(tmp_path):
    """The ConfigMap's file, read by the real CLI with the Deployment's args and env."""
    objs = objects(VALUE_SETS["configured"])
    main = container(objs)
    path = tmp_path / "config.yaml"
    path.write_text(config_file(objs))
    assert f"--config={config_mount_path(objs)}" in main["args"]
    args = [a.replace(config_mount_path(objs), str(path)) for a in main["args"]]
    parsed = build_parser().parse_args(["serve", *args])
    env = {e["name"]: e["value"] for e in main["env"]}
    cfg, agents = load_server_config(parsed, environ=env)
    assert (cfg.max_concurrency, cfg.drain_timeout, cfg.log_level, cfg.port) == (16, 50.0, "debug", 6000)
    assert cfg.host == "0.0.0.0" and cfg.reflection is False
    assert [type(agent).__name__ for agent in agents] == ["SlowAgent", "AgentSpec"]
    assert main["envFrom"] == [{"secretRef": {"name": "llm-keys"}}]
    assert {"name": "OTEL_SERVICE_NAME", "value": "agents"} in main["env"]
    assert cfg.a2a and cfg.a2a_url == f"{FULLNAME}.{NAMESPACE}.svc:6000"


def test_the_a2a_card_names_the_service_unless_told_otherwise():
    def a2a_url(values):
        return yaml.safe_load(config_file(objects(values)))["server"]["a2a_url"]

    assert a2a_url({}) == f"{FULLNAME}.{NAMESPACE}.svc:50051"
    assert a2a_url({"server": {"a2a_url": "agents.example.com:443"}}) == "agents.example.com:443"
    notes = render()["agent-runtime/templates/NOTES.txt"]
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:9464/.well-known/agent-card.json" in notes
    assert "agent-card.json" not in render({"server": {"a2a": False}})["agent-runtime/templates/NOTES.txt"]


def test_config_changes_roll_the_pods():
    def checksum(values):
        return one(objects(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"server": {"max_concurrency": 3}})


def test_service_speaks_grpc_and_exposes_metrics():
    objs = objects()
    service = one(objs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == SELECTOR
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc" and ports["grpc"]["targetPort"] == "grpc"
    assert ports["metrics"]["port"] == 9464
    annotations = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9464"


def test_headless_service_for_client_side_balancing():
    objs = objects(VALUE_SETS["headless"])
    headless = one(objs, "Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == SELECTOR
    assert f"dns:///{FULLNAME}-headless" in render(VALUE_SETS["headless"])["agent-runtime/templates/NOTES.txt"]


def test_metrics_port_zero_turns_scraping_off():
    objs = objects({"ports": {"grpc": 50051, "metrics": 0}, "metrics": {"serviceMonitor": {"enabled": True}}})
    assert "ServiceMonitor" not in kinds(objs)
    assert [p["name"] for p in one(objs, "Service")["spec"]["ports"]] == ["grpc"]
    assert "prometheus.io/scrape" not in one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert container(objs)["env"][1] == {"name": "AGENT_RUNTIME_METRICS_PORT", "value": "0"}


def test_autoscaling_on_cpu_queue_depth_and_in_flight_runs():
    objs = objects(VALUE_SETS["autoscaling"])
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    metrics = hpa["spec"]["metrics"]
    assert metrics[0]["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert [(m["pods"]["metric"]["name"], m["pods"]["target"]["averageValue"]) for m in metrics[1:]] == [
        ("agent_runtime_runs_queued", "1"), ("agent_runtime_runs_in_flight", "4")]
    assert "replicas" not in one(objs, "Deployment")["spec"]


def test_pod_disruption_budget():
    assert one(objects(), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    budget = one(objects(VALUE_SETS["configured"]), "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == "50%" and "maxUnavailable" not in budget


def test_service_monitor_scrapes_the_metrics_port():
    monitor = one(objects(VALUE_SETS["servicemonitor"]), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s",
                                             "scrapeTimeout": "10s"}]


def test_network_policy_admits_only_the_served_ports():
    policy = one(objects(VALUE_SETS["networkpolicy"]), "NetworkPolicy")["spec"]
    assert policy["podSelector"] == {"matchLabels": SELECTOR}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    grpc_rule, metrics_rule = policy["ingress"]
    assert grpc_rule == {"ports": [{"port": 50051, "protocol": "TCP"}],
                         "from": [{"podSelector": {"matchLabels": {"role": "caller"}}}]}
    assert metrics_rule == {"ports": [{"port": 9464, "protocol": "TCP"}]}
    assert policy["egress"][0]["ports"] == [{"port": 443, "protocol": "TCP"}]


def test_ingress_and_grpc_route_reach_the_service():
    objs = objects(VALUE_SETS["exposed"])
    ingress = one(objs, "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"] == {"service": {"name": FULLNAME, "port": {"name": "grpc"}}}
    route = one(objs, "GRPCRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "gateways"}]
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": FULLNAME, "port": 50051}]}]


def test_topology_spread_over_zones_and_nodes():
    constraints = one(objects(), "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(c["labelSelector"] == {"matchLabels": SELECTOR} for c in constraints)


def test_helm_test_hook_checks_health_through_the_service():
    pod = one(objects(), "Pod", f"{FULLNAME}-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (probe,) = pod["spec"]["containers"]
    assert probe["image"].startswith("ghcr.io/grpc-ecosystem/grpc-health-probe:")
    assert f"-addr={FULLNAME}.{NAMESPACE}.svc:50051" in probe["args"]
    assert probe["securityContext"]["readOnlyRootFilesystem"] is True
    custom = one(objects({"tests": {"image": {"repository": "mirror/probe", "tag": "1"}}}), "Pod",
                 f"{FULLNAME}-test-health")
    assert custom["spec"]["containers"][0]["image"] == "mirror/probe:1"


def test_notes_show_how_to_call_it():
    notes = render()["agent-runtime/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME} 50051:50051" in notes
    assert ("grpcurl -plaintext -d '{\"input\": {\"text\": \"hello\"}}' localhost:50051 "
            "agent_runtime.v1.AgentRuntime/Invoke") in notes


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": "three"}, "at '/replicaCount': got string, want integer"),
    ({"server": {"max_concurrency": "eight"}}, "at '/server/max_concurrency': got string, want integer"),
    ({"server": {"drain_timeout": -1}}, "at '/server/drain_timeout'"),
    ({"server": {"log_level": "loud"}}, "at '/server/log_level'"),
    ({"ports": {"grpc": "grpc", "metrics": 9464}}, "at '/ports/grpc': got string, want integer"),
    ({"ports": {"grpc": 70000, "metrics": 9464}}, "at '/ports/grpc'"),
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"service": {"headless": "yes"}}, "at '/service/headless': got string, want boolean"),
    ({"autoscaling": {"maxReplicas": 0}}, "at '/autoscaling/maxReplicas'"),
    ({"probes": {"startup": {"periodSeconds": "1s"}, "liveness": {}, "readiness": {}}},
     "at '/probes/startup/periodSeconds': got string, want integer"),
    ({"env": [{"value": "x"}]}, "at '/env/0': missing property 'name'"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
])
def test_schema_rejects_wrong_values_with_a_clear_message(values, message):
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(values)
    assert message in str(caught.value)


@pytest.mark.parametrize("values, message", [
    ({"terminationGracePeriodSeconds": 20},
     "terminationGracePeriodSeconds (20) must exceed preStopSleepSeconds + server.drain_timeout (30)"),
    ({"server": {"port": 1}}, "server.port cannot be set: set ports.grpc"),
    ({"server": {"host": "::"}}, "server.host cannot be set"),
    ({"server": {"auth_token": "s3cret"}}, "server.auth_token cannot be set: a ConfigMap is no place for a secret"),
    ({"server": {"auth_operator_token": "s3cret"}},
     "server.auth_operator_token cannot be set: a ConfigMap is no place for a secret"),
    ({"server": {"tls_cert": "/tls/tls.crt"}}, "server.tls_cert cannot be set: kubelet's gRPC probes speak plaintext"),
    ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}},
     "autoscaling.enabled needs a metric"),
    ({"ingress": {"enabled": True}}, "ingress.enabled needs at least one entry in ingress.hosts"),
    ({"grpcRoute": {"enabled": True}}, "grpcRoute.enabled needs at least one gateway"),
])
def test_templates_refuse_contradictory_values(values, message):
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(values)
    assert message in str(caught.value)


def test_an_explicit_termination_grace_is_kept():
    pod = one(objects({"terminationGracePeriodSeconds": 120}), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120


def test_values_file_documents_every_top_level_key():
    """Each top-level key has a comment above it, or above the run of one-line keys it is in."""
    lines = (Path(CHART) / "values.yaml").read_text().splitlines()
    with helm_python.Chart.load(CHART) as chart:
        top_level = chart.values.keys()
        assert set(top_level) <= set(chart.schema["properties"])
    for key in top_level:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        while index > 0 and re.match(r"^\w+: \S", lines[index - 1]):
            index -= 1
        assert index > 0 and lines[index - 1].startswith("#"), f"{key} has no comment in values.yaml"


def test_without_an_image_the_install_fails_with_how_to_build_and_push_one():
    """There is no public image: the default values name none, and rendering them fails
    with the steps, instead of a pod in ImagePullBackOff with no hint."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["image"]["repository"] == ""
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render({"image": {"repository": ""}})
    message = str(caught.value)
    assert "image.repository is not set" in message
    assert "docker build -t REGISTRY/agent-runtime:0.1.0 . && docker push REGISTRY/agent-runtime:0.1.0" in message
    assert "--set image.repository=REGISTRY/agent-runtime" in message
    assert container(objects())["image"] == "registry.example.com/agent-runtime:0.1.0"


def test_notes_say_only_echo_is_served_until_agents_are_set():
    notes = render()["agent-runtime/templates/NOTES.txt"]
    assert "It serves only the embedded echo agent until you set `agents`" in notes
    configured = render(VALUE_SETS["configured"])["agent-runtime/templates/NOTES.txt"]
    assert "echo agent" not in configured


def test_readiness_rides_out_one_slow_answer():
    """One health check past its timeout must not take a serving pod out of its Service."""
    probe = container(objects())["readinessProbe"]
    assert probe["failureThreshold"] >= 3
    assert probe["periodSeconds"] * (probe["failureThreshold"] - 1) >= 10
