"""The checked-in stubs are exactly what scripts/gen_protos.py makes from proto/."""

from __future__ import annotations

import filecmp
import subprocess
import sys

from conftest import ROOT

CHECKED_IN = ROOT / "service" / "agent_runtime" / "_proto"


def test_generated_stubs_match_protos(tmp_path):
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    kept = sorted(p.relative_to(CHECKED_IN) for p in CHECKED_IN.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == kept, "stub files differ: run `python scripts/gen_protos.py`"
    stale = [str(p) for p in fresh if not filecmp.cmp(out / p, CHECKED_IN / p, shallow=False)]
    assert not stale, f"stubs drifted from proto/: {stale}; run `python scripts/gen_protos.py`"
