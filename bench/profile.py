"""`python -m bench --profile`: where a contender spends its CPU under unary load.

py-spy samples the server (pinned as in the benchmark) while h2load drives it;
writes a flame graph (SVG) and prints the functions with the most own time and
the most total time.
"""

from __future__ import annotations

import collections
import re
import subprocess
from pathlib import Path

from . import contenders as c
from . import h2load, wire
from .deps import ensure_py_spy
from .h2load import Load
from .harness import Bench, log


_LINE = re.compile(r":\d+\)$")  # "f (file.py:12)" -> "f (file.py)": time per function, not per line


def run(bench: Bench, out_dir: Path, which: str = "runtime", concurrency: int = 16, top: int = 25) -> None:
    py_spy = ensure_py_spy()
    if which == "traced":
        from .otlp import OtlpReceiver

        receiver = OtlpReceiver.start(bench)
        chosen = c.unary_runtime(c.TRACED, metrics=True, env=c.tracing_env(receiver.address))
    else:
        chosen = {"runtime": c.unary_runtime(), "metrics": c.unary_runtime(c.METRICS, metrics=True),
                  "bare": c.bare()}[which]
    server = bench.start(chosen)
    load = Load(f"http://{server.address}{wire.INVOKE}", bench.body("invoke.grpc", wire.invoke_body("hello")),
                wire.GRPC_HEADERS)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"profile-{which}.txt"
    seconds = max(int(bench.settings.duration), 2)
    spy = subprocess.Popen([py_spy, "record", "--pid", str(server.proc.pid), "--duration", str(seconds + 1),
                            "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = h2load.run(load, concurrency=concurrency, core=bench.client_core, duration=seconds)
    spy.wait(60)
    flame = out_dir / f"profile-{which}.svg"
    subprocess.run([py_spy, "record", "--pid", str(server.proc.pid), "--duration", "1", "--output", str(flame)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    bench.stop(server)
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    log(f"{which}: {result.requests_per_s:.0f} calls/s at c={concurrency}; {samples} samples; raw stacks {raw}")
    for title, counter in (("own time", own), ("total time", total)):
        print(f"-- top {top} by {title}")
        for frame, n in counter.most_common(top):
            print(f"{100 * n / max(samples, 1):5.1f}%  {frame}")
