"""The Helm chart rendered with real Helm (helm-python-sdk bundles Helm's library),
as Kubernetes objects, and what a rendered Deployment asks of the container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

from bench.container_image import PodSpec

CHART = Path(__file__).resolve().parent.parent / "helm" / "agent-runtime"
RELEASE = "demo"
NAMESPACE = "agents"
FULLNAME = f"{RELEASE}-agent-runtime"


IMAGE = {"repository": "registry.example.com/agent-runtime"}


def with_image(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """`values` with an image repository (the chart has no default image: it must be built
    and pushed), unless they name one themselves."""
    values = dict(values or {})
    values["image"] = {**IMAGE, **values.get("image", {})}
    return values


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), for `values` with an image."""
    with helm_python.Chart.load(CHART) as chart:
        return chart.render(with_image(values), name=RELEASE, namespace=NAMESPACE)


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for `values`."""
    found = []
    for path, text in sorted(render(values).items()):
        if path.endswith(".yaml"):
            found += [obj for obj in yaml.safe_load_all(text) if obj]
    return found


def one(objs: list[dict[str, Any]], kind: str, name: str = FULLNAME) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return main


def config_file(objs: list[dict[str, Any]]) -> str:
    return one(objs, "ConfigMap")["data"]["config.yaml"]


def pod_spec(objs: list[dict[str, Any]]) -> PodSpec:
    """What the rendered Deployment's container asks for, in terms `docker run` can follow."""
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    main = container(objs)
    security = {**pod.get("securityContext", {}), **main.get("securityContext", {})}
    mounts = {m["name"]: m["mountPath"] for m in main.get("volumeMounts", ())}
    writable = tuple(mounts[v["name"]] for v in pod.get("volumes", ()) if "emptyDir" in v)
    return PodSpec(
        args=tuple(main.get("args", ())),
        env={e["name"]: e["value"] for e in main.get("env", ()) if "value" in e},
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        read_only_root=security.get("readOnlyRootFilesystem", False),
        drop_all_capabilities="ALL" in security.get("capabilities", {}).get("drop", ()),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        writable_paths=writable)


def config_mount_path(objs: list[dict[str, Any]]) -> str:
    """Where the Deployment mounts the ConfigMap's config.yaml."""
    (mount,) = [m for m in container(objs)["volumeMounts"] if m["name"] == "config"]
    return f"{mount['mountPath']}/config.yaml"
