"""Container image: size, build time, and cold start (container start to SERVING).

    python -m bench --sections image      (or: python -m bench.image [--starts 5] [--no-cache])

Builds the image from the repository's Dockerfile on the local debootstrap base (made
once, as the tests do), then starts it as the chart's Deployment runs it (read-only
root, numeric user, no capabilities; host network on a free port) and times
`docker run` until the health service answers SERVING.

Targets: image < 250 MB, median cold start < 3 s.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.container_image import (BASE_TAG, IMAGE_TAG, PodSpec, build_image, docker, docker_daemon,
                                   ensure_base_image, free_port, image_size, run_args)
from bench.report import Section, Target
from bench.stats import median, median_interval

MB = 1e6


@dataclass(frozen=True)
class ImageFigures:
    size_mb: float
    base_mb: float
    build_s: float
    starts_s: list[float]


def seconds_to_serving(image: str, timeout: float = 60) -> float:
    """Seconds from `docker run` to the first SERVING health answer."""
    port = free_port()
    spec = PodSpec(args=(f"--port={port}",), env={"AGENT_RUNTIME_METRICS_PORT": str(free_port())},
                   user="10001:10001", read_only_root=True, drop_all_capabilities=True, no_new_privileges=True,
                   writable_paths=("/tmp",))
    name = f"agent-runtime-bench-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    docker(*run_args(spec, image, name))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() - start < timeout:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - start
                except grpc.RpcError:
                    time.sleep(0.01)
        raise RuntimeError(f"not SERVING after {timeout}s: {docker('logs', name, check=False).stderr}")
    finally:
        docker("rm", "--force", name, check=False)


def measure(starts: int, no_cache: bool = False) -> ImageFigures:
    with docker_daemon():
        base = ensure_base_image(BASE_TAG)
        if no_cache:
            docker("builder", "prune", "--all", "--force")
        build = build_image(IMAGE_TAG, base)
        return ImageFigures(image_size(IMAGE_TAG) / MB, image_size(base) / MB, build,
                            [seconds_to_serving(IMAGE_TAG) for _ in range(starts)])


def run(bench) -> Section:
    section = Section("Container image")
    if bench.settings.smoke:
        # A smoke run proves the harness in seconds; building the image does not fit.
        # tests/test_image.py builds it and times a cold start with this module.
        section.notes.append("Not measured in a smoke run (it builds the image): "
                             "`python -m bench --sections image`.")
        return section
    figures = measure(bench.settings.cold_starts)
    section.targets.append(Target("container image size", figures.size_mb, 250, "MB", at_least=False))
    section.targets.append(Target("cold start, container start to SERVING", median(figures.starts_s) * 1000, 3000,
                                  "ms", at_least=False,
                                  interval=tuple(s * 1000 for s in median_interval(figures.starts_s))))
    section.notes.append(f"Image {figures.size_mb:.1f} MB on a {figures.base_mb:.1f} MB debootstrap bookworm base; "
                         f"build {figures.build_s:.1f} s with the layer cache as found; cold starts (s): "
                         + ", ".join(f"{s:.2f}" for s in figures.starts_s) + ".")
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="cold starts to time")
    parser.add_argument("--no-cache", action="store_true", help="time a build that reuses no layer")
    args = parser.parse_args()
    figures = measure(args.starts, args.no_cache)
    print(f"image {IMAGE_TAG}: {figures.size_mb:.1f} MB ({figures.size_mb - figures.base_mb:.1f} MB above "
          f"the {figures.base_mb:.1f} MB base)")
    print(f"build: {figures.build_s:.1f} s ({'no cache' if args.no_cache else 'layer cache as found'})")
    print(f"cold start to SERVING over {len(figures.starts_s)} starts: median {median(figures.starts_s):.2f} s, "
          f"min {min(figures.starts_s):.2f} s, max {max(figures.starts_s):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
