#!/usr/bin/env python3
"""Container image figures: size, build time, and cold start (container start to SERVING).

    python bench/image.py [--starts 5] [--base TAG] [--no-cache]

Builds the image from the repository's Dockerfile on the local debootstrap base (made
once, as the tests do), then starts it `--starts` times as the chart's Deployment
runs it (read-only root, numeric user, no capabilities, host network on a free port)
and times `docker run` until the health service answers SERVING.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from container_image import (BASE_TAG, IMAGE_TAG, PodSpec, build_image, docker, docker_daemon,  # noqa: E402
                             ensure_base_image, free_port, image_size, run_args)


def seconds_to_serving(image: str, timeout: float = 60) -> float:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="cold starts to time")
    parser.add_argument("--base", default=BASE_TAG, help="base image (made with debootstrap when it is the default)")
    parser.add_argument("--no-cache", action="store_true", help="time a build that reuses no layer")
    args = parser.parse_args()
    with docker_daemon():
        base = ensure_base_image(args.base) if args.base == BASE_TAG else args.base
        if args.no_cache:
            docker("builder", "prune", "--all", "--force")
        build = build_image(IMAGE_TAG, base)
        size, base_size = image_size(IMAGE_TAG), image_size(base)
        starts = [seconds_to_serving(IMAGE_TAG) for _ in range(args.starts)]
    print(f"image {IMAGE_TAG} on {base}: {size / 1e6:.1f} MB ({(size - base_size) / 1e6:.1f} MB above the base)")
    print(f"build: {build:.1f} s ({'no cache' if args.no_cache else 'layer cache as found'})")
    print(f"cold start to SERVING over {len(starts)} starts: median {statistics.median(starts):.2f} s, "
          f"min {min(starts):.2f} s, max {max(starts):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
