"""The benchmark suite: what agent-runtime costs against a bare grpc.aio server
and NeMo Agent Toolkit's `nat serve`, measured side by side (`python -m bench`).

Adding a section: a module `bench/<name>.py` with `run(bench: Bench) -> Section`
(see harness.py and report.py); list it in cli.py's CORE_SECTIONS, or in
OPTIONAL_SECTIONS when it may be absent. Servers are started with
`bench.start(Contender(...))`, measured with `bench.measure` / `bench.alternate`.
"""

import sys
from pathlib import Path

# The suite measures this checkout's runtime, whatever else is installed.
_SERVICE = str(Path(__file__).resolve().parent.parent / "service")
if _SERVICE not in sys.path:
    sys.path.insert(0, _SERVICE)
