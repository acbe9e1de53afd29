#!/usr/bin/env bash
# Run the benchmark suite from the repository root with the project's virtualenv
# (made by scripts/install-test-deps when missing); arguments go to `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/install-test-deps
exec .venv/bin/python -m bench "$@"
